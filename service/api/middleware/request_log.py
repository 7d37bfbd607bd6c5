"""Request ids, one access-log line per request, and the last word on unexpected errors.

The outermost middleware of the app (pure ASGI). It takes the request's sane
`X-Request-ID` or makes one up, sets it in `service.logging_setup.REQUEST_ID`
for every line logged while serving the request and returns it as a response
header; logs one line per request on `service.access` (never a header or a
body); and answers an exception that escaped every handler with the 500 of
`service.api.error_handlers`, logged once with its stack trace and not
re-raised. The line's fields: docs/architecture.md (Logging).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.error_handlers import internal_error, log_unexpected
from service.api.middleware.metrics import route_template
from service.logging_setup import REQUEST_ID

access_logger = logging.getLogger("service.access")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def request_id_of(scope: Scope) -> str:
    """The client's X-Request-ID if it is sane, else a new random one."""
    for key, value in scope.get("headers", []):
        if key == b"x-request-id":
            given = bytes(value).decode("latin-1").strip()
            if _SANE_ID.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    if not client:
        return None
    host, port = client[0], client[1]
    return f"{host}:{port}"


class RequestLogMiddleware:
    """Request id in and out, an access line per request, and a 500 for what escapes."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        sent: dict[str, Any] = {"status": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = int(message["status"])
                add_request_id(message, request_id)
            await send(message)

        method, path = str(scope.get("method", "")), str(scope.get("path", ""))
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log_unexpected(method, path, exc)
            if sent["status"] is None:
                await internal_error(path)(scope, receive, send_with_id)
        finally:
            route = route_template(scope, self.routes)
            log_access(scope, method, route, sent["status"], start, request_id)
            REQUEST_ID.reset(token)


def add_request_id(start: Message, request_id: str) -> None:
    """Add the X-Request-ID header to an `http.response.start` message."""
    MutableHeaders(scope=start).append(REQUEST_ID_HEADER, request_id)


def log_access(
    scope: Scope, method: str, route: str, status: int | None, start: float, request_id: str
) -> None:
    """The access line of one request (on `service.access`, when it logs INFO)."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    duration_ms = round((time.perf_counter() - start) * 1000.0, 2)
    fields = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": duration_ms,
        "request_id": request_id,
        "client": _client(scope),
    }
    try:
        access_logger.info(
            "%s %s %s %.1f ms",
            method,
            route,
            status if status is not None else "-",
            duration_ms,
            extra={"fields": fields},
        )
    except Exception:  # a log line must never break a response
        logging.getLogger(__name__).exception("could not write the access line")
