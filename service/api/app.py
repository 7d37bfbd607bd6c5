"""The application factory and its lifespan.

`create_app(settings)` builds the FastAPI app: exception handlers, the routers
of `service.api.routes.ROUTERS`, and the middleware (outermost first): request
log, metrics, CORS (when origins are set), API keys (when a key is set),
request timeout, body limit. The lifespan loads and warms up the bundles,
takes the data folder's shared lock, opens the collections and starts the
batchers before /ready turns 200; at shutdown it drains, stops the batchers
and closes the collections (docs/architecture.md, Serving).

`cpc-embed serve` runs it with uvicorn as the factory "service.api.app:create_app".
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.api.error_handlers import install_exception_handlers
from service.api.fast_path import LeanEmbedMiddleware
from service.api.middleware.auth import ApiKeyMiddleware
from service.api.middleware.body_size import BodyLimitMiddleware
from service.api.middleware.metrics import MetricsMiddleware
from service.api.middleware.request_log import REQUEST_ID_HEADER, RequestLogMiddleware
from service.api.middleware.timeouts import RequestTimeoutMiddleware
from service.api.routes import ROUTERS
from service.api.shutdown import drain_on_signals
from service.config import Settings
from service.errors import BundleError, Unavailable
from service.inference.allocator import tune_allocator
from service.inference.registry import ModelRegistry, load_registry
from service.metrics import Metrics
from service.vectors.backend import CollectionBackend
from service.vectors.datalock import DataDirLock
from service.vectors.filters import FilterLimits
from service.vectors.index import set_faiss_threads
from service.vectors.manager import CollectionManager
from service.vectors.milvus import MAX_ORIGINAL_BYTES, MilvusCollections
from service.vectors.operations import open_collections, refresh_count
from service.vectors.storage import StorageHealth, data_dir_problem

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Contrastive Predictive Coding embeddings of audio, images and text, served from ONNX "
    "bundles. Every error is a JSON object with a `detail` field."
)


def _prepare_data_dir(settings: Settings) -> None:
    problem = data_dir_problem(settings.data_dir)
    if problem is not None:
        raise RuntimeError(problem)


async def _snapshot_loop(manager: CollectionManager, interval_s: float) -> None:
    """Write the snapshots of changed collections every `interval_s` seconds, for ever."""
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(manager.snapshot_all)


async def _open_collections(app: FastAPI, registry: ModelRegistry) -> CollectionManager:
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    storage = StorageHealth(settings.data_dir, settings.storage_probe_bytes)
    manager = CollectionManager(
        settings.data_dir,
        max_metadata_bytes=settings.max_metadata_bytes,
        check_stores=settings.check_stores,
        storage=storage,
    )

    def count_failure(operation: str, reason: str) -> None:
        metrics.storage_failures.labels(operation=operation, reason=reason).inc()

    storage.listeners.append(count_failure)
    metrics.storage_writable.set_function(lambda: float(storage.writable))
    metrics.collections_unavailable.set_function(lambda: float(len(manager.unavailable())))
    try:
        await asyncio.to_thread(open_collections, manager, registry, metrics)
    except BaseException:
        await asyncio.to_thread(manager.close_all)
        raise
    return manager


def _milvus_collections(settings: Settings) -> MilvusCollections:
    return MilvusCollections(
        settings.milvus_uri,
        token=settings.milvus_token or "",
        db_name=settings.milvus_db,
        prefix=settings.milvus_prefix,
        consistency=settings.milvus_consistency,
        max_metadata_bytes=settings.max_metadata_bytes,
        filter_limits=FilterLimits(settings.max_filter_terms, settings.max_filter_depth),
    )


COUNT_INTERVAL_S = 15.0  # how often the items gauge follows a Milvus collection


async def _count_loop(app: FastAPI) -> None:
    """Refresh cpc_collection_items from collections whose count is a remote query."""
    while True:
        await asyncio.sleep(COUNT_INTERVAL_S)
        collections = app.state.collections
        if collections is None:
            continue
        try:
            for coll in await asyncio.to_thread(collections.list):
                await asyncio.to_thread(refresh_count, app.state.metrics, coll)
        except Unavailable as exc:
            logger.debug("items gauge not refreshed: %s", exc.detail)


async def _open_milvus_collections(
    app: FastAPI, manager: MilvusCollections, registry: ModelRegistry
) -> None:
    """Open the collections in Milvus, trying again until it answers: the API serves /embed
    meanwhile, and collection routes and /ready answer 503 saying why."""
    state = app.state
    delay_s, most_s = 1.0, 30.0
    while True:
        try:
            await asyncio.to_thread(open_collections, manager, registry, state.metrics)
        except Unavailable as exc:
            state.collections_problem = exc.detail
            logger.warning("collections not open yet: %s; next try in %.0f s", exc.detail, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(most_s, 2 * delay_s)
            continue
        state.collections = manager
        state.collections_problem = None
        state.pending.discard("collections")
        logger.info("collections open on Milvus at %s", manager.connection.address)
        return


def start_draining_on_signals(state: Any) -> Callable[[], None]:
    """Mark `state` as draining as soon as SIGTERM or SIGINT arrives (see service.api.shutdown)."""
    loop = asyncio.get_running_loop()

    def begin(signum: int) -> None:
        state.draining = True  # only a flag: safe inside a signal handler
        loop.call_soon_threadsafe(
            functools.partial(
                logger.info,
                "%s received: draining (/ready answers 503), finishing the requests in flight",
                signal.Signals(signum).name,
            ),
            context=contextvars.Context(),  # not the context of the request it interrupted
        )

    return drain_on_signals(begin)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Serve with FAISS on one thread (its default OpenMP threads are many times slower
    here), and give the process its own thread count back when the app stops."""
    previous = set_faiss_threads(1)
    try:
        async with _serve(app):
            yield
    finally:
        set_faiss_threads(previous)


@asynccontextmanager
async def _serve(app: FastAPI) -> AsyncIterator[None]:
    """Load and warm every bundle, open the collections, then serve; on shutdown, drain,
    stop the batchers and close the collections."""
    state = app.state
    settings: Settings = state.settings
    if settings.release_memory:
        tune_allocator()  # before the models' thread pools exist
    if settings.collection_backend == "milvus":
        async with _serve_with_milvus(app):
            yield
        return
    try:
        registry = await asyncio.to_thread(load_registry, settings, state.metrics)
        _prepare_data_dir(settings)
        data_lock = DataDirLock(settings.data_dir, exclusive=False).acquire()
    except (BundleError, RuntimeError) as exc:  # DataDirBusy is a RuntimeError
        logger.error("cannot start: %s", exc)
        raise
    try:
        manager = await _open_collections(app, registry)
    except Exception as exc:
        data_lock.release()
        logger.error("cannot start: opening the collections failed: %s", exc)
        raise
    state.collections = manager
    state.pending.discard("collections")
    registry.start()
    state.registry = registry
    state.pending.discard("models")
    snapshots = None
    if settings.snapshot_interval_s > 0:
        snapshots = asyncio.create_task(_snapshot_loop(manager, settings.snapshot_interval_s))
    logger.info(
        "ready with %d model(s): %s; %d collection(s)",
        len(registry),
        ", ".join(registry.names) or "none",
        len(manager.list()),
    )
    try:
        async with _until_shutdown(state, registry, manager, [snapshots]):
            yield
    finally:
        data_lock.release()


@asynccontextmanager
async def _until_shutdown(
    state: Any,
    registry: ModelRegistry,
    manager: CollectionBackend,
    tasks: list[asyncio.Task[None] | None],
) -> AsyncIterator[None]:
    """Serve until shutdown, then drain: /ready turns 503 at the first signal; at the end
    the background `tasks` stop, then the batchers, then the collections close."""
    restore_signals = start_draining_on_signals(state)
    try:
        yield
    finally:
        state.draining = True
        restore_signals()
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await registry.stop()
        await asyncio.to_thread(manager.close_all)  # embedded: writes the changed snapshots
        logger.info("stopped")


@asynccontextmanager
async def _serve_with_milvus(app: FastAPI) -> AsyncIterator[None]:
    """As `_serve`, with the collections in Milvus: no data folder and no snapshots, and a
    Milvus that is not up yet delays the collections, not the start."""
    state = app.state
    settings: Settings = state.settings
    try:
        registry = await asyncio.to_thread(load_registry, settings, state.metrics)
        manager = _milvus_collections(settings)
    except (BundleError, RuntimeError) as exc:  # RuntimeError: pymilvus is not installed
        logger.error("cannot start: %s", exc)
        raise
    registry.start()
    state.registry = registry
    state.pending.discard("models")
    if settings.max_original_bytes > MAX_ORIGINAL_BYTES:
        logger.warning(
            "CPC_MAX_ORIGINAL_BYTES is %d, but Milvus keeps originals of at most %d bytes; "
            "larger ones (audio clips) are not kept",
            settings.max_original_bytes,
            MAX_ORIGINAL_BYTES,
        )
    opening = asyncio.create_task(_open_milvus_collections(app, manager, registry))
    counting = asyncio.create_task(_count_loop(app))
    logger.info("ready with %d model(s): %s", len(registry), ", ".join(registry.names) or "none")
    async with _until_shutdown(state, registry, manager, [opening, counting]):
        yield


def _add_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    # Each add_middleware wraps what is there: the last one added runs first.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestTimeoutMiddleware, timeout_s=settings.request_timeout_s)
    if settings.api_key or settings.read_api_key:
        app.add_middleware(
            ApiKeyMiddleware, api_key=settings.api_key, read_api_key=settings.read_api_key
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[REQUEST_ID_HEADER],
        )
    # The routers' own routes too: FastAPI wraps an included router in an object without a
    # path, and a request refused before routing (401, 413) is still labelled by its route.
    routes = [*app.router.routes, *(route for router in ROUTERS for route in router.routes)]
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    app.add_middleware(RequestLogMiddleware, routes=routes)
    if settings.lean_embed_path:
        app.add_middleware(LeanEmbedMiddleware, state=app.state, settings=settings, metrics=metrics)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app serving the bundles of `settings.models_dir` (default: from the environment)."""
    settings = settings if settings is not None else Settings()
    app = FastAPI(
        title="cpc-embed",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    metrics = Metrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = None
    app.state.collections = None
    # start-up steps not done yet; /ready is 503 until empty
    app.state.pending = {"models", "collections"}
    app.state.collections_problem = None  # why the collections are not open, when known
    app.state.draining = False
    install_exception_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    _add_middleware(app, settings, metrics)
    return app
