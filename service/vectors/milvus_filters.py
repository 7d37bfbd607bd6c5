"""Search filters (`service.vectors.filters`) compiled into Milvus boolean expressions.

Milvus 2.3 has no parameter binding, so every key and string goes into the
expression as a literal: `json.dumps(text, ensure_ascii=False)` is a Milvus
string literal (quotes, backslashes and control characters escaped; other
characters as they are, since Milvus refuses the surrogate-pair escapes that
`ensure_ascii` writes). A test of metadata key `k` reads `metadata["k"]`.

`compile_filter` gives the narrowest expression it can, and says whether it
selects exactly what `filters.matches` does (`exact`) or a superset that the
caller checks with `matches` on every row. Measured on Milvus 2.3.5 (and kept
so by tests/service/test_milvus_backend.py): on a JSON field `==`, `in` and the
orderings keep JSON's types apart like `matches` does (`true` is not `1`, `1`
equals `1.0`, a string is never compared with a number, a missing key fails
every test), strings order by code point and `not` is plain negation (true for
a missing key). What it cannot say exactly: null (no literal: `exists`), arrays
and objects (`exists`), numbers beyond 2**53 (doubles round), the empty key,
strings that are not valid UTF-8 (no narrowing), and `not` of anything inexact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from service.vectors.filters import Condition, Field, narrow

FIELD = "metadata"
NEVER = 'id == ""'  # item ids are never empty: selects nothing
ALWAYS = 'id != ""'  # selects everything
EXACT_NUMBERS = 2**53  # integers up to this size are doubles without rounding
_ORDER_SIGNS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


@dataclass(frozen=True)
class Expr:
    """A Milvus boolean expression; `exact`: it selects exactly the matching items."""

    text: str
    exact: bool


def string_literal(text: str) -> str | None:
    """`text` as a Milvus string literal, or None when it cannot be sent (not UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None  # a lone surrogate: no stored string can equal it
    return json.dumps(text, ensure_ascii=False)


def key_path(key: str) -> str | None:
    """The expression of metadata key `key`, or None for keys Milvus cannot address."""
    literal = string_literal(key)
    return None if not key or literal is None else f"{FIELD}[{literal}]"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: int | float) -> tuple[str, bool]:
    """A number literal and whether comparisons with it are exact (no double rounding)."""
    exact = abs(value) <= EXACT_NUMBERS
    if isinstance(value, int):
        return str(value), exact
    return repr(float(value)), exact


def _scalar(value: Any) -> tuple[str, bool] | None:
    """The literal of a string, number or boolean and whether `==` with it is exact."""
    if isinstance(value, bool):
        return ("true" if value else "false"), True
    if isinstance(value, str):
        literal = string_literal(value)
        return None if literal is None else (literal, True)
    if _is_number(value):
        return _number(value)
    return None


def _equal(path: str, value: Any) -> Expr | None:
    """`metadata[key] == value`: null, arrays and objects only as `exists` (a superset)."""
    if value is None or isinstance(value, list | dict):
        return Expr(f"exists {path}", False)
    found = _scalar(value)
    if found is None:
        return None
    literal, exact = found
    return Expr(f"{path} == {literal}", exact)


def _type_group(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    return type(value).__name__


def _one_of(path: str, values: list[Any]) -> Expr | None:
    """`metadata[key]` equal to one of `values`: one `in [...]` per JSON type (Milvus
    refuses a list that mixes types)."""
    if not values:
        return Expr(NEVER, True)
    if any(v is None or isinstance(v, list | dict) for v in values):
        return Expr(f"exists {path}", False)  # `in` needs the key, whatever the rest says
    groups: dict[str, list[str]] = {}
    exact = True
    for value in values:
        found = _scalar(value)
        if found is None:
            return None
        literal, value_exact = found
        exact = exact and value_exact
        group = groups.setdefault(_type_group(value), [])
        if literal not in group:
            group.append(literal)
    parts = [
        f"{path} == {group[0]}" if len(group) == 1 else f"{path} in [{', '.join(group)}]"
        for group in groups.values()
    ]
    return Expr(parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")", exact)


def _ordered(path: str, op: str, value: Any) -> Expr | None:
    sign = _ORDER_SIGNS[op]
    if isinstance(value, str):
        literal = string_literal(value)
        return None if literal is None else Expr(f"{path} {sign} {literal}", True)
    literal, exact = _number(value)
    # a double-rounded bound could drop a match, not only add one: no narrowing then
    return Expr(f"{path} {sign} {literal}", True) if exact else None


def _negated(inner: Expr | None) -> Expr | None:
    """`not inner`: only an exact inner expression has an exact (or any safe) negation."""
    if inner is None or not inner.exact:
        return None
    return Expr(f"not ({inner.text})", True)


def _field(cond: Field) -> Expr | None:
    path = key_path(cond.key)
    if path is None:
        return None
    if cond.op == "eq":
        return _equal(path, cond.value)
    if cond.op == "ne":
        return _negated(_equal(path, cond.value))
    if cond.op == "in":
        return _one_of(path, cond.value)
    if cond.op == "nin":
        return _negated(_one_of(path, cond.value))
    return _ordered(path, cond.op, cond.value)


def _join(word: str, parts: list[Expr], exact: bool) -> Expr:
    text = parts[0].text if len(parts) == 1 else f" {word} ".join(f"({p.text})" for p in parts)
    return Expr(text, exact)


def compile_filter(cond: Condition) -> Expr | None:
    """The narrowest Milvus expression this module can write for `cond` (exact or a
    superset); None when it cannot narrow the items at all."""
    return narrow(cond, _field, _join, _negated)
