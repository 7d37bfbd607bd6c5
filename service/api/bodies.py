"""Reading request bodies: media types, JSON into request models, and forms, with clear errors.

Every route that takes a body reads it through here, so that each one
answers the same way to a body that lies about what it is:
- JSON (`application/json`, any `+json` type, or no Content-Type) is parsed by
  pydantic, which refuses deep nesting; a mismatch is 422, and so is bad or
  too deep JSON inside a form field (metadata, filter);
- a multipart body without a boundary, or one that cannot be parsed, is 400;
  a urlencoded "form" that is really JSON is 415 naming the Content-Type to use;
- anything else is 415 naming what the route takes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel
from pydantic_core import from_json
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.schemas import parse_model, schema_error
from service.errors import InvalidInput, UnsupportedMedia
from service.inference.inputs import ApiInput, PlainText

JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
URLENCODED_TYPE = "application/x-www-form-urlencoded"
FORM_TYPES = (MULTIPART_TYPE, URLENCODED_TYPE)
M = TypeVar("M", bound=BaseModel)
_MIN_PART_BYTES = 1024 * 1024
INPUT_FIELDS = ("file", "text")  # the form parts that carry inputs


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
    return media_type_of(request.headers.get("content-type", ""))


def media_type_of(content_type: str) -> str:
    """The media type of a Content-Type value, lower case, without parameters."""
    return content_type.split(";", 1)[0].strip().lower()


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


async def form_inputs(form: FormData) -> tuple[list[ApiInput], dict[str, list[str]]]:
    """The `file` and `text` parts of a form, in order, and every other field by name.

    A `file` part uploaded as a file is bytes (its modality is recognised from
    them); a `text` part is PlainText (an uploaded `text` file must be UTF-8).
    """
    inputs: list[ApiInput] = []
    fields: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if key in INPUT_FIELDS:
            index = len(inputs)
            if isinstance(value, UploadFile):
                data = await value.read()
                if key == "text":
                    try:
                        inputs.append(PlainText(data.decode("utf-8")))
                    except UnicodeDecodeError as exc:
                        raise InvalidInput(
                            f"input {index} (a text part) is not valid UTF-8 ({exc.reason})"
                        ) from exc
                else:
                    inputs.append(data)
            else:
                inputs.append(PlainText(value) if key == "text" else value)
        elif isinstance(value, UploadFile):
            raise InvalidInput(
                f"unexpected file part {key!r}: files go in `file` parts, text in `text` parts"
            )
        else:
            fields.setdefault(key, []).append(value)
    return inputs, fields


@dataclass
class FormBody:
    """A form's inputs (`file` and `text` parts, in order) and its other fields by name."""

    inputs: list[ApiInput]
    fields: dict[str, list[str]]


async def read_json_or_form(
    request: Request, json_model: type[M], route: str, form_parts: str, max_part_size: int
) -> M | FormBody:
    """A JSON body validated into `json_model`, or a form's inputs and fields.

    415 for any other media type, naming the route and the form's `form_parts`.
    """
    kind = media_type(request)
    if is_form(kind):
        async with read_form(request, max_part_size) as form:
            inputs, fields = await form_inputs(form)
        return FormBody(inputs, fields)
    if is_json(kind):
        return parse_model(json_model, await request.body())
    raise unsupported(route, f"{JSON_TYPE} or multipart/form-data ({form_parts})", kind)
