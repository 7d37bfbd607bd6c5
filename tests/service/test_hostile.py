"""Hostile input, on every route and in all three modalities: a clear 4xx, never a 5xx.

Each case sends one hostile request and checks that
- the status is the expected 4xx, with a `detail` that says what was wrong;
- the body holds no stack trace and no file path of the server;
- nothing changed: the collections (names and counts) and a sentinel item;
- the next valid request is served.

The in-process cases (`CASES`) cover malformed and lying headers, truncated
bodies and files, files that decode to NaN or infinity, polyglot files,
wrong content types, invalid UTF-8, JSON nested 10,000 levels deep, numbers
far past any limit, path-like names and ids, unknown fields and wrong
methods. The wire cases (`WIRE_CASES`) send raw bytes to a real uvicorn
server for what only a socket can do: a Content-Length that lies, a body
that stalls, headers no HTTP client would send.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from tests.service import hostile_media as hm
from tests.service.conftest import TEXTS
from tests.service.hostile_cases import (
    CASES,
    GOOD,
    GOOD_BODY,
    GUARDED,
    ITEMS,
    LEAKS,
    PARSER_WORDS,
    POST_EMBED,
    WIRE_CASES,
    Case,
    WireCase,
    http,
)
from tests.service.live import app_in_thread

pytestmark = pytest.mark.embed_paths("lean", "full")


@pytest.fixture(scope="module")
def sentinel(client: TestClient) -> dict[str, Any]:
    """A collection of the text model with two items that no hostile request may change."""
    assert client.put(f"/collections/{GUARDED}", json={"model": "text"}).status_code == 201
    items = [
        {"id": "keep", "vector": hm.VEC, "metadata": {"k": "v"}},
        {"id": "doc", "input": TEXTS[0]},
    ]
    assert client.post(ITEMS, json={"items": items}).status_code == 200
    return state_of(client)


def state_of(client: TestClient) -> dict[str, Any]:
    collections = client.get("/collections").json()["collections"]
    items = [client.get(f"{ITEMS}/{i}").json() for i in ("keep", "doc")]
    return {"collections": collections, "items": items}


def assert_clear_4xx(status: int, text: str, expected: int, words: str, where: str) -> None:
    assert status == expected, f"{where}: {status} {text[:500]}"
    detail = json.loads(text)["detail"]
    assert isinstance(detail, str) and len(detail) >= 10, text
    assert words.lower() in detail.lower(), f"{where}: {detail!r} lacks {words!r}"
    assert len(text) < 8000, f"{where}: a {len(text)}-character error body"
    for leak in LEAKS:
        assert leak not in text, f"{where}: the body shows {leak!r}: {text[:500]}"


def send(client: TestClient, case: Case) -> Any:
    return client.request(
        case.method,
        case.path,
        json=case.json if case.content is None and case.files is None else None,
        content=case.content,
        headers=case.headers or None,
        files=case.files,
        data=case.data,
    )


def test_there_are_enough_cases() -> None:
    assert len(CASES) + len(WIRE_CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request(client: TestClient, sentinel: dict[str, Any], case: Case) -> None:
    r = send(client, case)
    data_dir = str(client.app.state.settings.data_dir)  # type: ignore[attr-defined]
    assert data_dir not in r.text
    assert_clear_4xx(r.status_code, r.text, case.status, case.words, case.id)
    assert state_of(client) == sentinel, f"{case.id} changed the stored state"
    assert client.post("/embed", json=GOOD).status_code == 200


# -- over the wire --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wire_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on a real uvicorn server on 127.0.0.1 (request timeout 1 s): host:port."""
    settings = Settings(
        models_dir=models_dir, data_dir=tmp_path_factory.mktemp("wire"), request_timeout_s=1.0
    )
    with app_in_thread(settings) as address:
        yield address


def exchange(address: str, raw: bytes, timeout: float = 10.0) -> tuple[int, str]:
    """Send `raw` on a new connection; the status and body of the first answer."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(raw)
        received = b""
        while b"\r\n\r\n" not in received or not _complete(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode("utf-8", errors="replace")


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


@pytest.mark.parametrize("case", WIRE_CASES, ids=[c.id for c in WIRE_CASES])
def test_hostile_bytes_on_the_wire(wire_server: str, case: WireCase) -> None:
    status, body = exchange(wire_server, case.raw)
    assert 400 <= status < 500, (status, body)
    if body.lstrip().startswith("{"):
        assert_clear_4xx(status, body, case.status, case.words, case.id)
    elif case.parser_may_answer or case.words == PARSER_WORDS:
        # refused by the server's HTTP parser, before (or instead of) the app's answer
        assert status == 400 and PARSER_WORDS in body, (status, body)
        assert not any(leak in body for leak in LEAKS)
    else:
        pytest.fail(f"{case.id}: {status} {body[:500]}")
    good = http(POST_EMBED + f"Content-Length: {len(GOOD_BODY)}\n", GOOD_BODY)
    assert exchange(wire_server, good)[0] == 200
