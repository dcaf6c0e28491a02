"""A user subsample of a benchmark dataset written as a plain CSV: a dataset the recipe was never tuned on.

Why: the default recipe must hold on interactions nobody here has seen. Half of Gowalla's or MovieLens-1M's users,
re-split per user at random by ``gnaq train --dataset FILE.csv``, is another graph (other degrees, other
density, another split) that reaches the recipe the way a user's own export does: through the CSV loader.

Usage: python bench/subsample.py DATASET OUT.csv [--fraction 0.5] [--seed 0] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

from training.datasets import load_dataset


def subsample(dataset: str, out: Path, fraction: float, seed: int, data_dir: str | None) -> tuple[int, int]:
    """Write every interaction (train and test) of a random ``fraction`` of the users; returns (users, rows)."""
    if not 0 < fraction <= 1:
        raise SystemExit(f"--fraction must be in (0, 1], got {fraction}")
    data = load_dataset(dataset, data_dir=data_dir)
    pairs = np.concatenate([data.train, data.test])
    kept = np.random.default_rng(seed).random(data.n_users) < fraction
    pairs = pairs[kept[pairs[:, 0]]]
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(".tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id"])
        writer.writerows((data.user_ids[u], data.item_ids[i]) for u, i in pairs)
    os.replace(temporary, out)
    return int(kept.sum()), len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a named dataset (gowalla, movielens1m, lastfm, ml-100k) or a path")
    parser.add_argument("out", type=Path, help="the CSV to write (user_id,item_id)")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of the users kept (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="which users are kept (default 0)")
    parser.add_argument("--data-dir", default=os.environ.get("GNAQ_DATA_DIR"), help="where named datasets lie")
    args = parser.parse_args()
    users, rows = subsample(args.dataset, args.out, args.fraction, args.seed, args.data_dir)
    print(f"{args.out}: {users} users, {rows} interactions")


if __name__ == "__main__":
    main()
