"""Wall time of quantization-aware stages to their best validation, version against version.

Why: the speed bar compares the training seconds GNAQ's quantization-aware stage needs to reach its best validation
Recall@K with LSQ's from the same warm start. Every version records its epochs' training seconds (validation
excluded) in ``history.json`` and, for a GNAQ variant race, the losers' seconds in its manifest; this reads them.
Seconds to the best count the race's losing epochs; "within" is the first validation within ``--within`` of the best
(the end of the climb, before the creep of a decaying rate).

Usage: python bench/time_to_best.py VERSION_DIR ... [--within 0.001]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from report import race_seconds, valid_points

from contracts.artifact import ArtifactError, read_manifest
from training.config import TrainConfig


def stage_summary(version: Path, within: float) -> dict:
    """Epochs, median seconds an epoch, best validation (epoch) and the seconds to it of ``version``'s
    quantization-aware stage."""
    manifest = read_manifest(version)
    if manifest.method in ("fp32", "ptq"):
        raise ValueError(f"{version} has no quantization-aware stage (fp32 or PTQ)")
    metric = TrainConfig.from_manifest(manifest).selection_metric
    stage = f"{manifest.method}-{manifest.bits}bit"
    history = json.loads((version / "history.json").read_text())
    records = [r for r in history if r["stage"] == stage]
    race = race_seconds(manifest.training.choices)
    curve = [point for point in valid_points(history, stage, race, metric) if point[0] > 0]
    if not curve:
        raise ValueError(f"{version}: no quantization-aware epoch was validated")
    best = max(curve, key=lambda point: point[2])
    close = next(point for point in curve if point[2] >= best[2] - within)
    return {"stage": stage, "metric": metric, "epochs": records[-1]["epoch"], "race": race,
            "epoch_seconds": statistics.median(r["seconds"] for r in records if r["epoch"] > 0),
            "best": best, "close": close}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", type=Path, help="version directories written by gnaq train")
    parser.add_argument("--within", type=float, default=0.001, help="validation distance of 'within' (0.001)")
    args = parser.parse_args(argv)
    try:
        rows = [(version, stage_summary(version, args.within)) for version in args.versions]
    except (ArtifactError, OSError, ValueError) as error:
        parser.error(str(error))
    print(f"{'version':>24} {'stage':>10} {'s/epoch':>7} {'epochs':>6} {'race s':>6} {'best (epoch)':>15} "
          f"{'s to best':>9} {f's to within {args.within:g}':>18}")
    for version, s in rows:
        (epoch, seconds, score), (close_epoch, close_seconds, _) = s["best"], s["close"]
        print(f"{version.name:>24} {s['stage']:>10} {s['epoch_seconds']:7.2f} {s['epochs']:6d} {s['race']:6.0f} "
              f"{f'{score:.4f} ({epoch})':>15} {seconds:9.0f} {f'{close_seconds:.0f} (epoch {close_epoch})':>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
