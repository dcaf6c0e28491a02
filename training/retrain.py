"""``gnaq retrain``: the nightly job. Merge new interactions, train, gate on validation, publish, ack.

1. A lock file in the model directory keeps two runs from overlapping.
2. The training data is the current model's training interactions (which already include what earlier
   runs merged) plus every interaction the service logged and no run has acknowledged yet; the test
   split is the base dataset's, as recorded in the current manifest.
3. The candidate is validated on the current model's own validation pairs (stored in its artifact,
   which neither model trained on), and the current model is scored on the same pairs with the same
   masking: the candidate is refused only if its Recall@20 is clearly below ``1 - tolerance`` times the
   current one's (``training.quality_gate``). A refused candidate stays on disk, unpublished, for inspection,
   and is listed with its reason by ``gnaq versions``.
4. Publishing flips ``CURRENT`` atomically (the service hot-reloads it); only then are the consumed
   log entries acknowledged, so a failed or killed run leaves them pending for the next one, and a
   re-read entry is already in the published training data (pairs are deduplicated). Old versions
   beyond ``keep`` are pruned; ``gnaq rollback`` flips ``CURRENT`` back.
   Warm starts in ``.cache`` that no remaining version can reuse go with them (``training.warm_starts``).
5. A run that would train first checks that the model directory's file system has room for a new version
   (the current one's size plus one fp32 warm start) and otherwise refuses to start, exit code 5.
6. Every run that does not skip writes ``RETRAIN_STATUS.json`` (the service exports it as metrics); once
   interactions have stayed pending for ``alert_after`` runs in a row, the run says so in a warning.

A logged interaction is one event; training data is a set of (user, item) pairs, so an event whose pair the
model already has, or that repeats another event, adds nothing: the summary counts events, distinct pairs and
pairs new to the training data.

An event logged twice (a client's retry, see ``contracts.interaction_log``) is counted and trained on once;
its repeats are acknowledged with it.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from contracts.artifact import CURRENT_FILE, ArtifactError, ModelArtifact, read_artifact
from contracts.interaction_log import LoggedInteraction, first_of_each_event
from contracts.versions import (
    RetrainStatus,
    prune,
    publish_version,
    read_current,
    read_retrain_status,
    record_refused,
    resolve_version,
    write_retrain_status,
)
from training.config import TrainConfig
from training.evaluate import pairs_to_csr, user_metrics
from training.interactions import Interactions, reindex
from training.log_reader import InteractionLog
from training.pipeline import load_data, run_training
from training.quality_gate import GateSettings, Verdict, judge
from training.splits import without_pairs
from training.warm_starts import prune_warm_starts, warm_start_bytes

log = logging.getLogger(__name__)

EXIT_PUBLISHED, EXIT_ERROR, EXIT_REFUSED, EXIT_LOCKED, EXIT_NO_SPACE = 0, 2, 3, 4, 5
GATE_METRIC = "recall@20"


class RetrainLocked(RuntimeError):
    """Another retrain run holds the lock."""


class NotEnoughSpace(RuntimeError):
    """The model directory's file system cannot hold the version a retrain would write."""


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (a seam the tests patch)."""
    return shutil.disk_usage(path).free


def directory_bytes(path: Path) -> int:
    """Total size of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def check_free_space(model_dir: Path, current: Path) -> int:
    """Refuse to start unless a new version fits: the current version's size plus one more fp32 warm start."""
    needed = directory_bytes(current) + warm_start_bytes(model_dir)
    free = free_bytes(model_dir)
    if free < needed:
        raise NotEnoughSpace(f"{model_dir} has {free / 1e6:.1f} MB free, and a new version needs about "
                             f"{needed / 1e6:.1f} MB (the size of {current.name} plus one fp32 warm start): free "
                             "space there (e.g. `gnaq retrain --keep N` prunes old versions once a run publishes)")
    return needed


@dataclass(frozen=True)
class NewData:
    """What the pending log entries add: events, their distinct pairs, and the pairs the model did not have."""

    events: int
    distinct_pairs: int
    new_pairs: int

    def __str__(self) -> str:
        return f"{self.events} logged interactions ({self.distinct_pairs} distinct pairs, {self.new_pairs} new)"


@dataclass(frozen=True)
class RetrainOutcome:
    """What a run did, for the one-line cron summary and the exit code."""

    state: str  # "published", "refused" or "skipped"
    version: str | None
    reason: str
    new: NewData
    verdict: Verdict | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_REFUSED if self.state == "refused" else EXIT_PUBLISHED

    def summary(self) -> str:
        version = f" {self.version}" if self.version else ""
        scores = "" if self.verdict is None else \
            f" valid {GATE_METRIC} {self.verdict.candidate:.4f} vs current {self.verdict.current:.4f};"
        return f"retrain: {self.state}{version};{scores} {self.new}; {self.seconds:.1f} s; {self.reason}"


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
    test = without_pairs(reindex(base.test, base.user_ids, base.item_ids, users, items), train)
    data = Interactions(name=base.name, n_users=len(user_ids), n_items=len(item_ids), train=train, test=test,
                        user_ids=user_ids, item_ids=item_ids, split=base.split, warnings=dict(base.warnings),
                        source_fingerprint=base.source_fingerprint or base.fingerprint())
    if "valid_pairs" not in current.arrays:
        raise ArtifactError(f"version {current.version} stores no validation pairs "
                            "(trained before retraining existed): retrain cannot gate against it fairly")
    return data, current.arrays["valid_pairs"].astype(np.int64)


def validation_scores(model: ModelArtifact, fit_pairs: np.ndarray, valid_pairs: np.ndarray) -> np.ndarray:
    """Per-user gate metric of ``model`` on ``valid_pairs`` (users in index order), its known fit pairs masked."""
    n_users, n_items = len(model.user_ids), len(model.item_ids)
    known = (fit_pairs[:, 0] < n_users) & (fit_pairs[:, 1] < n_items)
    exclude, relevant = pairs_to_csr(fit_pairs[known], n_users, n_items), pairs_to_csr(valid_pairs, n_users, n_items)
    vectors = (torch.from_numpy(t.dequantize()) for t in (model.user, model.item))
    return user_metrics(*vectors, exclude, relevant, [20])[GATE_METRIC]


def new_data(current: ModelArtifact, pending: list[LoggedInteraction]) -> NewData:
    """Count the pending events, their distinct pairs and the pairs the current model did not train on."""
    distinct = {(e.user_id, e.item_id) for e in pending}
    users, items = {u: i for i, u in enumerate(current.user_ids)}, {v: i for i, v in enumerate(current.item_ids)}
    known = sum(1 for u, i in distinct if u in users and i in items and
                np.isin(items[i], current.train.of(users[u])).item())
    return NewData(len(pending), len(distinct), len(distinct) - known)


def _status(model_dir: Path, state: str, version: str | None, still_pending: int, alert_after: int) -> None:
    """Write how the run ended; warn once interactions have waited ``alert_after`` runs or more."""
    previous = read_retrain_status(model_dir)
    now = datetime.now(UTC)
    waiting = still_pending > 0 and previous is not None and previous.pending_interactions > 0
    runs = previous.runs_pending + 1 if waiting else int(still_pending > 0)
    since = (previous.pending_since or previous.finished_at) if waiting else (now if still_pending else None)
    write_retrain_status(model_dir, RetrainStatus(finished_at=now, outcome=state, version=version,
                                                  pending_interactions=still_pending, runs_pending=runs,
                                                  pending_since=since))
    if runs >= alert_after:
        log.warning("%d logged interactions have been pending for %d retrain runs (since %s): the quality gate "
                    "keeps refusing; see `gnaq versions` for why", still_pending, runs, since.isoformat())


def retrain(model_dir: Path, interaction_log: InteractionLog, *, overrides: dict, gate: GateSettings, keep: int,
            force: bool = False, data_dir: str | None = None, alert_after: int = 3) -> RetrainOutcome:
    """One run (the caller holds the lock): see the module docstring."""
    started = time.perf_counter()
    current = read_current(model_dir)
    pending = interaction_log.pending()
    new = first_of_each_event(pending)
    added = new_data(current, new)
    if not pending and not force:
        return RetrainOutcome("skipped", None, "nothing new to train on", added,
                              seconds=time.perf_counter() - started)
    check_free_space(model_dir, resolve_version(model_dir))
    config = TrainConfig.from_manifest(current.manifest, **{"progress": False, **overrides,
                                                             "model_dir": str(model_dir), "publish": False})
    data, valid_pairs = merge(current, load_data(config, data_dir), new)
    result = run_training(config, data=data, valid_pairs=valid_pairs)
    fit_pairs = without_pairs(data.train, valid_pairs)
    verdict = judge(validation_scores(read_artifact(result.path), fit_pairs, valid_pairs),
                    validation_scores(current, fit_pairs, valid_pairs), gate)
    version = result.path.name
    if not verdict.passed:
        reason = f"quality gate: {verdict.reason}; kept unpublished in {result.path}, the interactions stay pending"
        record_refused(model_dir, version, verdict.reason)
        _status(model_dir, "refused", version, len(pending), alert_after)
        return RetrainOutcome("refused", version, reason, added, verdict, time.perf_counter() - started)
    publish_version(model_dir, version)
    interaction_log.ack(pending)
    pruned = prune(model_dir, keep)
    dropped = prune_warm_starts(model_dir)  # the warm starts only pruned versions could reuse
    _status(model_dir, "published", version, 0, alert_after)
    reason = f"gate: {verdict.reason}; {CURRENT_FILE} -> {version}" + (f"; pruned {', '.join(pruned)}" if pruned
                                                                        else "")
    if dropped:
        reason += f"; {len(dropped)} unused fp32 warm start(s) removed"
    if len(new) < len(pending):
        reason += f"; {len(pending) - len(new)} repeated events dropped"
    return RetrainOutcome("published", version, reason, added, verdict, time.perf_counter() - started)

