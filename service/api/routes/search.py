"""POST /search: the items of a collection nearest to an input or a vector.

JSON: `SearchRequest` (exactly one of `input`, `vector` and `queries`, the last
for several searches in one call, answered with one result list each). Multipart: one
`file` or `text` part, with `collection`, `k` and optionally `filter` (a JSON
object as a string) as form fields. The input is embedded with the
collection's model through `embed_inputs`; the search itself runs in a worker
thread. Results are best first, at most `k`, scored by cosine similarity;
with `with_original`, each also says the media type of the original its item
keeps (or null), so that a page knows what it can show.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request

from service.api.bodies import (
    FormBody,
    openapi_body,
    parse_json_field,
    part_limit,
    read_json_or_form,
)
from service.api.collection_schemas import (
    SearchOptions,
    SearchRequest,
    SearchResponse,
)
from service.api.deps import CollectionsDep, RegistryDep, SettingsDep
from service.api.schemas import OrjsonResponse, parse_model, schema_error
from service.config import Settings
from service.errors import TooLarge
from service.inference.inputs import ApiInput
from service.vectors.backend import CollectionHandle
from service.vectors.collection import SearchHit
from service.vectors.filters import FilterLimits, parse_filter
from service.vectors.operations import get_collection, query_vectors

router = APIRouter(tags=["search"])

SEARCH_BODY = openapi_body(
    SearchRequest,
    {
        "type": "object",
        "required": ["collection"],
        "properties": {
            "file": {"type": "string", "format": "binary"},
            "text": {"type": "string"},
            "collection": {"type": "string"},
            "k": {"type": "integer", "default": 10},
            "filter": {"type": "string", "description": "a JSON object"},
            "with_original": {"type": "boolean", "default": False},
        },
    },
)


@dataclass
class Query:
    """One search to run: what to look for and its parsed filter."""

    input: ApiInput | None
    vector: Sequence[float] | None
    filter: object


async def read_queries(
    request: Request, settings: Settings
) -> tuple[SearchOptions, list[Query], bool]:
    """Options and queries of a search, from JSON or a multipart form; and whether the
    body gave a `queries` list (then the results are one list per query)."""
    limit = part_limit(settings.max_text_chars, settings.max_metadata_bytes)
    body = await read_json_or_form(
        request, SearchRequest, "POST /search", "a `file` or `text` part", limit
    )
    if isinstance(body, FormBody):
        values: dict[str, Any] = {key: found[-1] for key, found in body.fields.items()}
        if "filter" in values:
            values["filter"] = parse_json_field(values["filter"], ("filter",))
        inputs = body.inputs
        if len(inputs) != 1:
            raise schema_error(
                ("file",), f"give exactly one `file` or `text` part to search by, not {len(inputs)}"
            )
        options = parse_model(SearchOptions, values)
        return options, [Query(inputs[0], None, options.filter)], False
    if body.queries is None:
        return body, [Query(body.input, body.vector, body.filter)], False
    if len(body.queries) > settings.max_queries:
        raise TooLarge(
            f"{len(body.queries)} queries in one search; the limit is {settings.max_queries} "
            "(CPC_MAX_QUERIES)"
        )
    queries = [
        Query(q.input, q.vector, q.filter if q.filter is not None else body.filter)
        for q in body.queries
    ]
    return body, queries, True


@router.post(
    "/search",
    summary="Nearest items of a collection, best first",
    response_model=SearchResponse,
    response_class=OrjsonResponse,
    openapi_extra=SEARCH_BODY,
    responses={
        400: {"description": "undecodable input, or an invalid collection name or filter"},
        404: {"description": "no such collection"},
        409: {"description": "a vector of the wrong dimension"},
        422: {"description": "not the schema, or k outside 1..CPC_MAX_K"},
    },
)
async def search(
    request: Request, collections: CollectionsDep, registry: RegistryDep, settings: SettingsDep
) -> OrjsonResponse:
    options, queries, several = await read_queries(request, settings)
    if not 1 <= options.k <= settings.max_k:
        given = str(options.k) if abs(options.k) < 10**12 else "a number that large"
        raise schema_error(("k",), f"k must be from 1 to {settings.max_k} (CPC_MAX_K), not {given}")
    limits = FilterLimits(settings.max_filter_terms, settings.max_filter_depth)
    wheres = [parse_filter(q.filter, limits) for q in queries]
    coll = get_collection(collections, options.collection)
    vectors = await query_vectors(coll, registry, settings, [(q.input, q.vector) for q in queries])
    results = []
    for vector, where in zip(vectors, wheres, strict=True):
        hits = await asyncio.to_thread(coll.search, vector, options.k, where)
        results.append(await _results(coll, hits, options.with_original))
    return OrjsonResponse({"collection": coll.name, "results": results if several else results[0]})


async def _results(coll: CollectionHandle, hits: list[SearchHit], with_original: bool) -> list[Any]:
    """The response entries of one query's hits, with their originals' types if asked."""
    results = [{"id": h.id, "score": h.score, "metadata": h.metadata} for h in hits]
    if with_original:
        kept = await asyncio.to_thread(coll.original_types, [h.id for h in hits])
        for hit, result in zip(hits, results, strict=True):
            result["original"] = kept.get(hit.id)
    return results
