"""Dependencies injected per request: settings, the recommender, API-key checks; the bounded ``k``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request, Security
from fastapi.security import APIKeyHeader

from service.core.config import Settings
from service.core.security import HEADER, check_api_key
from service.engine.recommender import Recommender
from service.engine.registry import ModelRegistry

_api_key_header = APIKeyHeader(name=HEADER, auto_error=False, description="one of GNAQ_API_KEYS")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_recommender(request: Request) -> Recommender:
    return request.app.state.recommender


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


SettingsDep = Annotated[Settings, Depends(get_settings)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]


# The dependencies below read the settings from the request rather than through ``SettingsDep``: fewer
# nodes for FastAPI to solve on the hot path (a cache hit costs little more than solving them).

async def require_api_key(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    """Writes and admin calls: a valid ``X-API-Key`` or 401."""
    check_api_key(key, request.app.state.settings.api_keys)


async def require_read_key(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    """Reads when ``GNAQ_OPEN_READS=false`` (attached by the app factory, so open reads pay nothing)."""
    check_api_key(key, request.app.state.settings.api_keys)


def k_query(settings: Settings) -> tuple[Any, int]:
    """``k`` bounded by ``GNAQ_MAX_K`` (validated by FastAPI, stated in /openapi.json) and its default."""
    return (Annotated[int, Query(ge=1, le=settings.max_k, description=f"how many items (1 to {settings.max_k})")],
            min(10, settings.max_k))
