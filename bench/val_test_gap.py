"""Validation against test at every epoch: does validation judge a quantized model as test does?

Why: a run tests once, on the state chosen on validation, so a gap between its validation and test ratios
(model over fp32 warm start) cannot tell selection luck (the chosen epoch happened to suit the validation items)
from a gap that every epoch shares (validation itself judges the quantized model differently). This diagnostic
trains exactly as ``gnaq train`` does, keeps the served tables of every quantized validation, and scores test on
them after the run, written beside the version's ``history.json`` as ``history_with_test.json``
(``test_recall@K`` / ``test_ndcg@K`` next to each epoch's validation scores). Nothing of test reaches the run.

Never a flag of ``gnaq train``: scoring test at every epoch invites choosing on it.

Usage: python bench/val_test_gap.py [gnaq train arguments ...]
       e.g. python bench/val_test_gap.py --dataset half.csv --model-dir /tmp/gap --no-publish --minutes 10
"""

from __future__ import annotations

import json
import sys

import training.pipeline as pipeline
from cli.main import config_of

TEST_PREFIX = "test_"
_plain_validator = pipeline._validator


class TableRecorder:
    """Wraps the pipeline's validator: the served tables each quantized validation scored, kept per model.

    Only the tables are kept during training (the validation computes them anyway), so the run's epochs and wall-time
    budgets are those of the plain command; test is scored afterwards, on the tables of the winner's epochs. Every
    table stays in memory until then: about (users + items) x d bytes an epoch at 2 bits.
    """

    def __init__(self) -> None:
        self.by_model: dict[int, list[tuple[dict[str, float], tuple]]] = {}
        self.workspace: pipeline.Workspace | None = None

    def validator(self, ws: pipeline.Workspace, model):
        self.workspace = ws
        exclude, relevant = ws.csr(ws.fit_pairs), ws.csr(ws.valid_pairs)

        def validate() -> dict[str, float]:
            if model.quantizer is None:  # the fp32 stage: its test is the manifest's warm_start_test
                return _plain_validator(ws, model)()
            tables = pipeline.served_tables(model, ws.adjacency)
            scores = pipeline.rank_tables(*tables, exclude, relevant, ws.config.ks, ws.device)
            self.by_model.setdefault(id(model), []).append((scores, tables))
            return scores
        return validate

    def add_test(self, history: list[dict]) -> None:
        """Score test on the tables of every validated quantized epoch of ``history`` (the winner's), in place."""
        ws = self.workspace
        records = [r for r in history if r["stage"] != "fp32" and r["valid"]]
        valid = [r["valid"] for r in records]
        (winner,) = [k for k in self.by_model.values() if [scores for scores, _ in k[:len(valid)]] == valid]
        exclude, relevant = ws.csr(ws.data.train), ws.csr(ws.data.test)
        for record, (_, tables) in zip(records, winner, strict=False):
            test = pipeline.rank_tables(*tables, exclude, relevant, ws.config.ks, ws.device)
            record["valid"].update({TEST_PREFIX + name: value for name, value in test.items()})


def gap_table(history: list[dict], metric: str, warm_start_test: float) -> list[dict]:
    """Per quantization-aware epoch: validation and test ``metric``, each over the fp32 warm start's (its stage's
    best validation score; ``warm_start_test``, as the manifest records it)."""
    warm_start_valid = max(r["valid"][metric] for r in history if r["stage"] == "fp32" and r["valid"])
    rows = []
    for record in history:
        if record["stage"] == "fp32" or not record["valid"]:
            continue
        valid, test = record["valid"][metric], record["valid"][TEST_PREFIX + metric]
        rows.append({"stage": record["stage"], "epoch": record["epoch"], "kept": record["kept"], "valid": valid,
                     "test": test,
                     "valid_ratio": valid / warm_start_valid, "test_ratio": test / warm_start_test})
    return rows


def main(argv: list[str]) -> int:
    config = config_of(argv)
    recorder = TableRecorder()
    pipeline._validator = recorder.validator
    try:
        result = pipeline.run_training(config)
    finally:
        pipeline._validator = _plain_validator
    history = json.loads((result.path / "history.json").read_text())
    recorder.add_test(history)
    (result.path / "history_with_test.json").write_text(json.dumps(history, indent=1))
    metric, metrics = config.selection_metric, result.manifest.metrics
    print(f"{result.path}: {metric} per quantization-aware epoch, over the fp32 warm start's")
    print(f"{'stage':>14} {'epoch':>5} {'valid':>7} {'test':>7} {'v ratio':>7} {'t ratio':>7} {'gap':>7}  (* kept)")
    for row in gap_table(history, metric, metrics.warm_start_test[metric]):
        print(f"{row['stage']:>14} {row['epoch']:>5} {row['valid']:7.4f} {row['test']:7.4f} "
              f"{row['valid_ratio']:7.3f} {row['test_ratio']:7.3f} {row['valid_ratio'] - row['test_ratio']:7.3f}"
              + ("  *" if row["kept"] else ""))
    print(f"chosen: valid {metrics.valid[metric]:.4f}, test {metrics.test[metric]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
