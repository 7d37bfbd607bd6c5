"""The hostile requests of tests/service/test_hostile.py, as data.

`CASES` go through the test client: each is one request and the 4xx (with
words its detail must hold) it must get. `WIRE_CASES` are raw bytes for a
real server: lying Content-Length headers, a stalled body, and bytes that
only the server's HTTP parser sees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tests.service import hostile_media as hm
from tests.service.conftest import audio_bytes, b64, data_uri, image_bytes
from tests.service.live import REPO

GOOD = {"model": "text", "inputs": ["Still serving."]}
GUARDED = "guarded"
ITEMS = f"/collections/{GUARDED}/items"
JSON_HEADERS = {"content-type": "application/json"}
LEAKS = ("Traceback", 'File "', "site-packages", str(REPO))


@dataclass(frozen=True)
class Case:
    """One hostile request and the 4xx it must get; `words` must appear in the detail."""

    id: str
    method: str
    path: str
    status: int
    words: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, Any]] | None = None
    data: dict[str, str] | None = None


def post_json(id: str, path: str, status: int, words: str, body: Any) -> Case:
    return Case(id, "POST", path, status, words, json=body)


def post_raw(
    id: str, path: str, status: int, words: str, content: bytes, ctype: str = "application/json"
) -> Case:
    return Case(id, "POST", path, status, words, content=content, headers={"content-type": ctype})


def embed(id: str, model: str, value: str, status: int, words: str) -> Case:
    return post_json(id, "/embed", status, words, {"model": model, "inputs": [value]})


def upsert_file(id: str, collection: str, data: bytes, status: int, words: str) -> Case:
    files = [("file", ("x.bin", data, "application/octet-stream"))]
    return Case(
        id, "POST", f"/collections/{collection}/items", status, words, files=files, data={"id": "x"}
    )


VEC_ITEM = {"id": "x", "vector": hm.VEC}
VEC_JSON = hm.vector_json("0.5")
BIG = hm.BIG_INT

CASES: list[Case] = [
    # -- JSON nested 10,000 levels, on every route with a JSON body ------------------------
    post_raw("deep-array-embed", "/embed", 422, "recursion limit", hm.deep_array()),
    post_raw("deep-object-embed", "/embed", 422, "recursion limit", hm.deep_object()),
    post_raw("deep-array-openai", "/v1/embeddings", 422, "recursion limit", hm.deep_array()),
    post_raw("deep-object-search", "/search", 422, "recursion limit", hm.deep_object()),
    post_raw("deep-array-upsert", ITEMS, 422, "recursion limit", hm.deep_array()),
    Case(
        "deep-object-create",
        "PUT",
        "/collections/newone",
        422,
        "recursion limit",
        content=hm.deep_object(),
        headers=JSON_HEADERS,
    ),
    post_raw(
        "deep-metadata-upsert",
        ITEMS,
        422,
        "recursion limit",
        b'{"items":[{"id":"x","vector":'
        + VEC_JSON.encode()
        + b',"metadata":'
        + hm.deep_object()
        + b"}]}",
    ),
    Case(
        "deep-metadata-form",
        "POST",
        ITEMS,
        422,
        "metadata[0]",
        files=[("text", (None, "words."))],
        data={"id": "x", "metadata": hm.deep_object().decode()},
    ),
    Case(
        "deep-filter-form",
        "POST",
        "/search",
        422,
        "filter",
        files=[("text", (None, "words."))],
        data={"collection": GUARDED, "filter": hm.deep_array().decode()},
    ),
    # -- invalid and truncated JSON, invalid UTF-8 --------------------------------------------
    post_raw("truncated-json", "/embed", 422, "not valid JSON", b'{"model": "text", "inputs": ["'),
    post_raw("empty-body", ITEMS, 422, "not valid JSON", b""),
    post_raw(
        "invalid-utf8", "/embed", 422, "not valid JSON", b'{"model":"text","inputs":["a\xffb"]}'
    ),
    post_raw("overlong-utf8", ITEMS, 422, "not valid JSON", b'{"items":[{"id":"\xc0\xaf"}]}'),
    post_raw(
        "lone-surrogate", "/embed", 422, "not valid JSON", b'{"model":"text","inputs":["\\ud800"]}'
    ),
    post_raw(
        "utf16-body",
        "/search",
        422,
        "not valid JSON",
        json.dumps({"collection": GUARDED, "vector": hm.VEC}).encode("utf-16"),
    ),
    # -- numbers past every limit -------------------------------------------------------------
    post_raw(
        "k-10e1000",
        "/search",
        422,
        "CPC_MAX_K",
        hm.raw_json('{{"collection":"{c}","vector":{v},"k":{k}}}', c=GUARDED, v=VEC_JSON, k=BIG),
    ),
    post_raw(
        "k-10e5000",
        "/search",
        422,
        "number out of range",
        hm.raw_json(
            '{{"collection":"{c}","vector":{v},"k":{k}}}', c=GUARDED, v=VEC_JSON, k=hm.HUGE_INT
        ),
    ),
    post_raw(
        "k-1e400",
        "/search",
        422,
        "finite",
        hm.raw_json('{{"collection":"{c}","vector":{v},"k":1e400}}', c=GUARDED, v=VEC_JSON),
    ),
    post_json(
        "k-true",
        "/search",
        422,
        "whole number",
        {"collection": GUARDED, "vector": hm.VEC, "k": True},
    ),
    post_raw(
        "vector-1e400",
        ITEMS,
        400,
        "infinite",
        hm.raw_json('{{"items":[{{"id":"x","vector":{v}}}]}}', v=hm.vector_json("1e400")),
    ),
    post_raw(
        "vector-10e1000",
        "/search",
        400,
        "infinite",
        hm.raw_json('{{"collection":"{c}","vector":{v}}}', c=GUARDED, v=hm.vector_json(BIG)),
    ),
    post_raw(
        "vector-nan-literal",
        ITEMS,
        400,
        "NaN",
        hm.raw_json('{{"items":[{{"id":"x","vector":{v}}}]}}', v=hm.vector_json("NaN")),
    ),
    post_raw(
        "vector-infinity-literal",
        "/search",
        400,
        "infinite",
        hm.raw_json(
            '{{"collection":"{c}","vector":{v}}}', c=GUARDED, v=hm.vector_json("-Infinity")
        ),
    ),
    post_raw(
        "metadata-int-10e30",
        ITEMS,
        400,
        "64-bit",
        hm.raw_json(
            '{{"items":[{{"id":"x","vector":{v},"metadata":{{"n":{n}}}}}]}}',
            v=VEC_JSON,
            n="1" + "0" * 30,
        ),
    ),
    post_raw(
        "filter-int-10e400",
        "/search",
        400,
        "64-bit",
        hm.raw_json(
            '{{"collection":"{c}","vector":{v},"filter":{{"n":{n}}}}}',
            c=GUARDED,
            v=VEC_JSON,
            n="1" + "0" * 400,
        ),
    ),
    post_raw(
        "id-10e1000",
        ITEMS,
        422,
        "id",
        hm.raw_json('{{"items":[{{"id":{n},"vector":{v}}}]}}', n=BIG, v=VEC_JSON),
    ),
    post_raw(
        "dimensions-10e1000",
        "/v1/embeddings",
        422,
        "dimensions",
        hm.raw_json('{{"model":"text","input":"x","dimensions":{n}}}', n=BIG),
    ),
    # -- files that decode to NaN or infinity ------------------------------------------------
    embed("wav-nan", "audio", b64(hm.float_wav(float("nan"))), 400, "NaN"),
    embed("wav-inf", "audio", b64(hm.float_wav(float("inf"))), 400, "infinite"),
    upsert_file("wav-nan-upsert", "audio", hm.float_wav(float("-inf")), 400, "infinite"),
    embed("tiff-nan", "image", b64(hm.float_tiff(float("nan"))), 400, "NaN"),
    post_json(
        "tiff-inf-search",
        "/search",
        400,
        "infinite",
        {"collection": "image", "input": b64(hm.float_tiff(float("inf")))},
    ),
    # -- polyglots -----------------------------------------------------------------------------
    embed("png+wav-to-audio", "audio", b64(hm.png_wav()), 415, "image data"),
    embed("wav+png-to-image", "image", b64(hm.wav_png()), 415, "audio data"),
    embed("jpeg+zip-to-audio", "audio", b64(hm.jpeg_zip()), 415, "image data"),
    embed("zip-with-jpeg-to-image", "image", b64(hm.zip_jpeg()), 400, "not a recognised image"),
    embed("html+png-to-image", "image", b64(hm.html_png()), 400, "image"),
    Case(
        "jpeg+zip-file-to-text",
        "POST",
        "/embed",
        415,
        "image data",
        files=[("file", ("a.txt", hm.jpeg_zip(), "text/plain"))],
        data={"model": "text"},
    ),
    upsert_file("png+wav-upsert-audio", "audio", hm.png_wav(), 415, "image data"),
    # -- truncated and lying files ----------------------------------------------------------
    embed(
        "flac-truncated",
        "audio",
        b64(hm.half(audio_bytes(1.0, fmt="FLAC", subtype="PCM_16"))),
        400,
        "could not be decoded",
    ),
    embed(
        "ogg-truncated",
        "audio",
        b64(hm.half(audio_bytes(1.0, fmt="OGG", subtype="VORBIS"))),
        400,
        "could not be decoded",
    ),
    embed("jpeg-truncated", "image", b64(hm.half(image_bytes("JPEG"))), 400, "truncated"),
    embed("base64-truncated", "audio", b64(audio_bytes(0.3))[:-3], 400, "base64"),
    embed("wav-rate-0", "audio", b64(hm.wav_header(24, "<I", 0)), 400, "could not be decoded"),
    embed("wav-channels-0", "audio", b64(hm.wav_header(22, "<H", 0)), 400, "could not be decoded"),
    embed("wav-rate-1hz", "audio", b64(hm.wav_header(24, "<I", 1)), 413, "limit"),
    embed("png-claims-10g-pixels", "image", b64(hm.png_claiming(100_000, 100_000)), 413, "pixels"),
    embed(
        "data-uri-png-says-wav", "image", data_uri(audio_bytes(0.3), "image/png"), 415, "audio data"
    ),
    embed(
        "data-uri-text-says-png", "text", data_uri(image_bytes(), "text/plain"), 415, "image data"
    ),
    # -- wrong and lying content types -------------------------------------------------------
    post_raw(
        "text-plain-json-embed",
        "/embed",
        415,
        "text/plain",
        json.dumps(GOOD).encode(),
        "text/plain",
    ),
    post_raw(
        "text-plain-json-openai",
        "/v1/embeddings",
        415,
        "text/plain",
        b'{"model":"text","input":"x"}',
        "text/plain",
    ),
    Case(
        "text-plain-json-create",
        "PUT",
        "/collections/newone",
        415,
        "text/plain",
        content=b'{"model":"text"}',
        headers={"content-type": "text/plain"},
    ),
    post_raw(
        "image-png-json-upsert",
        ITEMS,
        415,
        "image/png",
        json.dumps({"items": [VEC_ITEM]}).encode(),
        "image/png",
    ),
    post_raw(
        "form-type-json-embed",
        "/embed",
        415,
        "looks like JSON",
        json.dumps(GOOD).encode(),
        "application/x-www-form-urlencoded",
    ),
    post_raw(
        "form-type-json-search",
        "/search",
        415,
        "looks like JSON",
        b'{"collection":"guarded"}',
        "application/x-www-form-urlencoded",
    ),
    post_raw(
        "multipart-no-boundary-embed",
        "/embed",
        400,
        "boundary",
        json.dumps(GOOD).encode(),
        "multipart/form-data",
    ),
    post_raw(
        "multipart-no-boundary-upsert", ITEMS, 400, "boundary", b"--x\r\n", "multipart/form-data"
    ),
    post_raw(
        "multipart-wrong-boundary",
        ITEMS,
        400,
        "multipart",
        json.dumps({"items": [VEC_ITEM]}).encode(),
        "multipart/form-data; boundary=nothere",
    ),
    post_raw(
        "json-type-multipart-body",
        "/search",
        422,
        "not valid JSON",
        b'--zz\r\nContent-Disposition: form-data; name="text"\r\n\r\nhi\r\n--zz--\r\n',
    ),
    Case(
        "content-encoding-gzip",
        "POST",
        "/embed",
        415,
        "Content-Encoding",
        content=json.dumps(GOOD).encode(),
        headers={**JSON_HEADERS, "content-encoding": "gzip"},
    ),
    Case(
        "content-length-not-a-number",
        "POST",
        ITEMS,
        400,
        "Content-Length",
        content=b"{}",
        headers={**JSON_HEADERS, "content-length": "lots"},
    ),
    Case(
        "content-length-over-limit",
        "POST",
        "/search",
        413,
        "CPC_MAX_REQUEST_BYTES",
        content=b"{}",
        headers={**JSON_HEADERS, "content-length": "99999999999"},
    ),
    Case(
        "text-part-invalid-utf8",
        "POST",
        "/embed",
        400,
        "UTF-8",
        files=[("text", ("t.txt", b"\xff\xfe\xfa", "text/plain"))],
    ),
    Case(
        "too-many-form-fields",
        "POST",
        "/embed",
        400,
        "Too many fields",
        files=[("text", (None, "x"))] * 1001,
    ),
    # -- path-like names and ids ---------------------------------------------------------------
    Case(
        "name-dotdot-slash",
        "PUT",
        "/collections/..%2F..%2Fetc",
        400,
        "invalid collection name",
        json={"model": "text"},
    ),
    Case(
        "name-dotdot",
        "PUT",
        "/collections/%2e%2e",
        400,
        "invalid collection name",
        json={"model": "text"},
    ),
    Case("name-nul", "DELETE", "/collections/guarded%00", 400, "invalid collection name"),
    Case(
        "name-traversal-upsert",
        "POST",
        "/collections/..%2Fguarded/items",
        400,
        "invalid collection name",
        json={"items": [VEC_ITEM]},
    ),
    Case("id-path-like-get", "GET", f"{ITEMS}/..%2F..%2Fetc%2Fpasswd", 404, "no item"),
    Case("id-path-like-delete", "DELETE", f"{ITEMS}/%2Fetc%2Fshadow", 404, "no item"),
    Case(
        "model-path-like-create",
        "PUT",
        "/collections/newone",
        404,
        "unknown model",
        json={"model": "../../models/text"},
    ),
    embed("model-path-like-embed", "../text", "words.", 404, "unknown model"),
    Case("model-path-like-get", "GET", "/models/..%2F..%2Fetc%2Fpasswd", 404, "no route"),
    post_json(
        "search-collection-path-like",
        "/search",
        400,
        "invalid collection name",
        {"collection": "../guarded", "vector": hm.VEC},
    ),
    # -- unknown fields ------------------------------------------------------------------------
    post_json("unknown-field-embed", "/embed", 422, "evil", {**GOOD, "evil": 1}),
    post_json(
        "unknown-field-search",
        "/search",
        422,
        "__proto__",
        {"collection": GUARDED, "vector": hm.VEC, "__proto__": {}},
    ),
    post_json("unknown-field-upsert", ITEMS, 422, "extra", {"items": [VEC_ITEM], "extra": True}),
    Case(
        "unknown-field-create",
        "PUT",
        "/collections/newone",
        422,
        "shards",
        json={"model": "text", "shards": 9},
    ),
    Case(
        "unknown-form-field-upsert",
        "POST",
        ITEMS,
        422,
        "../x",
        files=[("text", (None, "words."))],
        data={"id": "x", "../x": "y"},
    ),
    # -- limits --------------------------------------------------------------------------------
    post_json(
        "too-many-inputs", "/embed", 413, "CPC_MAX_BATCH", {"model": "text", "inputs": ["a."] * 65}
    ),
    post_json(
        "text-over-limit", "/v1/embeddings", 413, "limit", {"model": "text", "input": "a" * 100_001}
    ),
    post_json(
        "vector-over-dim-limit",
        "/search",
        413,
        "CPC_MAX_VECTOR_DIM",
        {"collection": GUARDED, "vector": [0.5] * 9000},
    ),
    post_json(
        "metadata-over-limit",
        ITEMS,
        413,
        "metadata",
        {"items": [{**VEC_ITEM, "metadata": {"b": "y" * 70_000}}]},
    ),
    post_json(
        "k-over-limit",
        "/search",
        422,
        "CPC_MAX_K",
        {"collection": GUARDED, "vector": hm.VEC, "k": 1001},
    ),
    # -- wrong methods on the probes and other routes ----------------------------------------
    Case("post-health", "POST", "/health", 405, "not allowed"),
    Case("delete-ready", "DELETE", "/ready", 405, "not allowed"),
    Case("put-metrics", "PUT", "/metrics", 405, "not allowed"),
    Case("post-models", "POST", "/models", 405, "not allowed"),
    Case(
        "patch-collection",
        "PATCH",
        f"/collections/{GUARDED}",
        405,
        "not allowed",
        json={"model": "image"},
    ),
    Case("get-embed", "GET", "/embed", 405, "not allowed"),
    Case("delete-every-collection", "DELETE", "/collections", 405, "not allowed"),
]


@dataclass(frozen=True)
class WireCase:
    """Raw bytes for a real server; `words` must appear in the (JSON or plain) answer.

    `parser_may_answer`: the server's HTTP parser may refuse the bytes after the lie (a plain
    400) before the app has answered the request it did read.
    """

    id: str
    raw: bytes
    status: int
    words: str
    parser_may_answer: bool = False


def http(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


GOOD_BODY = json.dumps(GOOD).encode()
PARSER_WORDS = "Invalid HTTP request"
POST_EMBED = "POST /embed HTTP/1.1\nHost: test\nContent-Type: application/json\n"

WIRE_CASES: list[WireCase] = [
    WireCase(
        "content-length-short",
        http(POST_EMBED + "Content-Length: 10\n", GOOD_BODY),
        422,
        "not valid JSON",
        parser_may_answer=True,
    ),
    WireCase(
        "content-length-long-stall",
        http(POST_EMBED + "Content-Length: 500\n", GOOD_BODY),
        408,
        "CPC_REQUEST_TIMEOUT_S",
    ),
    WireCase(
        "content-length-negative",
        http(POST_EMBED + "Content-Length: -5\n", GOOD_BODY),
        400,
        "Invalid HTTP request",
    ),
    WireCase(
        "content-length-twice",
        http(POST_EMBED + "Content-Length: 5\nContent-Length: 50\n", GOOD_BODY),
        400,
        "Invalid HTTP request",
    ),
    WireCase(
        "content-length-and-chunked",
        http(
            POST_EMBED + "Content-Length: 5\nTransfer-Encoding: chunked\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        400,
        "Invalid HTTP request",
    ),
    WireCase(
        "chunk-size-garbage",
        http(POST_EMBED + "Transfer-Encoding: chunked\n", b"zz\r\nhello\r\n0\r\n\r\n"),
        400,
        "Invalid HTTP request",
    ),
    WireCase(
        "header-control-character",
        http("GET /health HTTP/1.1\nHost: test\nX-Evil\x01: 1\n"),
        400,
        "Invalid HTTP request",
    ),
    WireCase(
        "tls-to-a-plain-port",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),
        400,
        "Invalid HTTP request",
    ),
]
