"""Training-curve PNG stored next to the artifact."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from training.trainer import EpochRecord  # noqa: E402


def training_curve_png(history: list[EpochRecord], metric: str) -> bytes:
    """Loss per epoch and the validation metric per evaluation, one colour per stage, a star at each stage's
    kept state."""
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 3.5))
    offset = 0
    for stage in dict.fromkeys(r.stage for r in history):
        rows = [r for r in history if r.stage == stage]
        trained = [r for r in rows if r.loss is not None]
        loss_axis.plot([offset + r.epoch for r in trained], [r.loss for r in trained], label=stage)
        evaluated = [r for r in rows if r.valid]
        (line,) = metric_axis.plot([offset + r.epoch for r in evaluated], [r.valid[metric] for r in evaluated],
                                   marker="o", markersize=3, label=stage)
        metric_axis.plot([offset + r.epoch for r in evaluated if r.kept],
                         [r.valid[metric] for r in evaluated if r.kept], marker="*", markersize=12,
                         linestyle="none", color=line.get_color())  # the state the stage kept
        offset += rows[-1].epoch
    loss_axis.set(xlabel="epoch", ylabel="training loss (BPR + L2)", title="loss")
    metric_axis.set(xlabel="epoch", ylabel=f"validation {metric}", title=f"validation {metric} (star: the state kept)")
    for axis in (loss_axis, metric_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
