"""``GET /recommend/{user_id}``: the top-k items for a user."""

# No ``from __future__ import annotations``: FastAPI must see the per-app ``k`` type, a local of ``build``.
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from service.api.deps import k_query
from service.api.openapi import problem_responses
from service.api.schemas import ExternalId, Recommendations
from service.core.config import Settings
from service.engine.recommender import Recommender


def build(settings: Settings) -> APIRouter:
    """The route, with ``k`` bounded by this app's ``GNAQ_MAX_K``."""
    router = APIRouter(tags=["recommendations"])
    k_type, k_default = k_query(settings)

    @router.get("/recommend/{user_id}", response_model=Recommendations, responses=problem_responses({
        404: "unknown user: not in the model, and no interaction posted for it",
        422: "invalid user id or k",
        503: "no model loaded yet, or the user is known only from its posts and the store does not answer"}))
    async def recommend(user_id: Annotated[ExternalId, Path(description="user id as in the training data")],
                        request: Request, k: k_type = k_default) -> Response:
        """Top ``k`` items for ``user_id``, excluding items it interacted with (training data and posts since)."""
        recommender: Recommender = request.app.state.recommender
        body, _cached = await recommender.recommend(user_id, k)
        # The body is already serialised (and cached as bytes): skip re-validation on the hot path.
        return Response(body, media_type="application/json")

    return router
