"""Scale out, side by side in one run: one worker, ``gnaq serve --workers 2``, and two replicas sharing Redis.

Three setups run at once against one emptied Redis (float or codes index, near cache on): one ``gnaq serve``
process with one worker, one with ``--workers 2`` (uvicorn's processes sharing the port), and two one-worker
``gnaq serve`` replicas on two ports. Each is measured on a cache hit (one user's list, from the replica's
near cache) and on cache misses (``GET /recommend/{user}?k=10`` over users no earlier run touched, so none is
cached, in Redis or in any replica), at 16 and 64 connections, with wrk (one thread). Two replicas are driven
by two wrk processes at once, each with half the connections on one replica; their requests/s are summed and
their p50 and p99 are the worse of the two, an upper bound of the pooled percentile. Setups and scenarios
are interleaved in rounds (the machine's speed drifts) and medians over rounds reported, with the server CPU
time per request (all processes of a setup, from ``/proc``), which other load on the machine does not inflate,
and the times a server's Redis breaker opened (the store failing fast: that run measured a degraded service).

Every server, wrk and Redis share the machine's cores: on a machine with few cores, a second worker competes
with wrk for them, and that is part of what is measured (the cores are given in the output).

Usage: python bench/scale_out.py MODEL_DIR [--seconds 5] [--rounds 3] [--index float] [--json FILE] [--markdown]
Needs ``wrk`` and a Redis at REDIS_URL (default redis://127.0.0.1:6379/14).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from contracts.versions import read_current

sys.path.insert(0, str(Path(__file__).parent))
from load import LOGS, PIDS, cpu_seconds, empty_redis, run_wrk, server, write_scripts  # noqa: E402

SETUPS = (  # (name, uvicorn workers per process, replicas): each replica is one `gnaq serve` on its own port
    ("1 process, 1 worker", 1, 1),
    ("1 process, --workers 2", 2, 1),
    ("2 replicas, shared Redis", 1, 2),
)
CONNECTIONS = (16, 64)
SCENARIOS = ("cache hit", "cache miss")
_STATS = ("rps", "p50_ms", "p99_ms", "cpu_ms")


def run_split(urls: list[str], path: str, connections: int, seconds: int, script: Path | None,
              walked: int) -> dict[str, float]:
    """One wrk per replica at once, ``connections`` split evenly: requests/s summed, latencies the worst
    replica's, server CPU per request over all of them. Misses walk every k-th user from k starts; ``span`` is
    how far the walk may have gone (requests sent, counting those cut off in flight)."""
    share, cpu = connections // len(urls), sum(cpu_seconds(PIDS[url]) for url in urls)
    trips = sum(LOGS[url].breaker_trips for url in urls)
    with ThreadPoolExecutor(len(urls)) as pool:
        parts = list(pool.map(lambda n: run_wrk(urls[n] + path, share, seconds, script,
                                                (str(walked + n), str(len(urls)))), range(len(urls))))
    cpu = sum(cpu_seconds(PIDS[url]) for url in urls) - cpu
    trips = sum(LOGS[url].breaker_trips for url in urls) - trips
    requests = sum(part["requests"] for part in parts)
    return {"rps": sum(part["rps"] for part in parts), "p50_ms": max(part["p50_ms"] for part in parts),
            "p99_ms": max(part["p99_ms"] for part in parts), "cpu_ms": 1e3 * cpu / max(1, requests),
            "requests": requests, "non_2xx": sum(part["non_2xx"] for part in parts), "breaker_trips": trips,
            "span": len(urls) * (max(part["requests"] for part in parts) + share + 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--index", choices=("float", "codes"), default="float")
    parser.add_argument("--port", type=int, default=8421, help="first of the four ports used")
    parser.add_argument("--json", type=Path, default=Path("runs/scale_out.json"))
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown at the end")
    args = parser.parse_args()
    if args.seconds < 1 or args.rounds < 1:
        parser.error("--seconds and --rounds must be at least 1")
    redis_url = empty_redis()
    artifact = read_current(args.model_dir)
    users, n_items = artifact.user_ids, len(artifact.item_ids)
    version, dim, bits = artifact.version, artifact.dim, artifact.manifest.bits
    del artifact
    hit_user, *walk = random.Random(0).sample(users, min(len(users), 200_000))  # never walked: stays a hit
    hit_path = f"/recommend/{hit_user}?k=10"
    runs: dict[tuple[str, str, int], list[dict]] = {}
    walked = 0  # users already walked: every miss run starts on fresh ones
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        scripts = write_scripts(Path(folder), walk, ["i0"])
        ports = iter(range(args.port, args.port + sum(replicas for _, _, replicas in SETUPS)))
        urls = {name: [stack.enter_context(server(args.model_dir, next(ports), args.index, redis_url,
                                                  workers=workers)) for _ in range(replicas)]
                for name, workers, replicas in SETUPS}
        for name_urls in urls.values():
            for url in name_urls:
                httpx.get(url + hit_path).raise_for_status()
        for _ in range(args.rounds):
            for connections in CONNECTIONS:
                for scenario in SCENARIOS:
                    for name, _, _ in SETUPS:
                        miss = scenario == "cache miss"
                        row = run_split(urls[name], "" if miss else hit_path, connections, args.seconds,
                                        scripts["walk"] if miss else None, walked)
                        walked += row["span"] if miss else 0
                        runs.setdefault((name, scenario, connections), []).append(row)
                        print(name, scenario, connections, json.dumps(row), flush=True)
    if walked > len(walk):
        print(f"warning: misses walked {walked:,} users of {len(walk):,}: the walk wrapped, so later 'misses' "
              "may have been cache hits; use a model with more users or shorter runs", file=sys.stderr)
    results = {"model": version, "n_users": len(users), "n_items": n_items, "dim": dim, "bits": bits,
               "index": args.index, "seconds": args.seconds, "rounds": args.rounds, "walked": walked,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "rows": [{"setup": name, "scenario": scenario, "connections": c,
                         **{k: statistics.median(r[k] for r in rows) for k in _STATS},
                         **{k: sum(r[k] for r in rows) for k in ("non_2xx", "breaker_trips")}}
                        for (name, scenario, c), rows in runs.items()],
               "runs": [{"setup": name, "scenario": scenario, "connections": c, "runs": rows}
                        for (name, scenario, c), rows in runs.items()]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")
    if args.markdown:
        print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"Model {results['model']}: {results['n_users']:,} users, {results['n_items']:,} items, "
             f"d={results['dim']}, {results['bits']} bits, {results['index']} index; medians of "
             f"{results['rounds']} interleaved wrk runs of {results['seconds']} s; {results['machine']}.", "",
             "| scenario | clients | setup | req/s | p50 ms | p99 ms | server CPU ms/request | non-2xx "
             "| Redis breaker trips |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    order = {name: n for n, (name, _, _) in enumerate(SETUPS)}
    for r in sorted(results["rows"], key=lambda r: (r["scenario"], r["connections"], order[r["setup"]])):
        lines.append(f"| {r['scenario']} | {r['connections']} | {r['setup']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['cpu_ms']:.2f} | {r['non_2xx']} | {r['breaker_trips']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
