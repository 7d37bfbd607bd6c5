"""Request and response models of /embed and /v1/embeddings.

Responses are built as plain dicts (numpy arrays inside) and serialised with
orjson by `OrjsonResponse`; the response models here document them in /docs.
`parse_model` validates a JSON body or form fields into a request model and
turns pydantic's errors into FastAPI's 422.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.bundle import Modality
from service.inference.pipeline import Layer
from service.inference.pooling import Pooling

EncodingFormat = Literal["float", "base64"]
M = TypeVar("M", bound=BaseModel)


class EmbedOptions(BaseModel):
    """How to embed: which model, which layer, how to pool and encode."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(
        default=None, description="a bundle name; or give `modality` to use its default model"
    )
    modality: Modality | None = Field(
        default=None, description="use this modality's default model when `model` is not given"
    )
    pooling: Pooling = Field(
        default="mean",
        description="mean or last step vector; stats: mean ⊕ standard deviation over the "
        "valid steps (2·D values); or none (every step)",
    )
    layer: Layer = Field(
        default="context", description="context (c_t, the default) or encoder (z_t)"
    )
    normalize: bool = Field(default=True, description="L2-normalise each returned vector")
    encoding_format: EncodingFormat = Field(
        default="float", description="float lists, or base64 of little-endian float32"
    )


class EmbedRequest(EmbedOptions):
    """The JSON body of POST /embed."""

    inputs: list[str] = Field(
        min_length=1,
        description="text: plain strings; audio and image: the file's bytes in base64, "
        "or a data URI (data:audio/wav;base64,...)",
    )


Vector = list[float] | str
EmbeddingItem = Vector | list[Vector]


class EmbedResponse(BaseModel):
    """One vector per input, in input order (per-step vectors under pooling "none")."""

    model: str
    modality: Modality
    layer: Layer
    pooling: Pooling
    dim: int = Field(description="values per vector: the layer's width D (2·D under stats)")
    embeddings: list[EmbeddingItem]
    steps: list[int] | None = Field(default=None, description='pooling "none": steps per input')
    hop_seconds: float | None = Field(default=None, description='audio, pooling "none"')
    grid: list[int] | None = Field(default=None, description='image, pooling "none": [rows, cols]')
    sentences: list[list[str]] | None = Field(default=None, description='text, pooling "none"')


class OpenAIEmbeddingRequest(BaseModel):
    """The body of POST /v1/embeddings (OpenAI's fields; unknown ones are ignored)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str = Field(description="a bundle name (or a modality: its default model)")
    input: str | list[str] = Field(
        description="text, or audio and image as data URIs (data:image/png;base64,...)"
    )
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="must equal the model's width"
    )
    user: str | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Vector


class OpenAIUsage(BaseModel):
    prompt_tokens: int = Field(description="text tokens, audio frames or image grid cells")
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


def schema_error(
    loc: tuple[str | int, ...], msg: str, where: str = "body"
) -> RequestValidationError:
    """A 422 for one value, located at `loc` in the `where` of the request (body, query)."""
    return RequestValidationError(
        [{"loc": (where, *loc), "msg": msg, "type": "value_error", "input": None}]
    )


def parse_model(cls: type[M], data: bytes | dict[str, Any]) -> M:
    """Validate JSON bytes or a dict into `cls`; 422 (RequestValidationError) if it fails."""
    try:
        if isinstance(data, bytes | bytearray):
            return cls.model_validate_json(data)
        return cls.model_validate(data)
    except ValidationError as exc:
        errors = [
            {**err, "loc": ("body", *err.get("loc", ()))} for err in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors) from None


def _plain(value: Any) -> Any:
    """What the standard json module cannot write itself: numpy arrays and scalars."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class OrjsonResponse(JSONResponse):
    """JSON through orjson; numpy arrays (float32 vectors) are written natively.

    An integer beyond 64 bits (which orjson refuses) falls back to the standard
    json module rather than failing the response.
    """

    def render(self, content: Any) -> bytes:
        return render_json(content)


def render_json(content: Any) -> bytes:
    """`content` as JSON bytes: orjson, numpy natively; the json module where orjson refuses."""
    try:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return json.dumps(content, default=_plain, ensure_ascii=False).encode("utf-8")
