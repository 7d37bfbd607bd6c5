"""What the collection and search routes do, apart from HTTP.

`open_collections` (at start-up), `prepare_items` (validate a whole upsert and
embed its inputs through `embed_inputs`, the batching path /embed uses, with
the collection's pooling, and make the originals, before anything is written),
`query_vectors` (the vectors a search looks for) and `write_items` /
`delete_item` (the fsynced store writes, in a worker thread, then the
cpc_collection_items gauge). Errors are the domain errors of `service.errors`;
an item's error names it (`items[3].input: ...`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.config import Settings
from service.errors import CPCError, InvalidInput, NotFound, TooLarge
from service.inference.inputs import ApiInput, PlainText, to_raw
from service.inference.pipeline import embed_inputs
from service.inference.registry import ModelRegistry, ServedModel
from service.metrics import Metrics
from service.vectors.backend import CollectionBackend, CollectionHandle
from service.vectors.originals import OriginalLimits, make_original
from service.vectors.store import Original
from service.vectors.validation import (
    prepare_vector,
    validate_collection_name,
    validate_item_id,
    validate_metadata,
)

logger = logging.getLogger(__name__)

_GAUGE_LOCK = threading.Lock()  # a gauge update reads the count and sets it as one step
_INPUT_PREFIX = re.compile(r"^input (\d+)")
_MAX_QUOTED = 100  # longest name an error message quotes

PreparedItem = tuple[str, np.ndarray, dict[str, Any]]


@dataclass
class NewItem:
    """One item of an upsert, from JSON or multipart: exactly one of `input` and `vector`."""

    id: str
    input: ApiInput | None = None
    vector: Sequence[float] | None = None
    metadata: Any = None


# --- start-up and metrics --------------------------------------------------------------------


def refresh_count(metrics: Metrics, coll: CollectionHandle) -> None:
    """Set cpc_collection_items{collection} to the stored count (skipped once it is closed)."""
    with _GAUGE_LOCK:
        try:
            count = coll.count()
        except NotFound:  # deleted meanwhile: its label is gone and stays gone
            return
        metrics.collection_items.labels(collection=coll.name).set(count)


def forget_count(metrics: Metrics, name: str) -> None:
    """Drop the gauge's series of a deleted collection."""
    with _GAUGE_LOCK, contextlib.suppress(KeyError):
        metrics.collection_items.remove(name)


def open_collections(manager: CollectionBackend, registry: ModelRegistry, metrics: Metrics) -> None:
    """Open every stored collection and ensure one per loaded bundle (blocking).

    A bundle whose collection holds vectors of another dim (the model was
    retrained wider, say) is logged as an error and left alone; the other
    collections serve as usual.
    """
    manager.open_all()
    for served in registry:
        try:
            manager.ensure(served.name, model=served.name, width=served.dim)
        except CPCError as exc:
            logger.error(
                "collection '%s' for model '%s' is not usable as the model's default: %s",
                served.name,
                served.name,
                exc.detail,
            )
    for coll in manager.list():
        refresh_count(metrics, coll)


# --- lookups ---------------------------------------------------------------------------------


def check_collection_name(name: str) -> str:
    """`name` if it is a valid collection name, else 400 (quoting it only when it is short)."""
    try:
        return validate_collection_name(name)
    except InvalidInput:
        if len(name) <= _MAX_QUOTED:
            raise
    raise InvalidInput(
        f"invalid collection name of {len(name)} characters: use 1 to 64 lowercase letters, "
        "digits, '_' or '-', starting with a letter or digit"
    )


def get_collection(manager: CollectionBackend, name: str) -> CollectionHandle:
    """The collection called `name`: 400 for a name that cannot exist, 404 if absent."""
    return manager.get(check_collection_name(name))


def model_of(coll: CollectionHandle, registry: ModelRegistry) -> ServedModel:
    """The loaded model that embeds the inputs of `coll`; 404 if it is not loaded."""
    model = coll.info.model
    if model not in registry:
        raise NotFound(
            f"collection '{coll.name}' holds vectors of model '{model}', which is not loaded "
            f"(loaded models: {', '.join(registry.names) or 'none'}); send vectors instead"
        )
    return registry.get(model)


def check_vector_length(length: int, max_dim: int) -> None:
    if length > max_dim:
        raise TooLarge(
            f"the vector has {length} values; the limit is {max_dim} (CPC_MAX_VECTOR_DIM)"
        )


def check_item_count(count: int, max_batch: int) -> None:
    if count > max_batch:
        raise TooLarge(f"the request has {count} items; the limit is {max_batch} (CPC_MAX_BATCH)")


# --- upserts ---------------------------------------------------------------------------------


def _renamed(exc: CPCError, detail: str) -> CPCError:
    """The same kind of error (same status code), saying where it happened."""
    return type(exc)(detail)


async def prepare_items(
    coll: CollectionHandle,
    registry: ModelRegistry,
    settings: Settings,
    items: Sequence[NewItem],
    keep_originals: bool | None = None,
) -> tuple[list[PreparedItem], list[Original | None] | None]:
    """Every item validated and its vector ready (embedded or normalised), or an error; and
    the original each keeps (None for a vector item), or None when none are kept
    (`keep_originals` False, CPC_MAX_ORIGINAL_BYTES 0, or no item has an input)."""
    check_item_count(len(items), settings.max_batch)
    ids: list[str] = []
    metadata: list[dict[str, Any]] = []
    vectors: list[np.ndarray | None] = []
    for i, item in enumerate(items):
        try:
            ids.append(validate_item_id(item.id))
            metadata.append(validate_metadata(item.metadata, settings.max_metadata_bytes))
            if (item.vector is None) == (item.input is None):
                raise InvalidInput("give exactly one of `input` and `vector`")
            if item.vector is not None:
                check_vector_length(len(item.vector), settings.max_vector_dim)
                vectors.append(prepare_vector(item.vector, coll.dim, coll.name))
            else:
                vectors.append(None)
        except CPCError as exc:
            raise _renamed(exc, f"items[{i}]: {exc.detail}") from exc
    to_embed = [i for i, vector in enumerate(vectors) if vector is None]
    originals: list[Original | None] | None = None
    if to_embed:
        served = model_of(coll, registry)
        inputs = [value for i in to_embed if (value := items[i].input) is not None]
        try:  # decoded once here: embedded below, and rendered as originals from the same bytes
            raws = [
                to_raw(value, j, served.modality, served.name) for j, value in enumerate(inputs)
            ]
        except CPCError as exc:
            raise _at_items(exc, to_embed) from exc
        decoded = [PlainText(raw) if isinstance(raw, str) else raw for raw in raws]
        embedded = await _embed(coll, served, registry, settings, decoded, where=to_embed)
        for j, i in enumerate(to_embed):
            try:
                vectors[i] = prepare_vector(embedded[j], coll.dim, coll.name)
            except CPCError as exc:
                raise _renamed(exc, f"items[{i}].input: {exc.detail}") from exc
        limits = OriginalLimits.from_settings(settings)
        if keep_originals is not False and limits.max_bytes > 0:
            made = await asyncio.to_thread(
                lambda: [make_original(raw, served.modality, limits) for raw in raws]
            )
            kept = dict(zip(to_embed, made, strict=True))
            originals = [kept.get(i) for i in range(len(items))]
    prepared = [(ids[i], v, metadata[i]) for i, v in enumerate(vectors) if v is not None]
    return prepared, originals


def _at_items(exc: CPCError, where: Sequence[int], label: str = "items") -> CPCError:
    """An error about "input j" of a batch, reworded as one about "items[where[j]].input"
    (`label`: "items" or "queries")."""
    detail = _INPUT_PREFIX.sub(lambda m: f"{label}[{where[int(m[1])]}].input", exc.detail)
    return _renamed(exc, detail)


async def _embed(
    coll: CollectionHandle,
    served: ServedModel,
    registry: ModelRegistry,
    settings: Settings,
    inputs: Sequence[ApiInput],
    where: Sequence[int] | None = None,
    label: str = "items",
) -> list[np.ndarray]:
    """The normalised context vectors of `inputs` with `coll`'s model (`served`) and pooling.

    With `where` (the item or query index of each input), an error about "input j" is
    reported as one about "<label>[where[j]].input".
    """
    try:
        result = await embed_inputs(
            registry,
            inputs,
            model=served.name,
            pooling=coll.info.pooling,
            max_batch=settings.max_batch,
        )
    except CPCError as exc:
        if where is None:
            raise
        raise _at_items(exc, where, label) from exc
    return result.vectors


async def write_items(
    coll: CollectionHandle,
    items: list[PreparedItem],
    metrics: Metrics,
    originals: Sequence[Original | None] | None = None,
) -> list[str]:
    """Upsert (durable on return) in a worker thread, then refresh the gauge."""

    def write() -> list[str]:
        ids = coll.upsert(items, originals)
        if coll.cheap_count:
            refresh_count(metrics, coll)
        return ids

    return await asyncio.to_thread(write)


async def delete_item(coll: CollectionHandle, item_id: str, metrics: Metrics) -> None:
    def delete() -> None:
        coll.delete(item_id)
        if coll.cheap_count:
            refresh_count(metrics, coll)

    await asyncio.to_thread(delete)


# --- search ----------------------------------------------------------------------------------


async def query_vectors(
    coll: CollectionHandle,
    registry: ModelRegistry,
    settings: Settings,
    queries: Sequence[tuple[ApiInput | None, Sequence[float] | None]],
) -> list[np.ndarray]:
    """The normalised vector each search looks for, `(input, vector)` each: a vector as
    given, the inputs embedded together (CPC_MAX_BATCH a call). With several queries an
    error names its query ("queries[j]")."""
    several = len(queries) > 1
    vectors: list[np.ndarray | None] = []
    for j, (value, vector) in enumerate(queries):
        try:
            if (value is None) == (vector is None):
                raise InvalidInput("give exactly one of `input` and `vector`")
            if vector is not None:
                check_vector_length(len(vector), settings.max_vector_dim)
                vectors.append(prepare_vector(vector, coll.dim, coll.name))
            else:
                vectors.append(None)
        except CPCError as exc:
            if not several:
                raise
            raise _renamed(exc, f"queries[{j}]: {exc.detail}") from exc
    to_embed = [j for j, v in enumerate(vectors) if v is None]
    if to_embed:
        served = model_of(coll, registry)
        for start in range(0, len(to_embed), settings.max_batch):
            where = to_embed[start : start + settings.max_batch]
            inputs = [value for j in where if (value := queries[j][0]) is not None]
            embedded = await _embed(
                coll, served, registry, settings, inputs, where if several else None, "queries"
            )
            for j, e in zip(where, embedded, strict=True):
                vectors[j] = prepare_vector(e, coll.dim, coll.name)
    return [v for v in vectors if v is not None]
