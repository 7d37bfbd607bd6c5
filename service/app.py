"""The application factory and its lifespan.

`create_app(settings)` builds the FastAPI app: exception handlers, the routers
of `service.routes.ROUTERS`, and the middleware (outermost first): metrics,
CORS (when origins are set), API key (when a key is set), body limit. The
lifespan loads every bundle of CPC_MODELS_DIR, warms it up, creates
CPC_DATA_DIR, starts the batchers and only then reports ready; a bad bundle
stops the start with a message naming the file. On shutdown the app reports
not ready (draining) and stops the batchers.

`cpc-embed serve` runs it with uvicorn as the factory "service.app:create_app".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.auth import ApiKeyMiddleware
from service.config import Settings
from service.errors import BundleError
from service.handlers import install_exception_handlers
from service.limits import BodyLimitMiddleware
from service.metrics import Metrics, MetricsMiddleware
from service.registry import load_registry
from service.routes import ROUTERS

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Contrastive Predictive Coding embeddings of audio, images and text, served from ONNX "
    "bundles. Every error is a JSON object with a `detail` field."
)


def _prepare_data_dir(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(
            f"{settings.data_dir}: cannot create the data folder (CPC_DATA_DIR): {exc}"
        ) from exc


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load and warm every bundle, then serve; on shutdown, drain and stop the batchers."""
    state = app.state
    settings: Settings = state.settings
    try:
        registry = await asyncio.to_thread(load_registry, settings, state.metrics)
        _prepare_data_dir(settings)
    except (BundleError, RuntimeError) as exc:
        logger.error("cannot start: %s", exc)
        raise
    registry.start()
    state.registry = registry
    state.pending.discard("models")
    logger.info("ready with %d model(s): %s", len(registry), ", ".join(registry.names) or "none")
    try:
        yield
    finally:
        state.draining = True
        await registry.stop()
        logger.info("stopped")


def _add_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    # Each add_middleware wraps what is there: the last one added runs first.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)


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
    app.state.pending = {"models"}  # start-up steps not done yet; /ready is 503 until empty
    app.state.draining = False
    install_exception_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    _add_middleware(app, settings, metrics)
    return app
