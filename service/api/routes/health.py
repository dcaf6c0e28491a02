"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from contracts.versions import read_retrain_status
from service.api.deps import RecommenderDep, RegistryDep
from service.api.openapi import problem_responses
from service.api.schemas import Liveness, Readiness, StoreHealth

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Liveness)
async def healthz() -> Liveness:
    """The process answers (checks nothing external)."""
    return Liveness()


@router.get("/readyz", response_model=Readiness, responses=problem_responses({503: "no model loaded yet"}))
async def readyz(registry: RegistryDep, recommender: RecommenderDep) -> Readiness:
    """Ready once a model is loaded; the store is reported ``degraded`` (not fatal) when it does not answer."""
    model = registry.model  # NoModelLoaded -> 503
    store = recommender.store
    status = "ok" if await store.ping() else "degraded"
    return Readiness(model_version=model.version, index=model.index.kind,
                     store=StoreHealth(backend=store.backend, status=status))


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text exposition", "content": {CONTENT_TYPE_LATEST.partition(";")[0]: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus exposition of this process's metrics, and of the last nightly run."""
    metrics = request.app.state.metrics
    metrics.show_retrain(read_retrain_status(request.app.state.settings.model_dir))
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
