"""HTTP load benchmark of the service, side by side in one run, against real uvicorn processes.

Scenarios, each at 1 and 16 concurrent connections (wrk, one client thread, keep-alive):
``/healthz`` (the floor of the HTTP stack), a cache hit from the replica's near cache, a cache hit
through Redis (near cache off), a cache miss on the float index, a cache miss on the codes index,
and ``POST /interactions``. Misses walk through users no earlier run
touched, so none is served from a cache, and the hit/miss counters of ``/metrics`` are recorded to
prove it. A last check posts an interaction and
immediately reads that user's recommendations, which must already exclude the posted item.

The machine's speed drifts by 2-3x over minutes (shared host), so scenarios are interleaved in rounds
against three servers started side by side (float index; float index with the near cache off; codes
index) and the medians over rounds are reported, with the server's CPU time per request (``/proc``), which
other people's load on the machine does not inflate the way it inflates latency.

Usage: python bench/load.py MODEL_DIR [--seconds 5] [--rounds 3] [--json runs/load.json]
Needs ``wrk`` (Debian package) and a Redis at REDIS_URL (default redis://127.0.0.1:6379/14).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import httpx
import redis

from contracts.versions import read_current

KEY = "bench-key"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
PIDS: dict[str, int] = {}  # server url -> its process id, for CPU accounting
LOGS: dict[str, ServerLog] = {}  # server url -> what its stderr said


def empty_redis() -> str:
    """``REDIS_URL`` (default DB 14), emptied: every run starts with no cached lists or logged posts."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    redis.Redis.from_url(url).flushdb()
    return url


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process and its live descendants (uvicorn's workers) have used (``/proc``):
    unlike latency on a shared machine, the CPU a request costs does not grow with other people's load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    children = []
    with contextlib.suppress(OSError):  # a thread or child that ended meanwhile
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(child) for child in (task / "children").read_text().split()]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(map(cpu_seconds, children))


class ServerLog:
    """A server's stderr, read in a thread: INFO lines dropped, the rest (warnings, tracebacks) passed on.

    Counted: its workers' completed startups (``/readyz`` answers once one worker is ready, and a load must not
    begin before every worker serves) and the times the Redis breaker opened (the store failing fast: a run
    with trips measured a degraded service)."""

    def __init__(self, stream: IO[str]) -> None:
        self.started = self.breaker_trips = 0
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if "Application startup complete" in line:
                self.started += 1
            elif not line.startswith("INFO"):
                self.breaker_trips += "Redis failed" in line and "failing fast" in line
                sys.stderr.write(line)


@contextlib.contextmanager
def server(model_dir: Path, port: int, index: str, redis_url: str, near_cache: bool = True, workers: int = 1):
    """``gnaq serve`` with the given index and ``workers`` processes, from when all are ready to the block's end."""
    env = {**os.environ, "REDIS_URL": redis_url, "GNAQ_INDEX": index, "GNAQ_API_KEYS": KEY,
           "GNAQ_RELOAD_POLL_SECONDS": "0", "GNAQ_MAX_K": "100",
           "GNAQ_NEAR_CACHE_ENTRIES": "100000" if near_cache else "0"}
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port), "--workers", str(workers),
                                "--model-dir", str(model_dir), "--log-level", "info"], env=env,
                               stderr=subprocess.PIPE, text=True)
    log = ServerLog(process.stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(6000):
            with contextlib.suppress(httpx.HTTPError):
                if log.started >= workers and httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            if process.poll() is not None:
                raise RuntimeError(f"server on port {port} exited with {process.returncode}")
            time.sleep(0.1)
        else:
            raise RuntimeError("server did not become ready")
        PIDS[url], LOGS[url] = process.pid, log
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _lua_list(values: list[str]) -> str:
    return "{" + ",".join(json.dumps(v) for v in values) + "}"


def write_scripts(folder: Path, users: list[str], items: list[str]) -> dict[str, Path]:
    """wrk Lua scripts: walk distinct users (misses), and random posts."""
    walk = folder / "walk.lua"
    walk.write_text(f"""
local users = {_lua_list(users)}
local n, step = 0, 1
init = function(args)
  n = tonumber(args[1]) or 0  -- where this run starts in the user list: no two runs share users
  step = tonumber(args[2]) or 1  -- k wrk processes at once walk every k-th user, from k starts
end
request = function()
  n = n + step
  return wrk.format("GET", "/recommend/" .. users[(n % #users) + 1] .. "?k=10")
end
""")
    post = folder / "post.lua"
    post.write_text(f"""
local users = {_lua_list(users)}
local items = {_lua_list(items)}
math.randomseed(7)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "{KEY}"
request = function()
  local body = '{{"user_id":"' .. users[math.random(#users)] .. '","item_id":"' .. items[math.random(#items)] .. '"}}'
  return wrk.format(nil, "/interactions", nil, body)
end
""")
    return {"walk": walk, "post": post}


def run_wrk(url: str, connections: int, seconds: int, script: Path | None = None,
            script_args: tuple[str, ...] = ()) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run([*command, url, "--", *script_args], capture_output=True, text=True,
                            check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
              "requests": int(re.search(r"(\d+) requests in", output).group(1))}
    for percentile in ("50", "99"):
        value, unit = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)", output, re.M).groups()
        result[f"p{percentile}_ms"] = float(value) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(errors.group(1)) if errors else 0
    return result


def cache_counts(url: str) -> dict[str, float]:
    counts = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        for name in ("gnaq_cache_hits_total", "gnaq_cache_misses_total"):
            if line.startswith(name + " "):
                counts[name.split("_")[2]] = float(line.split()[1])
    return counts


def check_read_your_writes(url: str, users: list[str], items: list[str], n: int = 100) -> int:
    """Posts followed at once by a read: how many reads already excluded the posted item."""
    reflected, rng = 0, random.Random(3)
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}) as client:
        for _ in range(n):
            user = rng.choice(users)
            top = client.get(f"/recommend/{user}", params={"k": 10}).json()["items"][0]["item_id"]
            client.post("/interactions", json={"user_id": user, "item_id": top}).raise_for_status()
            after = client.get(f"/recommend/{user}", params={"k": 10}).json()
            reflected += top not in {i["item_id"] for i in after["items"]} and not after["cached"]
    return reflected


SCENARIOS = [  # (name, server, path or script): run in this order, at each concurrency, in every round
    ("healthz", "float", "/healthz"),
    ("cache hit (replica memory)", "float", "hit"),
    ("cache hit (Redis round trip)", "redis-only", "hit"),
    ("cache miss, float index", "float", "walk"),
    ("cache miss, codes index", "codes", "walk"),
    ("POST /interactions", "float", "post"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--port", type=int, default=8321)
    parser.add_argument("--json", type=Path, default=Path("runs/load.json"))
    args = parser.parse_args()
    redis_url = empty_redis()
    artifact = read_current(args.model_dir)
    users, items = artifact.user_ids, artifact.item_ids
    hit_path = f"/recommend/{users[0]}?k=10"
    runs: dict[tuple[str, int], list[dict]] = {}
    walked = 0  # users already used by earlier miss runs: every miss run starts on fresh users
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        scripts = write_scripts(Path(folder), random.Random(0).sample(users, len(users)), items)
        urls = {name: stack.enter_context(server(args.model_dir, args.port + n, index, redis_url, near))
                for n, (name, index, near) in enumerate([("float", "float", True), ("redis-only", "float", False),
                                                         ("codes", "codes", True)])}
        for url in urls.values():
            httpx.get(url + hit_path).raise_for_status()
        for _ in range(args.rounds):
            for connections in (1, 16):
                for name, target, what in SCENARIOS:
                    url = urls[target]
                    before, cpu = cache_counts(url), cpu_seconds(PIDS[url])
                    script = scripts.get(what)
                    row = run_wrk(url + (hit_path if what == "hit" else what if script is None else ""),
                                  connections, args.seconds, script, (str(walked),))
                    row["cpu_ms"] = 1e3 * (cpu_seconds(PIDS[url]) - cpu) / max(1.0, row["rps"] * args.seconds)
                    after = cache_counts(url)
                    row.update({k: after.get(k, 0) - before.get(k, 0) for k in ("hits", "misses")})
                    walked += int(row["hits"] + row["misses"]) if what == "walk" else 0
                    runs.setdefault((name, connections), []).append(row)
                    print(name, connections, json.dumps(row), flush=True)
        reflected = check_read_your_writes(urls["float"], users, items)
    results = {"model": artifact.version, "n_users": len(users), "n_items": len(items),
               "dim": artifact.dim, "bits": artifact.manifest.bits, "seconds": args.seconds,
               "rounds": args.rounds, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "read_your_writes": {"checked": 100, "reflected": reflected},
               "rows": [{"scenario": name, "connections": c,
                         **{k: statistics.median(r[k] for r in rows) for k in ("p50_ms", "p99_ms", "rps", "cpu_ms")},
                         **{k: sum(r[k] for r in rows) for k in ("hits", "misses", "non_2xx")}}
                        for (name, c), rows in sorted(runs.items(), key=lambda item: item[0][1])],
               "runs": [{"scenario": name, "connections": c, "runs": rows} for (name, c), rows in runs.items()]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"Model {results['model']}: {results['n_users']:,} users, {results['n_items']:,} items, "
             f"d={results['dim']}, {results['bits']} bits; medians of {results['rounds']} interleaved runs of "
             f"{results['seconds']} s; {results['machine']}.", "",
             "| scenario | clients | p50 ms | p99 ms | req/s | server CPU ms/request | cache hits / misses (all runs) "
             "| non-2xx |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| {r['scenario']} | {r['connections']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['rps']:,.0f} | {r['cpu_ms']:.2f} | {r['hits']:.0f} / {r['misses']:.0f} | {r['non_2xx']} |")
    rw = results["read_your_writes"]
    lines += ["", f"Read-your-writes: {rw['reflected']}/{rw['checked']} reads right after a post already excluded "
                  "the posted item (uncached)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
