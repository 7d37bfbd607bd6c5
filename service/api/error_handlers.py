"""Exception handlers: the one place where errors become HTTP responses.

Every error body is `{"detail": "<what was wrong, for a person>"}`: a domain
error (`service.errors.CPCError`) gets its own status code, a request that does
not match the schema 422 (with an `errors` list), and anything else is a bug:
500 with the stack trace in the log, never in the response. Under /v1/ the body
also carries OpenAI's `{"error": {...}}`. The full rules: docs/architecture.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.errors import CPCError, Overloaded, Unauthorized, Unavailable

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "internal error"
MAX_SHOWN_PROBLEMS = 5
MAX_LOC_CHARS = 64  # a field name longer than this (a whole body as a form key) is cut
OPENAI_PREFIX = "/v1/"
OPENAI_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def error_response(
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    *,
    path: str = "",
    **extra: Any,
) -> JSONResponse:
    """The JSON error body every route and middleware uses (`path`: the request's)."""
    body: dict[str, Any] = {"detail": detail, **extra}
    if path.startswith(OPENAI_PREFIX):
        kind = OPENAI_ERROR_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        body["error"] = {"message": detail, "type": kind, "code": status}
    return JSONResponse(body, status_code=status, headers=headers)


def _short(part: Any) -> Any:
    """A location part as shown: long names cut, so a detail never echoes a whole body."""
    if isinstance(part, str) and len(part) > MAX_LOC_CHARS:
        return f"{part[: MAX_LOC_CHARS // 2]!r}... ({len(part)} characters)"
    return part


def _where(loc: Sequence[Any]) -> str:
    """("body", "inputs", 3) -> "inputs[3]"; the leading "body" is left out."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def describe_validation_errors(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
    """One readable sentence and a compact list (no echoed input) of schema problems."""
    compact: list[dict[str, Any]] = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error")
            msg = (
                f"the body is not valid JSON ({reason})" if reason else "the body is not valid JSON"
            )
            loc = ("body",)
        loc = tuple(_short(part) for part in loc)
        compact.append({"loc": list(loc), "msg": msg, "type": str(err.get("type", ""))})
    shown = [f"{_where(e['loc'])}: {e['msg']}" for e in compact[:MAX_SHOWN_PROBLEMS]]
    more = len(compact) - len(shown)
    sentence = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
    return f"the request does not match the schema: {sentence}", compact


async def handle_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CPCError)
    return domain_error_response(exc, request.method, request.url.path)


def domain_error_response(exc: CPCError, method: str, path: str) -> JSONResponse:
    """The response of a domain error: its status, its detail and the headers it implies."""
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = "1"
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s or 1)))
    if exc.status_code >= 500:
        logger.warning("%s %s: %s", method, path, exc.detail)
    return error_response(exc.status_code, exc.detail, headers or None, path=path)


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail, errors = describe_validation_errors(exc.errors())
    return error_response(422, detail, path=request.url.path, errors=errors)


async def handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.method} {request.url.path[:200]}; see /docs"
    elif exc.status_code == 405 and detail == "Method Not Allowed":
        allowed = (headers or {}).get("allow", "")
        detail = f"{request.method} is not allowed on {request.url.path[:200]}" + (
            f"; allowed: {allowed}" if allowed else ""
        )
    return error_response(exc.status_code, detail, headers, path=request.url.path)


async def handle_client_disconnect(request: Request, exc: Exception) -> JSONResponse:
    return client_disconnect_response(request.method, request.url.path)


def client_disconnect_response(method: str, path: str) -> JSONResponse:
    """The 400 of a client that hung up mid-body (logged; the client no longer reads it)."""
    logger.info("%s %s: the client hung up before sending its whole body", method, path)
    return error_response(
        400, "the client closed the connection before the body was complete", path=path
    )


def log_unexpected(method: str, path: str, exc: BaseException) -> None:
    """Log a bug once, with its stack trace (never sent to the client)."""
    logger.error("unhandled error on %s %s: %r", method, path, exc, exc_info=exc)


def internal_error(path: str) -> JSONResponse:
    """The 500 response of a bug: no detail beyond "internal error"."""
    return error_response(500, INTERNAL_ERROR, path=path)


async def handle_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log_unexpected(request.method, request.url.path, exc)
    return internal_error(request.url.path)


def install_exception_handlers(app: FastAPI) -> None:
    """Register every handler on `app`."""
    app.add_exception_handler(CPCError, handle_domain_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(ClientDisconnect, handle_client_disconnect)
    app.add_exception_handler(Exception, handle_unexpected_error)
