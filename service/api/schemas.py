"""Request and response bodies (they also document the API at /docs)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema, field_validator

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


# What pydantic accepts for a datetime, as the spec states it: ISO 8601, or Unix seconds (numbers of 2e10 and
# more are read as milliseconds, so the documented range stops below that).
Timestamp = Annotated[datetime | None, WithJsonSchema({"anyOf": [
    {"type": "string", "format": "date-time"}, {"type": "number", "minimum": 0, "exclusiveMaximum": 2e10},
    {"type": "null"}]})]


class InteractionIn(BaseModel):
    """One interaction; ``timestamp`` (ISO 8601 or Unix seconds) defaults to the time it arrives."""

    model_config = ConfigDict(extra="forbid")

    user_id: ExternalId
    item_id: ExternalId
    timestamp: Timestamp = None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _documented_range(cls, value: object) -> object:
        """Unix seconds as the schema states them: 0 <= t < 2e10 (pydantic alone takes negatives and reads 2e10
        and more as milliseconds)."""
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 <= value < 2e10:
            raise ValueError("Unix seconds must be at least 0 and below 2e10")
        return value

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


class ProblemError(BaseModel):
    """One invalid field of a request."""

    location: str = Field(description="where: body, body.<index>.<field>, query.k, header.idempotency-key, ...")
    message: str
    type: str


def _no_defaults(schema: dict) -> None:
    for member in schema["properties"].values():
        member.pop("default", None)  # an extension member is absent, not null, where it does not apply


class ProblemDetails(BaseModel):
    """RFC 9457 problem details: the body of every 4xx and 5xx (``application/problem+json``).

    Only documents the body (``service.core.problems`` writes it); the extension members after ``instance``
    appear on the problems named in their descriptions, and are absent elsewhere.
    """

    model_config = ConfigDict(title="Problem", extra="allow", json_schema_extra=_no_defaults)

    type: str = Field(description="https://gnaq-rec.dev/problems/<slug>: what kind of problem")
    title: str = Field(description="the status's reason phrase")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="what happened to this request, and what to do")
    instance: str = Field(description="the request path")
    errors: list[ProblemError] = Field(None, description="validation-error: each invalid field")
    added_items: int = Field(None, description="item-cap-reached: items added since the model was trained")
    cap: int = Field(None, description="item-cap-reached: the most that may be added (GNAQ_MAX_ADDED_ITEMS)")
    outcome: Literal["not-recorded", "unknown"] = Field(
        None, description="store-unavailable on a write: not-recorded (nothing was applied) or unknown "
        "(it may have been; retry with the same Idempotency-Key)")
    max_bytes: int = Field(None, description="body-too-large: the limit (GNAQ_MAX_BODY_BYTES)")
