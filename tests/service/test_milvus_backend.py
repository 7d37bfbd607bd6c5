"""The Milvus collection backend (`service.vectors.milvus`) against a real Milvus server.

One server serves the whole session (the `milvus_uri` fixture of conftest.py: started
there, or the one `CPC_TEST_MILVUS_URI` names); each test has collections of its own
under a prefix of its own. The embedded `CollectionManager` is the reference:
the same inputs give the same errors and the same answers, and every filter
selects what `filters.matches` says. Milvus going away is a relay that the
test cuts and mends.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import Conflict, CPCError, InvalidInput, NotFound, TooLarge, Unavailable
from service.vectors import milvus as milvus_module
from service.vectors.filters import matches, parse_filter
from service.vectors.manager import CollectionManager
from service.vectors.milvus import MAX_ORIGINAL_BYTES, MilvusCollection, MilvusCollections
from service.vectors.milvus_connection import MilvusConnection, safe_address
from service.vectors.milvus_filters import compile_filter, key_path, string_literal
from service.vectors.milvus_schema import milvus_name, service_name
from service.vectors.store import Original
from service.vectors.validation import prepare_vector
from tests.service import test_filters as filter_cases
from tests.service.milvus_server import Relay, proxy_port

# --- the server: `milvus_uri`, a session fixture of conftest.py ------------------------------


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}_"


def make_manager(uri: str, prefix: str, **options: Any) -> MilvusCollections:
    return MilvusCollections(uri, prefix=prefix, **options)


@pytest.fixture
def manager(milvus_uri: str, prefix: str) -> Iterator[MilvusCollections]:
    mgr = make_manager(milvus_uri, prefix)
    yield mgr
    cleanup = make_manager(milvus_uri, prefix)
    for coll in cleanup.list():
        cleanup.delete(coll.name)
    cleanup.close_all()
    mgr.close_all()


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def error_of(fn: Any, *args: Any, **kwargs: Any) -> tuple[type[BaseException], str]:
    try:
        fn(*args, **kwargs)
    except CPCError as exc:
        return type(exc), exc.detail
    raise AssertionError(f"{fn} raised nothing")


# --- pure parts (no server) ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "a_b", "a-b", "a__b", "a_-_b", "0-_", "x" * 64])
def test_collection_names_round_trip(name: str) -> None:
    encoded = milvus_name("cpc_", name)
    assert all(ch.isalnum() or ch == "_" for ch in encoded)
    assert service_name("cpc_", encoded) == name
    assert service_name("other_", encoded) is None


def test_names_that_are_not_ours_are_ignored() -> None:
    assert service_name("cpc_", "cpc_a_b") is None  # '_' must be followed by '_' or '0'
    assert service_name("cpc_", "cpc_A") is None
    assert service_name("cpc_", "probe") is None


def test_literals_escape_what_breaks_an_expression() -> None:
    assert string_literal('a" or id != "') == '"a\\" or id != \\""'
    assert string_literal("a\\b\n\u0000😀") == '"a\\\\b\\n\\u0000😀"'
    assert string_literal("\ud800") is None  # a lone surrogate: cannot be sent
    assert key_path("") is None
    assert key_path('k"') == 'metadata["k\\""]'


def test_compiled_filters_say_whether_they_are_exact() -> None:
    def compiled(where: object) -> tuple[str, bool] | None:
        cond = parse_filter(where)
        assert cond is not None
        expr = compile_filter(cond)
        return None if expr is None else (expr.text, expr.exact)

    assert compiled({"s": "m1"}) == ('metadata["s"] == "m1"', True)
    assert compiled({"n": {"gte": 1, "lt": 2.5}}) == (
        '(metadata["n"] >= 1) and (metadata["n"] < 2.5)',
        True,
    )
    assert compiled({"s": {"in": ["a", 1, 2.0, True]}}) == (
        '(metadata["s"] == "a" or metadata["s"] == 1 or metadata["s"] == 2.0 '
        'or metadata["s"] == true)',
        True,
    )
    assert compiled({"s": {"in": []}}) == ('id == ""', True)
    assert compiled({"s": {"nin": ["a", "b"]}}) == ('not (metadata["s"] in ["a", "b"])', True)
    assert compiled({"s": None}) == ('exists metadata["s"]', False)
    assert compiled({"s": {"ne": None}}) is None  # not of a superset: no narrowing
    assert compiled({"tags": ["x"]}) == ('exists metadata["tags"]', False)
    assert compiled({"n": {"gt": 2**60}}) is None  # doubles round: no safe bound
    assert compiled({"": 1}) is None
    assert compiled({"or": [{"s": "a"}, {"": 1}]}) is None
    assert compiled({"and": [{"s": "a"}, {"": 1}]}) == ('metadata["s"] == "a"', False)


def test_proxy_port_is_read_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "milvus.yaml"
    assert proxy_port(config) is None
    config.write_text(
        "etcd:\n  port: 2379\nproxy:\n  timeTickInterval: 200\n  http:\n"
        "    port: 8080\n  port: 19533\n  internalPort: 19529\nqueryNode:\n  port: 21123\n"
    )
    assert proxy_port(config) == 19533


def test_addresses_in_errors_carry_no_credentials() -> None:
    assert safe_address("https://user:secret@db.example:19530/x") == "https://db.example:19530"
    assert safe_address("127.0.0.1:19530") == "http://127.0.0.1:19530"


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="consistency"):
        MilvusCollections("http://127.0.0.1:1", consistency="strong")
    with pytest.raises(ValueError, match="prefix"):
        MilvusCollections("http://127.0.0.1:1", prefix="1x")
    with pytest.raises(ValueError, match="nlist"):
        MilvusCollections("http://127.0.0.1:1", index_params={"ivf": {"nlist": 0}})


# --- collections -----------------------------------------------------------------------------


def test_create_list_describe_delete(manager: MilvusCollections) -> None:
    flat = manager.create("a-b_c", "text", 8)
    ivf = manager.create("ivf", "audio", 12, index="ivf", pooling="stats")
    assert [c.name for c in manager.list()] == ["a-b_c", "ivf"]
    assert flat.describe() == {
        "name": "a-b_c",
        "model": "text",
        "dim": 8,
        "pooling": "mean",
        "count": 0,
        "index": "flat",
    }
    assert ivf.describe()["index"] == "ivf" and ivf.info.pooling == "stats"
    assert ivf.index_params == {"nlist": 128, "nprobe": 16}
    assert manager.get("ivf") is ivf
    with pytest.raises(Conflict, match="already exists"):
        manager.create("ivf", "audio", 12)
    manager.delete("a-b_c")
    assert [c.name for c in manager.list()] == ["ivf"]
    for call in (lambda: manager.get("a-b_c"), lambda: manager.delete("a-b_c"), flat.count):
        with pytest.raises(NotFound):
            call()


def test_invalid_collections_are_refused_as_by_the_embedded_manager(
    manager: MilvusCollections, tmp_path: Path
) -> None:
    embedded = CollectionManager(tmp_path)
    cases: list[tuple[Any, ...]] = [
        ("Bad Name", "text", 8),
        ("ok", "text", 8, "hnsw"),
        ("ok", "text", 8, "flat", "max"),
        ("ok", "text", 0),
        ("ok", "text", True),
        ("ok", "", 8),
    ]
    for args in cases:
        assert error_of(manager.create, *args) == error_of(embedded.create, *args), args
    manager.create("m", "text", 8)
    embedded.create("m", "text", 8)
    assert error_of(manager.ensure, "m", "text", 9) == error_of(embedded.ensure, "m", "text", 9)
    assert manager.ensure("m", "text", 8).dim == 8
    assert manager.ensure("fresh", "image", 4).describe()["count"] == 0
    with pytest.raises(InvalidInput, match="at most 32768 with the Milvus backend"):
        manager.create("wide", "text", 32769)
    assert error_of(manager.get, "nope") == error_of(embedded.get, "nope")


def test_metadata_and_index_survive_a_restart(milvus_uri: str, prefix: str) -> None:
    first = make_manager(milvus_uri, prefix, index_params={"ivf": {"nlist": 64, "nprobe": 8}})
    try:
        coll = first.create("kept", "audio", 6, index="ivf", pooling="last")
        coll.upsert([("one", [1, 2, 3, 4, 5, 6], {"k": "v"})], [Original("text/plain", b"hi")])
        info = coll.info
        first.close_all()
        with pytest.raises(NotFound):
            coll.count()
        again = make_manager(milvus_uri, prefix)
        again.open_all()
        (back,) = again.list()
        assert back.info == info and back.index_params == {"nlist": 64, "nprobe": 8}
        assert back.get("one").metadata == {"k": "v"}
        assert back.get_original("one") == Original("text/plain", b"hi")
        assert back.search([1, 2, 3, 4, 5, 6], 1)[0].id == "one"
        again.delete("kept")
        again.close_all()
    finally:
        first.close_all()


def test_other_workers_see_creates_and_deletes(milvus_uri: str, prefix: str) -> None:
    one, two = make_manager(milvus_uri, prefix), make_manager(milvus_uri, prefix)
    try:
        made = one.create("shared", "text", 4)
        made.upsert([("a", [1, 0, 0, 0], None)])
        seen = two.get("shared")
        assert seen.get("a").metadata == {} and [c.name for c in two.list()] == ["shared"]
        two.delete("shared")
        with pytest.raises(NotFound):
            made.get("a")  # the first worker's object: gone too
        with pytest.raises(NotFound):
            one.get("shared")
        remade = two.create("shared", "text", 8)
        assert one.get("shared").dim == 8 and remade.dim == 8
        with pytest.raises(Conflict):
            one.create("shared", "text", 8)
        two.delete("shared")
    finally:
        one.close_all()
        two.close_all()


# --- items -----------------------------------------------------------------------------------


def test_upsert_get_replace(manager: MilvusCollections) -> None:
    coll = manager.create("items", "text", 4)
    metadata = {"s": "ü😀\n\"'\\", "n": 2**62, "f": -0.5, "nested": {"a": [1, None, True]}}
    ids = coll.upsert([("x", [3, 0, 0, 4], metadata), ("y/é", [0, 1, 0, 0], None)])
    assert ids == ["x", "y/é"]
    got = coll.get("x")
    assert got.metadata == metadata
    assert got.vector is not None
    assert np.allclose(got.vector, [0.6, 0, 0, 0.8], atol=1e-7)
    assert coll.get("y/é").metadata == {}
    before = got.seq
    coll.upsert([("x", [0, 0, 1, 0], {"v": 2})])
    again = coll.get("x")
    assert again.metadata == {"v": 2} and again.seq > before
    assert again.vector is not None and np.allclose(again.vector, [0, 0, 1, 0])
    assert coll.count() == 2
    # an id twice in one batch: the last one wins, as in the embedded store
    assert coll.upsert([("d", [1, 0, 0, 0], {"v": 1}), ("d", [0, 1, 0, 0], {"v": 2})]) == ["d", "d"]
    assert coll.get("d").metadata == {"v": 2} and coll.count() == 3
    with pytest.raises(NotFound, match="no item 'nope'"):
        coll.get("nope")


@pytest.mark.parametrize("consistency", ["Strong", "Session"])
def test_reads_see_acknowledged_writes(milvus_uri: str, prefix: str, consistency: str) -> None:
    mgr = make_manager(milvus_uri, prefix, consistency=consistency)
    try:
        coll = mgr.create("rw", "text", 4)
        for n in range(8):
            coll.upsert([(f"i{n}", [1, n, 0, 0], {"n": n})])
            assert coll.get(f"i{n}").metadata == {"n": n}
            assert coll.count() == n + 1
            assert coll.search([1, n, 0, 0], 1, {"n": n})[0].id == f"i{n}"
        coll.delete("i0")
        with pytest.raises(NotFound):
            coll.get("i0")
    finally:
        mgr.delete("rw")
        mgr.close_all()


def test_bad_items_are_refused_as_by_the_embedded_store(
    manager: MilvusCollections, tmp_path: Path
) -> None:
    coll = manager.create("bad", "text", 4)
    embedded = CollectionManager(tmp_path).create("bad", "text", 4)
    cases: list[list[tuple[Any, Any, Any]]] = [
        [],
        [("", [1, 0, 0, 0], None)],
        [("a\u0001", [1, 0, 0, 0], None)],
        [("a", [1, 0, 0], None)],
        [("a", [0, 0, 0, 0], None)],
        [("a", [float("nan"), 0, 0, 1], None)],
        [("a", ["x", 0, 0, 1], None)],
        [("a", [1, 0, 0, 0], [1])],
        [("a", [1, 0, 0, 0], {"big": 2**64})],
        [("a", [1, 0, 0, 0], {"x": "y" * 70000})],
    ]
    for items in cases:
        assert error_of(coll.upsert, items) == error_of(embedded.upsert, items), items
    assert coll.count() == 0
    roomy = make_manager(manager.uri, manager.prefix, max_metadata_bytes=100_000)
    try:
        wide = roomy.create("wide", "text", 4)
        with pytest.raises(TooLarge, match="Milvus backend keeps at most 65536"):
            wide.upsert([("a", [1, 0, 0, 0], {"x": "y" * 70000})])
    finally:
        roomy.close_all()


def test_originals(manager: MilvusCollections) -> None:
    coll = manager.create("orig", "image", 4)
    small = Original("image/jpeg", bytes(range(256)) * 4)
    large = Original("audio/wav", b"\x01" * (MAX_ORIGINAL_BYTES + 1))
    exact = Original("text/plain; charset=utf-8", b"t" * MAX_ORIGINAL_BYTES)
    coll.upsert(
        [("s", [1, 0, 0, 0], None), ("l", [0, 1, 0, 0], None), ("e", [0, 0, 1, 0], None)],
        [small, large, exact],
    )
    assert coll.get_original("s") == small and coll.get_original("e") == exact
    with pytest.raises(NotFound, match="Milvus backend keeps"):
        coll.get_original("l")  # too large to keep, but the item is there
    assert coll.get("l").id == "l"
    assert coll.original_types(["s", "l", "e", "nope", "s"]) == {
        "s": "image/jpeg",
        "e": "text/plain; charset=utf-8",
    }
    coll.upsert([("s", [1, 0, 0, 0], None)])  # written without one: loses it
    with pytest.raises(NotFound, match="has no original"):
        coll.get_original("s")
    with pytest.raises(NotFound, match="no item 'nope'"):
        coll.get_original("nope")
    with pytest.raises(ValueError, match="2 originals for 1 items"):
        coll.upsert([("s", [1, 0, 0, 0], None)], [None, None])


def test_delete_item(manager: MilvusCollections) -> None:
    coll = manager.create("del", "text", 4)
    coll.upsert([("a", [1, 0, 0, 0], None), ('b"', [0, 1, 0, 0], None)])
    coll.delete('b"')
    assert coll.count() == 1
    with pytest.raises(NotFound, match="no item 'b\"'"):
        coll.get('b"')
    with pytest.raises(NotFound):
        coll.delete('b"')
    assert coll.get("a").id == "a"
    assert [h.id for h in coll.search([0, 1, 0, 0], 5)] == ["a"]


# --- search ----------------------------------------------------------------------------------


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_search_ranks_by_cosine_like_numpy(manager: MilvusCollections, index: str) -> None:
    rng = np.random.default_rng(7)
    dim, n = 16, 300
    vectors = unit(rng, n, dim) * rng.uniform(0.5, 3.0, size=(n, 1)).astype(np.float32)
    coll = manager.create(f"rank-{index}", "text", dim, index=index)
    ids = [f"i{j:03d}" for j in range(n)]
    coll.upsert([(ids[j], vectors[j].tolist(), {"j": j}) for j in range(n)])
    stored = np.stack([prepare_vector(v, dim, "x") for v in vectors])
    for query in unit(rng, 5, dim):
        scores = stored @ prepare_vector(query, dim, "x")
        order = np.argsort(-scores, kind="stable")[:10]
        hits = coll.search(query.tolist(), 10)
        assert [h.id for h in hits] == [ids[j] for j in order]
        assert np.allclose([h.score for h in hits], scores[order], atol=1e-5)
        assert hits[0].metadata == {"j": int(order[0])}
    assert len(coll.search(unit(rng, 1, dim)[0].tolist(), n + 50)) == n
    for bad_k in (0, -1, True, 1.5):
        assert error_of(coll.search, [1.0] * dim, bad_k)[0] is InvalidInput
    with pytest.raises(Conflict, match="dim 16"):
        coll.search([1.0, 2.0], 3)


ITEMS: dict[str, dict[str, Any]] = {
    **filter_cases.ITEMS,  # the filter module's own cases, and what Milvus makes harder:
    "g": {"year": 1.0, "ok": 1.0, "speaker": "ü", "tags": [1.0]},
    "h": {"year": 2**60 + 1, "speaker": "z", "tags": [True], "": 1},
    "q1": {"s": 'a" or id != "'},
    "q2": {"s": "a\\"},
    "q3": {"s": 'a\\" or true or "', 'k"ey': 1},
    "q4": {"s": "line\nbreak\ttab\u0000nul\u001f", "a\\b": "v"},
    "q5": {"s": "😀 é \u2028", "in": "or", "exists": 1, "a/b": 2, "~0": 3},
    "q6": {"s": "id"},
}
HOSTILE = [ITEMS[k]["s"] for k in ("q1", "q2", "q3", "q4", "q5", "q6")]

FILTERS: list[object] = [
    {"speaker": "m3"},
    {"speaker": {"eq": "m3"}},
    {"year": {"gte": 2000, "lt": 2010}},
    {"year": {"gt": "2000"}},
    {"year": 1},
    {"year": 1.0},
    {"year": 2**60},
    {"year": 2**60 + 1},
    {"year": {"gt": 2**60}},
    {"year": {"lte": 1e-7}},
    {"year": {"lt": 1e20}},
    {"speaker": {"in": ["m1", "m3"]}},
    {"speaker": {"in": ["m1", 1999, None, True]}},
    {"speaker": {"nin": ["m1", "m3"]}},
    {"speaker": {"ne": "m1"}},
    {"speaker": {"ne": None}},
    {"speaker": {"gt": "m"}},
    {"speaker": {"lt": "ü"}},
    {"ok": True},
    {"ok": 1},
    {"ok": {"gt": 0}},
    {"ok": {"in": []}},
    {"ok": {"nin": []}},
    {"speaker": None},
    {"tags": ["x"]},
    {"tags": [1]},
    {"tags": {"in": [[True], ["x", "y"]]}},
    {"": 1},
    {'k"ey': 1},
    {"a\\b": "v"},
    {"in": "or"},
    {"exists": {"gte": 1}},
    {"a/b": 2, "~0": 3},
    {"not": {"speaker": "m1"}},
    {"not": {"speaker": None}},
    {"or": [{"speaker": "m1"}, {"year": {"gt": 2004}}]},
    {"or": [{"speaker": "m1"}, {"tags": ["x", "y"]}]},
    {"and": [{"year": {"gte": 1999}}, {"not": {"speaker": "m3"}}]},
    {"not": {"or": [{"year": {"lt": 2000}}, {"ok": {"in": [False, 1]}}]}},
    *({"s": value} for value in HOSTILE),
    *({"s": {"gte": value}} for value in HOSTILE),
    {"s": {"in": HOSTILE[:3]}},
    {"s": {"nin": HOSTILE[:3]}},
]


@pytest.fixture(scope="module")
def filtered(milvus_uri: str) -> Iterator[MilvusCollection]:
    mgr = make_manager(milvus_uri, f"f{uuid.uuid4().hex[:10]}_")
    coll = mgr.create("filters", "text", 4)
    rng = np.random.default_rng(3)
    coll.upsert([(k, unit(rng, 1, 4)[0].tolist(), md) for k, md in ITEMS.items()])
    yield coll
    mgr.delete("filters")
    mgr.close_all()


def _selected(coll: MilvusCollection, where: object, rows: dict[str, dict[str, Any]]) -> None:
    """Search and the compiled expression against `matches`, on the items `rows`."""
    cond = parse_filter(where)
    assert cond is not None
    expected = {k for k, md in rows.items() if matches(cond, md)}
    found = {h.id for h in coll.search([1, 0, 0, 0], len(rows), where)}
    assert found == expected, where
    expr = compile_filter(cond)
    if expr is not None:
        raw = {str(r["id"]) for r in coll._query("test", expr.text, ["id"])}
        assert expected <= raw, (where, expr)
        if expr.exact:
            assert raw == expected, (where, expr)


@pytest.mark.parametrize("where", FILTERS, ids=[json.dumps(f)[:60] for f in FILTERS])
def test_filters_select_what_matches_says(filtered: MilvusCollection, where: object) -> None:
    _selected(filtered, where, ITEMS)


def test_a_hostile_string_matches_only_its_own_item(filtered: MilvusCollection) -> None:
    for key in ("q1", "q2", "q3", "q4", "q5", "q6"):
        hits = filtered.search([1, 0, 0, 0], 20, {"s": ITEMS[key]["s"]})
        assert [h.id for h in hits] == [key]
    assert filtered.search([1, 0, 0, 0], 20, {"s": "\ud800"}) == []


# random filters over random metadata: Milvus's expressions versus matches
KEYS = ["year", "speaker", 'we"ird', "ok"]
SCALARS: list[Any] = [
    None,
    True,
    False,
    *range(-3, 4),
    0.5,
    -2.25,
    2.0,
    2**53 + 1,
    float(2**53),
    "m1",
    "",
    'o"k',
    "ü",
    "😀",
    "a\nb",
]


def _value(rng: random.Random) -> Any:
    if rng.random() < 0.2:
        return [rng.choice(SCALARS) for _ in range(rng.randint(0, 2))]
    return rng.choice(SCALARS)


def _condition(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    roll = rng.random()
    if depth < 3 and roll < 0.3:
        kind = rng.choice(["and", "or", "not"])
        if kind == "not":
            return {"not": _condition(rng, depth + 1)}
        return {kind: [_condition(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    op = rng.choice(["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"])
    value = _value(rng)
    if op in ("in", "nin"):
        value = value if isinstance(value, list) else [value, _value(rng)]
    elif op in ("gt", "gte", "lt", "lte") and (
        isinstance(value, bool) or not isinstance(value, int | float | str)
    ):
        value = rng.choice([0, 1.5, "m", 2**53 + 1])
    return {rng.choice(KEYS): {op: value}}


def test_random_filters_select_what_matches_says(milvus_uri: str, prefix: str) -> None:
    rng = random.Random(11)
    rows = {
        f"r{i}": {k: _value(rng) for k in rng.sample(KEYS, rng.randint(0, len(KEYS)))}
        for i in range(40)
    }
    mgr = make_manager(milvus_uri, prefix)
    try:
        coll = mgr.create("random", "text", 4)
        coll.upsert([(k, [1, 0, 0, 0], md) for k, md in rows.items()])
        for _ in range(70):
            _selected(coll, _condition(rng), rows)
    finally:
        mgr.delete("random")
        mgr.close_all()


def test_a_filter_never_drops_a_match(
    manager: MilvusCollections, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    coll = manager.create("far", "text", 8)
    vectors = unit(rng, 400, 8)
    query = vectors[0]
    order = np.argsort(vectors @ query)  # the farthest first
    far = set(order[:3].tolist())
    coll.upsert(
        [(f"i{j}", vectors[j].tolist(), {"tags": ["x"] if j in far else ["y"]}) for j in range(400)]
    )
    where = {"tags": ["x"]}  # arrays: Milvus narrows to `exists`, Python checks every hit
    assert {h.id for h in coll.search(query.tolist(), 3, where)} == {f"i{j}" for j in far}
    monkeypatch.setattr(milvus_module, "MAX_TOPK", 40)  # so the search must end in a scan
    hits = coll.search(query.tolist(), 2, where)
    scores = {f"i{j}": float(vectors[j] @ query) for j in far}
    assert [h.id for h in hits] == sorted(scores, key=lambda i: -scores[i])[:2]
    assert np.allclose([h.score for h in hits], sorted(scores.values(), reverse=True)[:2])


# --- paging and sampling ---------------------------------------------------------------------


def test_page_walks_the_items_in_id_order(manager: MilvusCollections) -> None:
    coll = manager.create("pages", "text", 4)
    ids = sorted({f"{c}{i}" for c in "aZé😀_" for i in range(8)})
    coll.upsert([(i, [1, 0, 0, 0], {"i": i}) for i in ids])
    seen: list[str] = []
    after: str | None = None
    while True:
        items, after = coll.page(8, after)
        seen += [item.id for item in items]
        assert all(item.vector is None for item in items)
        if after is None:
            break
        assert after == items[-1].id
    assert seen == ids  # len(ids) is a multiple of 8: the last full page says None
    items, cursor = coll.page(3, ids[-4], vectors=True)
    assert [i.id for i in items] == ids[-3:] and cursor is None
    assert items[0].vector is not None and items[0].metadata == {"i": ids[-3]}
    assert coll.page(5, ids[-1]) == ([], None)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(InvalidInput, match="limit"):
            coll.page(bad, None)
    with pytest.raises(InvalidInput, match="after"):
        coll.page(3, 7)


def test_page_under_concurrent_writes_returns_each_lasting_item_once(
    manager: MilvusCollections,
) -> None:
    coll = manager.create("busy", "text", 4)
    rng = random.Random(2)
    lasting = [f"k{rng.randrange(10**6):06d}" for _ in range(300)]
    lasting = sorted(set(lasting))
    coll.upsert([(i, [1, 0, 0, 0], None) for i in lasting])
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        n = 0
        try:
            while not stop.is_set():
                fresh = [f"k{rng.randrange(10**6):06d}x" for _ in range(10)]
                again = rng.sample(lasting, 10)
                coll.upsert([(i, [0, 1, 0, 0], {"n": n}) for i in fresh + again])
                coll.delete(fresh[0])
                n += 1
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    seen: list[str] = []
    after: str | None = None
    try:
        while True:
            items, after = coll.page(23, after)
            seen += [item.id for item in items]
            if after is None:
                break
    finally:
        stop.set()
        writer.join()
    assert not errors
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert set(lasting) <= set(seen)


def test_sample_spreads_over_the_write_order(manager: MilvusCollections) -> None:
    coll = manager.create("sample", "text", 4)
    ids = [f"z{9 - j}" for j in range(10)]  # written in the reverse of id order
    for i in ids:
        coll.upsert([(i, [1, 0, 0, 0], None)])
    count, items = coll.sample(4)
    assert count == 10 and [i.id for i in items] == ["z9", "z6", "z3", "z0"]
    assert all(i.vector is not None for i in items)
    assert [i.id for i in coll.sample(50)[1]] == ids
    with pytest.raises(InvalidInput):
        coll.sample(0)


# --- Milvus away -----------------------------------------------------------------------------


def _eventually(fn: Any, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_milvus_away_is_503_and_comes_back(milvus_uri: str, prefix: str) -> None:
    relay = Relay(int(milvus_uri.rsplit(":", 1)[1])).start()
    connection = MilvusConnection(relay.uri, timeout_s=3.0, backoff_s=(0.3, 1.0))
    mgr = make_manager(relay.uri, prefix, connection=connection)
    try:
        coll = mgr.create("away", "text", 4)
        coll.upsert([("a", [1, 0, 0, 0], {"v": 1})])
        relay.cut()
        started = time.monotonic()
        for call in (
            lambda: coll.get("a"),
            lambda: coll.search([1, 0, 0, 0], 1),
            lambda: coll.upsert([("b", [1, 0, 0, 0], None)]),
            lambda: mgr.get("away"),
            mgr.list,
            mgr.ping,
        ):
            with pytest.raises(Unavailable) as caught:
                call()
            assert type(caught.value) is Unavailable and caught.value.status_code == 503
            assert "unreachable" in caught.value.detail and relay.uri in caught.value.detail
            assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 0
        assert time.monotonic() - started < 10  # fails fast, no long retries
        relay.mend()
        assert _eventually(lambda: coll.get("a")).metadata == {"v": 1}
        mgr.ping()
        coll.upsert([("b", [0, 1, 0, 0], None)])
        assert coll.count() == 2
    finally:
        relay.cut()
        cleanup = make_manager(milvus_uri, prefix)
        for c in cleanup.list():
            cleanup.delete(c.name)
        cleanup.close_all()
        mgr.close_all()


def test_no_server_at_all_is_503() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound but never listening: connections are refused
        mgr = MilvusCollections(f"http://127.0.0.1:{sock.getsockname()[1]}", timeout_s=2.0)
        with pytest.raises(Unavailable, match="unreachable"):
            mgr.open_all()
        with pytest.raises(Unavailable, match="next try"):
            mgr.get("x")  # within the backoff: at once, without trying
        mgr.close_all()
