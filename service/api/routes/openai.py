"""POST /v1/embeddings: the OpenAI embeddings API, for the official clients unchanged.

Text inputs are strings; audio and image inputs are data URIs (or base64).
Vectors are the /embed defaults: context layer, mean pooling, L2-normalised.
`usage` counts what the model consumed: subword tokens for text, frames for
audio, grid cells for images. The `openai` Python client asks for base64 by
default and decodes it itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.api.bodies import openapi_body, read_json
from service.api.deps import RegistryDep, SettingsDep
from service.api.schemas import (
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OrjsonResponse,
)
from service.config import Settings
from service.errors import InvalidInput
from service.inference.pipeline import embed_inputs
from service.inference.registry import ModelRegistry
from service.inference.wire import to_base64

router = APIRouter(tags=["openai"])

REQUEST_BODY = openapi_body(OpenAIEmbeddingRequest)


@router.post(
    "/v1/embeddings",
    summary="OpenAI-compatible embeddings",
    response_model=OpenAIEmbeddingResponse,
    response_class=OrjsonResponse,
    openapi_extra=REQUEST_BODY,
)
async def create_embeddings(
    request: Request, registry: RegistryDep, settings: SettingsDep
) -> OrjsonResponse:
    body = await read_json(request, OpenAIEmbeddingRequest, "POST /v1/embeddings")
    return OrjsonResponse(await openai_body(registry, settings, body))


async def openai_body(
    registry: ModelRegistry, settings: Settings, body: OpenAIEmbeddingRequest
) -> dict[str, Any]:
    """The /v1/embeddings response body (the route's and the lean path's)."""
    inputs = [body.input] if isinstance(body.input, str) else list(body.input)
    name: str | None = body.model
    modality: str | None = None
    if name not in registry and name in registry.defaults:
        name, modality = None, body.model  # "audio" etc. with no bundle of that name
    served = registry.resolve(name, modality)
    if body.dimensions is not None and body.dimensions != served.dim:
        raise InvalidInput(
            f"model {served.name!r} returns {served.dim} dimensions; "
            f"`dimensions` {body.dimensions} cannot change that"
        )
    result = await embed_inputs(registry, inputs, model=served.name, max_batch=settings.max_batch)
    data: list[dict[str, Any]] = [
        {
            "object": "embedding",
            "index": i,
            "embedding": to_base64(v) if body.encoding_format == "base64" else v,
        }
        for i, v in enumerate(result.vectors)
    ]
    used = sum(result.usage)
    return {
        "object": "list",
        "data": data,
        "model": result.model.name,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }
