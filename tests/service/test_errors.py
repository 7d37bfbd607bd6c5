"""Every error status of docs/api.md: a readable `detail`, no traceback, the server goes on."""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from tests.service.conftest import (
    SR,
    TEXTS,
    MakeClient,
    audio_bytes,
    b64,
    data_uri,
    image_bytes,
)
from tests.service.live import app_in_thread

pytestmark = pytest.mark.embed_paths("lean", "full")

GOOD = {"model": "text", "inputs": ["Still serving."]}


class Reply(Protocol):
    """What the test client and httpx responses have in common here."""

    status_code: int

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


def assert_error(r: Reply, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    detail = body["detail"]
    assert isinstance(detail, str) and len(detail) > 10, body
    assert "Traceback" not in r.text and 'File "' not in r.text
    for word in words:
        assert word in detail, detail
    return body


def assert_still_serving(client: TestClient) -> None:
    r = client.post("/embed", json=GOOD)
    assert r.status_code == 200, r.text


def zero_length_wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(0, dtype=np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid tiny PNG whose header claims `width` x `height` pixels."""
    data = bytearray(image_bytes("PNG", 8, 8))
    assert data[12:16] == b"IHDR"
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def lying_wav(seconds: float = 1.0) -> bytes:
    """A WAV whose RIFF and data sizes claim about 4 GiB."""
    data = bytearray(audio_bytes(seconds, subtype="PCM_16"))
    assert data[36:40] == b"data"
    struct.pack_into("<I", data, 4, 0xFFFFFFF0)
    struct.pack_into("<I", data, 40, 0xFFFFFF00)
    return bytes(data)


# -- 400 ----------------------------------------------------------------------------

BAD_INPUTS = [
    ("audio", b64(b"\x00\x01 definitely not audio \xff\xfe" * 20), "could not be decoded"),
    ("audio", "", "empty"),
    ("audio", "   ", "empty"),
    ("audio", "not base64!", "not valid base64"),
    ("audio", "data:audio/wav;base64,@@@@", "base64"),
    ("audio", b64(zero_length_wav()), "no samples"),
    ("audio", b64(audio_bytes(0.5)[:30]), "could not be decoded"),
    ("audio", b64(audio_bytes(100 / SR, subtype="FLOAT")), "too short: needs at least 465"),
    ("image", b64(image_bytes("PNG")[:200]), "corrupt or truncated"),
    ("image", b64(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4), "image"),
    ("image", b64(b"GIF89a" + b"\x00" * 3), "image"),
    ("text", "", "empty"),
    ("text", " \n\t ", "empty"),
]


@pytest.mark.parametrize(("model", "value", "words"), BAD_INPUTS)
def test_400_bad_input(client: TestClient, model: str, value: str, words: str) -> None:
    r = client.post("/embed", json={"model": model, "inputs": [value]})
    assert_error(r, 400, "input 0", words)
    assert_still_serving(client)


def test_400_names_the_bad_input_of_a_batch(client: TestClient) -> None:
    inputs = [b64(audio_bytes(0.3)), b64(audio_bytes(0.3)), "####", b64(audio_bytes(0.3))]
    r = client.post("/embed", json={"model": "audio", "inputs": inputs})
    assert_error(r, 400, "input 2 is not valid base64")
    r = client.post("/embed", json={"model": "text", "inputs": ["ok.", "fine.", "", "yes."]})
    assert_error(r, 400, "input 2")


def test_400_invalid_utf8_text_file(client: TestClient) -> None:
    r = client.post("/embed", files={"text": ("t.txt", b"\xff\xfe\xfa", "text/plain")})
    assert_error(r, 400, "UTF-8")


def test_400_form_without_inputs(client: TestClient) -> None:
    r = client.post("/embed", data={"model": "text"})
    assert_error(r, 400, "no inputs")


def test_400_model_and_modality_disagree(client: TestClient) -> None:
    r = client.post("/embed", json={"model": "audio", "modality": "text", "inputs": ["hi"]})
    assert_error(r, 400, "audio model")


# -- 401 ----------------------------------------------------------------------------


def test_401_without_and_with_a_wrong_key(make_client: MakeClient) -> None:
    c = make_client(api_key="s3cret")
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"}):
        r = c.post("/embed", json=GOOD, headers=headers)
        assert_error(r, 401, "API key")
        assert r.headers["www-authenticate"] == "Bearer"
    for path in ("/models", "/metrics", "/docs", "/openapi.json"):
        assert c.get(path).status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert c.post("/embed", json=GOOD, headers=ok).status_code == 200
    assert (
        c.post("/embed", json=GOOD, headers={"Authorization": "bearer s3cret"}).status_code == 200
    )
    assert c.get("/models", headers=ok).status_code == 200
    assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200


# -- 404 ----------------------------------------------------------------------------


def test_404_unknown_model_lists_the_loaded_ones(client: TestClient) -> None:
    r = client.post("/embed", json={"model": "speech", "inputs": ["x"]})
    assert_error(r, 404, "unknown model 'speech'", "audio, image, text")
    assert_error(client.get("/no/such/route"), 404, "/no/such/route")
    assert_still_serving(client)


# -- 413 ----------------------------------------------------------------------------


def test_413_body_by_content_length(make_client: MakeClient) -> None:
    c = make_client(max_request_bytes=2000)
    r = c.post("/embed", json={"model": "text", "inputs": ["word " * 500]})
    assert_error(r, 413, "limit is 2000 bytes")
    assert_still_serving(c)


def test_413_chunked_body_without_content_length(make_client: MakeClient) -> None:
    c = make_client(max_request_bytes=2000)

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "text", "inputs": ["'
        for _ in range(100):
            yield b"word " * 20
        yield b'"]}'

    r = c.post("/embed", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(r, 413, "over the limit of 2000 bytes")
    assert_still_serving(c)


def test_413_bad_content_length_is_400(make_client: MakeClient) -> None:
    c = make_client(max_request_bytes=2000)
    r = c.post("/embed", content=b"{}", headers={"Content-Length": "lots"})
    assert r.status_code in (400, 413)


@pytest.fixture
def live_server(models_dir: Path, tmp_path: Path) -> Iterator[str]:
    """The app on a real uvicorn server on 127.0.0.1 (body limit 4096 bytes)."""
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data", max_request_bytes=4096)
    with app_in_thread(settings) as address:
        yield f"http://{address}"


def test_413_streamed_over_real_http(live_server: str) -> None:
    sent = {"bytes": 0}

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "text", "inputs": ["'
        for _ in range(2000):  # 2 MB in all, far over the limit
            sent["bytes"] += 1000
            yield b"x" * 1000
        yield b'"]}'

    with httpx.Client(base_url=live_server, timeout=30) as http:
        try:
            r = http.post("/embed", content=chunks(), headers={"Content-Type": "application/json"})
        except httpx.HTTPError:  # the server may close while we are still sending
            r = None
        if r is not None:
            assert_error(r, 413, "over the limit of 4096 bytes")
        r = http.post("/embed", content=b"x" * 10_000, headers={"Content-Type": "application/json"})
        assert_error(r, 413, "10000 bytes")
        assert http.post("/embed", json=GOOD).status_code == 200


def test_413_audio_too_long(make_client: MakeClient) -> None:
    c = make_client(max_audio_seconds=1.0)
    r = c.post("/embed", json={"model": "audio", "inputs": [b64(audio_bytes(1.5))]})
    assert_error(r, 413, "input 0", "limit is 1 s")
    r = c.post("/embed", json={"model": "audio", "inputs": [b64(audio_bytes(2.5, rate=8000))]})
    assert_error(r, 413, "limit")
    assert c.post("/embed", json={"model": "audio", "inputs": [b64(audio_bytes(0.9))]}).is_success


def test_wav_header_claiming_a_huge_length(client: TestClient, make_client: MakeClient) -> None:
    """libsndfile trusts the bytes that are there: the true length is served or refused."""
    r = client.post(
        "/embed", json={"model": "audio", "inputs": [b64(lying_wav(1.0))], "pooling": "none"}
    )
    assert r.status_code == 200 and r.json()["steps"] == [98]  # 1 s
    strict = make_client(max_audio_seconds=0.5)
    r = strict.post("/embed", json={"model": "audio", "inputs": [b64(lying_wav(1.0))]})
    assert_error(r, 413, "limit")


def test_413_image_pixels(client: TestClient, make_client: MakeClient) -> None:
    r = client.post("/embed", json={"model": "image", "inputs": [b64(png_bomb())]})
    assert_error(r, 413, "input 0", "too large")
    assert_still_serving(client)
    small = make_client(max_image_pixels=1000)
    r = small.post("/embed", json={"model": "image", "inputs": [b64(image_bytes(width=48))]})
    assert_error(r, 413, "limit is 1000")


def test_413_batch_and_text_length(make_client: MakeClient) -> None:
    c = make_client(max_batch=2, max_text_chars=50)
    r = c.post("/embed", json={"model": "text", "inputs": ["a.", "b.", "c."]})
    assert_error(r, 413, "3 inputs", "limit is 2")
    r = c.post("/v1/embeddings", json={"model": "text", "input": ["a.", "b.", "c."]})
    assert_error(r, 413, "limit is 2")
    r = c.post("/embed", files=[("text", (None, "x.")) for _ in range(3)])
    assert_error(r, 413, "limit is 2")
    r = c.post("/embed", json={"model": "text", "inputs": ["word " * 20]})
    assert_error(r, 413, "100 characters", "limit is 50")
    assert_still_serving(c)


# -- 415 ----------------------------------------------------------------------------

WRONG_MEDIA = [
    ("image", b64(audio_bytes()), "audio data", "model 'image' takes image"),
    ("audio", b64(image_bytes("JPEG")), "image data", "model 'audio' takes audio"),
    ("image", data_uri(b"some words", "text/plain"), "text/plain", "takes image"),
    ("image", b64(b"A sentence of plain text, sent as if it were a file."), "is text", ""),
    ("audio", data_uri(image_bytes(), "image/png"), "image/png", "takes audio"),
    ("text", data_uri(audio_bytes(), "audio/wav"), "audio/wav", "takes text"),
]


@pytest.mark.parametrize(("model", "value", "found", "wanted"), WRONG_MEDIA)
def test_415_wrong_modality(
    client: TestClient, model: str, value: str, found: str, wanted: str
) -> None:
    r = client.post("/embed", json={"model": model, "inputs": [value]})
    assert_error(r, 415, "input 0", found, wanted)
    assert_still_serving(client)


def test_415_multipart(client: TestClient) -> None:
    r = client.post("/embed", files={"text": (None, "Plain words.")}, data={"model": "image"})
    assert_error(r, 415, "is text", "model 'image' takes image")
    r = client.post(
        "/embed", files={"file": ("a.wav", audio_bytes(), "audio/wav")}, data={"model": "image"}
    )
    assert_error(r, 415, "audio data", "takes image")
    r = client.post(
        "/embed", files={"file": ("a.png", image_bytes(), "image/png")}, data={"model": "text"}
    )
    assert_error(r, 415, "image data", "takes text")


def test_415_unsupported_content_type(client: TestClient) -> None:
    r = client.post("/embed", content=b"hello", headers={"Content-Type": "text/plain"})
    assert_error(r, 415, "application/json", "text/plain")


# -- 422 ----------------------------------------------------------------------------

SCHEMA_ERRORS: list[tuple[Any, str]] = [
    ({"model": "text", "inputs": ["x"], "pooling": "max"}, "pooling"),
    ({"model": "text", "inputs": ["x"], "layer": "z"}, "layer"),
    ({"model": "text", "inputs": ["x"], "encoding_format": "hex"}, "encoding_format"),
    ({"model": "text", "inputs": ["x"], "normalize": "maybe"}, "normalize"),
    ({"model": "text", "inputs": []}, "inputs"),
    ({"model": "text"}, "inputs"),
    ({"model": "text", "inputs": "not a list"}, "inputs"),
    ({"model": "text", "inputs": [1, 2]}, "inputs[0]"),
    ({"model": "text", "input": ["x"]}, "input"),
    ({"modality": "video", "inputs": ["x"]}, "modality"),
    ([1, 2, 3], "body"),
]


@pytest.mark.parametrize(("body", "where"), SCHEMA_ERRORS)
def test_422_schema(client: TestClient, body: Any, where: str) -> None:
    r = client.post("/embed", json=body)
    out = assert_error(r, 422, "does not match the schema", where)
    assert isinstance(out["errors"], list) and out["errors"]


def test_422_invalid_json_and_openai_schema(client: TestClient) -> None:
    r = client.post("/embed", content=b'{"inputs": [', headers={"Content-Type": "application/json"})
    assert_error(r, 422, "not valid JSON")
    r = client.post("/v1/embeddings", json={"input": "x"})
    body = assert_error(r, 422, "model")
    assert body["error"]["message"] == body["detail"]
    r = client.post("/embed", files={"text": (None, "hi.")}, data={"pooling": "max"})
    assert_error(r, 422, "pooling")
    r = client.post("/embed", files={"text": (None, "hi.")}, data={"colour": "red"})
    assert_error(r, 422, "colour")


# -- 429 ----------------------------------------------------------------------------


def test_429_when_the_queue_is_full(make_client: MakeClient) -> None:
    c = make_client(max_queue=1)
    r = c.post("/embed", json={"model": "text", "inputs": TEXTS[:2]})
    assert_error(r, 429, "queue full", "CPC_MAX_QUEUE=1")
    assert r.headers["retry-after"] == "1"
    assert c.post("/embed", json={"model": "text", "inputs": TEXTS[:1]}).status_code == 200


# -- 500 ----------------------------------------------------------------------------


def test_500_hides_the_stack_trace(
    models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(models_dir=models_dir, data_dir=tmp_path / "data"))

    async def boom() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/boom", boom)
    with (
        caplog.at_level(logging.ERROR),
        TestClient(app, raise_server_exceptions=False) as c,
    ):
        r = c.get("/boom")
        assert r.status_code == 500 and r.json() == {"detail": "internal error"}
        assert "secret" not in r.text
        assert_still_serving(c)
        assert 'cpc_requests_total{route="/boom",status="500"}' in c.get("/metrics").text
    assert "secret internals" in caplog.text and "Traceback" in caplog.text
