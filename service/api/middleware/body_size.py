"""The request body limit (CPC_MAX_REQUEST_BYTES), enforced before a body is read whole.

A pure-ASGI middleware, so it sees the body as it streams in:
- a body in a Content-Encoding (gzip, ...) is refused with 415 saying so: the
  service never inflates bodies, so it would otherwise read one as broken JSON
  or as a corrupt file;
- a Content-Length over the limit is refused with 413 at once, before a single
  body byte is read;
- a body without Content-Length (chunked) is counted chunk by chunk; the moment
  it passes the limit the app is told the client went away, whatever it
  answers is dropped, and the client gets 413 instead.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.error_handlers import error_response

logger = logging.getLogger(__name__)


class _BodyTooLarge(Exception):
    """Raised inside the app's receive() when the streamed body passes the limit."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1")).strip()
    return None


def _content_length(scope: Scope) -> str | None:
    return _header(scope, b"content-length")


def _encoding_detail(scope: Scope) -> str | None:
    """Why the body's Content-Encoding is refused, or None when it is absent or identity."""
    encoding = _header(scope, b"content-encoding")
    if encoding is None or encoding.lower() in ("", "identity"):
        return None
    return (
        f"Content-Encoding {encoding[:40]!r} is not supported: send the body uncompressed "
        "(Content-Encoding identity or none)"
    )


def too_large_detail(limit: int, size: int | None = None) -> str:
    if size is None:
        return f"the request body is over the limit of {limit} bytes (CPC_MAX_REQUEST_BYTES)"
    return f"the request body is {size} bytes; the limit is {limit} bytes (CPC_MAX_REQUEST_BYTES)"


class BodyLimitMiddleware:
    """413 for request bodies over `max_bytes`, with or without Content-Length."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        path = str(scope.get("path", ""))
        encoding = _encoding_detail(scope)
        if encoding is not None:
            await error_response(415, encoding, path=path)(scope, receive, send)
            return
        if declared is not None:
            if not declared.isdigit():
                await error_response(400, f"invalid Content-Length header {declared!r}", path=path)(
                    scope, receive, send
                )
                return
            if int(declared) > self.max_bytes:
                await error_response(
                    413, too_large_detail(self.max_bytes, int(declared)), path=path
                )(scope, receive, send)
                return
            await self.app(scope, receive, send)  # the server stops at Content-Length
            return
        await self._streamed(scope, receive, send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded and not response_started:
                return  # the app's answer to a cut-off body is replaced by the 413
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
            logger.debug("app stopped after the body passed the limit", exc_info=True)
        if exceeded and not response_started:
            logger.info("refused a streamed body over %d bytes", self.max_bytes)
            detail = too_large_detail(self.max_bytes)
            await error_response(413, detail, path=str(scope.get("path", "")))(scope, receive, send)
