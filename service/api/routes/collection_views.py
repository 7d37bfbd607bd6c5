"""Read-only views of a collection for people: its 2-D map and the originals of its items.

- `GET /collections/{name}/map?limit=500&vector=<base64>`: a PCA of at most
  `limit` items, with the axes and mean, and `vector` placed on it as `query`;
- `GET /collections/{name}/originals/{item_id}`: the original an item keeps
  (see `service.vectors.originals`), with its media type.

These routes come before the collection routes in `ROUTERS`, whose
`{name:anypath}` would otherwise swallow them. The contract: docs/api.md.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query
from fastapi.responses import Response

from service.api.collection_schemas import CollectionMap
from service.api.deps import CollectionsDep, SettingsDep
from service.api.routes import paths  # noqa: F401 (registers {x:anypath})
from service.api.schemas import OrjsonResponse, schema_error
from service.errors import InvalidInput
from service.inference.wire import from_base64
from service.vectors.map import pca_2d
from service.vectors.operations import check_vector_length, get_collection
from service.vectors.validation import prepare_vector, validate_item_id

router = APIRouter(tags=["collections"])

DEFAULT_MAP_POINTS = 500
_ORIGINAL_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "private, no-cache",
}


def decode_vector(text: str, max_dim: int) -> np.ndarray:
    """A base64 little-endian float32 vector (standard or URL-safe alphabet)."""
    compact = text.strip().replace(" ", "+")  # a '+' left unescaped in a query reads as ' '
    check_vector_length(len(compact) * 3 // 16, max_dim)  # before decoding a huge string
    try:
        return from_base64(compact)
    except ValueError as exc:
        raise InvalidInput(
            f"vector is not valid base64 of little-endian float32 values ({exc})"
        ) from exc


@router.get(
    "/collections/{name}/map",
    summary="A 2-D PCA map of the collection, optionally with a query vector placed on it",
    response_model=CollectionMap,
    response_class=OrjsonResponse,
    responses={
        400: {"description": "invalid name or vector"},
        404: {"description": "no such collection"},
        409: {"description": "a vector of the wrong dimension"},
        422: {"description": "limit outside 1..CPC_MAX_MAP_POINTS"},
    },
)
async def collection_map(
    name: str,
    collections: CollectionsDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(description="most items to place")] = DEFAULT_MAP_POINTS,
    vector: Annotated[
        str | None, Query(description="a vector to place: base64 of little-endian float32")
    ] = None,
) -> OrjsonResponse:
    if not 1 <= limit <= settings.max_map_points:
        raise schema_error(
            ("limit",),
            f"limit must be from 1 to {settings.max_map_points} (CPC_MAX_MAP_POINTS)",
            where="query",
        )
    coll = get_collection(collections, name)
    query = None
    if vector is not None:
        query = prepare_vector(decode_vector(vector, settings.max_vector_dim), coll.dim, coll.name)

    def build() -> dict[str, Any]:
        count, items = coll.sample(limit)
        vectors = np.stack([i.vector for i in items if i.vector is not None]) if items else None
        projection = pca_2d(vectors if vectors is not None else np.zeros((0, coll.dim)))
        body: dict[str, Any] = {
            "collection": coll.name,
            "count": count,
            "sampled": len(items),
            "explained_variance": projection.explained,
            "mean": projection.mean,
            "components": projection.components,
            "points": [
                {"id": item.id, "x": float(x), "y": float(y), "metadata": item.metadata}
                for item, (x, y) in zip(items, projection.coords.tolist(), strict=True)
            ],
        }
        if query is not None:
            x, y = projection.project(query)
            body["query"] = {"x": x, "y": y}
        return body

    return OrjsonResponse(await asyncio.to_thread(build))


@router.get(
    "/collections/{name}/originals/{item_id:anypath}",
    summary="The original an item keeps (image thumbnail, start of a clip, or text)",
    response_class=Response,
    responses={
        200: {
            "content": {"image/jpeg": {}, "audio/wav": {}, "text/plain": {}},
            "description": "the original's bytes",
        },
        400: {"description": "invalid name or id"},
        404: {"description": "no such collection or item, or the item keeps no original"},
    },
)
async def get_original(name: str, item_id: str, collections: CollectionsDep) -> Response:
    coll = get_collection(collections, name)
    validate_item_id(item_id)
    original = await asyncio.to_thread(coll.get_original, item_id)
    return Response(original.data, media_type=original.media_type, headers=_ORIGINAL_HEADERS)
