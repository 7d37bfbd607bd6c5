"""/collections: create, describe and delete collections; upsert, get and delete items.

Upserts take JSON (`UpsertRequest`) or multipart/form-data (docs/api.md). A
whole batch is validated and embedded first, then written in one fsynced
transaction (in a worker thread) before the response: all of it or none.
Item routes end in `{item_id:anypath}`, as ids may hold '/'; collection routes
take `{name:anypath}` and come last, so that a bad name or id gets a 400 that
says why (docs/architecture.md, Routes).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from service.api.bodies import (
    FormBody,
    openapi_body,
    parse_json_field,
    part_limit,
    read_json,
    read_json_or_form,
)
from service.api.collection_schemas import (
    CollectionDescription,
    CollectionList,
    CreateCollectionRequest,
    ItemPage,
    ItemResponse,
    UpsertRequest,
    UpsertResponse,
)
from service.api.deps import CollectionsDep, MetricsDep, RegistryDep, SettingsDep
from service.api.routes import paths  # noqa: F401 (registers {x:anypath})
from service.api.schemas import OrjsonResponse, schema_error
from service.config import Settings
from service.errors import InvalidInput, NotFound
from service.inference.pooling import pooled_dim
from service.vectors.operations import (
    NewItem,
    check_collection_name,
    delete_item,
    forget_count,
    get_collection,
    prepare_items,
    refresh_count,
    write_items,
)
from service.vectors.validation import validate_item_id

router = APIRouter(tags=["collections"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such collection"}}
_BAD_NAME: dict[int | str, dict[str, Any]] = {
    400: {"description": "not a valid collection name or item id"}
}
_STORAGE: dict[int | str, dict[str, Any]] = {
    503: {"description": "the collection is out of service (damaged files), or Milvus is down"},
    507: {"description": "the data folder is full or read-only: nothing was written"},
}

UPSERT_BODY = openapi_body(
    UpsertRequest,
    {
        "type": "object",
        "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "text": {"type": "array", "items": {"type": "string"}},
            "id": {"type": "array", "items": {"type": "string"}},
            "metadata": {
                "type": "array",
                "items": {"type": "string"},
                "description": "a JSON object per item, in order",
            },
            "keep_originals": {
                "type": "boolean",
                "description": "keep a small original of each item (default true)",
            },
        },
    },
)


def _form_metadata(values: list[str]) -> list[Any]:
    out: list[Any] = []
    for i, text in enumerate(values):
        value = parse_json_field(text, ("metadata", i))
        if not isinstance(value, dict):
            raise schema_error(("metadata", i), "must be a JSON object")
        out.append(value)
    return out


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _form_flag(values: list[str], name: str) -> bool | None:
    """A true/false form field (the last one given), or None when absent."""
    if not values:
        return None
    value = values[-1].strip().lower()
    if value not in _TRUE | _FALSE:
        raise schema_error((name,), "must be true or false")
    return value in _TRUE


async def read_items(request: Request, settings: Settings) -> tuple[list[NewItem], bool | None]:
    """The items of an upsert, from JSON or from a multipart form, and `keep_originals`."""
    limit = part_limit(settings.max_text_chars, settings.max_metadata_bytes)
    parts = "`file`/`text` parts with `id` fields"
    body = await read_json_or_form(request, UpsertRequest, "an upsert", parts, limit)
    if isinstance(body, FormBody):
        return _form_items(body)
    items = [
        NewItem(id=item.id, input=item.input, vector=item.vector, metadata=item.metadata)
        for item in body.items
    ]
    return items, body.keep_originals


def _form_items(form: FormBody) -> tuple[list[NewItem], bool | None]:
    """The items of an upsert form: one `id` per part, `metadata` none or one per part."""
    inputs, fields = form.inputs, form.fields
    ids = fields.pop("id", [])
    metadata = _form_metadata(fields.pop("metadata", []))
    keep = _form_flag(fields.pop("keep_originals", []), "keep_originals")
    if fields:
        raise schema_error(
            (sorted(fields)[0],),
            "unexpected form field; an upsert form takes `file` or `text` parts, "
            "`id`, `metadata` and `keep_originals` fields",
        )
    if not inputs:
        raise InvalidInput("no items given: send `file` or `text` parts, with an `id` each")
    if len(ids) != len(inputs):
        raise schema_error(
            ("id",),
            f"{len(ids)} `id` fields for {len(inputs)} `file`/`text` parts: give one id per "
            "part, in the same order",
        )
    if metadata and len(metadata) != len(inputs):
        raise schema_error(
            ("metadata",),
            f"{len(metadata)} `metadata` fields for {len(inputs)} `file`/`text` parts: give "
            "none, or one per part in the same order",
        )
    items = [
        NewItem(id=item_id, input=value, metadata=metadata[i] if metadata else None)
        for i, (item_id, value) in enumerate(zip(ids, inputs, strict=True))
    ]
    return items, keep


# --- items (before the {name:anypath} routes, which would swallow them) ---------------------


@router.post(
    "/collections/{name}/items",
    summary="Insert or replace items (durable before the response)",
    response_model=UpsertResponse,
    openapi_extra=UPSERT_BODY,
    responses={
        **_NOT_FOUND,
        **_STORAGE,
        409: {"description": "a vector of the wrong dimension"},
        413: {"description": "too many items, or an input or metadata over the limits"},
    },
)
async def upsert_items(
    name: str,
    request: Request,
    collections: CollectionsDep,
    registry: RegistryDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> dict[str, Any]:
    coll = get_collection(collections, name)
    items, keep = await read_items(request, settings)
    prepared, originals = await prepare_items(coll, registry, settings, items, keep)
    ids = await write_items(coll, prepared, metrics, originals)
    return {"upserted": len(ids), "ids": ids}


@router.get(
    "/collections/{name}/items/{item_id:anypath}",
    summary="One item, with its vector",
    response_model=ItemResponse,
    response_class=OrjsonResponse,
    responses={**_NOT_FOUND, **_BAD_NAME},
)
async def get_item(name: str, item_id: str, collections: CollectionsDep) -> OrjsonResponse:
    coll = get_collection(collections, name)
    validate_item_id(item_id)
    item = await asyncio.to_thread(coll.get, item_id)
    return OrjsonResponse({"id": item.id, "metadata": item.metadata, "vector": item.vector})


@router.delete(
    "/collections/{name}/items/{item_id:anypath}",
    summary="Delete one item (durable before the response)",
    responses={**_NOT_FOUND, **_BAD_NAME, **_STORAGE},
)
async def remove_item(
    name: str, item_id: str, collections: CollectionsDep, metrics: MetricsDep
) -> dict[str, int]:
    coll = get_collection(collections, name)
    validate_item_id(item_id)
    await delete_item(coll, item_id, metrics)
    return {"deleted": 1}


def _cursor(item_id: str) -> str:
    """The opaque cursor of the page after `item_id`: its UTF-8 in URL-safe base64."""
    return base64.urlsafe_b64encode(item_id.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def _after(cursor: str) -> str:
    """The item id a cursor stands for; 400 if it is not one this service wrote."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return validate_item_id(raw.decode("utf-8"))
    except (ValueError, InvalidInput):
        raise InvalidInput(
            "cursor is not one a page gave: pass the `next_cursor` of the previous page as it is"
        ) from None


@router.get(
    "/collections/{name}/items",
    summary="Page through the items of a collection, in id order",
    response_model=ItemPage,
    response_class=OrjsonResponse,
    responses={**_NOT_FOUND, **_BAD_NAME},
)
async def list_items(
    name: str,
    collections: CollectionsDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(description="most items, 1 to CPC_MAX_PAGE")] = 100,
    cursor: Annotated[
        str | None, Query(description="the `next_cursor` of the previous page")
    ] = None,
) -> OrjsonResponse:
    """Every item present for the whole scan is on exactly one page, whatever is written
    meanwhile; items written during the scan may or may not appear."""
    if not 1 <= limit <= settings.max_page:
        raise schema_error(
            ("limit",), f"limit must be from 1 to {settings.max_page} (CPC_MAX_PAGE)", where="query"
        )
    coll = get_collection(collections, name)
    after = None if cursor is None else _after(cursor)
    items, last = await asyncio.to_thread(coll.page, limit, after)
    return OrjsonResponse(
        {
            "items": [{"id": item.id, "metadata": item.metadata} for item in items],
            "next_cursor": None if last is None else _cursor(last),
        }
    )


@router.post("/collections/{name:anypath}/items", include_in_schema=False)
async def upsert_items_bad_name(name: str) -> None:
    """An upsert into a name with a '/' (which the route above cannot match): 400."""
    check_collection_name(name)  # raises: no valid name holds a '/'
    raise NotFound(f"no collection '{name}'")


# --- collections ---------------------------------------------------------------------------


@router.get("/collections", summary="Every collection", response_model=CollectionList)
async def list_collections(collections: CollectionsDep) -> dict[str, Any]:
    def describe_all() -> list[dict[str, Any]]:
        out = []
        for coll in collections.list():
            try:
                out.append(coll.describe())
            except NotFound:  # deleted while we looked
                continue
        return out

    unavailable = [
        {"name": name, "detail": detail} for name, detail in collections.unavailable().items()
    ]
    return {"collections": await asyncio.to_thread(describe_all), "unavailable": unavailable}


CREATE_BODY = openapi_body(CreateCollectionRequest)


@router.put(
    "/collections/{name:anypath}",
    summary="Create a collection",
    status_code=201,
    response_model=CollectionDescription,
    openapi_extra=CREATE_BODY,
    responses={
        **_BAD_NAME,
        **_STORAGE,
        404: {"description": "unknown model"},
        409: {"description": "the collection exists"},
    },
)
async def create_collection(
    name: str,
    request: Request,
    collections: CollectionsDep,
    registry: RegistryDep,
    metrics: MetricsDep,
) -> dict[str, Any]:
    check_collection_name(name)
    body = await read_json(request, CreateCollectionRequest, "PUT /collections/{name}")
    served = registry.get(body.model)

    def create() -> dict[str, Any]:
        dim = pooled_dim(served.dim, body.pooling)
        coll = collections.create(name, served.name, dim, body.index, body.pooling)
        refresh_count(metrics, coll)
        return coll.describe()

    return await asyncio.to_thread(create)


@router.get(
    "/collections/{name:anypath}",
    summary="One collection",
    response_model=CollectionDescription,
    responses={**_NOT_FOUND, **_BAD_NAME},
)
async def describe_collection(name: str, collections: CollectionsDep) -> dict[str, Any]:
    coll = get_collection(collections, name)
    return await asyncio.to_thread(coll.describe)


@router.delete(
    "/collections/{name:anypath}",
    summary="Delete a collection and its items",
    responses={**_NOT_FOUND, **_BAD_NAME},
)
async def delete_collection(
    name: str, collections: CollectionsDep, metrics: MetricsDep
) -> dict[str, str]:
    check_collection_name(name)
    await asyncio.to_thread(collections.delete, name)
    forget_count(metrics, name)
    return {"deleted": name}
