"""``GET /recommend/{user_id}``: the top-k items for a user."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from service.api.deps import KQuery, bounded_k
from service.api.schemas import ExternalId, Recommendations
from service.engine.recommender import Recommender

router = APIRouter(tags=["recommendations"])


@router.get("/recommend/{user_id}", response_model=Recommendations,
            responses={404: {"description": "unknown user (problem+json)"}})
async def recommend(user_id: Annotated[ExternalId, Path(description="user id as in the training data")],
                    request: Request, k: KQuery = 10) -> Response:
    """Top ``k`` items for ``user_id``, excluding items it interacted with (training data and posts since)."""
    recommender: Recommender = request.app.state.recommender
    body, _cached = await recommender.recommend(user_id, bounded_k(request, k))
    # The body is already serialised (and cached as bytes): skip re-validation on the hot path.
    return Response(body, media_type="application/json")
