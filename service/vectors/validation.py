"""What a collection accepts: names, item ids, metadata and vectors.

Each check raises the domain error the API maps to a status (InvalidInput 400,
Conflict 409, TooLarge 413) with a message that says what is allowed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.errors import Conflict, InvalidInput, TooLarge
from service.inference.pooling import VECTOR_POOLINGS
from service.vectors.index import INDEX_KINDS
from service.vectors.store import dump_metadata

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_ID_CHARS = 256


def validate_collection_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid collection name {name!r}: use 1 to 64 lowercase letters, digits, "
            "'_' or '-', starting with a letter or digit"
        )
    return name


def validate_item_id(item_id: object) -> str:
    if not isinstance(item_id, str) or not 1 <= len(item_id) <= MAX_ID_CHARS:
        raise InvalidInput(f"an item id must be a string of 1 to {MAX_ID_CHARS} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in item_id):
        raise InvalidInput(f"item id {item_id!r} contains a control character or lone surrogate")
    return item_id


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_integers(value: object, what: str) -> None:
    """InvalidInput if `value` (JSON, any depth) holds an integer outside the 64-bit range,
    which JSON readers (and this service's own encoder) cannot round-trip."""
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, int) and not isinstance(current, bool):
            if not INT64_MIN <= current <= INT64_MAX:
                raise InvalidInput(
                    f"{what} holds an integer outside the 64-bit range (-2**63 to 2**63-1); "
                    "send it as a string or a float"
                )
        elif isinstance(current, Mapping):
            stack.extend(current.values())
        elif isinstance(current, list | tuple):
            stack.extend(current)


def validate_metadata(metadata: object, max_bytes: int) -> dict[str, Any]:
    """The metadata as a dict (None gives {}); it must be a JSON object of at most `max_bytes`."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInput(f"metadata must be a JSON object, not {type(metadata).__name__}")
    if not all(isinstance(key, str) for key in metadata):
        raise InvalidInput("metadata keys must be strings")
    out = dict(metadata)
    check_integers(out, "metadata")
    size = len(dump_metadata(out).encode())
    if size > max_bytes:
        raise TooLarge(f"metadata is {size} bytes as JSON; the limit is {max_bytes}")
    return out


def prepare_vector(vector: object, dim: int, collection: str) -> np.ndarray:
    """A finite, non-zero vector of `dim` numbers, L2-normalised, as float32."""
    if isinstance(vector, np.ndarray):
        if vector.dtype.kind not in "fiu":
            raise InvalidInput(f"vector must hold numbers, not {vector.dtype}")
    elif not isinstance(vector, Sequence) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in vector
    ):
        raise InvalidInput("vector must be a list of numbers")
    arr = np.asarray(vector, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInput("vector must be a non-empty flat list of numbers")
    if arr.size != dim:
        raise Conflict(f"vector has {arr.size} values, collection '{collection}' has dim {dim}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInput("vector holds NaN or infinite values")
    scale = np.max(np.abs(arr))
    if scale == 0:
        raise InvalidInput("vector is all zeros, so it has no direction to compare")
    arr = arr / scale
    return (arr / np.linalg.norm(arr)).astype(np.float32)


def check_new_collection(
    name: str,
    model: str,
    dim: int,
    index: str,
    pooling: str,
    max_dim: tuple[int, str] | None = None,
) -> None:
    """InvalidInput unless these describe a collection a backend can create (`max_dim`: the
    backend's largest dim and its name, if it has one)."""
    validate_collection_name(name)
    if index not in INDEX_KINDS:
        raise InvalidInput(f"unknown index '{index}'; choose one of {', '.join(INDEX_KINDS)}")
    if pooling not in VECTOR_POOLINGS:
        raise InvalidInput(
            f"unknown pooling {pooling!r} for a collection; choose one of "
            f"{', '.join(VECTOR_POOLINGS)}"
        )
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise InvalidInput(f"dim must be a positive whole number, not {dim!r}")
    if max_dim is not None and dim > max_dim[0]:
        raise InvalidInput(f"dim must be at most {max_dim[0]} with the {max_dim[1]}, not {dim}")
    if not isinstance(model, str) or not model:
        raise InvalidInput("a collection needs the name of its model")


def checked_items(
    items: Sequence[tuple[str, Any, Mapping[str, Any] | None]],
    dim: int,
    collection: str,
    max_metadata_bytes: int,
) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    """Upsert items `(id, vector, metadata)` checked and normalised, in order; the first bad
    one raises."""
    if not items:
        raise InvalidInput("no items to upsert")
    return [
        (
            validate_item_id(item_id),
            prepare_vector(vector, dim, collection),
            validate_metadata(metadata, max_metadata_bytes),
        )
        for item_id, vector, metadata in items
    ]
