"""The lean path of the two embedding routes: `POST /embed` and `POST /v1/embeddings` in JSON.

Users of embedding servers send one input per request all the time, and then
the HTTP path, not the model, sets the pace: through the five middlewares,
FastAPI's routing, dependency solving and `Request`, a one-sentence text cost
about five times its model call. `LeanEmbedMiddleware` is the outermost
middleware; a request it can serve whole it serves itself, doing in one place
what the full path does for it:

- the request id (`X-Request-ID`) in and out, the access line and the request
  metrics, exactly as the request-log and metrics middlewares write them;
- the API keys (a request they do not let through goes to the full path, which
  answers 401 or 403) and the request timeout (408 or 504, as the timeout
  middleware answers);
- the body limit: it takes only bodies with a Content-Length within
  CPC_MAX_REQUEST_BYTES and no Content-Encoding, of media type JSON;
- the body is validated by the routes' own pydantic models and answered by the
  routes' own functions (`embed_body`, `openai_body`); domain errors become the
  responses of `service.api.error_handlers`, a bug the 500 of the request log.

Everything else goes to the full app untouched: forms, other routes and
methods, a CORS request (with an Origin header while CPC_CORS_ORIGINS is set),
a request before the models are loaded, and a body the schema refuses (replayed
as read, so the full path answers with its own 422). Nothing of the contract
differs between the two paths, which the API tests run both ways.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.bodies import JSON_TYPE, is_json, media_type_of
from service.api.error_handlers import (
    client_disconnect_response,
    domain_error_response,
    internal_error,
    log_unexpected,
)
from service.api.middleware.auth import grants, key_bytes
from service.api.middleware.metrics import record_request
from service.api.middleware.request_log import add_request_id, log_access, request_id_of
from service.api.middleware.timeouts import timeout_response
from service.api.routes.embed import embed_body
from service.api.routes.openai import openai_body
from service.api.schemas import EmbedRequest, OpenAIEmbeddingRequest, parse_model, render_json
from service.config import Settings
from service.errors import CPCError
from service.inference.registry import ModelRegistry
from service.logging_setup import REQUEST_ID
from service.metrics import Metrics

logger = logging.getLogger(__name__)

Handler = Callable[[ModelRegistry, Settings, bytes], Awaitable[dict[str, Any]]]


async def _embed(registry: ModelRegistry, settings: Settings, body: bytes) -> dict[str, Any]:
    request = parse_model(EmbedRequest, body)
    return await embed_body(registry, settings, request, list(request.inputs))


async def _openai(registry: ModelRegistry, settings: Settings, body: bytes) -> dict[str, Any]:
    return await openai_body(registry, settings, parse_model(OpenAIEmbeddingRequest, body))


ROUTES: dict[str, Handler] = {"/embed": _embed, "/v1/embeddings": _openai}
_JSON = (b"content-type", JSON_TYPE.encode("ascii"))


class LeanEmbedMiddleware:
    """Serves the JSON embedding requests it can serve whole; hands every other to `app`."""

    def __init__(self, app: ASGIApp, state: Any, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.state = state  # app.state: the registry appears there once the models are loaded
        self.settings = settings
        self.metrics = metrics
        self.key = key_bytes(settings.api_key)
        self.read_key = key_bytes(settings.read_api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._handler(scope)
        if handler is None:
            await self.app(scope, receive, send)
            return
        await self._serve(handler, scope, receive, send)

    def _handler(self, scope: Scope) -> Handler | None:
        """The route's handler if this request is one the lean path serves whole."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        handler = ROUTES.get(scope["path"])
        if handler is None or self.state.registry is None:
            return None
        length: bytes | None = None
        kind = b""
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                kind = value
            elif name == b"content-encoding" or (name == b"origin" and self.settings.cors_origins):
                return None
        if length is None or not length.isdigit() or int(length) > self.settings.max_request_bytes:
            return None
        if not is_json(media_type_of(kind.decode("latin-1"))):
            return None
        if (self.key or self.read_key) and not grants(scope, self.key, self.read_key):
            return None
        return handler

    async def _serve(self, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        request_id = request_id_of(scope)
        token = REQUEST_ID.set(request_id)
        try:
            status = await self._answer(handler, scope, receive, send, request_id)
            if status is not None:
                path = scope["path"]
                record_request(self.metrics, path, status, start)
                log_access(scope, "POST", path, status, start, request_id)
        finally:
            REQUEST_ID.reset(token)

    async def _answer(
        self, handler: Handler, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> int | None:
        """Answer the request: its status, or None when the full path answered it (and
        logged and counted it)."""
        path = scope["path"]
        body: bytes | None = None  # None while it is still arriving
        deadline: asyncio.Timeout | None = None
        try:
            async with asyncio.timeout(self.settings.request_timeout_s) as deadline:
                body = await _read_body(receive)
                content = await handler(self.state.registry, self.settings, body)
            payload = render_json(content)  # the clock stopped: the answer is on its way
        except RequestValidationError:
            assert body is not None  # only a body that arrived is validated
            await self._replay(body, scope, receive, send)
            return None
        except ClientDisconnect:
            response = client_disconnect_response("POST", path)
        except CPCError as exc:
            response = domain_error_response(exc, "POST", path)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
                response = timeout_response(
                    self.settings.request_timeout_s, "POST", path, waiting_for_body=body is None
                )
            else:
                log_unexpected("POST", path, exc)
                response = internal_error(path)
        else:
            try:
                await _send_json(send, payload, request_id)
            except Exception as exc:  # the client is gone: nothing more to say
                log_unexpected("POST", path, exc)
            return 200
        await response(scope, receive, _with_id(send, request_id))
        return response.status_code

    async def _replay(self, body: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the request, with the body already read, to the full path."""
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send_json(send: Send, payload: bytes, request_id: str) -> None:
    length = (b"content-length", str(len(payload)).encode("ascii"))
    start: Message = {"type": "http.response.start", "status": 200, "headers": [_JSON, length]}
    add_request_id(start, request_id)
    await send(start)
    await send({"type": "http.response.body", "body": payload})


def _with_id(send: Send, request_id: str) -> Send:
    """`send` that adds the request id to the response's headers."""

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            add_request_id(message, request_id)
        await send(message)

    return sender
