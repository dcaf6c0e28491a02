"""The nightly scheduler: next-run times (DST included), sequential runs, environment and output pass-through,
and SIGTERM handling, all without waiting for real clock times."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time as _time
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from training import schedule
from training.schedule import Clock, Scheduler, next_run, parse_hhmm

PARIS = ZoneInfo("Europe/Paris")
REPO = Path(__file__).resolve().parents[1]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class FakeClock(Clock):
    """Time moves only when the scheduler sleeps, by exactly the time it asked for."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def sleep(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@pytest.mark.parametrize(("text", "expected"), [("02:00", time(2, 0)), ("2:05", time(2, 5)), ("23:59", time(23, 59))])
def test_parse_hhmm(text: str, expected: time) -> None:
    assert parse_hhmm(text) == expected


@pytest.mark.parametrize("text", ["24:00", "02:60", "2", "02:00:00", "noon", ""])
def test_parse_hhmm_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        parse_hhmm(text)


@pytest.mark.parametrize(("now", "expected"), [
    (utc(2024, 5, 1, 1, 59), utc(2024, 5, 1, 2, 0)),  # later today
    (utc(2024, 5, 1, 2, 0), utc(2024, 5, 2, 2, 0)),  # exactly now: strictly after, so tomorrow
    (utc(2024, 5, 1, 13, 0), utc(2024, 5, 2, 2, 0)),  # passed today
    (utc(2024, 12, 31, 23, 0), utc(2025, 1, 1, 2, 0)),  # across the year
])
def test_next_run_utc(now: datetime, expected: datetime) -> None:
    assert next_run(now, time(2, 0), UTC) == expected


def test_next_run_is_wall_clock_time_in_the_zone() -> None:
    summer = next_run(utc(2024, 6, 1, 12, 0), time(2, 0), PARIS)  # CEST, UTC+2
    winter = next_run(utc(2024, 1, 15, 12, 0), time(2, 0), PARIS)  # CET, UTC+1
    assert summer == utc(2024, 6, 2, 0, 0) and winter == utc(2024, 1, 16, 1, 0)


def test_next_run_across_dst_changes_runs_once_a_day() -> None:
    # 2024-03-31 02:30 does not exist in Paris (02:00 -> 03:00): run at 03:30 CEST, the instant 02:30 CET names.
    assert next_run(utc(2024, 3, 30, 12, 0), time(2, 30), PARIS) == utc(2024, 3, 31, 1, 30)
    # 2024-10-27 02:30 happens twice in Paris: run at the first, and not again at the second.
    first = next_run(utc(2024, 10, 26, 12, 0), time(2, 30), PARIS)
    assert first == utc(2024, 10, 27, 0, 30)
    assert next_run(first + timedelta(minutes=1), time(2, 30), PARIS) == utc(2024, 10, 28, 1, 30)


def test_next_run_defaults_to_the_process_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Paris")
    _time.tzset()
    try:
        assert next_run(utc(2024, 6, 1, 12, 0), time(2, 0)) == utc(2024, 6, 2, 0, 0)
    finally:
        monkeypatch.undo()
        _time.tzset()


def test_runs_are_sequential_and_an_overrun_skips_the_missed_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(utc(2024, 5, 1, 1, 59))
    scheduler = Scheduler(["job"], time(2, 0), tz=UTC, clock=clock)
    starts: list[datetime] = []

    def fake_run() -> int:
        starts.append(clock.now())
        clock.current += timedelta(minutes=3)  # the --run-now run lasts past 02:00
        if len(starts) == 3:
            scheduler.stop()
        return 0

    monkeypatch.setattr(scheduler, "run_once", fake_run)
    scheduler.run_forever(run_now=True)
    assert starts == [utc(2024, 5, 1, 1, 59), utc(2024, 5, 2, 2, 0), utc(2024, 5, 3, 2, 0)]


def test_stop_while_waiting_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(utc(2024, 5, 1, 12, 0))
    scheduler = Scheduler(["job"], time(2, 0), tz=UTC, clock=clock)
    monkeypatch.setattr(clock, "sleep", lambda seconds: scheduler.stop())
    monkeypatch.setattr(scheduler, "run_once", lambda: pytest.fail("ran although stopped"))
    scheduler.run_forever()


def test_job_gets_the_environment_and_streams_to_stdout(monkeypatch: pytest.MonkeyPatch,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GNAQ_SCHEDULE_PROBE", "redis://probe:6379/0")
    command = [sys.executable, "-c", "import os; print('probe=' + os.environ['GNAQ_SCHEDULE_PROBE'])"]
    assert Scheduler(command, time(2, 0)).run_once() == 0
    assert "probe=redis://probe:6379/0" in capfd.readouterr().out


def test_exit_code_and_missing_command_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="training.schedule")
    assert Scheduler([sys.executable, "-c", "raise SystemExit(3)"], time(2, 0)).run_once() == 3
    assert Scheduler(["/nonexistent/gnaq-job"], time(2, 0)).run_once() == 127
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("end: exit code 3 after") for m in messages)
    assert any(m.startswith("end: could not start /nonexistent/gnaq-job") for m in messages)


def test_stop_terminates_the_running_job(monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = Scheduler([sys.executable, "-c", "import time; time.sleep(30)"], time(2, 0), grace_seconds=5)
    monkeypatch.setattr(scheduler.clock, "sleep", lambda seconds: scheduler.stop())
    began = _time.monotonic()
    assert scheduler.run_once() == -signal.SIGTERM
    assert _time.monotonic() - began < 5


def test_rejects_a_bad_time() -> None:
    with pytest.raises(SystemExit) as exit_info:
        schedule.main(["--at", "25:00", "--", "true"])
    assert exit_info.value.code == 2


def test_module_runs_now_passes_environment_and_stops_cleanly_on_sigterm() -> None:
    """The container's command line end to end: a --run-now job sees the environment, SIGTERM ends both."""
    job = "import os, time; print('job sees ' + os.environ['GNAQ_SCHEDULE_PROBE'], flush=True); time.sleep(30)"
    env = {**os.environ, "GNAQ_SCHEDULE_PROBE": "passed-through", "GNAQ_RETRAIN_AT": "03:15"}
    process = subprocess.Popen([sys.executable, "-m", "training.schedule", "--run-now", "--", sys.executable, "-c",
                                job], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not any("passed-through" in line for line in lines):
            line = process.stdout.readline()
            assert line, "scheduler ended before the job printed: " + "".join(lines)
            lines.append(line)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=10)
    finally:
        process.kill()
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    assert "every day at 03:15" in output  # GNAQ_RETRAIN_AT is the default of --at
    assert "job sees passed-through" in output
    assert "SIGTERM: passing SIGTERM to pid" in output and "end: killed by SIGTERM" in output
    assert output.rstrip().endswith("schedule: stopped by SIGTERM")
