"""``POST /interactions``: record new interactions and requantize their users."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Body, Depends

from contracts.interaction_log import Interaction
from service.api.deps import RecommenderDep, SettingsDep, require_api_key
from service.api.schemas import InteractionIn, InteractionsAccepted, UserUpdateOut
from service.core.problems import Problem

router = APIRouter(tags=["interactions"], dependencies=[Depends(require_api_key)])


@router.post("/interactions", response_model=InteractionsAccepted,
             responses={401: {"description": "missing or invalid API key"},
                        422: {"description": "invalid body or unknown item; nothing was recorded"},
                        503: {"description": "store unavailable; nothing was recorded, retry"}})
async def post_interactions(
        payload: Annotated[InteractionIn | list[InteractionIn], Body(description="one interaction or a list")],
        recommender: RecommenderDep, settings: SettingsDep) -> InteractionsAccepted:
    """Log interactions durably (for the nightly retrain) and update the users' codes at once.

    All or nothing: if any item is unknown, or the store cannot log them, none is recorded.
    """
    batch = payload if isinstance(payload, list) else [payload]
    if not 1 <= len(batch) <= settings.max_batch:
        raise Problem(422, "validation-error", f"body: send 1 to {settings.max_batch} interactions, got {len(batch)}")
    received = time.time()
    events = [Interaction(i.user_id, i.item_id, i.epoch_seconds(received), received) for i in batch]
    version, updates = await recommender.record(events)
    return InteractionsAccepted(accepted=len(events), model_version=version,
                                users=[UserUpdateOut(**vars(u)) for u in updates])
