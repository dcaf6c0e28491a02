"""Request and response bodies (they also document the API at /docs)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# External ids as in the training data: printable, no surrounding whitespace, bounded length.
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=256, strip_whitespace=False,
                                              pattern=r"^[^\x00-\x1f\x7f]+$")]


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="inner product of the served (dequantized) vectors")


class Recommendations(BaseModel):
    user_id: str
    model_version: str
    items: list[ScoredItem] = Field(description="best first; the user's known items are excluded")
    cached: bool = Field(description="answered from the cache")


class SimilarItems(BaseModel):
    item_id: str
    model_version: str
    items: list[ScoredItem]


class InteractionIn(BaseModel):
    """One interaction; ``timestamp`` (ISO 8601 or Unix seconds) defaults to the time it arrives."""

    model_config = ConfigDict(extra="forbid")

    user_id: ExternalId
    item_id: ExternalId
    timestamp: datetime | None = None

    def epoch_seconds(self, received_at: float) -> float:
        if self.timestamp is None:
            return received_at
        stamp = self.timestamp if self.timestamp.tzinfo else self.timestamp.replace(tzinfo=UTC)
        return stamp.timestamp()


class UserUpdateOut(BaseModel):
    user_id: str
    generation: int = Field(description="bumped on every accepted post for the user")
    new_user: bool = Field(description="the model was not trained with this user (cold start)")
    interactions: int


class InteractionsAccepted(BaseModel):
    accepted: int
    model_version: str
    users: list[UserUpdateOut]


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class StoreHealth(BaseModel):
    backend: Literal["redis", "embedded"]
    status: Literal["ok", "degraded"]


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    model_version: str
    index: str
    store: StoreHealth


class ReloadResult(BaseModel):
    reloaded: bool = Field(description="a different model was swapped in")
    model_version: str
