"""The routers of the API, one per resource.

`ROUTERS` is what `create_app` includes, in order; a new resource is one more
entry here.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.routes import collections, embed, health, metrics, models, openai, search

ROUTERS: list[APIRouter] = [
    health.router,
    metrics.router,
    models.router,
    embed.router,
    openai.router,
    collections.router,
    search.router,
]

__all__ = ["ROUTERS"]
