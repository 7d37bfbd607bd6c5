"""The middleware that counts and times every HTTP request by its route template.

A path that matches no route is labelled "unmatched", so the number of series
stays bounded whatever clients send.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

logger = logging.getLogger(__name__)

UNMATCHED = "unmatched"


def route_template(scope: Scope, routes: list[BaseRoute]) -> str:
    """The path template of the route that served `scope` (or would have)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    for candidate in routes:
        match, _ = candidate.matches(scope)
        if match is not Match.NONE:
            found = getattr(candidate, "path", None)
            if isinstance(found, str):
                return found
    return UNMATCHED


class MetricsMiddleware:
    """Pure-ASGI middleware: counts and times each HTTP request by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            record_request(self.metrics, route_template(scope, self.routes), status["code"], start)


def record_request(metrics: Metrics, route: str, status: int, start: float) -> None:
    """Count and time one request that began at `start` (perf_counter)."""
    try:
        metrics.observe_request(route, status, time.perf_counter() - start)
    except Exception:  # metrics must never break a response
        logger.exception("could not record request metrics")
