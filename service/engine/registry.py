"""Which model version is served, and hot reload: verify in the background, swap atomically.

A new version is loaded in a worker thread (checksums, index build, smoke query) while the old one
keeps serving; only a fully loaded model replaces the reference. A version that fails to load is
refused, counted and logged, and not retried by the poller until ``CURRENT`` names something else
(``POST /admin/reload`` retries on demand). Its message names files relative to the model directory: it
reaches API clients (409, 503), who have no business knowing the server's paths.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from contracts.artifact import ArtifactError
from contracts.versions import resolve_version
from service.core.metrics import Metrics
from service.engine.model import ServedModel

log = logging.getLogger(__name__)


class NoModelLoaded(RuntimeError):
    """No version has been loaded yet (nothing published, or every published one was refused)."""


class ReloadRefused(RuntimeError):
    """The version ``CURRENT`` names could not be loaded; the previous model keeps serving."""


class ModelRegistry:
    """Holds the served ``ServedModel`` and replaces it when ``<model_dir>/CURRENT`` changes."""

    def __init__(self, model_dir: Path, index_kind: str, metrics: Metrics) -> None:
        self.model_dir, self.index_kind, self.metrics = Path(model_dir), index_kind, metrics
        self._model: ServedModel | None = None
        self._refused: str | None = None
        self._lock = asyncio.Lock()
        self.last_error: str | None = None
        self.on_swap: list[Callable[[ServedModel | None, ServedModel], None]] = []  # run after each swap

    @property
    def model(self) -> ServedModel:
        """The served model; raises ``NoModelLoaded`` before the first successful load."""
        if self._model is None:
            raise NoModelLoaded(self.last_error or "no version has been loaded from the model directory")
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def current(self) -> ServedModel | None:
        """The served model, or None before the first load (for background work that must not raise)."""
        return self._model

    async def reload(self, *, force: bool = False) -> bool:
        """Load the version ``CURRENT`` names if it is new (or ``force``); True if a model was swapped in."""
        async with self._lock:
            try:
                path = resolve_version(self.model_dir)
            except ArtifactError as error:  # nothing (valid) published: report once, not on every poll
                if str(error) == self.last_error and not force:
                    return False
                self._refuse(None, str(error))
            previous = self._model
            current = previous.version if previous else None
            if not force and path.name in (current, self._refused):
                return False
            try:
                model = await asyncio.to_thread(ServedModel.load, path, self.index_kind)
            except (ArtifactError, ValueError, TypeError, KeyError, OSError) as error:
                self._refuse(path.name, f"version {path.name} refused: {error}")
            self._model, self._refused, self.last_error = model, None, None
            self.metrics.reloads.inc()
            self.metrics.show_model(model.version, model.manifest.method, model.manifest.bits, model.index.kind)
            log.info("now serving model %s (was %s)", model.version, current)
            for hook in self.on_swap:
                hook(previous, model)
            return True

    def _refuse(self, version: str | None, message: str) -> None:
        for directory in sorted({str(self.model_dir.resolve()), str(self.model_dir)}, key=len, reverse=True):
            message = message.replace(directory + "/", "").replace(directory, "the model directory")
        self._refused, self.last_error = version, message
        self.metrics.reload_failures.inc()
        serving = self._model.version if self._model else "nothing"
        log.error("%s; still serving %s", message, serving)
        raise ReloadRefused(f"{message}; still serving {serving}")

    async def poll(self, interval: float) -> None:
        """Check ``CURRENT`` every ``interval`` seconds, forever (a background task of the app)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload()
            except ReloadRefused:
                pass  # counted and logged by reload(); the old model keeps serving
