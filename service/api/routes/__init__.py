"""The routers of the API, one per resource.

`ROUTERS` is what `create_app` includes, in order; a new resource is one more
entry here. `collection_views` (paths below /collections/{name}/) comes before
`collections`, whose catch-all `{name:anypath}` routes would match them too.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.api.routes import (
    collection_views,
    collections,
    embed,
    health,
    metrics,
    models,
    openai,
    playground,
    search,
)

ROUTERS: list[APIRouter] = [
    health.router,
    metrics.router,
    models.router,
    embed.router,
    openai.router,
    collection_views.router,
    collections.router,
    search.router,
    playground.router,
]

__all__ = ["ROUTERS"]
