"""Rich filters, several queries in one /search, and paging through a collection's items,
through the real app: what each selects, and the 4xx that hostile requests get; on both
collection backends (conftest.py)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.vectors.filters import matches, parse_filter
from tests.service.conftest import MakeClient, random_vectors, unit

pytestmark = pytest.mark.backends("embedded", "milvus")

N = 40
VECTORS = random_vectors(N, seed=21)
SPEAKERS = ("m1", "m2", "m3", 'o"k', "a\\b")


def metadata_of(i: int) -> dict[str, Any]:
    return {"year": 1990 + i, "speaker": SPEAKERS[i % len(SPEAKERS)], "even": i % 2 == 0}


METADATA = {f"v{i}": metadata_of(i) for i in range(N)}


@pytest.fixture(scope="module")
def coll(client: TestClient) -> TestClient:
    client.put("/collections/q", json={"model": "image"})
    items = [
        {"id": f"v{i}", "vector": v, "metadata": metadata_of(i)} for i, v in enumerate(VECTORS)
    ]
    assert client.post("/collections/q/items", json={"items": items}).status_code == 200
    return client


def expected_ids(query: list[float], where: Any, k: int) -> list[str]:
    """Brute force: the k best items whose metadata matches `where` (by the filter module)."""
    cond = parse_filter(where)
    q = unit(query)
    scored = [
        (f"v{i}", float(unit(v) @ q))
        for i, v in enumerate(VECTORS)
        if cond is None or matches(cond, METADATA[f"v{i}"])
    ]
    return [i for i, _ in sorted(scored, key=lambda p: -p[1])[:k]]


FILTERS = [
    {"year": {"gte": 2000, "lt": 2010}},
    {"speaker": {"in": ["m1", "m3"]}},
    {"speaker": {"nin": ["m1", "m3"]}, "even": True},
    {"not": {"even": True}},
    {"or": [{"year": {"lt": 1993}}, {"year": {"gt": 2026}}]},
    {"and": [{"speaker": {"ne": "m2"}}, {"year": {"lte": 1999}}]},
    {"speaker": 'o"k'},
    {"speaker": "a\\b"},
    {"speaker": 'm1" or 1 == 1 or "'},  # an expression inside a string is only a string
]


@pytest.mark.parametrize("where", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_filters_select_exactly_the_matching_items(coll: TestClient, where: Any) -> None:
    query = random_vectors(1, seed=5)[0]
    r = coll.post("/search", json={"collection": "q", "vector": query, "k": N, "filter": where})
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["results"]] == expected_ids(query, where, N)


def test_a_quote_bearing_value_matches_only_its_own_items(coll: TestClient) -> None:
    r = coll.post(
        "/search",
        json={"collection": "q", "vector": VECTORS[0], "k": N, "filter": {"speaker": 'o"k'}},
    )
    ids = {h["id"] for h in r.json()["results"]}
    assert ids and all(METADATA[i]["speaker"] == 'o"k' for i in ids)
    assert ids == {i for i, md in METADATA.items() if md["speaker"] == 'o"k'}


def test_a_filter_never_drops_matches_up_to_k(coll: TestClient) -> None:
    where = {"speaker": "m3"}
    r = coll.post(
        "/search", json={"collection": "q", "vector": VECTORS[1], "k": 3, "filter": where}
    )
    assert [h["id"] for h in r.json()["results"]] == expected_ids(VECTORS[1], where, 3)


HOSTILE: list[tuple[Any, str]] = [
    ({"year": {"between": [1, 2]}}, "unknown filter operator"),
    ({"year": {"gte": "1e999"}, "x": {"gt": True}}, "compares with a number or a string"),
    ({"speaker": {"in": list(range(5000))}}, "CPC_MAX_FILTER_TERMS"),
    ({"and": []}, "non-empty list"),
    ({"not": "even"}, "must be a JSON object"),
    ({"year": 2**70}, "64-bit"),
]


@pytest.mark.parametrize(("where", "detail"), HOSTILE, ids=[h[1] for h in HOSTILE])
def test_hostile_filters_get_a_4xx_that_says_why(coll: TestClient, where: Any, detail: str) -> None:
    before = coll.get("/collections/q").json()["count"]
    r = coll.post("/search", json={"collection": "q", "vector": VECTORS[0], "filter": where})
    assert r.status_code == 400, r.text
    assert detail in r.json()["detail"]
    assert coll.get("/collections/q").json()["count"] == before


def test_deep_nesting_is_refused(coll: TestClient) -> None:
    deep: Any = {"even": True}
    for _ in range(9):
        deep = {"not": deep}
    r = coll.post("/search", json={"collection": "q", "vector": VECTORS[0], "filter": deep})
    assert r.status_code == 400 and "CPC_MAX_FILTER_DEPTH" in r.json()["detail"]
    text = '{"collection": "q", "vector": [1], "filter": ' + '{"not": ' * 5000 + "{}" + "}" * 5001
    r = coll.post("/search", content=text, headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 422) and r.json()["detail"]


def test_non_finite_numbers_in_a_filter_are_refused(coll: TestClient) -> None:
    body = f'{{"collection": "q", "vector": {VECTORS[0]}, "filter": {{"year": {{"gt": NaN}}}}}}'
    r = coll.post("/search", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 and r.json()["detail"]


def test_several_queries_in_one_call(coll: TestClient) -> None:
    queries = [
        {"vector": VECTORS[3]},
        {"vector": VECTORS[4], "filter": {"even": False}},
        {"vector": VECTORS[5], "filter": {"speaker": "m2"}},
    ]
    r = coll.post(
        "/search", json={"collection": "q", "k": 4, "queries": queries, "filter": {"even": True}}
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    # a query's own filter replaces the shared one; without one, the shared one applies
    wheres = [{"even": True}, {"even": False}, {"speaker": "m2"}]
    for got, q, where in zip(results, queries, wheres, strict=True):
        assert [h["id"] for h in got] == expected_ids(q["vector"], where, 4)


def test_queries_have_limits(make_client: MakeClient) -> None:
    client = make_client(max_queries=2)
    client.put("/collections/q", json={"model": "image"})
    client.post("/collections/q/items", json={"items": [{"id": "a", "vector": VECTORS[0]}]})
    many = [{"vector": VECTORS[0]}] * 3
    r = client.post("/search", json={"collection": "q", "queries": many})
    assert r.status_code == 413 and "CPC_MAX_QUERIES" in r.json()["detail"]
    r = client.post("/search", json={"collection": "q", "queries": many[:2], "vector": VECTORS[0]})
    assert r.status_code == 422 and "exactly one of" in r.json()["detail"]


# --- paging ------------------------------------------------------------------------------------


def all_pages(client: TestClient, name: str, limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        r = client.get(f"/collections/{name}/items", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        ids += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


def test_paging_visits_every_item_once_in_id_order(coll: TestClient) -> None:
    ids = all_pages(coll, "q", 7)
    assert ids == sorted(METADATA)
    r = coll.get("/collections/q/items", params={"limit": 2})
    assert r.json()["items"][0] == {"id": "v0", "metadata": METADATA["v0"]}


def test_paging_under_concurrent_writes_skips_and_repeats_nothing(
    make_client: MakeClient,
) -> None:
    client = make_client()
    client.put("/collections/p", json={"model": "image"})
    stable = [f"s/{i:03d}" for i in range(120)]  # ids with '/' page like any other
    vectors = random_vectors(len(stable), seed=3)
    items = [{"id": i, "vector": v} for i, v in zip(stable, vectors, strict=True)]
    for start in range(0, len(items), 40):
        batch = {"items": items[start : start + 40]}
        assert client.post("/collections/p/items", json=batch).status_code == 200
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            tmp = f"s/{n % 120:03d}x"  # sorts between the stable ids
            client.post("/collections/p/items", json={"items": [{"id": tmp, "vector": vectors[0]}]})
            client.delete(f"/collections/p/items/{tmp}")
            n += 1

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        seen = all_pages(client, "p", 9)
    finally:
        stop.set()
        writer.join()
    stable_seen = [i for i in seen if i in set(stable)]
    assert stable_seen == stable  # each once, in order
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize(
    ("params", "status", "detail"),
    [
        ({"limit": 0}, 422, "CPC_MAX_PAGE"),
        ({"limit": 100000}, 422, "CPC_MAX_PAGE"),
        ({"cursor": "!!not-a-cursor"}, 400, "next_cursor"),
        ({"cursor": "AA"}, 400, "next_cursor"),  # decodes to a control character
    ],
)
def test_bad_paging_requests_say_why(
    coll: TestClient, params: dict[str, Any], status: int, detail: str
) -> None:
    r = coll.get("/collections/q/items", params=params)
    assert r.status_code == status, r.text
    assert detail in r.json()["detail"]


def test_paging_a_missing_collection_is_404(coll: TestClient) -> None:
    assert coll.get("/collections/nope/items").status_code == 404


def test_scores_stay_cosines(coll: TestClient) -> None:
    r = coll.post("/search", json={"collection": "q", "vector": VECTORS[7], "k": 1})
    (hit,) = r.json()["results"]
    assert hit["id"] == "v7" and np.isclose(hit["score"], 1.0, atol=1e-5)
