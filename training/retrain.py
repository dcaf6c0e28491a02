"""``gnaq retrain``: the nightly job. Merge new interactions, train, gate on validation, publish, ack.

1. A lock file in the model directory keeps two runs from overlapping.
2. The training data is the current model's training interactions (which already include what earlier
   runs merged) plus every interaction the service logged and no run has acknowledged yet; the test
   split is the base dataset's, as recorded in the current manifest.
3. The candidate is validated on the current model's own validation pairs (stored in its artifact,
   which neither model trained on), and the current model is scored on the same pairs with the same
   masking: the candidate is published only if its Recall@20 is at least ``1 - tolerance`` times the
   current one's. A refused candidate stays on disk, unpublished, for inspection.
4. Publishing flips ``CURRENT`` atomically (the service hot-reloads it); only then are the consumed
   log entries acknowledged, so a failed or killed run leaves them pending for the next one, and a
   re-read entry is already in the published training data (pairs are deduplicated). Old versions
   beyond ``keep`` are pruned; ``gnaq rollback`` flips ``CURRENT`` back.

An event logged twice (a client's retry, see ``contracts.interaction_log``) is counted and trained on once;
its repeats are acknowledged with it.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contracts.artifact import CURRENT_FILE, ArtifactError, ModelArtifact
from contracts.interaction_log import LoggedInteraction, first_of_each_event
from contracts.versions import prune, publish_version, read_current
from training.config import TrainConfig
from training.datasets import load_dataset
from training.evaluate import pairs_to_csr
from training.interactions import Interactions
from training.log_reader import InteractionLog
from training.pipeline import rank_tables, run_training
from training.splits import without_pairs

log = logging.getLogger(__name__)

EXIT_PUBLISHED, EXIT_ERROR, EXIT_REFUSED, EXIT_LOCKED = 0, 2, 3, 4
GATE_METRIC = "recall@20"


class RetrainLocked(RuntimeError):
    """Another retrain run holds the lock."""


@dataclass(frozen=True)
class RetrainOutcome:
    """What a run did, for the one-line cron summary and the exit code."""

    published: bool
    version: str | None
    reason: str
    new_interactions: int
    candidate: float | None = None
    current: float | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_PUBLISHED if self.published or self.version is None else EXIT_REFUSED

    def summary(self) -> str:
        state = "published" if self.published else ("refused" if self.version else "skipped")
        scores = "" if self.candidate is None else \
            f" valid {GATE_METRIC} {self.candidate:.4f} vs current {self.current:.4f};"
        return (f"retrain: {state} {self.version or '-'};{scores} {self.new_interactions} new interactions; "
                f"{self.seconds:.1f} s; {self.reason}")


@contextmanager
def retrain_lock(model_dir: Path, *, wait: bool) -> Iterator[None]:
    """Exclusive lock on ``<model_dir>/.retrain.lock`` (released by the OS if the process dies)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / ".retrain.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise RetrainLocked(f"another retrain holds {model_dir / '.retrain.lock'}") from None
        yield


def merge(current: ModelArtifact, base: Interactions,
          new: list[LoggedInteraction]) -> tuple[Interactions, np.ndarray]:
    """The merged data (current ids first, new ids appended) and the validation pairs to gate on."""
    user_ids, item_ids = list(current.user_ids), list(current.item_ids)
    users, items = {u: i for i, u in enumerate(user_ids)}, {v: i for i, v in enumerate(item_ids)}
    for entry in new:
        for ids, index, key in ((user_ids, users, entry.user_id), (item_ids, items, entry.item_id)):
            if key not in index:
                index[key] = len(ids)
                ids.append(key)
    added = np.array([(users[e.user_id], items[e.item_id]) for e in new], dtype=np.int64).reshape(-1, 2)
    train = np.unique(np.concatenate([current.train.pairs(), added]), axis=0)
    test = [(users[base.user_ids[u]], items[base.item_ids[i]]) for u, i in base.test
            if base.user_ids[u] in users and base.item_ids[i] in items]
    test = np.array(test, dtype=np.int64).reshape(-1, 2)
    test = without_pairs(test, train)
    data = Interactions(name=base.name, n_users=len(user_ids), n_items=len(item_ids), train=train, test=test,
                        user_ids=user_ids, item_ids=item_ids, split=base.split, warnings=dict(base.warnings))
    if "valid_pairs" not in current.arrays:
        raise ArtifactError(f"version {current.version} stores no validation pairs "
                            "(trained before retraining existed): retrain cannot gate against it fairly")
    return data, current.arrays["valid_pairs"].astype(np.int64)


def current_score(current: ModelArtifact, fit_pairs: np.ndarray, valid_pairs: np.ndarray) -> float:
    """The current model's validation metric on the candidate's validation pairs, masked the same way."""
    n_users, n_items = len(current.user_ids), len(current.item_ids)
    known = (fit_pairs[:, 0] < n_users) & (fit_pairs[:, 1] < n_items)
    exclude, relevant = pairs_to_csr(fit_pairs[known], n_users, n_items), pairs_to_csr(valid_pairs, n_users, n_items)
    return rank_tables(current.user, current.item, exclude, relevant, [20], torch.device("cpu"))[GATE_METRIC]


def retrain(model_dir: Path, interaction_log: InteractionLog, *, overrides: dict, tolerance: float,
            keep: int, force: bool = False, data_dir: str | None = None) -> RetrainOutcome:
    """One run (the caller holds the lock): see the module docstring."""
    started = time.perf_counter()
    current = read_current(model_dir)
    pending = interaction_log.pending()
    new = first_of_each_event(pending)
    if not pending and not force:
        return RetrainOutcome(False, None, "nothing new to train on", 0, seconds=time.perf_counter() - started)
    record = current.manifest.dataset
    base = load_dataset(record.name, data_dir=data_dir or record.data_dir, split=record.split,
                        test_fraction=record.test_fraction, seed=current.manifest.seed)
    data, valid_pairs = merge(current, base, new)
    config = TrainConfig.from_manifest(current.manifest, **{**overrides, "model_dir": str(model_dir),
                                                             "publish": False, "progress": False})
    result = run_training(config, data=data, valid_pairs=valid_pairs)
    candidate = result.manifest.metrics.valid[GATE_METRIC]
    baseline = current_score(current, without_pairs(data.train, valid_pairs), valid_pairs)
    version = result.path.name
    if candidate < (1 - tolerance) * baseline:
        reason = (f"quality gate: {candidate:.4f} < (1 - {tolerance}) x {baseline:.4f}; kept unpublished in "
                  f"{result.path}, {len(pending)} log entries stay pending")
        return RetrainOutcome(False, version, reason, len(new), candidate, baseline,
                              time.perf_counter() - started)
    publish_version(model_dir, version)
    interaction_log.ack(pending)
    pruned = prune(model_dir, keep)
    reason = f"{CURRENT_FILE} -> {version}" + (f"; pruned {', '.join(pruned)}" if pruned else "")
    if len(new) < len(pending):
        reason += f"; {len(pending) - len(new)} repeated events dropped"
    return RetrainOutcome(True, version, reason, len(new), candidate, baseline, time.perf_counter() - started)

