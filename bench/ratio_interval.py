"""How sure is "GNAQ 2-bit keeps 0.963x of fp32"? A paired bootstrap interval of a version's test ratio.

``gnaq train`` records this interval for the selection metric at 95% (``metrics.warm_start_ratio``); this script
gives it for any metric and confidence, and for versions written before it was recorded.
Why: a bar like 0.97x is judged on one test split. The quantized model and its fp32 warm start are scored on the
same test users, so their per-user Recall@K are paired; resampling users (both scores of a user together) gives
the spread of the ratio of their means that another draw of users of the same kind would show.

Usage: python bench/ratio_interval.py VERSION_DIR [--metric recall@20] [--confidence 0.95] [--resamples 1000]
           [--data-dir DIR]

VERSION_DIR is a quantized version written by ``gnaq train`` (or a model directory: its current version). Its model
directory must still hold the fp32 warm start it was trained from (``<model dir>/.cache``), and its dataset must be
readable where it was trained from.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from contracts.artifact import ArtifactError, read_artifact
from contracts.versions import version_dir
from training.config import TrainConfig
from training.pipeline import load_data, prepare, served_tables, train_full_precision, user_scores, warm_start_path
from training.quality_gate import ratio_interval


def paired_test_scores(version: Path, metric: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per test user, ``metric`` of the version's served tables and of its fp32 warm start (same users, same order).

    ``version`` is a version directory, or a model directory (its CURRENT version)."""
    version = version_dir(version)
    artifact = read_artifact(version)
    info = artifact.manifest
    if info.method == "fp32":
        raise SystemExit(f"{version} is an fp32 model: there is no warm start to compare it with")
    # As trained: ``data_dir`` is part of the warm start's key, so where the data lies now is given to the loader only.
    config = TrainConfig.from_manifest(info, model_dir=str(version.parent), progress=False)
    known = [f"{name}@{k}" for k in config.ks for name in ("recall", "ndcg")]
    if metric not in known:
        raise SystemExit(f"--metric {metric!r} is not one of this version's cut-offs: {', '.join(known)}")
    cache = warm_start_path(config, info.dataset.fingerprint, info.training.world_size)
    if not cache.exists():
        raise SystemExit(f"{cache} is gone: the fp32 warm start of {version.name} is needed for the paired "
                         f"scores (it is pruned with the versions trained from it)")
    data = load_data(config, data_dir)
    if data.fingerprint() != info.dataset.fingerprint:
        raise SystemExit(f"the dataset {config.dataset!r} read now is not the data {version.name} was trained on")
    ws = prepare(config, data, valid_pairs=artifact.arrays["valid_pairs"].astype(np.int64))
    fp32, _ = train_full_precision(ws)  # read from the cache checked above
    split = ws.csr(ws.data.train), ws.csr(ws.data.test)
    return (user_scores(artifact.user, artifact.item, *split, config.ks, ws.device)[metric],
            user_scores(*served_tables(fp32, ws.adjacency), *split, config.ks, ws.device)[metric])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version", type=Path, help="a quantized version written by gnaq train, or its model "
                        "directory (the CURRENT version)")
    parser.add_argument("--metric", default="recall@20", help="a per-user test metric: recall@K or ndcg@K of the "
                        "version's cut-offs (default recall@20)")
    parser.add_argument("--confidence", type=float, default=0.95, help="two-sided (default 0.95)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000, as gnaq train)")
    parser.add_argument("--data-dir", default=os.environ.get("GNAQ_DATA_DIR"), help="where named datasets lie")
    args = parser.parse_args()
    if args.resamples < 100:
        raise SystemExit(f"--resamples must be at least 100, got {args.resamples}")
    if not 0 < args.confidence < 1:
        raise SystemExit(f"--confidence must be in (0, 1), got {args.confidence}")
    try:
        model, fp32 = paired_test_scores(args.version, args.metric, args.data_dir)
        found = ratio_interval(model, fp32, args.metric, confidence=args.confidence, resamples=args.resamples)
    except (ArtifactError, ValueError) as error:  # not a version, unreadable data, or an fp32 model scoring 0
        raise SystemExit(f"{args.version}: {error}") from None
    print(f"{version_dir(args.version).name}: test {found.metric} {model.mean():.4f} against fp32 {fp32.mean():.4f} "
          f"over {found.users} users: {found.ratio:.3f}x, {found.confidence:.0%} interval "
          f"{found.low:.3f}-{found.high:.3f}")


if __name__ == "__main__":
    main()
