"""API keys (full and read-only), CORS, request ids, the request timeout, body encodings.

The keys: a full key may do everything; a read-only key may embed, search
and read but gets 403 on a write; no key or a wrong one gets 401 with
`WWW-Authenticate`; the probes stay open; no key ever reaches the log.
CORS is off unless origins are configured. A request that takes longer than
CPC_REQUEST_TIMEOUT_S is answered 504 (408 while its body is still
arriving) and the service goes on serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message

from service.api.middleware.timeouts import RequestTimeoutMiddleware
from service.config import Settings
from tests.service.conftest import TEXTS, MakeClient, random_vectors

pytestmark = pytest.mark.embed_paths("lean", "full")

FULL, READ = "full-key-0123456789", "read-key-9876543210"
VEC = random_vectors(1, seed=3)[0]
GOOD = {"model": "text", "inputs": ["Still serving."]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def reads(c: TestClient, key: str) -> list[Any]:
    """Every kind of read, with `key`."""
    h = bearer(key)
    return [
        c.post("/embed", json={"model": "text", "inputs": TEXTS[:1]}, headers=h),
        c.post("/v1/embeddings", json={"model": "text", "input": "hi."}, headers=h),
        c.post("/search", json={"collection": "text", "vector": VEC}, headers=h),
        c.get("/collections", headers=h),
        c.get("/collections/text", headers=h),
        c.get("/models", headers=h),
        c.get("/metrics", headers=h),
    ]


def writes(c: TestClient, key: str | None) -> list[Any]:
    """Every kind of write, with `key` (None: no Authorization header)."""
    h = bearer(key) if key else {}
    item = {"items": [{"id": "w", "vector": VEC}]}
    return [
        c.put("/collections/made", json={"model": "text"}, headers=h),
        c.post("/collections/text/items", json=item, headers=h),
        c.delete("/collections/text/items/w", headers=h),
        c.delete("/collections/text", headers=h),
    ]


def test_the_read_only_key_reads_but_cannot_write(make_client: MakeClient) -> None:
    c = make_client(api_key=FULL, read_api_key=READ)
    assert [r.status_code for r in reads(c, READ)] == [200] * 7
    for r in writes(c, READ):
        assert r.status_code == 403, r.text
        detail = r.json()["detail"]
        assert "read-only" in detail and "CPC_API_KEY" in detail
    assert c.get("/collections/text", headers=bearer(READ)).json()["count"] == 0
    assert c.get("/collections/made", headers=bearer(FULL)).status_code == 404
    r = c.post("/v1/embeddings", json={"model": "text", "input": "x"}, headers=bearer("nope"))
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_the_full_key_does_everything(make_client: MakeClient) -> None:
    c = make_client(api_key=FULL, read_api_key=READ)
    assert [r.status_code for r in reads(c, FULL)] == [200] * 7
    assert [r.status_code for r in writes(c, FULL)] == [201, 200, 200, 200]


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic Zm9vOmJhcg==", "Bearer ", FULL])
def test_no_or_a_wrong_key_is_401(make_client: MakeClient, header: str | None) -> None:
    c = make_client(api_key=FULL, read_api_key=READ)
    headers = {"Authorization": header} if header is not None else {}
    for r in (c.post("/embed", json=GOOD, headers=headers), *writes(c, None)):
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "API key" in r.json()["detail"]
    assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200


def test_a_read_only_key_alone_allows_no_writes(make_client: MakeClient) -> None:
    c = make_client(read_api_key=READ)
    assert c.post("/embed", json=GOOD, headers=bearer(READ)).status_code == 200
    assert c.post("/embed", json=GOOD).status_code == 401
    assert [r.status_code for r in writes(c, READ)] == [403] * 4


def test_keys_never_reach_the_log(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        c = make_client(api_key=FULL, read_api_key=READ)
        reads(c, READ)
        writes(c, READ)
        writes(c, "Bearer " + FULL[::-1])
        c.post("/embed", json=GOOD, headers=bearer(FULL))
    assert caplog.records, "nothing was logged"
    for key in (FULL, READ, FULL[::-1]):
        assert key not in caplog.text
    settings = Settings(api_key=FULL, read_api_key=READ)
    assert FULL not in repr(settings) and READ not in repr(settings)


# -- CORS --------------------------------------------------------------------------------------

PREFLIGHT = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}


def test_cors_is_off_by_default(client: TestClient) -> None:
    r = client.options("/embed", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/embed", json=GOOD, headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(make_client: MakeClient) -> None:
    c = make_client(cors_origins=["http://app.example"])
    r = c.options("/embed", headers={**PREFLIGHT, "Origin": "http://app.example"})
    assert r.headers["access-control-allow-origin"] == "http://app.example"
    r = c.post("/embed", json=GOOD, headers={"Origin": "http://app.example"})
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    r = c.options("/embed", headers=PREFLIGHT)
    assert r.headers.get("access-control-allow-origin") != "http://evil.example"


# -- request ids -------------------------------------------------------------------------------


def test_a_sane_request_id_is_kept_and_returned(client: TestClient) -> None:
    r = client.post("/embed", json=GOOD, headers={"X-Request-ID": "job-42.attempt:3"})
    assert r.headers["x-request-id"] == "job-42.attempt:3"
    r = client.post(
        "/embed", json={"model": "nope", "inputs": ["x"]}, headers={"X-Request-ID": "e1"}
    )
    assert r.status_code == 404 and r.headers["x-request-id"] == "e1"


@pytest.mark.parametrize(
    "given", ["", "has space", "x" * 129, '{"json":1}', "-leading-dash", "semi;colon", "ünï"]
)
def test_an_insane_request_id_is_replaced(client: TestClient, given: str) -> None:
    r = client.get("/health", headers=[(b"X-Request-ID", given.encode())])
    made = r.headers["x-request-id"]
    assert made != given and len(made) == 32 and int(made, 16) >= 0


def test_every_answer_has_a_request_id(client: TestClient) -> None:
    ids = {client.get(path).headers["x-request-id"] for path in ("/health", "/nope", "/metrics")}
    assert len(ids) == 3


# -- request timeout ---------------------------------------------------------------------------


def test_a_request_over_the_timeout_gets_504_and_the_service_goes_on(
    make_client: MakeClient,
) -> None:
    c = make_client(request_timeout_s=0.3)

    async def slow() -> dict[str, str]:
        await asyncio.sleep(30)
        return {"status": "late"}

    async def blocking() -> dict[str, str]:  # stuck in a worker thread: abandoned
        await asyncio.to_thread(time.sleep, 2)
        return {"status": "late"}

    for path, handler in (("/slow", slow), ("/blocking", blocking)):
        c.app.add_api_route(path, handler)  # type: ignore[attr-defined]
        start = time.monotonic()
        r = c.get(path)
        assert r.status_code == 504, r.text
        assert "CPC_REQUEST_TIMEOUT_S" in r.json()["detail"]
        assert time.monotonic() - start < 1.9  # answered before the work ended
        assert c.post("/embed", json=GOOD).status_code == 200
    metrics = c.get("/metrics").text
    assert 'cpc_requests_total{route="/slow",status="504"} 1.0' in metrics


def test_a_stalled_body_gets_408() -> None:
    sent: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    first = [{"type": "http.request", "body": b'{"in', "more_body": True}]

    async def receive() -> Message:
        if first:
            return first.pop()
        await asyncio.sleep(60)  # the client stalls
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/embed", "headers": []}
    asyncio.run(RequestTimeoutMiddleware(app, timeout_s=0.2)(scope, receive, send))
    assert sent[0]["status"] == 408
    assert b"did not arrive within 0.2 s" in sent[1]["body"]


def test_a_compressed_body_is_415(client: TestClient) -> None:
    r = client.post(
        "/embed",
        content=b"\x1f\x8b\x08\x00",
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 415 and "uncompressed" in r.json()["detail"]


def test_the_new_settings_and_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("CPC_READ_API_KEY", "CPC_REQUEST_TIMEOUT_S", "CPC_LOG_FORMAT"):
        monkeypatch.delenv(key, raising=False)
    s = Settings()
    assert s.read_api_key is None and s.request_timeout_s == 60 and s.log_format == "json"
    monkeypatch.setenv("CPC_READ_API_KEY", READ)
    monkeypatch.setenv("CPC_REQUEST_TIMEOUT_S", "2.5")
    monkeypatch.setenv("CPC_LOG_FORMAT", "text")
    s = Settings()
    assert (s.read_api_key, s.request_timeout_s, s.log_format) == (READ, 2.5, "text")
    monkeypatch.setenv("CPC_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="log_format"):
        Settings()


def test_a_client_that_hangs_up_mid_body_is_no_error(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    inbox: list[Message] = [
        {"type": "http.request", "body": b'{"model": "te', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/embed",
        "raw_path": b"/embed",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    with caplog.at_level(logging.INFO):
        asyncio.run(client.app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 400
    assert b"closed the connection" in sent[1]["body"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
