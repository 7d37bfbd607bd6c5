"""POST /embed: vectors of audio, images or text, from JSON or multipart/form-data.

JSON: `EmbedRequest`. Multipart: `file` parts (audio or image, recognised from
their bytes) and/or `text` parts, with the options of `EmbedOptions` as form
fields. Both go through `service.inference.pipeline.embed_inputs`, and the response is
serialised with orjson (vectors straight from numpy).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.api.bodies import (
    INPUT_FIELDS,
    FormBody,
    openapi_body,
    part_limit,
    read_json_or_form,
)
from service.api.deps import RegistryDep, SettingsDep
from service.api.schemas import (
    EmbedOptions,
    EmbedRequest,
    EmbedResponse,
    EncodingFormat,
    OrjsonResponse,
    parse_model,
)
from service.config import Settings
from service.inference.inputs import ApiInput
from service.inference.pipeline import Embeddings, embed_inputs
from service.inference.registry import ModelRegistry
from service.inference.wire import to_base64

router = APIRouter(tags=["embed"])


def _form_schema() -> dict[str, Any]:
    options = EmbedOptions.model_json_schema()
    properties: dict[str, Any] = {
        "file": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "audio or image files; the modality is recognised from the bytes",
        },
        "text": {"type": "array", "items": {"type": "string"}, "description": "text inputs"},
        **options.get("properties", {}),
    }
    return {"type": "object", "properties": properties}


REQUEST_BODY = openapi_body(EmbedRequest, _form_schema())


async def read_request(
    request: Request, max_text_chars: int
) -> tuple[EmbedOptions, list[ApiInput]]:
    """Options and inputs from a JSON or form body; 415 for any other media type."""
    parts = f"`{'`/`'.join(INPUT_FIELDS)}` parts"
    body = await read_json_or_form(
        request, EmbedRequest, "POST /embed", parts, part_limit(max_text_chars)
    )
    if isinstance(body, FormBody):
        options = parse_model(EmbedOptions, {k: v[-1] for k, v in body.fields.items()})
        return options, body.inputs
    return body, list(body.inputs)


def embeddings_body(result: Embeddings, encoding_format: EncodingFormat) -> dict[str, Any]:
    """The /embed response: one vector (or list of step vectors) per input."""
    encoded: list[Any]
    if encoding_format == "base64":
        if result.pooling == "none":
            encoded = [[to_base64(step) for step in v] for v in result.vectors]
        else:
            encoded = [to_base64(v) for v in result.vectors]
    else:
        encoded = result.vectors  # numpy arrays: orjson writes them as (nested) lists
    body: dict[str, Any] = {
        "model": result.model.name,
        "modality": result.model.modality,
        "layer": result.layer,
        "pooling": result.pooling,
        "dim": result.dim,
        "embeddings": encoded,
    }
    if result.pooling == "none":
        body["steps"] = result.steps
        body.update(result.step_info())
    return body


@router.post(
    "/embed",
    summary="Embed audio, images or text",
    response_model=EmbedResponse,
    response_class=OrjsonResponse,
    openapi_extra=REQUEST_BODY,
    responses={
        400: {"description": "undecodable or empty input"},
        404: {"description": "unknown model"},
        413: {"description": "body, audio length, image size or batch over the limits"},
        415: {"description": "a media type the model does not take"},
        429: {"description": "the inference queue is full"},
    },
)
async def embed(request: Request, registry: RegistryDep, settings: SettingsDep) -> OrjsonResponse:
    options, inputs = await read_request(request, settings.max_text_chars)
    return OrjsonResponse(await embed_body(registry, settings, options, inputs))


async def embed_body(
    registry: ModelRegistry, settings: Settings, options: EmbedOptions, inputs: list[ApiInput]
) -> dict[str, Any]:
    """The /embed response body of these inputs (the route's and the lean path's)."""
    result = await embed_inputs(
        registry,
        inputs,
        model=options.model,
        modality=options.modality,
        pooling=options.pooling,
        layer=options.layer,
        normalize=options.normalize,
        max_batch=settings.max_batch,
    )
    return embeddings_body(result, options.encoding_format)
