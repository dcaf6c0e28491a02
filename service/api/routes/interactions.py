"""``POST /interactions``: record new interactions, requantize their users, fold in items the model lacks.

The order is what keeps an unauthenticated or oversized request cheap: the API key (a router dependency)
first, then the body, read and parsed under bounds (``service.api.body``), then validation.
"""

# No ``from __future__ import annotations``: FastAPI must see the route's types, locals of ``build``.
import hashlib
import json
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import StringConstraints, TypeAdapter, ValidationError

from contracts.interaction_log import Interaction, event_id
from service.api.body import read_json
from service.api.deps import RecommenderDep, require_api_key
from service.api.openapi import interactions_body, problem_responses
from service.api.schemas import InteractionIn, InteractionsAccepted, UserUpdateOut
from service.core.config import Settings
from service.core.problems import Problem
from service.store.base import Post

REPLAYED_HEADER = "Idempotent-Replayed"
# RFC 8941 sf-string as the Idempotency-Key draft writes it ("..."), or a bare token: printable ASCII.
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r'^[\x21-\x7e]+$')]
_ONE, _MANY = TypeAdapter(InteractionIn), TypeAdapter(list[InteractionIn])
_AUTO_KEY_TTL = 60.0  # a key the service made up only guards the Redis client's own retry of the same call


def _validated(payload: Any, max_batch: int) -> list[InteractionIn]:
    """The interactions in ``payload`` (one object or a list), or a 422 listing every invalid field."""
    if isinstance(payload, list) and not payload:
        raise Problem(422, "validation-error", f"body: send 1 to {max_batch} interactions, got 0",
                      errors=[{"location": "body", "message": "empty list", "type": "too_short"}])
    try:
        return _MANY.validate_python(payload) if isinstance(payload, list) else [_ONE.validate_python(payload)]
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in error.errors()]) from None


def _post(payload: Any, client_key: str | None, ttl: float) -> Post:
    """The post's key (the client's, or a new one) and a digest of exactly what was sent."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]
    key = f"client:{client_key.strip(chr(34))}" if client_key else f"auto:{uuid.uuid4().hex}"
    return Post(key, digest, ttl if client_key else min(ttl, _AUTO_KEY_TTL))


def build(settings: Settings) -> APIRouter:
    """The route, with this app's batch and body limits in its documented request body."""
    router = APIRouter(tags=["interactions"], dependencies=[Depends(require_api_key)])

    @router.post("/interactions", response_model=InteractionsAccepted,
                 openapi_extra={"requestBody": interactions_body(settings.max_batch)},
                 responses={200: {"headers": {REPLAYED_HEADER: {
                     "description": "true: this Idempotency-Key was already recorded; nothing was recorded again",
                     "schema": {"type": "string", "enum": ["true"]}}}}, **problem_responses({
                         400: "the body is not JSON, or nests too deep",
                         401: "missing or invalid API key",
                         413: f"the body is larger than GNAQ_MAX_BODY_BYTES ({settings.max_body_bytes})",
                         409: "the post names items the model does not know and would add more of them than "
                              f"GNAQ_MAX_ADDED_ITEMS ({settings.max_added_items}); nothing was recorded",
                         415: "the body is not application/json",
                         422: "invalid body, or an Idempotency-Key reused for another body; nothing was recorded",
                         503: "no model loaded yet, or the store did not confirm the write: see `outcome`"})})
    async def post_interactions(
            request: Request, response: Response, recommender: RecommenderDep,
            idempotency_key: Annotated[IdempotencyKey | None, Header(
                alias="Idempotency-Key",
                description="any unique string (a UUID): a retried post with the same key and body is recorded "
                            f"once, for {settings.idempotency_ttl_seconds:g} s")] = None,
    ) -> InteractionsAccepted:
        """Log interactions durably (for the nightly retrain) and update the users' codes at once.

        An item the model was not trained with is accepted (ids follow the user id rules): it is folded in from
        the users who interacted with it, requantized and served on every replica until the next model trains
        it. All or nothing: if the new items would pass the cap, or the store cannot log them, none is recorded.
        """
        payload = await read_json(request, max_bytes=settings.max_body_bytes, max_items=settings.max_batch)
        batch = _validated(payload, settings.max_batch)
        post = _post(payload, idempotency_key, settings.idempotency_ttl_seconds)
        received = time.time()
        events = [Interaction(i.user_id, i.item_id, i.epoch_seconds(received), received, event_id(post.key, n))
                  for n, i in enumerate(batch)]
        accepted = await recommender.record(events, post)
        if accepted.replayed:
            response.headers[REPLAYED_HEADER] = "true"
        return InteractionsAccepted(accepted=len(events), model_version=accepted.model_version,
                                    users=[UserUpdateOut(**vars(u)) for u in accepted.users])

    return router
