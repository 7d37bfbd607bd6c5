"""POST /search through the real app: by vector and by input (JSON and multipart),
ranking against brute force, filters, k limits, and bad queries that get a clear 4xx;
on both collection backends (conftest.py)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import (
    TEXTS,
    MakeClient,
    audio_bytes,
    b64,
    random_vectors,
    send_json,
    unit,
)

pytestmark = pytest.mark.backends("embedded", "milvus")

N = 30
VECTORS = random_vectors(N, seed=11)
GROUPS = ("a", "b", "c")


def metadata_of(i: int) -> dict[str, Any]:
    return {"group": GROUPS[i % 3], "n": i, "even": i % 2 == 0, "tags": ["x", i % 2]}


@pytest.fixture(scope="module")
def searchable(client: TestClient) -> TestClient:
    """Collection "vecs" (image model, by vector), "docs" (text, by input)."""
    client.put("/collections/vecs", json={"model": "image"})
    items = [
        {"id": f"v{i}", "vector": v, "metadata": metadata_of(i)} for i, v in enumerate(VECTORS)
    ]
    assert client.post("/collections/vecs/items", json={"items": items}).status_code == 200
    client.put("/collections/docs", json={"model": "text"})
    docs = [{"id": f"d{i}", "input": t, "metadata": {"i": i}} for i, t in enumerate(TEXTS)]
    assert client.post("/collections/docs/items", json={"items": docs}).status_code == 200
    return client


def brute_force(query: list[float], ids: list[int]) -> list[tuple[str, float]]:
    q = unit(query)
    scored = [(f"v{i}", float(unit(VECTORS[i]) @ q)) for i in ids]
    return sorted(scored, key=lambda pair: -pair[1])


def test_search_by_vector_ranks_like_brute_force(searchable: TestClient) -> None:
    query = random_vectors(1, seed=99)[0]
    r = searchable.post("/search", json={"collection": "vecs", "vector": query, "k": 7})
    assert r.status_code == 200
    body = r.json()
    assert body["collection"] == "vecs" and len(body["results"]) == 7
    expected = brute_force(query, list(range(N)))[:7]
    assert [h["id"] for h in body["results"]] == [i for i, _ in expected]
    assert np.allclose([h["score"] for h in body["results"]], [s for _, s in expected], atol=1e-5)
    top = body["results"][0]
    assert top["metadata"] == metadata_of(int(top["id"][1:]))


def test_each_vector_finds_itself_first(searchable: TestClient) -> None:
    for i in (0, 13, 29):
        scaled = [3.0 * x for x in VECTORS[i]]  # queries are normalised too
        r = searchable.post("/search", json={"collection": "vecs", "vector": scaled, "k": 1})
        (hit,) = r.json()["results"]
        assert hit["id"] == f"v{i}" and hit["score"] == pytest.approx(1.0, abs=1e-5)


def test_default_k_and_k_over_the_count(searchable: TestClient) -> None:
    r = searchable.post("/search", json={"collection": "vecs", "vector": VECTORS[0]})
    assert len(r.json()["results"]) == 10
    r = searchable.post("/search", json={"collection": "vecs", "vector": VECTORS[0], "k": 1000})
    assert len(r.json()["results"]) == N


@pytest.mark.parametrize(
    ("where", "matches"),
    [
        ({"group": "b"}, [i for i in range(N) if i % 3 == 1]),
        ({"group": "a", "even": True}, [i for i in range(N) if i % 3 == 0 and i % 2 == 0]),
        ({"n": 4}, [4]),
        ({"n": 4.0}, [4]),
        ({"even": 1}, []),
        ({"tags": ["x", 1]}, [i for i in range(N) if i % 2 == 1]),
        ({"group": "zzz"}, []),
        ({"missing": None}, []),
        ({}, list(range(N))),
    ],
    ids=["str", "two-keys", "int", "int-as-float", "bool-is-not-int", "list", "none", "null", "{}"],
)
def test_filters_never_drop_a_match(
    searchable: TestClient, where: dict[str, Any], matches: list[int]
) -> None:
    query = random_vectors(1, seed=5)[0]
    body = {"collection": "vecs", "vector": query, "k": 1000, "filter": where}
    results = searchable.post("/search", json=body).json()["results"]
    assert [h["id"] for h in results] == [i for i, _ in brute_force(query, matches)]
    body["k"] = 2
    results = searchable.post("/search", json=body).json()["results"]
    assert [h["id"] for h in results] == [i for i, _ in brute_force(query, matches)[:2]]


def test_search_by_text_input(searchable: TestClient) -> None:
    r = searchable.post("/search", json={"collection": "docs", "input": TEXTS[1], "k": 3})
    results = r.json()["results"]
    assert results[0]["id"] == "d1" and results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert results[0]["metadata"] == {"i": 1}
    assert [h["score"] for h in results] == sorted((h["score"] for h in results), reverse=True)


def test_search_by_multipart(client: TestClient) -> None:
    client.put("/collections/sounds", json={"model": "audio"})
    clips = {f"{hz}.wav": audio_bytes(0.5, freq=float(hz)) for hz in (200, 700, 2500)}
    items = [
        {"id": name, "input": b64(data), "metadata": {"hz": int(name[:-4])}}
        for name, data in clips.items()
    ]
    assert client.post("/collections/sounds/items", json={"items": items}).status_code == 200
    r = client.post(
        "/search",
        files={"file": ("q.wav", clips["700.wav"], "audio/wav")},
        data={"collection": "sounds", "k": "2"},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2 and results[0]["id"] == "700.wav"
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    r = client.post(
        "/search",
        files={"file": ("q.wav", clips["700.wav"], "audio/wav")},
        data={"collection": "sounds", "filter": json.dumps({"hz": 2500})},
    )
    assert [h["id"] for h in r.json()["results"]] == ["2500.wav"]
    r = client.post(
        "/search", files=[("text", (None, TEXTS[0]))], data={"collection": "text", "k": "1"}
    )
    assert r.status_code == 200 and r.json() == {"collection": "text", "results": []}


# -- bad queries ----------------------------------------------------------------------------

VEC = [0.25] * 16


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"k": 0}, 422, "k must be from 1 to 1000"),
        ({"k": -3}, 422, "k must be from 1 to 1000"),
        ({"k": 1001}, 422, "CPC_MAX_K"),
        ({"k": 10**9}, 422, "CPC_MAX_K"),
        ({"k": 2.5}, 422, "k"),
        ({"k": "many"}, 422, "k"),
        ({"vector": [float("nan")] * 16}, 400, "NaN"),
        ({"vector": [float("-inf"), *VEC[1:]]}, 400, "infinite"),
        ({"vector": VEC[:3]}, 409, "dim 16"),
        ({"vector": [0.1] * 9000}, 413, "CPC_MAX_VECTOR_DIM"),
        ({"vector": VEC, "input": "also"}, 422, "exactly one"),
        ({"vector": None}, 422, "exactly one"),
        ({"filter": [1]}, 422, "filter"),
        ({"filter": "group=a"}, 422, "filter"),
        ({"filter": {"n": float("nan")}}, 400, "filter"),
        ({"collection": "nope"}, 404, "nope"),
        ({"collection": "a/b"}, 400, "invalid collection name"),
        ({"collection": ".."}, 400, "invalid collection name"),
        ({"collection": "a\x00b"}, 400, "invalid collection name"),
        ({"collection": "x" * 10_000}, 400, "invalid collection name"),
        ({"collection": None}, 422, "collection"),
        ({"limit": 3}, 422, "limit"),
    ],
    ids=[
        "k0",
        "k-negative",
        "k-over",
        "k-huge",
        "k-fraction",
        "k-string",
        "nan",
        "inf",
        "wrong-dim",
        "huge-vector",
        "both",
        "neither",
        "filter-list",
        "filter-str",
        "filter-nan",
        "unknown-collection",
        "name-slash",
        "name-dotdot",
        "name-nul",
        "name-10k",
        "name-missing",
        "unknown-field",
    ],
)
def test_bad_searches(
    searchable: TestClient, body: dict[str, Any], status: int, words: str
) -> None:
    query = {"collection": "vecs", "vector": VEC, **body}
    query = {key: value for key, value in query.items() if value is not None}
    r = send_json(searchable, "POST", "/search", query)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail and len(detail) < 2000
    assert searchable.get("/collections/vecs").json()["count"] == N


def test_bad_multipart_searches(searchable: TestClient) -> None:
    two = [("text", (None, TEXTS[0])), ("text", (None, TEXTS[1]))]
    r = searchable.post("/search", files=two, data={"collection": "docs"})
    assert r.status_code == 422 and "exactly one" in r.json()["detail"]
    one = [("text", (None, TEXTS[0]))]
    r = searchable.post("/search", files=one, data={"collection": "docs", "filter": "{oops"})
    assert r.status_code == 422 and "filter" in r.json()["detail"]
    r = searchable.post("/search", files=one, data={"collection": "docs", "k": "0"})
    assert r.status_code == 422 and "CPC_MAX_K" in r.json()["detail"]
    r = searchable.post("/search", files=one, data={"k": "3"})
    assert r.status_code == 422 and "collection" in r.json()["detail"]
    r = searchable.post("/search", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "multipart" in r.json()["detail"]


def test_search_by_input_of_another_modality(searchable: TestClient) -> None:
    r = searchable.post(
        "/search", json={"collection": "vecs", "input": b64(audio_bytes(0.5)), "k": 1}
    )
    assert r.status_code == 415 and "image" in r.json()["detail"]


def test_max_k_follows_the_setting(make_client: MakeClient) -> None:
    c = make_client(max_k=5)
    body = {"collection": "audio", "vector": VEC}
    assert c.post("/search", json={**body, "k": 5}).status_code == 200
    r = c.post("/search", json={**body, "k": 6})
    assert r.status_code == 422 and "from 1 to 5" in r.json()["detail"]


def test_several_queries_by_input_answer_as_one_query_each(searchable: TestClient) -> None:
    queries = [{"input": TEXTS[1]}, {"vector": VECTORS[0][:16]}, {"input": TEXTS[2]}]
    r = searchable.post("/search", json={"collection": "docs", "k": 3, "queries": queries})
    assert r.status_code == 200, r.text
    for got, query in zip(r.json()["results"], queries, strict=True):
        alone = searchable.post("/search", json={"collection": "docs", "k": 3, **query})
        assert [h["id"] for h in got] == [h["id"] for h in alone.json()["results"]]


def test_a_bad_input_among_several_queries_names_its_query(searchable: TestClient) -> None:
    queries = [{"input": TEXTS[1]}, {"input": ""}]
    r = searchable.post("/search", json={"collection": "docs", "queries": queries})
    assert r.status_code == 400 and r.json()["detail"].startswith("queries[1].input"), r.text
