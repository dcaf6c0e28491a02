"""Markdown table of every artifact under a model dir: test metrics, ratio to fp32, size."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(model_dir: str) -> None:
    manifests = {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(model_dir).glob("*/manifest.json"))}
    reference = manifests.get("fp32", {}).get("metrics", {}).get("test", {})
    print("| version | method | bits | Recall@10 | NDCG@10 | Recall@20 | NDCG@20 | R@20 / fp32 "
          "| embedding bytes | x smaller than fp32 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for version, m in manifests.items():
        t = m["metrics"]["test"]
        ratio = t["recall@20"] / reference["recall@20"] if reference else float("nan")
        print(f"| {version} | {m['method']} | {m['bits'] or 32} | {t['recall@10']:.4f} | {t['ndcg@10']:.4f} "
              f"| {t['recall@20']:.4f} | {t['ndcg@20']:.4f} | {ratio:.3f} | {m['sizes']['embedding_bytes']:,} "
              f"| {m['sizes']['compression_ratio']:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1])
