"""Search filters: parsed once from JSON, then matched in Python, SQLite or Milvus.

A filter is a JSON object of conditions, all of which must hold:
`{"speaker": "m3"}` (a value that is not an object: equality),
`{"year": {"gte": 2000, "lt": 2010}}` (an object: operators on a key, of eq, ne,
gt, gte, lt, lte, in, nin; an object value is matched with `{"eq": {...}}`), and
the combinators `{"and": [...]}`, `{"or": [...]}` and `{"not": {...}}`. The exact semantics
(which `matches` implements and both backends follow) are in docs/api.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from service.errors import InvalidInput

Op = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"]
OPERATORS: tuple[Op, ...] = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
ORDERED: tuple[Op, ...] = ("gt", "gte", "lt", "lte")
COMBINATORS = ("and", "or", "not")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_MAX_SHOWN = 60  # characters of a key or operator quoted in an error


@dataclass(frozen=True)
class Field:
    """One test of a metadata key: `metadata[key] <op> value`."""

    key: str
    op: Op
    value: Any  # a JSON value; a list of them for in / nin


@dataclass(frozen=True)
class All:
    parts: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    part: Condition


Condition = Field | All | AnyOf | Not
CONDITIONS = (Field, All, AnyOf, Not)  # for isinstance


@dataclass(frozen=True)
class FilterLimits:
    """How large a filter may be (CPC_MAX_FILTER_TERMS, CPC_MAX_FILTER_DEPTH)."""

    max_terms: int = 1024  # key tests plus values of in / nin lists, all together
    max_depth: int = 8  # nested and / or / not


def _quoted(text: str) -> str:
    return repr(text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "...")


class _Parser:
    def __init__(self, limits: FilterLimits) -> None:
        self.limits = limits
        self.terms = 0

    def count(self, n: int) -> None:
        self.terms += n
        if self.terms > self.limits.max_terms:
            raise InvalidInput(
                f"filter has more than {self.limits.max_terms} terms (key tests and in/nin "
                "values together; CPC_MAX_FILTER_TERMS)"
            )

    def condition(self, obj: object, depth: int) -> Condition:
        if depth > self.limits.max_depth:
            raise InvalidInput(
                f"filter nests and/or/not deeper than {self.limits.max_depth} levels "
                "(CPC_MAX_FILTER_DEPTH)"
            )
        if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
            raise InvalidInput("a filter condition must be a JSON object of metadata keys")
        parts: list[Condition] = []
        for key, value in obj.items():
            if key in ("and", "or"):
                if not isinstance(value, list) or not value:
                    raise InvalidInput(f"filter '{key}' takes a non-empty list of conditions")
                subs = tuple(self.condition(v, depth + 1) for v in value)
                parts.append(All(subs) if key == "and" else AnyOf(subs))
            elif key == "not":
                parts.append(Not(self.condition(value, depth + 1)))
            else:
                parts.extend(self.field(key, value))
        if not parts:
            raise InvalidInput("a filter condition inside and/or/not may not be empty")
        return parts[0] if len(parts) == 1 else All(tuple(parts))

    def field(self, key: str, value: object) -> list[Field]:
        if not isinstance(value, Mapping):
            return [self.test(key, "eq", value)]
        if not value:
            raise InvalidInput(f"filter on {_quoted(key)}: an empty object tests nothing")
        unknown = [k for k in value if k not in OPERATORS]
        if unknown:
            raise InvalidInput(
                f"unknown filter operator {_quoted(str(unknown[0]))} on key {_quoted(key)}; "
                f"the operators are {', '.join(OPERATORS)} (to match an object value, "
                'use {"eq": {...}})'
            )
        return [self.test(key, op, v) for op, v in value.items()]

    def test(self, key: str, op: Op, value: object) -> Field:
        where = f"filter on {_quoted(key)}"
        if op in ("in", "nin"):
            if not isinstance(value, list):
                raise InvalidInput(f"{where}: '{op}' takes a list of values")
            self.count(max(1, len(value)))
            for v in value:
                _check_value(v, where)
            return Field(key, op, list(value))
        self.count(1)
        _check_value(value, where)
        if op in ORDERED and (isinstance(value, bool) or not isinstance(value, int | float | str)):
            raise InvalidInput(f"{where}: '{op}' compares with a number or a string")
        return Field(key, op, value)


def _check_value(value: object, where: str) -> None:
    """A JSON value with finite numbers and integers that fit in 64 bits."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        if isinstance(v, int):
            if not INT64_MIN <= v <= INT64_MAX:
                raise InvalidInput(f"{where}: an integer outside the 64-bit range")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise InvalidInput(f"{where}: a value is not a finite number")
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, Mapping) and all(isinstance(k, str) for k in v):
            stack.extend(v.values())
        else:
            raise InvalidInput(f"{where}: a value that is not JSON")


def as_condition(obj: object, limits: FilterLimits | None = None) -> Condition | None:
    """A condition as it is, or the JSON of one parsed (what a collection's `search` takes)."""
    return obj if isinstance(obj, CONDITIONS) else parse_filter(obj, limits)


def parse_filter(obj: object, limits: FilterLimits | None = None) -> Condition | None:
    """The condition of a request's `filter`; None (or {}) is no filter. InvalidInput if bad."""
    if obj is None or (isinstance(obj, Mapping) and not obj):
        return None
    return _Parser(limits or FilterLimits()).condition(obj, 0)


# --- matching in Python ----------------------------------------------------------------------


def json_equal(a: Any, b: Any) -> bool:
    """Equality of two decoded JSON values: numbers by value (1 == 1.0), booleans apart from
    numbers, arrays element by element, objects key by key, null only to null."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[key], b[key]) for key in a)
    if a is None or b is None:
        return a is None and b is None
    return type(a) is type(b) and a == b


def _ordered(a: Any, b: Any, op: Op) -> bool:
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
    if not numbers and not (isinstance(a, str) and isinstance(b, str)):
        return False
    if op == "gt":
        return bool(a > b)
    if op == "gte":
        return bool(a >= b)
    if op == "lt":
        return bool(a < b)
    return bool(a <= b)


def _test(f: Field, metadata: Mapping[str, Any]) -> bool:
    present = f.key in metadata
    actual = metadata.get(f.key)
    if f.op == "eq":
        return present and json_equal(actual, f.value)
    if f.op == "ne":
        return not (present and json_equal(actual, f.value))
    if f.op == "in":
        return present and any(json_equal(actual, v) for v in f.value)
    if f.op == "nin":
        return not (present and any(json_equal(actual, v) for v in f.value))
    return present and _ordered(actual, f.value, f.op)


def matches(cond: Condition, metadata: Mapping[str, Any]) -> bool:
    """Whether an item's metadata satisfies the condition."""
    if isinstance(cond, Field):
        return _test(cond, metadata)
    if isinstance(cond, All):
        return all(matches(p, metadata) for p in cond.parts)
    if isinstance(cond, AnyOf):
        return any(matches(p, metadata) for p in cond.parts)
    return not matches(cond.part, metadata)


# --- narrowing: what a store can test before `matches` ---------------------------------------


class Narrowed(Protocol):
    """A clause a store can run; `exact`: it selects exactly the matching items, otherwise a
    superset that `matches` checks row by row."""

    @property
    def exact(self) -> bool: ...


N = TypeVar("N", bound=Narrowed)


def narrow(
    cond: Condition,
    field: Callable[[Field], N | None],
    join: Callable[[str, list[N], bool], N],
    negate: Callable[[N | None], N | None],
) -> N | None:
    """The narrowest clause a store's compiler writes for `cond` (None: it cannot narrow).

    `field` writes one key test, `join("and" | "or", parts, exact)` combines clauses and
    `negate` writes `not`. An `and` keeps the parts it can write (dropping one only widens
    the superset); an `or` with a part it cannot write cannot narrow at all.
    """
    if isinstance(cond, Field):
        return field(cond)
    if isinstance(cond, Not):
        return negate(narrow(cond.part, field, join, negate))
    parts = [narrow(p, field, join, negate) for p in cond.parts]
    kept = [p for p in parts if p is not None]
    if isinstance(cond, All):
        if not kept:
            return None
        return join("and", kept, len(kept) == len(parts) and all(p.exact for p in kept))
    if len(kept) < len(parts):
        return None
    return join("or", kept, all(p.exact for p in kept))


# --- SQLite (the embedded store) ---------------------------------------------------------------


@dataclass(frozen=True)
class Sql:
    """A WHERE clause over `items.metadata` and its parameters.

    `exact`: the clause selects exactly the matching items; otherwise it selects
    a superset and each row is checked with `matches`.
    """

    clause: str
    params: tuple[Any, ...]
    exact: bool


_NUMBER = "json_type(metadata, ?) IN ('integer', 'real')"
_SQL_OPS = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _scalar_sql(path: str, op: str, value: Any) -> tuple[str, list[Any]] | None:
    """SQL for `metadata[path] <op> value` on a scalar, with JSON's types kept apart."""
    sign = _SQL_OPS[op]
    if isinstance(value, bool):
        if op != "eq":
            return None
        return "json_type(metadata, ?) = ?", [path, "true" if value else "false"]
    if value is None:
        return ("json_type(metadata, ?) = 'null'", [path]) if op == "eq" else None
    if isinstance(value, str):
        return f"(json_type(metadata, ?) = 'text' AND json_extract(metadata, ?) {sign} ?)", [
            path,
            path,
            value,
        ]
    if isinstance(value, int | float):
        return f"({_NUMBER} AND json_extract(metadata, ?) {sign} ?)", [path, path, value]
    return None  # arrays and objects: checked in Python


def _sql_field(cond: Field) -> Sql | None:
    if '"' in cond.key or "\\" in cond.key or any(ord(ch) < 0x20 for ch in cond.key):
        return None  # not expressible as a quoted SQLite JSON path label
    path = f'$."{cond.key}"'
    if cond.op == "in":
        ors = [_scalar_sql(path, "eq", v) for v in cond.value]
        if not ors or any(o is None for o in ors):
            return None
        return _sql_join("or", [Sql(o[0], tuple(o[1]), True) for o in ors if o], True)
    if cond.op in ("ne", "nin"):
        return None
    found = _scalar_sql(path, cond.op, cond.value)
    return None if found is None else Sql(found[0], tuple(found[1]), True)


def _sql_join(word: str, parts: list[Sql], exact: bool) -> Sql:
    clause = "(" + f" {word.upper()} ".join(p.clause for p in parts) + ")"
    return Sql(clause, tuple(v for p in parts for v in p.params), exact)


def to_sql(cond: Condition) -> Sql | None:
    """The narrowest SQLite clause this module can write for `cond`; None selects everything.
    `not` is left to Python."""
    return narrow(cond, _sql_field, _sql_join, lambda _: None)
