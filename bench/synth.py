"""A synthetic quantized model at catalogue scale, written as a real artifact the service loads unchanged.

Why synthetic: no public dataset here has a million items, and the serving cost depends on the sizes and
the per-node parameters, not on what the vectors mean. What is made realistic is what the index sees:
item popularity is Zipf-like, a LightGCN vector's norm grows with its node's degree (so per-node scales
spread over an order of magnitude, as trained GNAQ tables do), vectors share a non-zero mean (``--center``
stores it as ``dim_center``), and each row is quantized node-aware at ``bits`` bits with its own min-max
grid (``offset`` = row minimum, ``scale`` = range / (2^bits - 1)) after a shared per-dimension scale.

Usage: python bench/synth.py MODEL_DIR --items 1000000 --users 1000000 [--bits 2] [--dim 64] [--center]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from contracts.artifact import ModelArtifact, UserItems
from contracts.manifest import DatasetRecord, Metrics, ModelInfo, QuantizerRecord, TrainingRecord
from contracts.versions import add_version
from model.tables import QuantizedTable

_CHUNK = 200_000  # rows quantized at once: bounds the float32 temporaries to ~50 MB at d = 64


def degrees(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Zipf-like degrees ``>= 1``, shuffled over rows."""
    ranks = rng.permutation(n) + 1.0
    return np.maximum(1.0, 2000.0 * ranks ** -exponent).astype(np.float32)


def quantized_table(rng: np.random.Generator, degree: np.ndarray, dim: int, bits: int, mean: np.ndarray,
                    dim_scale: np.ndarray, center: bool) -> QuantizedTable:
    """Rows of norm ~ degree^0.25 around ``mean``, quantized per node at ``bits`` bits."""
    n, levels = len(degree), (1 << bits) - 1
    codes = np.empty((n, dim), np.uint8)
    scale, offset = np.empty(n, np.float16), np.empty(n, np.float16)
    ds32 = dim_scale.astype(np.float32)
    for start in range(0, n, _CHUNK):
        rows = slice(start, min(start + _CHUNK, n))
        x = rng.standard_normal((rows.stop - start, dim), dtype=np.float32)
        x *= (0.05 * degree[rows] ** 0.25)[:, None] / np.sqrt(dim)
        x = x / ds32 if center else (x + mean) / ds32
        lo, hi = x.min(axis=1), x.max(axis=1)
        scale[rows] = np.maximum((hi - lo) / levels, 1e-4)
        offset[rows] = lo
        step, base = scale[rows].astype(np.float32)[:, None], offset[rows].astype(np.float32)[:, None]
        codes[rows] = np.clip(np.rint((x - base) / step), 0, levels).astype(np.uint8)
    return QuantizedTable(codes, scale, offset, bits, dim_scale, mean.astype(np.float16) if center else None)


def synthetic_artifact(n_users: int, n_items: int, *, dim: int = 64, bits: int = 2, center: bool = True,
                       per_user: int = 10, seed: int = 0) -> ModelArtifact:
    """The artifact: both tables, ids, ``per_user`` training items per user drawn by popularity, degrees."""
    rng = np.random.default_rng(seed)
    mean = (0.02 * rng.standard_normal(dim)).astype(np.float16).astype(np.float32)
    dim_scale = rng.uniform(0.7, 1.3, dim).astype(np.float16)
    item_degree, user_degree = degrees(rng, n_items, 0.8), degrees(rng, n_users, 0.5)
    items = quantized_table(rng, item_degree, dim, bits, mean, dim_scale, center)
    users = quantized_table(rng, user_degree, dim, bits, mean, dim_scale, center)
    popularity = np.cumsum(item_degree.astype(np.float64))
    picks = np.searchsorted(popularity, rng.random(n_users * per_user) * popularity[-1])
    pairs = np.stack([np.repeat(np.arange(n_users), per_user), np.minimum(picks, n_items - 1)], axis=1)
    train = UserItems.from_pairs(np.unique(pairs, axis=0), n_users)
    dataset = DatasetRecord(name=f"synthetic-{n_users}x{n_items}", split="random", test_fraction=0.0,
                            split_label="none (synthetic)", fingerprint=f"synthetic seed={seed}",
                            n_users=n_users, n_items=n_items, n_train=len(train), n_test=0, n_fit=len(train),
                            n_valid=0)
    info = ModelInfo(method="gnaq", bits=bits, dim=dim, layers=3, seed=seed,
                     quantizer=QuantizerRecord(class_name="GNAQQuantizer", bits=bits, per_node=True, clip=1.0),
                     dataset=dataset, metrics=Metrics(test={}, valid={}, selection_metric="recall@20"),
                     served=f"synthetic {bits}-bit node-aware codes (bench/synth.py)",
                     training=TrainingRecord(epochs_run={}, selected_epoch={}, seconds=0.0, device="none",
                                             torch="none"),
                     config={"synthetic": {"seed": seed, "per_user": per_user, "center": center}})
    return ModelArtifact(info=info, user=users, item=items, user_ids=[f"u{i}" for i in range(n_users)],
                         item_ids=[f"i{i}" for i in range(n_items)], train=train,
                         arrays={"user_degree": user_degree, "item_degree": item_degree})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--center", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--per-user", type=int, default=10, help="training items per user")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", default=None)
    parser.add_argument("--no-publish", action="store_true", help="write the version without pointing CURRENT at it")
    args = parser.parse_args()
    for name in ("items", "users", "dim", "per_user"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 1 <= args.bits <= 8:
        parser.error("--bits must be in 1..8")
    started = time.perf_counter()
    artifact = synthetic_artifact(args.users, args.items, dim=args.dim, bits=args.bits, center=args.center,
                                  per_user=args.per_user, seed=args.seed)
    made = time.perf_counter()
    path = add_version(args.model_dir, artifact, version=args.version, publish=not args.no_publish)
    print(f"wrote {path} ({args.users:,} users, {args.items:,} items, d={args.dim}, {args.bits} bits): "
          f"generated in {made - started:.1f} s, written in {time.perf_counter() - made:.1f} s")


if __name__ == "__main__":
    main()
