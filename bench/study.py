"""The quantization study for one dataset: every row of the table, trained under a time budget, then reported.

Usage: python bench/study.py DATASET [--seeds 0 1 2] [--budget-minutes 60] [--data-dir DIR] [--rows ROW ...]

Each row is one ``gnaq train`` command (settings from ``bench/configs/DATASET.toml`` plus the row's flags), run
in priority order into ``runs/DATASET-seed<S>/<row>/``; a row already there is kept, so an interrupted study
resumes. ``--rows`` trains only the named rows (say, the GNAQ rows after a change to GNAQ); the report keeps the
others from the previous results where their command and settings still hold. Rows not started before the
budget is spent are listed as not run. Then ``bench/report.py`` writes
``bench/results/DATASET.json``, the Markdown table into BENCHMARKS.md and the PNG plots under ``bench/plots/``.
All quantized rows of a seed share one fp32 warm start (cached in the model dir), trained by the first row.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402

from training.config import GNAQ_DISTILL  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# (row, flags) in the order they are trained: what the acceptance needs first, then the other bit widths.
ROWS: list[tuple[str, list[str]]] = [
    ("fp32", ["--method", "fp32"]),
    ("gnaq-2bit", ["--method", "gnaq", "--bits", "2"]),
    ("ptq-tensor-2bit", ["--method", "ptq", "--bits", "2", "--ptq-granularity", "tensor"]),
    ("ptq-node-2bit", ["--method", "ptq", "--bits", "2", "--ptq-granularity", "node"]),
    ("lsq-2bit", ["--method", "lsq", "--bits", "2"]),
    ("n2uq-2bit", ["--method", "n2uq", "--bits", "2"]),
    ("lsq-2bit-distill", ["--method", "lsq", "--bits", "2", "--distill", str(GNAQ_DISTILL)]),
    ("gnaq-2bit-no-distill", ["--method", "gnaq", "--bits", "2", "--distill", "0"]),
    ("gnaq-2bit-no-node-aware", ["--method", "gnaq", "--bits", "2", "--no-node-aware"]),
    ("gnaq-2bit-no-dynamic", ["--method", "gnaq", "--bits", "2", "--no-dynamic"]),
    ("gnaq-2bit-ste", ["--method", "gnaq", "--bits", "2", "--estimator", "ste"]),
    ("bigear-1bit", ["--method", "bigear", "--bits", "1"]),
    *((f"{method}-{bits}bit", ["--method", method, "--bits", str(bits)])
      for bits in (1, 4) for method in ("gnaq", "lsq", "n2uq")),
    *((f"ptq-node-{bits}bit", ["--method", "ptq", "--bits", str(bits), "--ptq-granularity", "node"])
      for bits in (1, 4)),
]


def row_command(dataset: str, row_flags: list[str], seed: int, model_dir: Path, version: str,
                data_dir: str | None) -> list[str]:
    """The ``gnaq train`` arguments of one row (recorded verbatim in the results)."""
    config = ROOT / "bench" / "configs" / f"{dataset}.toml"
    command = ["gnaq", "train", *(["--config", os.path.relpath(config)] if config.is_file() else
                                  ["--dataset", dataset])]
    command += [*row_flags, "--seed", str(seed), "--model-dir", str(model_dir), "--version", version,
                "--no-publish", "--no-progress"]
    return command + (["--data-dir", data_dir] if data_dir else [])


def run_rows(commands: dict[int, dict[str, list[str]]], runs_dir: Path, dataset: str,
             budget_minutes: float | None, only: set[str] | None = None) -> list[str]:
    """Train every missing row (of ``only``, if given) of every seed until the budget is spent; returns the failures."""
    started = time.monotonic()
    failed = []
    for seed, by_version in commands.items():
        model_dir = runs_dir / f"{dataset}-seed{seed}"
        model_dir.mkdir(parents=True, exist_ok=True)
        for version, command in by_version.items():
            if only is not None and version not in only:
                continue
            if (model_dir / version / "manifest.json").is_file():
                print(f"== seed {seed} {version}: exists, kept", flush=True)
                continue
            spent = (time.monotonic() - started) / 60
            if budget_minutes is not None and spent >= budget_minutes:
                continue  # reported as not run
            print(f"== seed {seed} {version} ({spent:.1f} min spent): {' '.join(command)}", flush=True)
            log_path = model_dir / f"{version}.log"
            with log_path.open("w") as log:
                code = subprocess.call([sys.executable, "-m", "cli", *command[1:]], stdout=log,
                                       stderr=subprocess.STDOUT)
            if code != 0:
                failed.append(f"seed {seed} {version} (exit {code}, see {log_path})")
                print(f"   failed: exit {code}, see {log_path}", flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="ml-100k, lastfm, movielens1m, gowalla")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget-minutes", type=float, help="start no new row after this many minutes")
    parser.add_argument("--data-dir", help="directory of the shared datasets (default: $GNAQ_DATA_DIR)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the rows on disk")
    parser.add_argument("--rows", nargs="+", metavar="ROW", help="train only these rows (default: every row)")
    args = parser.parse_args(argv)
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        parser.error("--budget-minutes must be positive")
    unknown = sorted(set(args.rows or ()) - dict(ROWS).keys())
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)} (rows: {', '.join(dict(ROWS))})")
    commands = {seed: {version: row_command(args.dataset, flags, seed, args.runs_dir / f"{args.dataset}-seed{seed}",
                                            version, args.data_dir) for version, flags in ROWS}
                for seed in args.seeds}
    failed = [] if args.report_only else run_rows(commands, args.runs_dir, args.dataset, args.budget_minutes,
                                                  None if args.rows is None else set(args.rows))
    write_report(args.dataset, args.runs_dir, commands, budget_minutes=args.budget_minutes)
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
