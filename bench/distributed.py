"""1 process against ``--nproc N`` ranks of ``gnaq train``, same global batch: test metrics and seconds per epoch.

``python bench/distributed.py --dataset ml-100k --seeds 0 1 2 --out runs/ddp-ml100k`` trains GNAQ 2-bit once per
seed and world size (each run in its own model directory, so no fp32 warm start is shared between them) and prints
the Markdown table for BENCHMARKS.md; ``--epochs``/``--qat-epochs`` cap the stages (Gowalla: seconds per epoch of a
couple of epochs). Every run pins one thread per rank (``OMP_NUM_THREADS=1``) unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _run(args: argparse.Namespace, seed: int, nproc: int) -> dict:
    model_dir = Path(args.out) / f"nproc{nproc}-seed{seed}"
    command = [sys.executable, "-m", "cli", "train", "--dataset", args.dataset, "--method", "gnaq", "--bits", "2",
               "--seed", str(seed), "--model-dir", str(model_dir), "--no-progress", *args.extra]
    if args.epochs:
        command += ["--epochs", str(args.epochs), "--qat-epochs", str(args.qat_epochs or args.epochs)]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    threads = args.threads if nproc == 1 else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    wall = time.perf_counter() - started
    version = model_dir / (model_dir / "CURRENT").read_text().strip()
    manifest = json.loads((version / "manifest.json").read_text())
    history = json.loads((version / "history.json").read_text())
    per_stage = {}
    for record in history:
        if record["epoch"] > 0:
            per_stage.setdefault(record["stage"], []).append(record["seconds"])
    return {"seed": seed, "nproc": nproc, "threads_per_rank": threads, "command": " ".join(command[1:]),
            "wall_seconds": wall, "test": manifest["metrics"]["test"], "valid": manifest["metrics"]["valid"],
            "epochs_run": manifest["training"]["epochs_run"], "world_size": manifest["training"].get("world_size"),
            "backend": manifest["training"].get("backend"),
            "median_epoch_seconds": {stage: statistics.median(s) for stage, s in per_stage.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="threads of the one-process run (ranks: 1 each)")
    parser.add_argument("--epochs", type=int, help="cap on both stages' epochs (default: the configured schedule)")
    parser.add_argument("--qat-epochs", type=int)
    parser.add_argument("--out", default="runs/ddp")
    parser.add_argument("extra", nargs="*", help="further gnaq train flags, after --")
    args = parser.parse_args()
    rows = [_run(args, seed, nproc) for seed in args.seeds for nproc in args.nproc]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print("| seed | ranks | test Recall@20 | test NDCG@20 | valid Recall@20 | epochs (fp32 + QAT) | s/epoch fp32 "
          "| s/epoch QAT | wall s |")
    print("|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        epochs = " + ".join(str(v) for v in r["epochs_run"].values())
        seconds = list(r["median_epoch_seconds"].values()) + [float("nan")] * 2
        print(f"| {r['seed']} | {r['nproc']} | {r['test']['recall@20']:.4f} | {r['test']['ndcg@20']:.4f} | "
              f"{r['valid']['recall@20']:.4f} | {epochs} | {seconds[0]:.2f} | {seconds[1]:.2f} | "
              f"{r['wall_seconds']:.0f} |")
    for nproc in args.nproc:
        recalls = [r["test"]["recall@20"] for r in rows if r["nproc"] == nproc]
        spread = statistics.stdev(recalls) if len(recalls) > 1 else 0.0
        print(f"ranks {nproc}: test Recall@20 mean {statistics.mean(recalls):.4f} ± {spread:.4f} (sd over seeds)")


if __name__ == "__main__":
    main()
