"""Prometheus metrics of one app, and the middleware that records every request.

Each app owns its own `CollectorRegistry` (never the process-global one), so
tests can create many apps in one process. Requests are labelled by their
route template (`/collections/{name}`), never by the raw path, so the number
of series stays bounded; a path that matches no route is labelled
"unmatched".
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

UNMATCHED = "unmatched"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The metric families of API.md, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cpc_requests_total",
            "HTTP requests by route template and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "cpc_request_duration_seconds",
            "Time from request to the end of the response, by route template",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.inference_batch_size = Histogram(
            "cpc_inference_batch_size",
            "Inputs in one onnxruntime call, by model",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "cpc_queue_depth",
            "Inputs waiting for inference, all models together",
            registry=self.registry,
        )
        self.collection_items = Gauge(
            "cpc_collection_items",
            "Items stored in each collection",
            ["collection"],
            registry=self.registry,
        )

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.request_duration.labels(route=route).observe(seconds)


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
            try:
                self.metrics.observe_request(
                    route_template(scope, self.routes),
                    status["code"],
                    time.perf_counter() - start,
                )
            except Exception:  # metrics must never break a response
                logger.exception("could not record request metrics")
