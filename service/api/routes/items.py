"""``GET /items/{item_id}/similar``: items closest to an item."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from service.api.deps import KQuery, RecommenderDep, bounded_k
from service.api.schemas import ExternalId, ScoredItem, SimilarItems
from service.core.problems import Problem
from service.engine.recommender import UnknownItems

router = APIRouter(tags=["items"])


@router.get("/items/{item_id}/similar", response_model=SimilarItems,
            responses={404: {"description": "unknown item (problem+json)"}})
def similar(item_id: Annotated[ExternalId, Path(description="item id as in the training data")],
            request: Request, recommender: RecommenderDep, k: KQuery = 10) -> SimilarItems:
    """The ``k`` items with the highest inner product with this item's served vector (itself excluded)."""
    try:
        model, rows, scores = recommender.similar_items(item_id, bounded_k(request, k))
    except UnknownItems:
        raise Problem(404, "unknown-item", f"item {item_id!r} is not in model version "
                      f"{recommender.registry.model.version}") from None
    return SimilarItems(item_id=item_id, model_version=model.version,
                        items=[ScoredItem(item_id=model.item_ids[r], score=float(s))
                               for r, s in zip(rows.tolist(), scores, strict=True)])
