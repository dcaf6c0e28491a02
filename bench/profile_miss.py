"""Profile cache misses end to end: py-spy samples a real ``gnaq serve`` while wrk walks distinct users.

Prints the inclusive share of samples per function (collapsed stacks aggregated; all threads, so an idle
executor thread shows up as ``_worker``) and the leaf functions; the raw stacks are kept for flame graphs.

Usage: python bench/profile_miss.py MODEL_DIR [--index codes] [--seconds 6] [--out runs/miss.prof.txt]
Needs py-spy (dev extra; ptrace rights), wrk and a Redis at REDIS_URL (default redis://127.0.0.1:6379/14).
"""

from __future__ import annotations

import argparse
import collections
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from contracts.versions import read_current

sys.path.insert(0, str(Path(__file__).parent))
from load import PIDS, empty_redis, run_wrk, server, write_scripts  # noqa: E402


def aggregate(raw: Path, top: int) -> str:
    """Inclusive and leaf shares of samples per function from py-spy's raw (collapsed) output."""
    inclusive, leaves, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        total += n
        names = {frame.split(":")[0] for frame in frames}  # "function (file" without the line
        inclusive.update(dict.fromkeys(names, n))
        leaves[frames[-1]] += n
    lines = [f"{total} samples; inclusive share per function:"]
    lines += [f"{100 * n / total:5.1f}% {name})" for name, n in inclusive.most_common(top)]
    lines += ["leaves:"] + [f"{100 * n / total:5.1f}% {name}" for name, n in leaves.most_common(15)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--index", choices=("codes", "float"), default="codes")
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--top", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("runs/miss.prof.txt"))
    args = parser.parse_args()
    if args.seconds < 1 or args.rate < 1:
        parser.error("--seconds and --rate must be at least 1")
    redis_url = empty_redis()
    artifact = read_current(args.model_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder, server(args.model_dir, args.port, args.index, redis_url) as url:
        users = random.Random(0).sample(artifact.user_ids, len(artifact.user_ids))
        scripts = write_scripts(Path(folder), users, artifact.item_ids)
        spy = subprocess.Popen(["py-spy", "record", "-r", str(args.rate), "-d", str(args.seconds + 2), "-f", "raw",
                                "-o", str(args.out), "-p", str(PIDS[url])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        print("wrk, 1 client:", run_wrk(url, 1, args.seconds, scripts["walk"], ("0",)))
        spy.wait()
    print(aggregate(args.out, args.top))


if __name__ == "__main__":
    main()
