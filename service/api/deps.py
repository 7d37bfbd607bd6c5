"""FastAPI dependencies as `Annotated` aliases: what a route needs, read from app.state.

`create_app` stores the settings, metrics and readiness on `app.state` and the
lifespan adds the model registry and the collections; routes declare
`settings: SettingsDep`, `registry: RegistryDep`, `collections: CollectionsDep`,
... and tests can swap any of them with `app.dependency_overrides`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.errors import NotReady
from service.inference.registry import ModelRegistry
from service.metrics import Metrics
from service.vectors.backend import CollectionBackend


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_registry(request: Request) -> ModelRegistry:
    """The loaded models; 503 before the lifespan has loaded them."""
    registry: ModelRegistry | None = getattr(request.app.state, "registry", None)
    if registry is None:
        raise NotReady("the models are still loading")
    return registry


async def get_collections(request: Request) -> CollectionBackend:
    """The open collections; 503 before the lifespan has opened them."""
    manager: CollectionBackend | None = getattr(request.app.state, "collections", None)
    if manager is None:
        problem = getattr(request.app.state, "collections_problem", None)
        raise NotReady(
            f"the collections are not open yet: {problem}"
            if problem
            else "the collections are still opening"
        )
    return manager


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
CollectionsDep = Annotated[CollectionBackend, Depends(get_collections)]
