"""The lean embedding path: which requests it serves itself, and that it answers as the full
path does (the API modules marked `embed_paths` run every behaviour test on both)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.fast_path import LeanEmbedMiddleware
from tests.service.conftest import TEXTS, MakeClient, b64, image_bytes


class Recorder:
    """Passes every request on to the full path, noting its path and the body it got."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[tuple[str, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def noting() -> Any:
            message = await receive()
            chunks.append(message.get("body", b""))
            return message

        try:
            await self.app(scope, noting, send)
        finally:
            self.seen.append((scope["path"], b"".join(chunks)))


def lean_of(client: TestClient) -> LeanEmbedMiddleware:
    """The app's lean middleware (the outermost of its own), once the stack is built."""
    stack: Any = client.app.middleware_stack  # type: ignore[attr-defined]
    while stack is not None and not isinstance(stack, LeanEmbedMiddleware):
        stack = getattr(stack, "app", None)
    assert isinstance(stack, LeanEmbedMiddleware)
    return stack


@pytest.fixture
def watched(make_client: MakeClient) -> Iterator[tuple[TestClient, Recorder]]:
    client = make_client(api_key="k", cors_origins=["https://app.example"])
    assert client.get("/health").status_code == 200  # builds the middleware stack
    lean = lean_of(client)
    recorder = Recorder(lean.app)
    lean.app = recorder
    yield client, recorder


AUTH = {"Authorization": "Bearer k"}


def test_json_embedding_requests_are_served_without_the_full_path(
    watched: tuple[TestClient, Recorder],
) -> None:
    client, recorder = watched
    r = client.post("/embed", json={"model": "text", "inputs": TEXTS[:2]}, headers=AUTH)
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 2
    assert r.headers["content-type"] == "application/json" and r.headers["x-request-id"]
    o = client.post("/v1/embeddings", json={"model": "text", "input": TEXTS[0]}, headers=AUTH)
    assert o.status_code == 200 and o.json()["object"] == "list"
    missing = client.post("/embed", json={"model": "nope", "inputs": ["x"]}, headers=AUTH)
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    assert recorder.seen == []


@pytest.mark.parametrize(
    "case",
    ["form", "schema", "gzip", "cors", "no key", "wrong key", "chunked", "get", "other route"],
)
def test_every_other_request_goes_to_the_full_path(
    watched: tuple[TestClient, Recorder], case: str
) -> None:
    client, recorder = watched
    body = json.dumps({"model": "text", "inputs": ["a"]}).encode()
    headers = {**AUTH, "Content-Type": "application/json"}
    kwargs: dict[str, Any] = {"content": body, "headers": headers}
    path, method, status = "/embed", "POST", 200
    if case == "form":
        kwargs = {"data": {"model": "image"}, "files": {"file": ("a.png", image_bytes())}}
        kwargs["headers"] = AUTH
    elif case == "schema":
        kwargs["content"] = body = b'{"model": "text", "inputs": "not a list", "pooling": 3}'
        status = 422
    elif case == "gzip":
        kwargs["content"] = body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
        status = 415
    elif case == "cors":
        headers["Origin"] = "https://app.example"
    elif case == "no key":
        del headers["Authorization"]
        status = 401
    elif case == "wrong key":
        headers["Authorization"] = "Bearer nope"
        status = 401
    elif case == "chunked":
        kwargs["content"] = iter([body[:5], body[5:]])
    elif case == "get":
        method, status, kwargs = "GET", 405, {"headers": AUTH}
    else:
        path, kwargs["content"] = "/search", b'{"collection": "x", "vector": [1]}'
        status = 404
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["x-request-id"]
    assert [p for p, _ in recorder.seen] == [path]
    if case in ("schema", "cors"):  # the full path read the body: as sent, or replayed
        assert recorder.seen[0][1] == body
    if case == "cors":
        assert r.headers["access-control-allow-origin"] == "https://app.example"


def test_both_paths_give_the_same_answers(make_client: MakeClient) -> None:
    lean, full = make_client(), make_client(lean_embed_path=False)
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("/embed", {"model": "text", "inputs": TEXTS[:3], "pooling": "stats"}),
        ("/embed", {"model": "image", "inputs": [b64(image_bytes())], "encoding_format": "base64"}),
        ("/embed", {"model": "text", "inputs": [TEXTS[0]], "pooling": "none", "layer": "encoder"}),
        ("/v1/embeddings", {"model": "text", "input": TEXTS[:2], "encoding_format": "base64"}),
        ("/embed", {"model": "text", "inputs": []}),
        ("/embed", {"model": "text", "inputs": ["a"], "normalize": "maybe"}),
        ("/v1/embeddings", {"model": "text", "input": "a", "dimensions": 3}),
    ]
    for path, body in bodies:
        a, b = (c.post(path, json=body, headers={"X-Request-ID": "same-1"}) for c in (lean, full))
        assert (a.status_code, a.json()) == (b.status_code, b.json()), (path, body)
        assert a.headers["x-request-id"] == b.headers["x-request-id"] == "same-1"
        assert a.headers["content-type"] == b.headers["content-type"]
    metrics = lean.get("/metrics").text
    assert 'route="/embed",status="200"' in metrics or 'status="200",route="/embed"' in metrics
