"""The circuit breaker in front of Redis: fail fast while it is down, notice at once when it is back.

Without it every request would pay the full timeout while Redis does not answer. A failed essential call
opens the breaker; while it is open, calls are refused without being sent, and one background task probes
Redis every ``interval`` seconds: the first answer closes it, so traffic resumes within one interval of
Redis answering again rather than after a fixed back-off that any later failure would extend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Breaker:
    """Open after a failure until ``probe`` succeeds; ``interval`` <= 0 disables it (every call is tried)."""

    def __init__(self, probe: Callable[[], Awaitable[object]], interval: float,
                 failures: tuple[type[BaseException], ...]) -> None:
        self._probe, self._interval, self._failures = probe, interval, failures
        self._task: asyncio.Task | None = None
        self.open = False

    def trip(self, error: BaseException) -> None:
        """Open (if enabled and not open yet) and start probing."""
        if self.open or self._interval <= 0:
            return
        log.warning("Redis failed (%s): failing fast, probing every %.2f s", error, self._interval)
        self.open = True
        self._task = asyncio.create_task(self._probe_until_answered())

    def close(self) -> None:
        """Redis answered elsewhere (a readiness ping): stop probing."""
        if self._task is not None:
            self._task.cancel()
        self._task, self.open = None, False

    async def _probe_until_answered(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._probe()
            except self._failures:
                continue
            log.warning("Redis answers again")
            self._task, self.open = None, False
            return

    async def stop(self) -> None:
        """Cancel the probe (the app is shutting down)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
