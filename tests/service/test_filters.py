"""`service.vectors.filters`: what a filter means, what it refuses, and SQLite agreeing with it."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import InvalidInput
from service.vectors.filters import FilterLimits, matches, parse_filter, to_sql

ITEMS: dict[str, dict[str, Any]] = {
    "a": {"year": 1999, "speaker": "m1", "tags": ["x"], "ok": True},
    "b": {"year": 2001, "speaker": "m3", "ok": False},
    "c": {"year": 2005.5, "speaker": "f2", "tags": ["x", "y"]},
    "d": {"year": "2003", "speaker": 'o"k'},
    "e": {"speaker": None, "ok": 1},
    "f": {},
}


def selected(where: object) -> list[str]:
    cond = parse_filter(where)
    return sorted(k for k, md in ITEMS.items() if cond is None or matches(cond, md))


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (None, list("abcdef")),
        ({}, list("abcdef")),
        ({"speaker": "m3"}, ["b"]),
        ({"speaker": {"eq": "m3"}}, ["b"]),
        ({"year": {"gte": 2000, "lt": 2010}}, ["b", "c"]),  # "2003" is a string: not in range
        ({"year": {"gt": "2000"}}, ["d"]),  # strings compare with strings only
        ({"speaker": {"in": ["m1", "m3"]}}, ["a", "b"]),
        ({"speaker": {"nin": ["m1", "m3"]}}, ["c", "d", "e", "f"]),  # absent keys pass nin
        ({"speaker": {"ne": "m1"}}, ["b", "c", "d", "e", "f"]),
        ({"ok": True}, ["a"]),  # true is not 1
        ({"ok": 1}, ["e"]),
        ({"speaker": None}, ["e"]),  # null matches a null value, not an absent key
        ({"tags": ["x"]}, ["a"]),  # arrays compare whole
        ({"not": {"speaker": "m1"}}, ["b", "c", "d", "e", "f"]),
        ({"or": [{"speaker": "m1"}, {"year": {"gt": 2004}}]}, ["a", "c"]),
        ({"and": [{"year": {"gte": 1999}}, {"not": {"speaker": "m3"}}]}, ["a", "c"]),
        ({"speaker": 'o"k'}, ["d"]),
        ({"year": {"gte": 2000}, "speaker": "m3"}, ["b"]),  # keys together: all must hold
        ({"meta": {"eq": {"nested": 1}}}, []),  # an object value: matched with eq
    ],
)
def test_what_a_filter_selects(where: object, expected: list[str]) -> None:
    assert selected(where) == expected


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"year": {"gte": 1, "between": 2}}, "unknown filter operator 'between'"),
        ({"meta": {"nested": 1}}, "unknown filter operator 'nested'"),
        ({"year": {}}, "an empty object tests nothing"),
        ({"year": {"gte": float("nan")}}, "not a finite number"),
        ({"year": float("inf")}, "not a finite number"),
        ({"year": {"gt": True}}, "compares with a number or a string"),
        ({"year": {"lt": [1]}}, "compares with a number or a string"),
        ({"speaker": {"in": "m1"}}, "takes a list"),
        ({"year": 2**64}, "64-bit"),
        ({"and": []}, "non-empty list"),
        ({"or": {"a": 1}}, "non-empty list"),
        ({"not": []}, "must be a JSON object"),
        ({"not": {}}, "may not be empty"),
        ("speaker=m1", "must be a JSON object"),
        ({"a": {"in": list(range(2000))}}, "CPC_MAX_FILTER_TERMS"),
    ],
)
def test_bad_filters_say_why(where: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_filter(where)


def test_depth_and_terms_are_limits() -> None:
    deep: dict[str, Any] = {"a": 1}
    for _ in range(5):
        deep = {"not": deep}
    assert parse_filter(deep, FilterLimits(max_depth=5)) is not None
    with pytest.raises(InvalidInput, match="CPC_MAX_FILTER_DEPTH"):
        parse_filter({"not": deep}, FilterLimits(max_depth=5))
    assert parse_filter({"a": {"in": [1, 2, 3]}}, FilterLimits(max_terms=3)) is not None
    with pytest.raises(InvalidInput, match="more than 3 terms"):
        parse_filter({"a": {"in": [1, 2, 3]}, "b": 1}, FilterLimits(max_terms=3))


# --- SQLite agrees with Python -----------------------------------------------------------------

KEYS = ["year", "speaker", 'we"ird', "ok"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False),
    st.sampled_from(["m1", "m3", "", 'o"k', "ü"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=2))
metadata = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)
field = st.tuples(
    st.sampled_from(KEYS),
    st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"]),
    values,
)


def _field_json(key: str, op: str, value: Any) -> dict[str, Any]:
    if op in ("in", "nin"):
        value = value if isinstance(value, list) else [value]
    elif op in ("gt", "gte", "lt", "lte") and (
        isinstance(value, bool) or not isinstance(value, int | float | str)
    ):
        value = 0
    return {key: {op: value}}


conditions = st.recursive(
    field.map(lambda f: _field_json(*f)),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"and": xs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"or": xs}),
        inner.map(lambda x: {"not": x}),
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(metadata, min_size=1, max_size=12), where=conditions)
def test_sqlite_selects_what_python_matches(rows: list[dict[str, Any]], where: Any) -> None:
    cond = parse_filter(where)
    assert cond is not None
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE items (seq INTEGER PRIMARY KEY, metadata TEXT)")
    db.executemany("INSERT INTO items (metadata) VALUES (?)", [(json.dumps(r),) for r in rows])
    expected = {i + 1 for i, r in enumerate(rows) if matches(cond, r)}
    sql = to_sql(cond)
    if sql is None:
        return  # nothing narrowed: Python checks every row
    found = {s for (s,) in db.execute(f"SELECT seq FROM items WHERE {sql.clause}", sql.params)}
    assert expected <= found  # never drops a match
    if sql.exact:
        assert found == expected
