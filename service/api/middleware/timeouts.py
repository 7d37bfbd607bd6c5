"""The request timeout (CPC_REQUEST_TIMEOUT_S), as a pure-ASGI middleware.

A request that has not started its response within the limit is cancelled
and answered 408 when the time ran out while waiting for the client's body,
504 otherwise. Once the response has started the clock stops. What the
cancellation does to queued inference and to writes already running:
docs/architecture.md (Serving).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.error_handlers import error_response
from service.errors import TimedOut

logger = logging.getLogger(__name__)


class RequestTimeoutMiddleware:
    """Answers 504 (or 408) for a request not answered within `timeout_s` seconds."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "receiving": False, "body_done": False}
        deadline: asyncio.Timeout | None = None

        async def timed_receive() -> Message:
            state["receiving"] = True
            message = await receive()  # a cancellation here leaves "receiving" set: it was
            state["receiving"] = False  # waiting for the client when the time ran out
            if message["type"] == "http.request" and not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                if deadline is not None:
                    deadline.reschedule(None)  # the answer is on its way: no more limit
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                await self.app(scope, timed_receive, timed_send)
        except TimeoutError:
            if deadline is None or not deadline.expired() or state["started"]:
                raise  # not ours, or too late to answer
            waiting = state["receiving"] and not state["body_done"]
            method, path = str(scope.get("method", "")), str(scope.get("path", ""))
            response = timeout_response(self.timeout_s, method, path, waiting_for_body=waiting)
            await response(scope, receive, send)


def timeout_response(
    timeout_s: float, method: str, path: str, *, waiting_for_body: bool
) -> JSONResponse:
    """408 when the time ran out waiting for the client's body, 504 otherwise (logged)."""
    limit = f"{timeout_s:g} s (CPC_REQUEST_TIMEOUT_S)"
    if waiting_for_body:
        status = 408
        detail = f"the request body did not arrive within {limit}"
    else:
        status = TimedOut.status_code
        detail = (
            f"the request took longer than {limit} and was cancelled; a write may still have "
            "landed whole: read it back before retrying"
        )
    logger.warning("%s %s: %s", method, path, detail)
    return error_response(status, detail, path=path)
