"""HTTP load benchmark of the service, side by side in one run, against real uvicorn processes.

Scenarios, each at 1 and 16 concurrent connections (wrk, one client thread, keep-alive):
``/healthz`` (the floor of the HTTP stack), a cache hit from the replica's near cache, a cache hit
through Redis (near cache off), a cache miss on the float index, a cache miss on the codes index,
and ``POST /interactions``. Every scenario starts from an empty cache
(Redis ``FLUSHDB``); misses walk through distinct users so none is served from the cache, and the
hit/miss counters of ``/metrics`` are recorded to prove it. A last check posts an interaction and
immediately reads that user's recommendations, which must already exclude the posted item.

Usage: python bench/load.py MODEL_DIR [--seconds 10] [--json runs/load.json]
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from training.artifact import read_artifact

KEY = "bench-key"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@contextlib.contextmanager
def server(model_dir: Path, port: int, index: str, redis_url: str, near_cache: bool = True):
    """``gnaq serve`` with the given index until the block ends."""
    env = {**os.environ, "REDIS_URL": redis_url, "GNAQ_INDEX": index, "GNAQ_API_KEYS": KEY,
           "GNAQ_RELOAD_POLL_SECONDS": "0", "GNAQ_MAX_K": "100",
           "GNAQ_NEAR_CACHE_ENTRIES": "100000" if near_cache else "0"}
    process = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", "--port", str(port),
                                "--model-dir", str(model_dir), "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError("server did not become ready")
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
local n = 0
init = function(args)
  n = tonumber(args[1]) or 0  -- where this run starts in the user list: no two runs share users
end
request = function()
  n = n + 1
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
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--port", type=int, default=8321)
    parser.add_argument("--json", type=Path, default=Path("runs/load.json"))
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    flush = redis.Redis.from_url(redis_url).flushdb
    artifact = read_artifact(args.model_dir)
    users, items = artifact.user_ids, artifact.item_ids
    results: dict = {"model": artifact.manifest["version"], "n_users": len(users), "n_items": len(items),
                     "dim": artifact.dim, "bits": artifact.manifest.get("bits"), "seconds": args.seconds,
                     "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "rows": []}

    walked = [0]  # users already used by earlier miss runs (their bodies may be cached now)

    def record(name: str, url: str, connections: int, script: Path | None = None, path: str = "") -> None:
        before = cache_counts(url)
        row = run_wrk(url + path, connections, args.seconds, script, (str(walked[0]),))
        after = cache_counts(url)
        row.update(scenario=name, connections=connections,
                   **{k: after.get(k, 0) - before.get(k, 0) for k in ("hits", "misses")})
        if script is not None and script.name == "walk.lua":
            walked[0] += int(row["hits"] + row["misses"])
        results["rows"].append(row)
        print(json.dumps(row), flush=True)

    with tempfile.TemporaryDirectory() as folder:
        scripts = write_scripts(Path(folder), random.Random(0).sample(users, len(users)), items)
        flush()
        with server(args.model_dir, args.port, "float", redis_url) as url:
            for connections in (1, 16):
                record("healthz", url, connections, path="/healthz")
                httpx.get(f"{url}/recommend/{users[0]}?k=10")
                record("cache hit (replica memory)", url, connections, path=f"/recommend/{users[0]}?k=10")
                flush()
                record("cache miss, float index", url, connections, scripts["walk"])
                flush()
                record("POST /interactions", url, connections, scripts["post"])
            flush()
            results["read_your_writes"] = {"checked": 100, "reflected": check_read_your_writes(url, users, items)}
        flush()
        with server(args.model_dir, args.port, "float", redis_url, near_cache=False) as url:
            httpx.get(f"{url}/recommend/{users[0]}?k=10")
            for connections in (1, 16):
                record("cache hit (Redis round trip)", url, connections, path=f"/recommend/{users[0]}?k=10")
        flush()
        with server(args.model_dir, args.port, "codes", redis_url) as url:
            for connections in (1, 16):
                flush()
                record("cache miss, codes index", url, connections, scripts["walk"])
        flush()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"Model {results['model']}: {results['n_users']:,} users, {results['n_items']:,} items, "
             f"d={results['dim']}, {results['bits']} bits; {results['seconds']} s per row; {results['machine']}.", "",
             "| scenario | clients | p50 ms | p99 ms | req/s | cache hits / misses | non-2xx |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| {r['scenario']} | {r['connections']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['rps']:,.0f} | {r['hits']:.0f} / {r['misses']:.0f} | {r['non_2xx']} |")
    rw = results["read_your_writes"]
    lines += ["", f"Read-your-writes: {rw['reflected']}/{rw['checked']} reads right after a post already excluded "
                  "the posted item (uncached)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
