"""Serving a catalogue-scale model (``bench/synth.py``): load, memory, misses and hot reload, per index kind.

For each index kind (``codes``, ``float``), one at a time so that their memory does not mix: start ``gnaq
serve`` (one worker) on the model and time it until ``/readyz`` answers (model read, checksums, index build,
compiled kernel loaded or compiled, smoke query), and its CPU seconds by then (the shared machine stretches
wall time, not CPU time); read its resident memory; measure ``/healthz`` and cache
misses (distinct users, ``k=10``) with wrk at 1 and 16 clients, interleaved in rounds, medians reported;
then publish a copy of the version under a new name and time ``POST /admin/reload``, reading the process's
peak RSS (``VmHWM``) while both versions were resident. RSS per item is the whole process's RSS over the
number of items (users' tables, ids and training items included), next to the index's own bytes per item.

Usage: python bench/scale.py MODEL_DIR [--kinds codes float] [--seconds 5] [--rounds 2] [--json FILE]
Needs wrk and a Redis at REDIS_URL (default redis://127.0.0.1:6379/14).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from contracts.artifact import MANIFEST_FILE
from contracts.versions import publish_version, read_current, resolve_version

sys.path.insert(0, str(Path(__file__).parent))
from load import KEY, cpu_seconds, empty_redis, run_wrk, write_scripts  # noqa: E402

_SAMPLE_USERS = 200_000  # users the miss walk draws from (the wrk script holds their ids)


def status_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def copy_version(model_dir: Path, source: str, name: str) -> None:
    """A second version for the reload: hard links of the verified files, the manifest renamed."""
    target = model_dir / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(model_dir / source, target, copy_function=os.link)
    manifest_path = target / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = name
    manifest_path.unlink()  # a hard link to the source's manifest: replace, do not edit in place
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))


def measure(model_dir: Path, kind: str, port: int, redis_url: str, scripts: dict, seconds: int, rounds: int,
            walked: int) -> tuple[dict, int]:
    env = {**os.environ, "REDIS_URL": redis_url, "GNAQ_INDEX": kind, "GNAQ_API_KEYS": KEY,
           "GNAQ_RELOAD_POLL_SECONDS": "0", "GNAQ_MAX_K": "100"}
    served = resolve_version(model_dir).name
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port), "--model-dir",
                                str(model_dir), "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.perf_counter() - started > 600:
                raise RuntimeError(f"the {kind} server did not become ready")
            time.sleep(0.05)
        row = {"index": kind, "load_s": time.perf_counter() - started, "load_cpu_s": cpu_seconds(process.pid),
               "rss_kib": status_kib(process.pid, "VmRSS"),
               "load_peak_kib": status_kib(process.pid, "VmHWM")}
        runs: dict[str, list[dict]] = {}
        for _ in range(rounds):
            for connections in (1, 16):
                cpu = cpu_seconds(process.pid)
                result = run_wrk(f"{url}/healthz", connections, seconds)
                result["cpu_ms"] = 1e3 * (cpu_seconds(process.pid) - cpu) / max(1.0, result["rps"] * seconds)
                runs.setdefault(f"healthz/{connections}", []).append(result)
                cpu = cpu_seconds(process.pid)
                result = run_wrk(url, connections, seconds, scripts["walk"], (str(walked),))
                result["cpu_ms"] = 1e3 * (cpu_seconds(process.pid) - cpu) / max(1.0, result["rps"] * seconds)
                walked += int(result["rps"] * seconds) + 100
                runs.setdefault(f"miss/{connections}", []).append(result)
        row["latency"] = {name: {k: statistics.median(r[k] for r in rs) for k in ("p50_ms", "p99_ms", "rps", "cpu_ms")}
                          | {"non_2xx": sum(r["non_2xx"] for r in rs)} for name, rs in runs.items()}
        row["rss_after_load_kib"] = status_kib(process.pid, "VmRSS")
        copy_version(model_dir, served, f"{served}-reload")
        publish_version(model_dir, f"{served}-reload")
        before, cpu = time.perf_counter(), cpu_seconds(process.pid)
        reply = httpx.post(f"{url}/admin/reload", headers={"X-API-Key": KEY}, timeout=600)
        reply.raise_for_status()
        row["reload_s"], row["reload_cpu_s"] = time.perf_counter() - before, cpu_seconds(process.pid) - cpu
        row["reload_peak_kib"] = status_kib(process.pid, "VmHWM")
        row["rss_after_reload_kib"] = status_kib(process.pid, "VmRSS")
        publish_version(model_dir, served)
        return row, walked
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--kinds", nargs="+", choices=("codes", "float"), default=["codes", "float"])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=8521)
    parser.add_argument("--json", type=Path, default=Path("runs/scale.json"))
    args = parser.parse_args()
    if args.seconds < 1 or args.rounds < 1:
        parser.error("--seconds and --rounds must be at least 1")
    redis_url = empty_redis()
    artifact = read_current(args.model_dir)
    n_items, n_users = len(artifact.item_ids), len(artifact.user_ids)
    users = random.Random(0).sample(artifact.user_ids, min(_SAMPLE_USERS, n_users))
    del artifact
    rows, walked = [], 0
    with tempfile.TemporaryDirectory() as folder:
        scripts = write_scripts(Path(folder), users, ["i0"])
        for kind in args.kinds:
            row, walked = measure(args.model_dir, kind, args.port, redis_url, scripts, args.seconds, args.rounds,
                                  walked)
            row["rss_bytes_per_item"] = row["rss_kib"] * 1024 / n_items
            rows.append(row)
            print(json.dumps(row), flush=True)
    results = {"n_users": n_users, "n_items": n_items, "seconds": args.seconds, "rounds": args.rounds, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"{results['n_users']:,} users, {results['n_items']:,} items; medians of {results['rounds']} "
             f"interleaved wrk runs of {results['seconds']} s.", "",
             "| index | load s (CPU s) | RSS MiB | RSS B/item | reload s (CPU s) | peak RSS in reload MiB | clients "
             "| /healthz p50 / p99 ms | miss p50 / p99 ms | miss req/s | CPU ms per /healthz / miss |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        for c in (1, 16):
            h, m = row["latency"][f"healthz/{c}"], row["latency"][f"miss/{c}"]
            lines.append(f"| {row['index']} | {row['load_s']:.1f} ({row['load_cpu_s']:.1f}) | "
                         f"{row['rss_kib'] / 1024:,.0f} | {row['rss_bytes_per_item']:.0f} | "
                         f"{row['reload_s']:.1f} ({row['reload_cpu_s']:.1f}) | "
                         f"{row['reload_peak_kib'] / 1024:,.0f} | {c} | {h['p50_ms']:.2f} / {h['p99_ms']:.2f} | "
                         f"{m['p50_ms']:.2f} / {m['p99_ms']:.2f} | "
                         f"{m['rps']:,.0f} | {h['cpu_ms']:.2f} / {m['cpu_ms']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
