"""The routers of the API, one per resource.

`ROUTERS` is what `create_app` includes, in order; a new resource (such as
collections or search) is one more entry here.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.routes import embed, health, metrics, models, openai

ROUTERS: list[APIRouter] = [
    health.router,
    metrics.router,
    models.router,
    embed.router,
    openai.router,
]

__all__ = ["ROUTERS"]
