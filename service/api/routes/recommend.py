"""``GET /recommend/{user_id}``: the top-k items for a user."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from service.api.deps import K, RecommenderDep, read_access
from service.api.schemas import ExternalId, Recommendations

router = APIRouter(tags=["recommendations"], dependencies=[Depends(read_access)])


@router.get("/recommend/{user_id}", response_model=Recommendations,
            responses={404: {"description": "unknown user (problem+json)"}})
async def recommend(user_id: Annotated[ExternalId, Path(description="user id as in the training data")],
                    k: K, recommender: RecommenderDep) -> Response:
    """Top ``k`` items for ``user_id``, excluding items it interacted with (training data and posts since)."""
    body, _cached = await recommender.recommend(user_id, k)
    # The body is already serialised (and cached as bytes): skip re-validation on the hot path.
    return Response(body, media_type="application/json")
