"""Markdown table of the artifacts under one or more model dirs (one per seed): test metrics as mean ± std.

Usage: python bench/table.py runs/ml-100k-seed0 [runs/ml-100k-seed1 ...]
Versions are matched by name across dirs; "R@20 / fp32" divides by the fp32 version of the same dir.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(model_dirs: list[str]) -> None:
    runs = [{p.parent.name: json.loads(p.read_text()) for p in sorted(Path(d).glob("*/manifest.json"))}
            for d in model_dirs]
    seeds = ", ".join(str(next(iter(r.values()))["seed"]) for r in runs)
    print(f"Seeds: {seeds} (mean ± sample std over seeds where more than one).\n")
    print("| version | method | bits | " + " | ".join(m.replace("recall", "Recall").replace("ndcg", "NDCG")
                                                  for m in METRICS) + " | R@20 / fp32 | embedding bytes | x smaller |")
    print("|---|---|---:|" + "---:|" * (len(METRICS) + 3))
    for version in runs[0]:
        found = [r[version] for r in runs if version in r]
        first = found[0]
        cells = [_cell([m["metrics"]["test"][k] for m in found]) for k in METRICS]
        ratio = _cell([r[version]["metrics"]["test"]["recall@20"] / r["fp32"]["metrics"]["test"]["recall@20"]
                       for r in runs if version in r and "fp32" in r])
        sizes = first["sizes"]
        print(f"| {version} | {first['method']} | {first['bits'] or 32} | " + " | ".join(cells)
              + f" | {ratio} | {sizes['embedding_bytes']:,} | {sizes['compression_ratio']:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
