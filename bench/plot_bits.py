"""Recall@20 against bits per value for GNAQ and per-node PTQ, with the fp32 model as a line.

Usage: python bench/plot_bits.py MODEL_DIR OUT.png   (MODEL_DIR as filled by bench/table_runs.sh)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(model_dir: str, out: str) -> None:
    def recall(version: str) -> float:
        return json.loads((Path(model_dir) / version / "manifest.json").read_text())["metrics"]["test"]["recall@20"]

    bits = [1, 2, 4]
    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    axis.axhline(recall("fp32"), color="black", linestyle="--", label="fp32 LightGCN (32 bits)")
    axis.plot(bits, [recall(f"gnaq-{b}bit") for b in bits], marker="o", label="GNAQ (served codes)")
    axis.plot(bits, [recall(f"ptq-node-{b}bit") for b in bits], marker="s", label="PTQ per node (min-max)")
    axis.plot([2], [recall("ptq-tensor-2bit")], marker="x", linestyle="", color="red", label="PTQ per tensor")
    axis.set(xlabel="bits per value", ylabel="test Recall@20", xticks=bits,
             title="MovieLens-100K, d=64, L=3, seed 0")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
