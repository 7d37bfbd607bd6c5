"""How a collection is laid out in Milvus: its name, its fields and its description.

`milvus_name` maps a collection name (lowercase letters, digits, '_' and '-')
to a Milvus one (letters, digits and '_'): the prefix, then the name with '_'
written '__' and '-' written '_0', which `service_name` reverses. What a
collection is (`CollectionInfo`, the index parameters and a token naming this
very creation) is JSON in the Milvus collection's description
(`describe_text`, `parse_description`), so it survives restarts and every
worker reads the same. The fields: `schema`; the vector index: `vector_index`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.inference.pooling import VECTOR_POOLINGS, VectorPooling
from service.vectors.store import CollectionInfo
from service.vectors.validation import NAME_RE

DEFAULT_PREFIX = "cpc_"
DESCRIPTION_KIND = "cpc-embed collection"
MAX_DIM = 32768  # Milvus: the widest FLOAT_VECTOR
MAX_ID_BYTES = 1024  # validation.MAX_ID_CHARS (256) characters of up to 4 UTF-8 bytes
MAX_MEDIA_TYPE_BYTES = 256
MAX_VARCHAR_BYTES = 65535  # Milvus: the largest VARCHAR value


def milvus_name(prefix: str, name: str) -> str:
    """The Milvus collection of collection `name`: letters, digits and '_' only."""
    return prefix + name.replace("_", "__").replace("-", "_0")


def service_name(prefix: str, milvus: str) -> str | None:
    """The collection name that `milvus_name` turned into `milvus`, or None."""
    if not milvus.startswith(prefix):
        return None
    out: list[str] = []
    rest = iter(milvus[len(prefix) :])
    for ch in rest:
        if ch != "_":
            out.append(ch)
            continue
        nxt = next(rest, "")
        if nxt not in ("_", "0"):
            return None
        out.append("_" if nxt == "_" else "-")
    name = "".join(out)
    return name if NAME_RE.fullmatch(name) else None


@dataclass(frozen=True)
class Described:
    """What a Milvus collection's description says it is."""

    info: CollectionInfo
    token: str
    params: dict[str, int]


def describe_text(info: CollectionInfo, token: str, params: Mapping[str, int]) -> str:
    return json.dumps(
        {
            "kind": DESCRIPTION_KIND,
            "name": info.name,
            "model": info.model,
            "dim": info.dim,
            "index": info.index,
            "pooling": info.pooling,
            "created_at": info.created_at,
            "format": info.format,
            "token": token,
            "params": dict(params),
        },
        sort_keys=True,
    )


def _pooling(value: object) -> VectorPooling:
    for pooling in VECTOR_POOLINGS:
        if value == pooling:
            return pooling
    raise ValueError(f"unknown pooling {value!r}")


def parse_description(text: str) -> Described:
    """The `Described` in a description written by `describe_text`; ValueError if none."""
    try:
        found = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the description is not JSON ({exc})") from None
    if not isinstance(found, dict) or found.get("kind") != DESCRIPTION_KIND:
        raise ValueError("the description is not a cpc-embed collection's")
    try:
        info = CollectionInfo(
            name=str(found["name"]),
            model=str(found["model"]),
            dim=int(found["dim"]),
            index=str(found["index"]),
            pooling=_pooling(found["pooling"]),
            created_at=str(found["created_at"]),
            format=int(found["format"]),
        )
        params = {str(k): int(v) for k, v in dict(found.get("params") or {}).items()}
        return Described(info, str(found["token"]), params)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the description lacks or garbles {exc}") from None


def schema(client: Any, described: Described) -> Any:
    """The fields of a collection's Milvus schema (see the module docstring)."""
    from pymilvus import DataType

    info = described.info
    schema = client.create_schema(
        auto_id=False,
        enable_dynamic_field=False,
        description=describe_text(info, described.token, described.params),
    )
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=info.dim)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("seq", DataType.INT64)
    schema.add_field("updated_at", DataType.DOUBLE)
    schema.add_field("original_type", DataType.VARCHAR, max_length=MAX_MEDIA_TYPE_BYTES)
    schema.add_field("original", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
    return schema


def vector_index(client: Any, described: Described) -> Any:
    """FLAT, or IVF_FLAT with the collection's nlist; inner product on unit vectors."""
    indexes = client.prepare_index_params()
    if described.info.index == "ivf":
        indexes.add_index(
            field_name="vector",
            index_type="IVF_FLAT",
            metric_type="IP",
            params={"nlist": described.params["nlist"]},
        )
    else:
        indexes.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    return indexes
