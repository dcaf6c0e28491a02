"""Prometheus metrics of one app instance, and the ASGI middleware that times every request."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.versions import RetrainStatus

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """One registry per app, so several apps (tests, workers) never share or clash on series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Histogram("gnaq_http_request_duration_seconds", "HTTP request latency by route",
                                  ["method", "route", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.cache_hits = Counter("gnaq_cache_hits_total", "recommendations answered from the cache", registry=r)
        self.cache_misses = Counter("gnaq_cache_misses_total", "recommendations computed (cache miss or bypass)",
                                    registry=r)
        self.search = Histogram("gnaq_search_duration_seconds", "time in the item index per query", ["index"],
                                buckets=_LATENCY_BUCKETS, registry=r)
        self.model_info = Gauge("gnaq_model_info", "the served model version (value 1)",
                                ["version", "method", "bits", "index"], registry=r)
        self.reloads = Counter("gnaq_model_reloads_total", "model versions loaded and swapped in", registry=r)
        self.reload_failures = Counter("gnaq_model_reload_failures_total", "model versions refused", registry=r)
        self.interactions = Counter("gnaq_interactions_recorded_total", "interactions accepted and logged",
                                    registry=r)
        self.store_errors = Counter("gnaq_store_unavailable_total", "store calls that failed or were skipped",
                                    ["operation"], registry=r)
        self.items_added = Gauge("gnaq_items_added", "items the served model was not trained with, folded in and "
                                 "served by this replica", registry=r)
        self.item_cap_refusals = Counter("gnaq_item_cap_refusals_total", "posts refused because they would add "
                                         "more items than GNAQ_MAX_ADDED_ITEMS", registry=r)
        self.item_foldin = Histogram("gnaq_item_foldin_seconds", "time to fold in and requantize one new item",
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.item_sync_delay = Histogram("gnaq_item_sync_delay_seconds", "from an added item's row saved by one "
                                         "replica to its being served by this one", buckets=_LATENCY_BUCKETS,
                                         registry=r)
        self.retrain_pending = Gauge("gnaq_retrain_pending_interactions", "logged interactions still not in a "
                                     "published model after the last nightly run", registry=r)
        self.retrain_runs_pending = Gauge("gnaq_retrain_runs_pending", "consecutive nightly runs that ended with "
                                          "interactions pending (alert on a high value)", registry=r)
        self.retrain_finished = Gauge("gnaq_retrain_last_run_timestamp_seconds", "when the last nightly run ended",
                                      registry=r)

    def show_retrain(self, status: RetrainStatus | None) -> None:
        """The last nightly run as ``RETRAIN_STATUS.json`` records it (nothing before the first run)."""
        if status is not None:
            self.retrain_pending.set(status.pending_interactions)
            self.retrain_runs_pending.set(status.runs_pending)
            self.retrain_finished.set(status.finished_at.timestamp())

    def show_model(self, version: str, method: str, bits: object, index: str) -> None:
        """Make ``version`` the only series of ``gnaq_model_info``."""
        self.model_info.clear()
        self.model_info.labels(version, method, str(bits), index).set(1)


class MetricsMiddleware:
    """Pure ASGI (no per-request task or body copy): latency by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started)
