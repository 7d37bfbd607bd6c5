"""GET /models and /models/{name}: what each loaded bundle is and how it preprocesses."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.deps import RegistryDep
from service.api.schemas import OrjsonResponse

router = APIRouter(tags=["models"])


@router.get("/models", summary="Every loaded model", response_class=OrjsonResponse)
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    return {
        "models": [served.encoder.describe() for served in registry],
        "defaults": registry.defaults,
    }


@router.get(
    "/models/{name}",
    summary="One loaded model",
    response_class=OrjsonResponse,
    responses={404: {"description": "no model of that name is loaded"}},
)
async def get_model(name: str, registry: RegistryDep) -> dict[str, Any]:
    return registry.get(name).encoder.describe()
