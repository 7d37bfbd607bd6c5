"""The Prometheus metric families of one app.

Each app owns its own `CollectorRegistry` (never the process-global one), so
tests can create many apps in one process. Requests are labelled by their
route template (`/collections/{name}`), never by the raw path
(`service.api.middleware.metrics` records them), so the number of series
stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The metric families of docs/api.md, registered in a registry of their own."""

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

        self.storage_failures = Counter(
            "cpc_storage_failures_total",
            "Writes, collection creations and snapshots the data folder refused, by operation "
            "and reason (full, read_only, io)",
            ["operation", "reason"],
            registry=self.registry,
        )
        self.storage_writable = Gauge(
            "cpc_storage_writable",
            "1 while the data folder takes writes, 0 from a refused write until one succeeds",
            registry=self.registry,
        )
        self.storage_writable.set(1)
        self.collections_unavailable = Gauge(
            "cpc_collections_unavailable",
            "Collections kept out of service because their files are damaged",
            registry=self.registry,
        )

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.request_duration.labels(route=route).observe(seconds)
