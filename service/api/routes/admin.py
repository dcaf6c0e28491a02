"""``POST /admin/reload``: load the version ``CURRENT`` names now, instead of at the next poll."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.deps import RegistryDep, require_api_key
from service.api.openapi import problem_responses
from service.api.schemas import ReloadResult

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_api_key)])


@router.post("/reload", response_model=ReloadResult, responses=problem_responses({
    401: "missing or invalid API key",
    409: "the published version was refused (the detail names it and the failing file); the old one keeps serving"}))
async def reload(registry: RegistryDep) -> ReloadResult:
    """Verify and swap in ``<model dir>/CURRENT`` (re-verified even if it is the served version)."""
    reloaded = await registry.reload(force=True)
    return ReloadResult(reloaded=reloaded, model_version=registry.model.version)
