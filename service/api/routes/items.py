"""``GET /items/{item_id}/similar``: items closest to an item."""

# No ``from __future__ import annotations``: FastAPI must see the per-app ``k`` type, a local of ``build``.
from typing import Annotated

from fastapi import APIRouter, Path

from service.api.deps import RecommenderDep, k_query
from service.api.openapi import problem_responses
from service.api.schemas import ExternalId, ScoredItem, SimilarItems
from service.core.config import Settings
from service.core.problems import Problem
from service.engine.recommender import UnknownItems


def build(settings: Settings) -> APIRouter:
    """The route, with ``k`` bounded by this app's ``GNAQ_MAX_K``."""
    router = APIRouter(tags=["items"])
    k_type, k_default = k_query(settings)

    @router.get("/items/{item_id}/similar", response_model=SimilarItems, responses=problem_responses({
        404: "unknown item: not in the model, and not (yet) added by a post", 422: "invalid item id or k",
        503: "no model loaded yet"}))
    async def similar(item_id: Annotated[ExternalId, Path(description="item id as in the training data")],
                recommender: RecommenderDep, k: k_type = k_default) -> SimilarItems:
        """The ``k`` items with the highest inner product with this item's served vector (itself excluded).

        An item the model was not trained with is here once a user the model knows has interacted with it.
        """
        try:
            model, rows, scores = recommender.similar_items(item_id, k)
        except UnknownItems:
            raise Problem(404, "unknown-item", f"item {item_id!r} is not in model version "
                          f"{recommender.registry.model.version}, nor added to it since") from None
        return SimilarItems(item_id=item_id, model_version=model.version,
                            items=[ScoredItem(item_id=model.item_id(r), score=float(s))
                                   for r, s in zip(rows.tolist(), scores, strict=True)])

    return router
