"""``python -m training.heartbeat``: the trainer container's health check.

Exits 0 while the nightly scheduler (``training.schedule``) has touched its heartbeat file recently, 1 with the
reason otherwise, so ``docker compose up --wait`` and an orchestrator can tell a live scheduler loop from a hung
or dead one without running a job.
"""

from __future__ import annotations

import argparse
import sys
import time

from training.schedule import HEARTBEAT_SECONDS, heartbeat_path


def check(max_age: float) -> str | None:
    """None if the heartbeat is younger than ``max_age`` seconds, else why not."""
    path = heartbeat_path()
    try:
        age = time.time() - path.stat().st_mtime
    except OSError as error:
        return f"no heartbeat at {path}: {error.strerror or error} (is `python -m training.schedule` running?)"
    if age > max_age:
        return f"heartbeat {path} is {age:.0f} s old (limit {max_age:.0f} s): the scheduler loop is not running"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.heartbeat", description=__doc__.splitlines()[0])
    parser.add_argument("--max-age", type=float, default=6 * HEARTBEAT_SECONDS,
                        help=f"oldest acceptable heartbeat, seconds (default: {6 * HEARTBEAT_SECONDS:.0f})")
    problem = check(parser.parse_args(argv).max_age)
    print(problem or "scheduler alive")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
