"""Run a command every day at HH:MM: the container's nightly ``gnaq retrain``.

``python -m training.schedule --at 02:00 -- gnaq retrain``

Debian's cron starts jobs with an almost empty environment and mails their output instead of printing it, and the
cron replacements built for containers (supercronic, ofelia) are not installable here. This loop is small instead:
the job inherits the full environment (REDIS_URL, GNAQ_*) and the stdout/stderr of the container, runs are strictly
sequential (a run that overruns its next slot skips it rather than overlapping), and SIGTERM is passed on to a
running job before the scheduler exits. Times are wall-clock times in the container's time zone (``TZ``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time as _time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path

log = logging.getLogger("training.schedule")

_HHMM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
POLL_SECONDS = 0.2  # how often a running job is checked; also bounds the reaction to SIGTERM while it runs
IDLE_STEP_SECONDS = 1.0  # longest sleep between clock readings while waiting for the next run
HEARTBEAT_SECONDS = 5.0  # how often the loops touch the heartbeat file (``training.heartbeat`` reads it)


def heartbeat_path() -> Path:
    """Where the scheduler says it is alive: ``$GNAQ_HEARTBEAT_FILE``, else a file in the temporary directory."""
    return Path(os.environ.get("GNAQ_HEARTBEAT_FILE") or Path(tempfile.gettempdir()) / "gnaq-schedule.heartbeat")


def parse_hhmm(text: str) -> time:
    """``"2:00"`` or ``"02:00"`` -> ``time(2, 0)``; anything else is an error naming the expected form."""
    match = _HHMM.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid time {text!r}: expected HH:MM (00:00 to 23:59)")
    return time(int(match[1]), int(match[2]))


def next_run(now: datetime, at: time, tz: tzinfo | None = None) -> datetime:
    """The first wall-clock ``at`` in ``tz`` strictly after the aware instant ``now``, as a UTC instant.

    ``tz=None`` is the process's local zone (``TZ``), DST included. A day whose ``at`` falls in a DST gap runs at
    the same offset's instant (an hour later on the clock); on a day where ``at`` occurs twice, it runs once.
    """
    today = now.astimezone(tz).date() if tz else now.astimezone().date()
    candidate = _wall_clock(today, at, tz)
    return candidate if candidate > now else _wall_clock(today + timedelta(days=1), at, tz)


def _wall_clock(day: date, at: time, tz: tzinfo | None) -> datetime:
    naive = datetime.combine(day, at)
    # In UTC: zone-aware times in a DST gap or fold never compare equal across zones (PEP 495).
    return (naive.replace(tzinfo=tz) if tz else naive.astimezone()).astimezone(UTC)


class Clock:
    """Wall clock and sleep of the real world; tests substitute one that jumps instead of waiting."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        _time.sleep(seconds)


@dataclass
class Scheduler:
    """Runs ``command`` daily at ``at``, one run at a time, until ``stop()`` (the SIGTERM/SIGINT handler)."""

    command: list[str]
    at: time
    tz: tzinfo | None = None
    grace_seconds: float = 20.0
    clock: Clock = field(default_factory=Clock)
    stopped_by: str | None = None
    heartbeat: Path | None = None  # touched while the loops run, so a health check can tell they are alive
    _last_beat: float = field(default=float("-inf"), repr=False)

    def beat(self) -> None:
        """Touch the heartbeat file (at most every ``HEARTBEAT_SECONDS``); a failure is logged, never fatal."""
        if self.heartbeat is None or _time.monotonic() - self._last_beat < HEARTBEAT_SECONDS:
            return
        try:
            self.heartbeat.touch()
            self._last_beat = _time.monotonic()
        except OSError as error:
            log.warning("cannot touch the heartbeat %s: %s", self.heartbeat, error)

    def stop(self, signum: int | None = None, frame: object = None) -> None:
        """Only records why (no logging or locks in a signal handler); the loops notice it within a poll."""
        self.stopped_by = signal.Signals(signum).name if signum is not None else "stop()"

    @property
    def stopping(self) -> bool:
        return self.stopped_by is not None

    def run_forever(self, run_now: bool = False) -> None:
        if run_now and not self.stopping:
            self.run_once()
        while not self.stopping:
            target = next_run(self.clock.now(), self.at, self.tz)
            log.info("next run at %s", target.astimezone(self.tz).isoformat(timespec="minutes"))
            if self._sleep_until(target):
                self.run_once()
        log.info("stopped by %s", self.stopped_by)

    def run_once(self) -> int:
        """Run the command to completion (or until stopped); its output goes straight to our stdout/stderr."""
        log.info("start: %s", shlex.join(self.command))
        began = _time.monotonic()
        try:
            child = subprocess.Popen(self.command)  # inherits os.environ and file descriptors 1 and 2
        except OSError as error:
            log.error("end: could not start %s: %s", self.command[0], error)
            return 127
        while child.poll() is None and not self.stopping:
            self.beat()
            self.clock.sleep(POLL_SECONDS)
        if child.poll() is None:
            log.info("%s: passing SIGTERM to pid %d (waiting up to %.0f s)", self.stopped_by, child.pid,
                     self.grace_seconds)
            child.terminate()
            try:
                child.wait(self.grace_seconds)
            except subprocess.TimeoutExpired:
                log.warning("pid %d still running: SIGKILL", child.pid)
                child.kill()
                child.wait()
        code = child.returncode
        outcome = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        log.log(logging.INFO if code == 0 else logging.ERROR, "end: %s after %.1f s", outcome,
                _time.monotonic() - began)
        return code

    def _sleep_until(self, target: datetime) -> bool:
        """Sleep in short steps, re-reading the clock (it can jump); False if stopped first."""
        while not self.stopping:
            remaining = (target - self.clock.now()).total_seconds()
            if remaining <= 0:
                return True
            self.beat()
            self.clock.sleep(min(remaining, IDLE_STEP_SECONDS))
        return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.schedule", description=__doc__.splitlines()[0])
    parser.add_argument("--at", default=os.environ.get("GNAQ_RETRAIN_AT", "02:00"),
                        help="daily time HH:MM in the local time zone (default: $GNAQ_RETRAIN_AT, else 02:00)")
    parser.add_argument("--run-now", action="store_true", help="also run once at start")
    parser.add_argument("--grace", type=float, default=20.0,
                        help="seconds a running job gets after SIGTERM before SIGKILL (default: 20)")
    parser.add_argument("command", nargs="+", help="the job, after `--`: e.g. -- gnaq retrain")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; exits 0 when stopped by SIGTERM/SIGINT, 2 on bad arguments."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        at = parse_hhmm(args.at)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(levelname)s schedule: %(message)s")
    scheduler = Scheduler(args.command, at, grace_seconds=args.grace, heartbeat=heartbeat_path())
    signal.signal(signal.SIGTERM, scheduler.stop)
    signal.signal(signal.SIGINT, scheduler.stop)
    zone = datetime.now().astimezone().tzname()
    log.info("every day at %s (%s): %s", at.strftime("%H:%M"), zone, shlex.join(args.command))
    scheduler.run_forever(run_now=args.run_now)
    return 0


if __name__ == "__main__":
    sys.exit(main())
