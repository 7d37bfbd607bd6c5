"""Probes: /health (the process runs) and /ready (it can serve).

Readiness lives on `app.state`: `pending` is the set of start-up steps not
done yet (the lifespan adds "models" and removes it once every bundle is
loaded and warm; a later step, such as opening collections, adds its own),
and `draining` is set when shutdown begins. A collection backend that can
fail on its own (Milvus) is asked on every /ready: 503 while it does not answer.
The body's `storage` says whether the data folder takes writes (each /ready
while it does not tries a small write, so it turns back without a restart) and
which collections are out of service; with CPC_READY_REQUIRES_STORAGE a folder
that refuses writes makes /ready 503 too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.error_handlers import error_response
from service.errors import Unavailable

router = APIRouter(tags=["probes"])


def not_ready_reason(state: Any) -> str | None:
    """Why the app cannot serve yet (or any more), or None when it is ready."""
    if getattr(state, "draining", False):
        return "not ready: the service is shutting down"
    pending: set[str] = getattr(state, "pending", {"start-up"})
    if pending:
        problem = getattr(state, "collections_problem", None)
        return f"not ready: still loading {', '.join(sorted(pending))}" + (
            f" ({problem})" if problem else ""
        )
    return None


async def backend_problem(state: Any) -> str | None:
    """Why the collection backend cannot serve now (Milvus: its server is asked), or None;
    None too while the collections are not open (`pending` says so then)."""
    collections = getattr(state, "collections", None)
    if collections is None:
        return None
    try:
        await asyncio.to_thread(collections.ping)
    except Unavailable as exc:
        return f"not ready: {exc.detail}"
    return None


@router.get("/health", summary="Liveness: 200 while the process runs")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: 200 once every bundle is loaded and warm, 503 before and while draining",
    responses={503: {"description": "not ready; `detail` says why"}},
)
async def ready(request: Request) -> JSONResponse:
    state = request.app.state
    reason = not_ready_reason(state) or await backend_problem(state)
    if reason is not None:
        return error_response(503, reason)
    storage = await asyncio.to_thread(state.collections.storage_state, True)
    if storage["writable"] is False and state.settings.ready_requires_storage:
        return error_response(503, f"not ready: {storage['detail']}", storage=storage)
    registry = getattr(state, "registry", None)
    models = registry.names if registry is not None else []
    return JSONResponse({"status": "ready", "models": models, "storage": storage})
