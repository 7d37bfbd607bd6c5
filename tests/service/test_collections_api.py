"""/collections through the real app: create, upsert (JSON and multipart), get, delete,
persistence across a restart, a collection per bundle, metrics, and bad input that
gets a clear 4xx and changes nothing. Each test runs on both collection backends
(conftest.py), but for the few that check what only the embedded one has."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import app as app_module
from service.config import Settings
from tests.service.conftest import (
    TEXTS,
    MakeClient,
    MakeSettings,
    audio_bytes,
    b64,
    open_store,
    random_vectors,
    send_json,
    started,
    unit,
)

pytestmark = pytest.mark.backends("embedded", "milvus")

DESCRIPTION_KEYS = {"name", "model", "dim", "pooling", "count", "index"}


def count(client: TestClient, name: str) -> int:
    r = client.get(f"/collections/{name}")
    assert r.status_code == 200, r.text
    return int(r.json()["count"])


def embed_one(client: TestClient, model: str, value: str) -> np.ndarray:
    r = client.post("/embed", json={"model": model, "inputs": [value]})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"][0], dtype=np.float32)


# -- collections ------------------------------------------------------------------


def test_a_collection_per_bundle_on_start(make_client: MakeClient) -> None:
    c = make_client()
    assert c.get("/ready").status_code == 200
    listed = c.get("/collections").json()["collections"]
    assert [d["name"] for d in listed] == ["audio", "image", "text"]
    for d in listed:
        assert d == {
            "name": d["name"],
            "model": d["name"],
            "dim": 16,
            "pooling": "mean",
            "count": 0,
            "index": "flat",
        }


def test_create_describe_list_and_delete(client: TestClient) -> None:
    r = client.put("/collections/notes", json={"model": "text"})
    assert r.status_code == 201
    made = r.json()
    assert made == {
        "name": "notes",
        "model": "text",
        "dim": 16,
        "pooling": "mean",
        "count": 0,
        "index": "flat",
    }
    assert client.get("/collections/notes").json() == made
    assert made in client.get("/collections").json()["collections"]
    r = client.put("/collections/notes", json={"model": "audio"})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    assert client.delete("/collections/notes").json() == {"deleted": "notes"}
    r = client.get("/collections/notes")
    assert r.status_code == 404 and "notes" in r.json()["detail"]
    assert client.delete("/collections/notes").status_code == 404
    assert "notes" not in [d["name"] for d in client.get("/collections").json()["collections"]]


def test_create_an_ivf_collection(client: TestClient) -> None:
    r = client.put("/collections/approx", json={"model": "image", "index": "ivf"})
    assert r.status_code == 201 and r.json()["index"] == "ivf"
    vectors = random_vectors(5, seed=3)
    items = [{"id": f"i{n}", "vector": v} for n, v in enumerate(vectors)]
    assert client.post("/collections/approx/items", json={"items": items}).status_code == 200
    r = client.post("/search", json={"collection": "approx", "vector": vectors[2], "k": 2})
    assert r.json()["results"][0]["id"] == "i2"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"model": "nope"}, 404, "unknown model"),
        ({"model": "text", "index": "hnsw"}, 422, "index"),
        ({}, 422, "model"),
        ({"model": "text", "dims": 3}, 422, "dims"),
        ({"model": "text", "pooling": "none"}, 422, "one vector per item"),
        ({"model": "text", "pooling": "max"}, 422, "'stats'"),
    ],
    ids=[
        "unknown-model",
        "unknown-index",
        "no-model",
        "unknown-field",
        "pooling-none",
        "unknown-pooling",
    ],
)
def test_create_refuses_bad_bodies(
    client: TestClient, body: dict[str, Any], status: int, words: str
) -> None:
    r = client.put("/collections/refused", json=body)
    assert r.status_code == status and words in r.json()["detail"]
    assert client.get("/collections/refused").status_code == 404


# -- items --------------------------------------------------------------------------


def test_upsert_get_replace_and_delete_by_json(client: TestClient) -> None:
    client.put("/collections/docs", json={"model": "text"})
    vector = random_vectors(1, seed=1)[0]
    items = [
        {"id": "t1", "input": TEXTS[0], "metadata": {"lang": "en", "n": 1}},
        {"id": "dir/v1", "vector": vector, "metadata": {"nested": {"a": [1, 2.5, None]}}},
        {"id": "bare", "input": TEXTS[1]},
    ]
    r = client.post("/collections/docs/items", json={"items": items})
    assert r.status_code == 200
    assert r.json() == {"upserted": 3, "ids": ["t1", "dir/v1", "bare"]}
    assert count(client, "docs") == 3

    got = client.get("/collections/docs/items/t1").json()
    assert got["id"] == "t1" and got["metadata"] == {"lang": "en", "n": 1}
    assert np.allclose(got["vector"], embed_one(client, "text", TEXTS[0]), atol=1e-6)
    got = client.get("/collections/docs/items/dir/v1").json()
    assert got["id"] == "dir/v1" and got["metadata"] == {"nested": {"a": [1, 2.5, None]}}
    assert np.allclose(got["vector"], unit(vector), atol=1e-6)
    assert client.get("/collections/docs/items/bare").json()["metadata"] == {}

    replaced = {"id": "t1", "input": TEXTS[2], "metadata": {"lang": "fr"}}
    assert client.post("/collections/docs/items", json={"items": [replaced]}).status_code == 200
    got = client.get("/collections/docs/items/t1").json()
    assert got["metadata"] == {"lang": "fr"}
    assert np.allclose(got["vector"], embed_one(client, "text", TEXTS[2]), atol=1e-6)
    assert count(client, "docs") == 3

    assert client.delete("/collections/docs/items/dir/v1").json() == {"deleted": 1}
    r = client.get("/collections/docs/items/dir/v1")
    assert r.status_code == 404 and "dir/v1" in r.json()["detail"]
    assert client.delete("/collections/docs/items/dir/v1").status_code == 404
    assert count(client, "docs") == 2


def test_upsert_by_multipart(client: TestClient) -> None:
    client.put("/collections/clips", json={"model": "audio"})
    low, high = audio_bytes(0.5, freq=220.0), audio_bytes(0.6, freq=880.0)
    r = client.post(
        "/collections/clips/items",
        files=[("file", ("low.wav", low, "audio/wav")), ("file", ("high.wav", high, "audio/wav"))],
        data={"id": ["a/low.wav", "a/high.wav"], "metadata": ['{"hz": 220}', '{"hz": 880}']},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"upserted": 2, "ids": ["a/low.wav", "a/high.wav"]}
    got = client.get("/collections/clips/items/a/high.wav").json()
    assert got["metadata"] == {"hz": 880}
    assert np.allclose(got["vector"], embed_one(client, "audio", b64(high)), atol=1e-6)

    client.put("/collections/memos", json={"model": "text"})
    r = client.post(
        "/collections/memos/items",
        files=[("text", (None, TEXTS[0])), ("text", (None, TEXTS[1]))],
        data={"id": ["m1", "m2"]},
    )
    assert r.status_code == 200 and r.json()["ids"] == ["m1", "m2"]
    got = client.get("/collections/memos/items/m2").json()
    assert got["metadata"] == {}
    assert np.allclose(got["vector"], embed_one(client, "text", TEXTS[1]), atol=1e-6)


@pytest.mark.parametrize(("pooling", "dim"), [("stats", 32), ("last", 16)])
def test_a_collection_embeds_and_searches_with_its_pooling(
    client: TestClient, pooling: str, dim: int
) -> None:
    name = f"voices-{pooling}"
    r = client.put(f"/collections/{name}", json={"model": "audio", "pooling": pooling})
    assert r.status_code == 201, r.text
    assert r.json()["dim"] == dim and r.json()["pooling"] == pooling
    clips = {f"c{i}": audio_bytes(0.3 + 0.25 * i, freq=200.0 + 350 * i) for i in range(4)}
    items = [{"id": key, "input": b64(data)} for key, data in list(clips.items())[:3]]
    assert client.post(f"/collections/{name}/items", json={"items": items}).status_code == 200
    r = client.post(
        f"/collections/{name}/items",
        files={"file": ("c3.wav", clips["c3"], "audio/wav")},
        data={"id": "c3"},
    )
    assert r.status_code == 200, r.text
    for key, data in clips.items():
        got = client.get(f"/collections/{name}/items/{key}").json()["vector"]
        r = client.post(
            "/embed", json={"model": "audio", "inputs": [b64(data)], "pooling": pooling}
        )
        assert r.json()["dim"] == dim
        np.testing.assert_allclose(got, r.json()["embeddings"][0], atol=1e-6)
        r = client.post("/search", json={"collection": name, "input": b64(data), "k": 4})
        assert r.status_code == 200, r.text
        best = r.json()["results"][0]
        assert best["id"] == key and best["score"] > 0.9999
    r = client.post(
        "/search", files={"file": ("q.wav", clips["c1"], "audio/wav")}, data={"collection": name}
    )
    assert r.status_code == 200 and r.json()["results"][0]["id"] == "c1"
    r = client.post("/search", json={"collection": name, "vector": random_vectors(1, dim + 1)[0]})
    assert r.status_code == 409 and f"dim {dim}" in r.json()["detail"]


def test_a_collection_keeps_its_pooling_across_a_restart(make_settings: MakeSettings) -> None:
    clip = b64(audio_bytes(0.8, freq=500.0))
    with started(make_settings()) as c:
        c.put("/collections/spread", json={"model": "audio", "pooling": "stats"})
        c.post("/collections/spread/items", json={"items": [{"id": "x", "input": clip}]})
    with started(make_settings()) as c:
        described = c.get("/collections/spread").json()
        assert (described["pooling"], described["dim"], described["count"]) == ("stats", 32, 1)
        more = {"items": [{"id": "y", "input": b64(audio_bytes(0.4, freq=1200.0))}]}
        assert c.post("/collections/spread/items", json=more).status_code == 200
        r = c.post("/search", json={"collection": "spread", "input": clip, "k": 2})
        assert [h["id"] for h in r.json()["results"]] == ["x", "y"]


@pytest.mark.parametrize(
    ("data", "parts", "status", "words"),
    [
        ({"id": ["only-one"]}, 2, 422, "1 `id` fields for 2"),
        ({"id": ["a", "b"], "metadata": ['{"x": 1}']}, 2, 422, "1 `metadata` fields for 2"),
        ({"id": ["a"], "metadata": ["{not json"]}, 1, 422, "not valid JSON"),
        ({"id": ["a"], "metadata": ["[1, 2]"]}, 1, 422, "JSON object"),
        ({"id": ["a"], "colour": ["red"]}, 1, 422, "unexpected form field"),
        ({"id": ["a"]}, 0, 400, "no items"),
    ],
    ids=["ids", "metadata-count", "metadata-json", "metadata-list", "unknown-field", "no-parts"],
)
def test_bad_multipart_upserts_write_nothing(
    client: TestClient, data: dict[str, Any], parts: int, status: int, words: str
) -> None:
    client.put("/collections/forms", json={"model": "text"})
    files = [("text", (None, TEXTS[i])) for i in range(parts)] or None  # None: url-encoded
    r = client.post("/collections/forms/items", files=files, data=data)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert count(client, "forms") == 0


def test_a_batch_is_written_whole_or_not_at_all(client: TestClient) -> None:
    client.put("/collections/atomic", json={"model": "audio"})
    items = [
        {"id": "good", "input": b64(audio_bytes(0.5))},
        {"id": "bad", "input": "this is not base64 audio!"},
    ]
    r = client.post("/collections/atomic/items", json={"items": items})
    assert r.status_code in (400, 415)
    assert "items[1].input" in r.json()["detail"]
    assert count(client, "atomic") == 0
    assert client.get("/collections/atomic/items/good").status_code == 404

    items = [{"id": "v", "vector": random_vectors(1)[0]}, {"id": "w", "vector": [1.0, 2.0]}]
    r = client.post("/collections/atomic/items", json={"items": items})
    assert r.status_code == 409 and "items[1]" in r.json()["detail"]
    assert "dim 16" in r.json()["detail"]
    assert count(client, "atomic") == 0


def test_batch_limit(make_client: MakeClient) -> None:
    c = make_client(max_batch=2)
    items = [{"id": str(i), "vector": v} for i, v in enumerate(random_vectors(3))]
    r = c.post("/collections/audio/items", json={"items": items})
    assert r.status_code == 413 and "CPC_MAX_BATCH" in r.json()["detail"]
    assert count(c, "audio") == 0
    assert c.post("/collections/audio/items", json={"items": items[:2]}).status_code == 200


def test_unknown_collection_and_item(client: TestClient) -> None:
    items = [{"id": "x", "vector": random_vectors(1)[0]}]
    for r in (
        client.post("/collections/ghost/items", json={"items": items}),
        client.get("/collections/ghost/items/x"),
        client.delete("/collections/ghost/items/x"),
        client.get("/collections/ghost"),
        client.delete("/collections/ghost"),
    ):
        assert r.status_code == 404 and "ghost" in r.json()["detail"]
    r = client.get("/collections/text/items/never-stored")
    assert r.status_code == 404 and "never-stored" in r.json()["detail"]


def test_collection_item_metrics(client: TestClient) -> None:
    assert client.put("/collections/gauged", json={"model": "image"}).status_code == 201
    assert 'cpc_collection_items{collection="gauged"} 0.0' in client.get("/metrics").text
    items = [{"id": str(i), "vector": v} for i, v in enumerate(random_vectors(3, seed=5))]
    assert client.post("/collections/gauged/items", json={"items": items}).status_code == 200
    assert client.delete("/collections/gauged/items/1").status_code == 200
    client.delete("/collections/gauged")
    assert 'collection="gauged"' not in client.get("/metrics").text
    assert 'cpc_collection_items{collection="audio"}' in client.get("/metrics").text


@pytest.mark.backends(
    "embedded",
    reason="only an embedded count is cheap (SQLite) enough to follow every write; a Milvus "
    "count is a Strong query, so the gauge follows Milvus every COUNT_INTERVAL_S (15 s) and "
    "at start-up (test_items_survive_a_restart checks that)",
)
def test_the_items_gauge_follows_every_write(client: TestClient) -> None:
    client.put("/collections/followed", json={"model": "image"})
    items = [{"id": str(i), "vector": v} for i, v in enumerate(random_vectors(3, seed=5))]
    client.post("/collections/followed/items", json={"items": items})
    assert 'cpc_collection_items{collection="followed"} 3.0' in client.get("/metrics").text
    client.delete("/collections/followed/items/1")
    assert 'cpc_collection_items{collection="followed"} 2.0' in client.get("/metrics").text


@pytest.mark.backends("milvus", reason="the embedded gauge follows each write (the test above)")
def test_the_items_gauge_follows_milvus_periodically(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "COUNT_INTERVAL_S", 0.1)
    c = make_client()

    def soon_shows(line: str) -> bool:
        deadline = time.monotonic() + 10
        while line not in c.get("/metrics").text and time.monotonic() < deadline:
            time.sleep(0.05)
        return line in c.get("/metrics").text

    items = [{"id": str(i), "vector": v} for i, v in enumerate(random_vectors(3, seed=5))]
    assert c.post("/collections/image/items", json={"items": items}).status_code == 200
    assert soon_shows('cpc_collection_items{collection="image"} 3.0')
    assert c.delete("/collections/image/items/1").status_code == 200
    assert soon_shows('cpc_collection_items{collection="image"} 2.0')


# -- persistence ----------------------------------------------------------------------


def test_items_survive_a_restart(make_settings: MakeSettings) -> None:
    vectors = random_vectors(4, seed=9)
    items = [{"id": f"p{i}", "vector": v, "metadata": {"i": i}} for i, v in enumerate(vectors)]
    with started(make_settings()) as c:
        assert (
            c.put("/collections/kept", json={"model": "audio", "index": "ivf"}).status_code == 201
        )
        c.post("/collections/kept/items", json={"items": items})
        c.post("/collections/text/items", json={"items": [{"id": "doc", "input": TEXTS[0]}]})
        c.delete("/collections/kept/items/p3")
    with started(make_settings()) as c:
        assert c.get("/ready").status_code == 200
        assert c.get("/collections/kept").json() == {
            "name": "kept",
            "model": "audio",
            "dim": 16,
            "pooling": "mean",
            "count": 3,
            "index": "ivf",
        }
        for i in range(3):
            got = c.get(f"/collections/kept/items/p{i}").json()
            assert got["metadata"] == {"i": i}
            assert np.allclose(got["vector"], unit(vectors[i]), atol=1e-6)
        assert c.get("/collections/kept/items/p3").status_code == 404
        r = c.post("/search", json={"collection": "kept", "vector": vectors[1], "k": 3})
        assert next(h["id"] for h in r.json()["results"]) == "p1"
        assert count(c, "text") == 1
        assert 'cpc_collection_items{collection="kept"} 3.0' in c.get("/metrics").text


def test_a_model_whose_dim_changed_does_not_stop_the_start(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    store = open_store(settings)
    store.create("audio", "audio", 8)
    store.close_all()
    with caplog.at_level(logging.ERROR), started(settings) as c:
        assert c.get("/ready").status_code == 200
        assert c.get("/collections/audio").json()["dim"] == 8
        assert c.get("/collections/text").json()["dim"] == 16
    assert any("'audio'" in r.getMessage() and "dim" in r.getMessage() for r in caplog.records)


# -- bad input changes nothing ------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel(client: TestClient) -> Iterator[dict[str, Any]]:
    """A collection with one item that bad requests must leave as it is."""
    client.put("/collections/guarded", json={"model": "text"})
    item = {"id": "keep", "vector": random_vectors(1, seed=4)[0], "metadata": {"k": "v"}}
    assert client.post("/collections/guarded/items", json={"items": [item]}).status_code == 200
    yield client.get("/collections/guarded/items/keep").json()


def assert_unchanged(client: TestClient, sentinel: dict[str, Any]) -> None:
    assert count(client, "guarded") == 1
    assert client.get("/collections/guarded/items/keep").json() == sentinel


TEN_K = "x" * 10_000
FIVE_MB = {"blob": "y" * 5_000_000}
VEC = [0.5] * 16


@pytest.mark.parametrize(
    ("item", "status", "words"),
    [
        ({"id": "n", "vector": [float("nan"), *VEC[1:]]}, 400, "NaN"),
        ({"id": "n", "vector": [float("inf"), *VEC[1:]]}, 400, "infinite"),
        ({"id": "n", "vector": VEC[:15]}, 409, "dim 16"),
        ({"id": "n", "vector": [*VEC, 0.5]}, 409, "dim 16"),
        ({"id": "n", "vector": [0.5] * 9000}, 413, "CPC_MAX_VECTOR_DIM"),
        ({"id": "n", "vector": [0.0] * 16}, 400, "zeros"),
        ({"id": "n", "vector": ["1"] * 16}, 422, "vector"),
        ({"id": "n", "vector": [True] * 16}, 422, "vector"),
        ({"id": "n", "vector": []}, 400, "non-empty"),
        ({"id": "n", "vector": VEC, "input": "both"}, 422, "exactly one"),
        ({"id": "n"}, 422, "exactly one"),
        ({"id": "a\x00b", "vector": VEC}, 400, "control character"),
        ({"id": "a\nb", "vector": VEC}, 400, "control character"),
        ({"id": TEN_K, "vector": VEC}, 400, "256"),
        ({"id": "", "vector": VEC}, 400, "256"),
        ({"id": 5, "vector": VEC}, 422, "id"),
        ({"id": "n", "vector": VEC, "metadata": [1, 2]}, 422, "metadata"),
        ({"id": "n", "vector": VEC, "metadata": "text"}, 422, "metadata"),
        ({"id": "n", "vector": VEC, "metadata": FIVE_MB}, 413, "metadata"),
        ({"id": "n", "vector": VEC, "metadata": {"x": float("nan")}}, 400, "metadata"),
        ({"id": "n", "vector": VEC, "extra": 1}, 422, "extra"),
    ],
    ids=[
        "nan",
        "inf",
        "short",
        "long",
        "huge",
        "zero",
        "strings",
        "booleans",
        "empty",
        "input-and-vector",
        "neither",
        "id-nul",
        "id-newline",
        "id-10k",
        "id-empty",
        "id-number",
        "metadata-list",
        "metadata-str",
        "metadata-5mb",
        "metadata-nan",
        "unknown-field",
    ],
)
def test_bad_items_are_refused_and_change_nothing(
    client: TestClient, sentinel: dict[str, Any], item: dict[str, Any], status: int, words: str
) -> None:
    good = {"id": "fine", "vector": VEC}
    r = send_json(client, "POST", "/collections/guarded/items", {"items": [good, item]})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail
    assert len(detail) < 2000  # says what was wrong without echoing megabytes
    assert_unchanged(client, sentinel)
    assert client.get("/collections/guarded/items/fine").status_code == 404


@pytest.mark.parametrize(
    "body",
    [{"items": []}, {"items": "x"}, {}, [], "null"],
    ids=["no-items", "items-str", "empty", "list", "null"],
)
def test_bad_upsert_bodies(client: TestClient, sentinel: dict[str, Any], body: Any) -> None:
    r = send_json(client, "POST", "/collections/guarded/items", body)
    assert r.status_code == 422 and r.json()["detail"]
    r = client.post("/collections/guarded/items", content=b"{not json")
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    assert_unchanged(client, sentinel)


BAD_NAMES = ["a/b", "..", "a..b", "a\x00b", "Upper", "-lead", "x" * 10_000, "a b"]
BAD_NAME_IDS = ["slash", "dotdot", "dots", "nul", "upper", "dash", "10k", "space"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=BAD_NAME_IDS)
def test_bad_collection_names(client: TestClient, sentinel: dict[str, Any], name: str) -> None:
    quoted = "".join(ch if ch.isalnum() else f"%{ord(ch):02X}" for ch in name)
    before = client.get("/collections").json()
    item = {"items": [{"id": "z", "vector": VEC}]}
    for r in (
        client.put(f"/collections/{quoted}", json={"model": "text"}),
        client.get(f"/collections/{quoted}"),
        client.delete(f"/collections/{quoted}"),
        client.post(f"/collections/{quoted}/items", json=item),
        client.get(f"/collections/{quoted}/items/z"),
    ):
        assert 400 <= r.status_code < 500, (r.request.url, r.status_code)
        assert r.json()["detail"]
    r = client.put(f"/collections/{quoted}", json={"model": "text"})
    assert r.status_code == 400 and "invalid collection name" in r.json()["detail"]
    assert client.get("/collections").json() == before
    assert_unchanged(client, sentinel)


@pytest.mark.parametrize(
    ("path", "words"),
    [("a%00b", "control character"), ("a%0Ab", "control character"), ("x" * 10_000, "256")],
    ids=["nul", "newline", "10k"],
)
def test_bad_ids_in_paths(
    client: TestClient, sentinel: dict[str, Any], path: str, words: str
) -> None:
    for r in (
        client.get(f"/collections/guarded/items/{path}"),
        client.delete(f"/collections/guarded/items/{path}"),
    ):
        assert r.status_code == 400 and words in r.json()["detail"]
    assert_unchanged(client, sentinel)


def test_a_collection_of_a_model_that_is_not_loaded(make_settings: MakeSettings) -> None:
    settings = make_settings()
    store = open_store(settings)
    store.create("legacy", "retired-model", 16)
    store.close_all()
    with started(settings) as c:
        assert c.get("/collections/legacy").json()["model"] == "retired-model"
        r = c.post("/collections/legacy/items", json={"items": [{"id": "t", "input": "Hi."}]})
        assert r.status_code == 404 and "not loaded" in r.json()["detail"]
        items = [{"id": "v", "vector": VEC}]
        assert c.post("/collections/legacy/items", json={"items": items}).status_code == 200
        r = c.post("/search", json={"collection": "legacy", "input": "Hi."})
        assert r.status_code == 404 and "send vectors instead" in r.json()["detail"]
        r = c.post("/search", json={"collection": "legacy", "vector": VEC})
        assert [h["id"] for h in r.json()["results"]] == ["v"]


@pytest.mark.backends(
    "embedded", reason="FAISS index snapshots in the data folder: Milvus has none"
)
def test_snapshots_are_written_periodically_and_on_shutdown(make_settings: MakeSettings) -> None:
    settings = make_settings(snapshot_interval_s=0.05)
    snapshot = settings.data_dir / "collections" / "text" / "index.faiss"
    items = [{"id": "s", "vector": VEC}]
    with started(settings) as c:
        c.post("/collections/text/items", json={"items": items})
        deadline = time.monotonic() + 10
        while not snapshot.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert snapshot.exists()
    written = snapshot.stat().st_mtime_ns
    with started(make_settings(snapshot_interval_s=0)) as c:
        c.delete("/collections/text/items/s")
    assert snapshot.stat().st_mtime_ns != written  # closing wrote the changed index


def test_openapi_documents_collections_and_search(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    upsert = paths["/collections/{name}/items"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(upsert)
    assert "put" in paths["/collections/{name}"] and "delete" in paths["/collections/{name}"]
    assert "get" in paths["/collections/{name}/items/{item_id}"]
    search = paths["/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(search)


def test_a_trailing_slash_lists_the_collections(client: TestClient) -> None:
    r = client.get("/collections/")
    assert r.status_code == 200 and "collections" in r.json()


def test_collection_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("CPC_MAX_METADATA_BYTES", "CPC_SNAPSHOT_INTERVAL_S", "CPC_MAX_VECTOR_DIM"):
        monkeypatch.delenv(key, raising=False)
    s = Settings()
    assert (s.max_metadata_bytes, s.snapshot_interval_s, s.max_vector_dim) == (65536, 300, 8192)
    monkeypatch.setenv("CPC_MAX_METADATA_BYTES", "10")
    assert Settings().max_metadata_bytes == 10


def test_metadata_limit_follows_the_setting(make_client: MakeClient) -> None:
    c = make_client(max_metadata_bytes=20)
    items = [{"id": "m", "vector": VEC, "metadata": {"long": "z" * 30}}]
    r = c.post("/collections/audio/items", json={"items": items})
    assert r.status_code == 413 and "limit is 20" in r.json()["detail"]
    items[0]["metadata"] = {"ok": 1}
    assert c.post("/collections/audio/items", json={"items": items}).status_code == 200


# -- the 2-D map (PCA) ----------------------------------------------------------------


def pca_reference(vectors: np.ndarray) -> np.ndarray:
    """Coordinates on the two leading principal axes, up to each axis's sign."""
    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def vector_param(vector: np.ndarray) -> str:
    return b64(np.asarray(vector, dtype="<f4").tobytes())


def test_the_map_is_a_pca_of_the_items(client: TestClient) -> None:
    client.put("/collections/mapped", json={"model": "text"})
    rng = np.random.default_rng(7)
    # three clusters along two directions, so the first two axes hold most of the variance
    centres = rng.standard_normal((3, 16)) * 3
    vectors = np.concatenate([c + 0.1 * rng.standard_normal((10, 16)) for c in centres])
    items = [
        {"id": f"p{i}", "vector": v.tolist(), "metadata": {"i": i}} for i, v in enumerate(vectors)
    ]
    assert client.post("/collections/mapped/items", json={"items": items}).status_code == 200

    r = client.get("/collections/mapped/map")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["collection"] == "mapped" and body["count"] == body["sampled"] == 30
    assert [p["id"] for p in body["points"]] == [f"p{i}" for i in range(30)]
    assert body["points"][4]["metadata"] == {"i": 4}
    got = np.array([[p["x"], p["y"]] for p in body["points"]])
    want = pca_reference(np.stack([unit(v) for v in vectors]).astype(np.float64))
    for axis in range(2):  # equal up to the sign of each axis
        sign = np.sign(got[:, axis] @ want[:, axis])
        np.testing.assert_allclose(got[:, axis], sign * want[:, axis], atol=1e-4)
    assert 0.8 < sum(body["explained_variance"]) <= 1.0 + 1e-6
    components = np.array(body["components"])
    np.testing.assert_allclose(np.linalg.norm(components, axis=1), [1, 1], atol=1e-5)
    assert "query" not in body

    # a query vector lands where the same vector as an item does
    r = client.get("/collections/mapped/map", params={"vector": vector_param(vectors[5] * 4)})
    query = r.json()["query"]
    assert query["x"] == pytest.approx(got[5, 0], abs=1e-4)
    assert query["y"] == pytest.approx(got[5, 1], abs=1e-4)
    assert r.json()["points"] == body["points"]  # the same picture each time


def test_the_map_samples_evenly_up_to_the_limit(make_client: MakeClient) -> None:
    c = make_client(max_map_points=8)
    items = [{"id": f"i{n:02d}", "vector": v} for n, v in enumerate(random_vectors(20, seed=2))]
    assert c.post("/collections/text/items", json={"items": items}).status_code == 200
    body = c.get("/collections/text/map", params={"limit": 5}).json()
    assert body["count"] == 20 and body["sampled"] == 5
    assert [p["id"] for p in body["points"]] == ["i00", "i05", "i10", "i14", "i19"]
    assert c.get("/collections/text/map", params={"limit": 8}).json()["sampled"] == 8
    r = c.get("/collections/text/map", params={"limit": 9})
    assert r.status_code == 422 and "CPC_MAX_MAP_POINTS" in r.json()["detail"]
    assert c.get("/collections/text/map", params={"limit": 0}).status_code == 422
    assert c.get("/collections/text/map", params={"limit": "many"}).status_code == 422


def test_the_map_of_an_empty_or_tiny_collection(client: TestClient) -> None:
    client.put("/collections/lonely", json={"model": "text"})
    query = vector_param(np.ones(16))
    body = client.get("/collections/lonely/map", params={"vector": query}).json()
    assert body["points"] == [] and body["count"] == 0 and body["query"] == {"x": 0, "y": 0}
    one = {"items": [{"id": "only", "vector": random_vectors(1)[0]}]}
    client.post("/collections/lonely/items", json=one)
    body = client.get("/collections/lonely/map").json()
    assert body["points"] == [{"id": "only", "x": 0.0, "y": 0.0, "metadata": {}}]
    assert body["explained_variance"] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("vector", "status", "words"),
    [
        ("not base64!", 400, "base64"),
        (b64(b"\x00\x00\x80"), 400, "float32"),
        (vector_param(np.ones(5)), 409, "dim 16"),
        (vector_param(np.zeros(16)), 400, "all zeros"),
        (vector_param(np.full(16, np.nan)), 400, "NaN"),
        ("A" * 50_000, 413, "CPC_MAX_VECTOR_DIM"),
    ],
    ids=["not-base64", "not-float32", "wrong-dim", "zeros", "nan", "too-long"],
)
def test_bad_map_queries(client: TestClient, vector: str, status: int, words: str) -> None:
    r = client.get("/collections/text/map", params={"vector": vector})
    assert r.status_code == status and words in r.json()["detail"], r.text


def test_the_map_of_an_unknown_collection(client: TestClient) -> None:
    assert client.get("/collections/nowhere/map").status_code == 404
    assert client.get("/collections/Bad!/map").status_code == 400
