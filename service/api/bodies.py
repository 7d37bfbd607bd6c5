"""Reading request bodies: media types, JSON into request models, and forms, with clear errors.

Every route that takes a body reads it through here, so that each one
answers the same way to a body that lies about what it is:
- JSON is taken under `application/json`, any `+json` type, or no
  Content-Type at all; it is parsed by pydantic (whose parser refuses nesting
  deeper than a few hundred levels instead of overflowing the stack), and a
  mismatch is 422;
- forms are `multipart/form-data` or `application/x-www-form-urlencoded`; a
  multipart body without a boundary, or one that cannot be parsed, is 400
  saying so, and a urlencoded "form" that is really JSON is 415 with the
  Content-Type to use;
- anything else is 415 naming what the route takes;
- a JSON value inside a form field (metadata, filter) is parsed the same way
  as a JSON body, so deep nesting is a 422 there too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel
from pydantic_core import from_json
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.collection_schemas import schema_error
from service.api.schemas import parse_model
from service.errors import InvalidInput, UnsupportedMedia

JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
URLENCODED_TYPE = "application/x-www-form-urlencoded"
FORM_TYPES = (MULTIPART_TYPE, URLENCODED_TYPE)
M = TypeVar("M", bound=BaseModel)
_MIN_PART_BYTES = 1024 * 1024


def openapi_body(
    json_model: type[BaseModel], form_schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body itself: a required `json_model` as
    JSON and, when given, a multipart form of `form_schema`."""
    content: dict[str, Any] = {JSON_TYPE: {"schema": json_model.model_json_schema()}}
    if form_schema is not None:
        content[MULTIPART_TYPE] = {"schema": form_schema}
    return {"requestBody": {"required": True, "content": content}}


def part_limit(max_text_chars: int, max_json_field_bytes: int = 0) -> int:
    """Largest non-file multipart field: a text input, or a JSON field (metadata, filter) of
    at most `max_json_field_bytes` as stored; never under 1 MiB."""
    return max(_MIN_PART_BYTES, 4 * max_text_chars + 1024, 2 * max_json_field_bytes)


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters ("" when absent)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_json(kind: str) -> bool:
    """Whether a body of media type `kind` is read as JSON (no Content-Type counts)."""
    return kind in ("", JSON_TYPE) or kind.endswith("+json")


def is_form(kind: str) -> bool:
    return kind in FORM_TYPES


def unsupported(route: str, takes: str, kind: str) -> UnsupportedMedia:
    """415 for a body of media type `kind` that `route` does not read."""
    return UnsupportedMedia(f"{route} takes {takes}, not {kind[:100]}")


async def read_json(request: Request, model: type[M], route: str) -> M:
    """The JSON body validated into `model`: 415 for a non-JSON media type, 422 if it fails."""
    kind = media_type(request)
    if not is_json(kind):
        raise unsupported(route, JSON_TYPE, kind)
    return parse_model(model, await request.body())


def _looks_like_json(body: bytes) -> bool:
    return body.lstrip()[:1] in (b"{", b"[")


@asynccontextmanager
async def read_form(request: Request, max_part_size: int) -> AsyncIterator[FormData]:
    """The form of a multipart or urlencoded body, with the errors of the module docstring."""
    kind = media_type(request)
    if kind == URLENCODED_TYPE and _looks_like_json(await request.body()):
        raise UnsupportedMedia(
            f"the body looks like JSON, but its Content-Type is {URLENCODED_TYPE}: send it "
            f"with Content-Type: {JSON_TYPE}"
        )
    if kind == MULTIPART_TYPE and "boundary=" not in request.headers.get("content-type", ""):
        raise InvalidInput(
            f"the Content-Type {MULTIPART_TYPE} has no boundary parameter, so its parts cannot "
            f"be found; let your HTTP client build the multipart body, or send {JSON_TYPE}"
        )
    try:
        form = await request.form(max_part_size=max_part_size)
    except StarletteHTTPException as exc:  # starlette's MultiPartException, as a 400
        reason = str(exc.detail).rstrip(".")
        raise InvalidInput(f"the form body could not be read ({reason})") from None
    try:
        yield form
    finally:
        await form.close()


def parse_json_field(text: str, loc: tuple[str | int, ...]) -> Any:
    """A JSON value in a form field; 422 at `loc` when it is not valid (or too deep)."""
    try:
        return from_json(text)
    except ValueError as exc:
        raise schema_error(loc, f"not valid JSON ({exc})") from None
