"""The training job end to end: data -> fp32 warm start -> fp32 / PTQ / GNAQ / a QAT baseline (LSQ, N2UQ,
BiGeaR) -> test once -> artifact."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from contracts.artifact import ModelArtifact, UserItems, read_artifact
from contracts.manifest import (
    DatasetRecord,
    Manifest,
    Metrics,
    ModelInfo,
    QuantizerRecord,
    RatioInterval,
    TrainingRecord,
)
from contracts.versions import add_version
from model.baselines import BiGeaRQuantizer, LSQQuantizer, N2UQQuantizer
from model.distillation import ListwiseDistillation
from model.graph import node_degrees, normalized_adjacency
from model.lightgcn import LightGCN
from model.quantizers import EmbeddingQuantizer, GNAQQuantizer, UniformQuantizer, graph_influence
from model.tables import EmbeddingTable, FloatTable, QuantizedTable
from training.config import Schedule, TrainConfig
from training.datasets import load_dataset
from training.distributed import Cluster, cluster_device
from training.evaluate import mean_metrics, pairs_to_csr, user_metrics
from training.interactions import Interactions, reindex
from training.plots import training_curve_png
from training.quality_gate import ratio_interval
from training.sampling import NegativeSampler
from training.splits import validation_split, without_pairs
from training.trainer import EpochRecord, FitSettings, StageRun, fit

log = logging.getLogger(__name__)
RATIO_RESAMPLED_SCORES = 100_000_000  # users x resamples of the warm-start ratio's bootstrap (_warm_start_ratio)
WARM_START_DIR = ".cache"  # <model dir>/.cache: fp32 warm starts, pruned with the versions (training.warm_starts)


@dataclass
class Workspace:
    """The data of one run and the graph built from its fit split (train minus validation)."""

    config: TrainConfig
    data: Interactions
    fit_pairs: np.ndarray
    valid_pairs: np.ndarray
    adjacency: torch.Tensor
    device: torch.device
    cluster: Cluster = field(default_factory=Cluster)
    choices: dict = field(default_factory=dict)  # what the default recipe derived or chose (manifest)

    def csr(self, pairs: np.ndarray) -> sp.csr_matrix:
        return pairs_to_csr(pairs, self.data.n_users, self.data.n_items)

    @cached_property
    def degrees(self) -> np.ndarray:
        """Every node's degree in the fit graph (users first): GNAQ's refinement, and fold-in from the artifact."""
        return node_degrees(self.fit_pairs, self.data.n_users, self.data.n_items)

    @cached_property
    def influence(self) -> torch.Tensor:
        """GNAQ's per-node graph influence (estimator (c)): built once, shared by every raced candidate."""
        return graph_influence(self.adjacency)


@dataclass
class TrainResult:
    """What ``gnaq train`` produced: the version directory and its manifest."""

    path: Path
    manifest: Manifest


def load_data(config: TrainConfig, data_dir: str | None = None) -> Interactions:
    """The dataset as ``config`` names it (``data_dir`` overrides where named datasets lie): source, columns, split."""
    return load_dataset(config.dataset, data_dir=data_dir or config.data_dir, split=config.split,
                        test_fraction=config.test_fraction, seed=config.seed, columns=config.columns.spec())


def prepare(config: TrainConfig, data: Interactions | None = None,
            valid_pairs: np.ndarray | None = None, cluster: Cluster | None = None) -> Workspace:
    """Load the dataset (unless given), carve the validation split (unless given), derive the settings left
    unset from the data, build the graph.

    With several ranks each loads and carves alike (same seed); they are checked to hold the same data and settings.
    """
    cluster = cluster or Cluster()
    torch.manual_seed(config.seed)
    if data is None:
        data = load_data(config)
    if valid_pairs is None:
        fit_pairs, valid_pairs = validation_split(data.train, fraction=config.valid_fraction, seed=config.seed)
    else:  # e.g. retraining: validate on exactly the pairs the current model was validated on
        fit_pairs = without_pairs(data.train, valid_pairs)
    _check_size(config, data, valid_pairs)
    cluster.check_same("training settings", config.model_dump(mode="json", exclude={"progress", "device"}))
    cluster.check_same("data", [data.fingerprint(), len(fit_pairs), int(fit_pairs.sum()), int(valid_pairs.sum())])
    config, derived = config.for_data(len(fit_pairs), data.n_items)
    if cluster.world_size > config.bpr.batch_size:
        raise ValueError(f"--batch-size {config.bpr.batch_size} is the global batch, split between the "
                         f"{cluster.world_size} ranks: it must be at least the number of ranks")
    device = cluster_device(cluster, config.device)
    adjacency = normalized_adjacency(fit_pairs, data.n_users, data.n_items, device)
    return Workspace(config, data, fit_pairs, valid_pairs, adjacency, device, cluster,
                     {"derived": derived} if derived else {})


def _check_size(config: TrainConfig, data: Interactions, valid_pairs: np.ndarray) -> None:
    """Refuse, with what to do, data too small for the configured evaluation before any training."""
    if max(config.ks) > data.n_items:
        raise ValueError(f"dataset {data.name!r} has {data.n_items} items, fewer than the largest cut-off K = "
                         f"{max(config.ks)} of --ks {' '.join(map(str, config.ks))}: pass smaller cut-offs, e.g. "
                         f"--ks {max(1, data.n_items // 2)}")
    if len(valid_pairs) == 0 or len(data.test) == 0:
        empty = "validation" if len(valid_pairs) == 0 else "test"
        raise ValueError(f"dataset {data.name!r} ({data.n_users} users, {len(data.train)} training pairs) is too "
                         f"small to carve a {empty} split: each user keeps at least one training interaction, and "
                         f"round(n x fraction) of n interactions is 0 below 1 / (2 x fraction); raise "
                         f"--{'valid' if empty == 'validation' else 'test'}-fraction or bring more interactions")


def served_tables(model: LightGCN, adjacency: torch.Tensor) -> tuple[EmbeddingTable, EmbeddingTable]:
    """The user and item tables exactly as the artifact stores them (codes or float32)."""
    with torch.no_grad():
        final = model.quantizer_input(adjacency)
        n_users = model.n_users
        if model.quantizer is None:
            vectors = final.cpu().numpy().astype(np.float32)
            return FloatTable(vectors[:n_users]), FloatTable(vectors[n_users:])
        encoded = model.quantizer.encode(final)
    codes = encoded.codes.cpu().numpy()
    scale, offset = encoded.scale.cpu().numpy(), encoded.offset.cpu().numpy()
    dim_scale = None if encoded.dim_scale is None else encoded.dim_scale.cpu().numpy()
    centers = (None, None) if encoded.dim_center is None else encoded.dim_center.cpu().numpy()
    sides = (slice(0, n_users), slice(n_users, None))
    params = sides if len(scale) == len(codes) else (slice(0, 1), slice(1, 2))  # per node, or (users, items)
    user, item = (QuantizedTable(codes[side], scale[p], offset[p], model.quantizer.bits, dim_scale, center)
                  for side, p, center in zip(sides, params, centers, strict=True))
    return user, item


def rank_tables(user: EmbeddingTable, item: EmbeddingTable, exclude: sp.csr_matrix, relevant: sp.csr_matrix,
                ks: list[int], device: torch.device) -> dict[str, float]:
    """Full-ranking metrics of the served vectors."""
    return mean_metrics(user_scores(user, item, exclude, relevant, ks, device))


def user_scores(user: EmbeddingTable, item: EmbeddingTable, exclude: sp.csr_matrix, relevant: sp.csr_matrix,
                ks: list[int], device: torch.device) -> dict[str, np.ndarray]:
    """Full-ranking metrics of the served vectors, per user with a relevant item (``user_metrics``)."""
    vectors = (torch.from_numpy(t.dequantize()).to(device) for t in (user, item))
    return user_metrics(*vectors, exclude, relevant, ks)


def _validator(ws: Workspace, model: LightGCN):
    exclude, relevant = ws.csr(ws.fit_pairs), ws.csr(ws.valid_pairs)
    return lambda: rank_tables(*served_tables(model, ws.adjacency), exclude, relevant,
                               ws.config.ks, ws.device)


def _settings(config: TrainConfig, stage: Schedule, select_window: int = 1) -> FitSettings:
    return FitSettings(epochs=stage.epochs, batch_size=config.bpr.batch_size, lr=stage.lr, l2=config.bpr.l2,
                       patience=stage.patience, eval_every=stage.eval_every, metric=config.selection_metric,
                       max_seconds=None if stage.minutes is None else 60 * stage.minutes,
                       lr_patience=stage.lr_patience, ema=stage.ema, negatives=config.bpr.negatives,
                       select_window=select_window)


def warm_start_name(fingerprint: str, config: TrainConfig, world_size: int = 1) -> str:
    """Cache key: the data and every setting the fp32 stage depends on, so quantized runs share one warm start.

    Several ranks draw other negatives than one process: their warm start is cached apart, per world size.
    """
    ranks = [world_size] if world_size > 1 else []
    key = json.dumps([fingerprint, config.fp32_settings(), *ranks], sort_keys=True)
    return f"fp32-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def warm_start_path(config: TrainConfig, fingerprint: str, world_size: int = 1) -> Path:
    """Where the fp32 warm start of ``config`` on the data ``fingerprint`` is cached: ``<model dir>/.cache/<name>``."""
    return config.resolved_model_dir() / WARM_START_DIR / warm_start_name(fingerprint, config, world_size)


def _rngs(ws: Workspace, seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(batch order, negatives): one generator in one process; with several ranks the order is drawn alike on
    every rank (they split each global batch) and the negatives per rank, from a seed of its own."""
    order = np.random.default_rng(seed)
    return order, (np.random.default_rng([seed, ws.cluster.rank]) if ws.cluster.distributed else order)


def train_full_precision(ws: Workspace) -> tuple[LightGCN, list[EpochRecord]]:
    """The fp32 LightGCN (also GNAQ's warm start), reused from the cache when already trained.

    With several ranks, rank 0 alone reads and writes the cache and its weights are broadcast.
    """
    c, data, cluster = ws.config, ws.data, ws.cluster
    model = LightGCN(data.n_users, data.n_items, c.dim, c.layers).to(ws.device)
    cache = warm_start_path(c, data.fingerprint(), cluster.world_size)
    (cached,) = cluster.decide(float(cluster.is_main and cache.exists()))
    if cached:
        history = []
        if cluster.is_main:
            saved = torch.load(cache, map_location=ws.device, weights_only=False)
            model.load_state_dict(saved["state"])
            history = [EpochRecord(**r) for r in saved["history"]]
            log.info("reusing the fp32 warm start %s", cache)
        cluster.broadcast_module(model)
        return model, history
    order, negatives = _rngs(ws, c.seed)
    history = fit(model, ws.adjacency, ws.fit_pairs, NegativeSampler(ws.fit_pairs, data.n_items, negatives),
                  _validator(ws, model), _settings(c, c.fp32), stage="fp32", rng=order,
                  progress=c.progress and cluster.is_main, cluster=cluster)
    if not cluster.is_main:
        return model, history
    cache.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"state": model.state_dict(), "history": [asdict(r) for r in history]}, buffer)
    temporary = cache.with_suffix(f".tmp-{os.getpid()}")
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, cache)
    return model, history


def _baseline_quantizer(ws: Workspace, model: LightGCN) -> EmbeddingQuantizer:
    """LSQ / N2UQ initialised from the warm-start ``z`` like GNAQ; BiGeaR has nothing to initialise."""
    c, n_users = ws.config, ws.data.n_users
    if c.method == "bigear":
        return BiGeaRQuantizer(n_users, layers=c.layers, gamma=c.bigear.gamma).to(ws.device)
    quantizer = (LSQQuantizer if c.method == "lsq" else N2UQQuantizer)(c.bits, n_users).to(ws.device)
    with torch.no_grad():
        quantizer.initialize(model.propagate(ws.adjacency))
    return quantizer


def quantize(ws: Workspace, model: LightGCN) -> list[EpochRecord]:
    """Attach the method's quantizer to the trained fp32 ``model`` and run its quantization-aware stage.

    GNAQ variants left unset are raced on validation (``race_gnaq_variants``), whose winner goes on training;
    ``ws.config`` then holds the choice.
    """
    c = ws.config
    if c.method == "gnaq" and None in (c.gnaq.center, c.gnaq.track_stats, c.gnaq.relative_refinement):
        return race_gnaq_variants(ws, model)
    run = _start_stage(ws, model, c, _distillation(ws, model, c))
    if run is None:
        return []
    run.advance(c.qat.epochs)
    return run.finish()


def race_gnaq_variants(ws: Workspace, model: LightGCN) -> list[EpochRecord]:
    """Choose the unset GNAQ variants on validation by successive halving, and let the winner train on.

    Every candidate starts from the same warm start with the same seeds, so its run is the one it would have alone.
    Round by round the better half on validation (best score so far; the earlier candidate, the default variant
    first, on ties) trains on, until the last two have trained ``[gnaq] select_epochs`` epochs; the winner then
    goes on to the end of the stage, its race epochs kept. The race shares the stage's wall-time budget and stops
    early once it has spent a quarter of it. Leaves ``model`` at the winner's kept state.
    """
    c = ws.config
    candidates = c.gnaq_candidates()
    started = time.perf_counter()
    teacher = _distillation(ws, model, c)
    runs = []
    for candidate in candidates:
        config = c.model_copy(update={"gnaq": c.gnaq.model_copy(update=candidate)})
        runs.append(_start_stage(ws, copy.deepcopy(model) if len(candidates) > 1 else model, config,
                                 teacher and teacher.restarted(), started=started))
    alive = list(range(len(candidates)))
    for target in _race_rounds(len(candidates), min(c.gnaq.select_epochs, c.qat.epochs)):
        for i in alive:
            runs[i].advance(target - runs[i].epochs)
        alive = sorted(alive, key=lambda i: -runs[i].best_score)[: -(-len(alive) // 2)]
        (spent,) = ws.cluster.decide(time.perf_counter() - started)  # rank 0's clock, as in the stage
        if c.qat.minutes is not None and spent >= 60 * c.qat.minutes / 4:
            alive = alive[:1]
    winner = runs[alive[0]]
    trials = [{**candidate, c.selection_metric: run.best_score, "epochs": run.epochs,
               "seconds": round(sum(r.seconds for r in run.history), 2)}
              for candidate, run in zip(candidates, runs, strict=True)]
    if len(candidates) > 1:
        log.info("GNAQ variant chosen on validation: %s (%s)", candidates[alive[0]], trials)
    chosen = candidates[alive[0]]
    unset = [key for key in chosen if getattr(c.gnaq, key) is None]
    ws.config = c.model_copy(update={"gnaq": c.gnaq.model_copy(update=chosen)})
    ws.choices["gnaq_variant"] = {"chosen": {key: chosen[key] for key in unset},
                                  "trials": trials if len(candidates) > 1 else []}
    runs.clear()  # the losers' models, optimiser states and kept states, before the winner trains on
    winner.advance(c.qat.epochs - winner.epochs)
    history = winner.finish()
    if winner.model is not model:
        model.quantizer = winner.model.quantizer
        model.load_state_dict(winner.model.state_dict())
    return history


def _race_rounds(candidates: int, epochs: int) -> list[int]:
    """Epochs the survivors of each round have trained when it ends: halving ``candidates`` to one, the last
    round at ``epochs`` and each earlier one at half the next (at least 1). Four candidates, 3 epochs: [1, 3]."""
    rounds = max(1, math.ceil(math.log2(candidates))) if candidates > 1 else 0
    return [max(1, epochs >> (rounds - 1 - r)) for r in range(rounds)]


def _distillation(ws: Workspace, model: LightGCN, c: TrainConfig) -> ListwiseDistillation | None:
    """The distillation term of ``c``'s stage, its teacher the fp32 ``model`` as it is before any quantizer."""
    if c.method == "ptq" or c.distill_weight <= 0:
        return None
    with torch.no_grad():  # with several ranks each distils its share of the users of a step
        return ListwiseDistillation(
            model.propagate(ws.adjacency), ws.data.n_users, weight=c.distill_weight,
            temperature=c.distill.temperature, users_per_step=-(-c.distill.users // ws.cluster.world_size),
            exclude=torch.from_numpy(ws.fit_pairs) if c.distill.unseen else None,
            candidates=c.distill.candidates, seed=c.seed + 2)


def _start_stage(ws: Workspace, model: LightGCN, c: TrainConfig, distillation: ListwiseDistillation | None, *,
                 started: float | None = None) -> StageRun | None:
    """Attach ``c``'s quantizer to the fp32 ``model`` and start its quantization-aware stage (none for PTQ)."""
    data = ws.data
    if c.method == "ptq":
        model.quantizer = UniformQuantizer(c.bits, data.n_users, per_node=c.ptq.granularity == "node")
        return None
    if c.method == "gnaq":
        g = c.gnaq
        quantizer = GNAQQuantizer(
            c.bits, data.n_users, adjacency=ws.adjacency, degree=torch.from_numpy(ws.degrees).to(ws.device),
            influence=ws.influence, layers=c.layers,
            node_aware=g.node_aware, dynamic=g.dynamic, estimator=g.estimator, eta=g.eta, equalize=g.equalize,
            clip=g.clip, center=g.center, track_stats=g.track_stats, relative=g.relative_refinement,
        ).to(ws.device)
        with torch.no_grad():
            quantizer.initialize(model.propagate(ws.adjacency))
    else:
        quantizer = _baseline_quantizer(ws, model)
    model.quantizer = quantizer
    order, negatives = _rngs(ws, c.seed + 1)
    return StageRun(model, ws.adjacency, ws.fit_pairs, NegativeSampler(ws.fit_pairs, data.n_items, negatives),
                    _validator(ws, model), _settings(c, c.qat, c.qat.select_window),
                    stage=f"{c.method}-{c.bits}bit", rng=order, progress=c.progress and ws.cluster.is_main,
                    extra_loss=distillation,
                    lr_scales={"quantizer.theta": c.gnaq.theta_lr_scale}
                    if isinstance(quantizer, GNAQQuantizer) and quantizer.theta.requires_grad else None,
                    after_epoch=_refinement_schedule(ws, model, c), cluster=ws.cluster, started=started)


def _refinement_schedule(ws: Workspace, model: LightGCN, c: TrainConfig) -> Callable[[int], None] | None:
    """``--refine-epochs E``: the hook that freezes GNAQ's grids after quantization-aware epoch E."""
    quantizer, epochs = model.quantizer, c.gnaq.refine_epochs
    if not isinstance(quantizer, GNAQQuantizer) or not quantizer.dynamic or epochs is None:
        return None

    def freeze_after(epoch: int) -> None:
        if epoch == epochs:
            quantizer.freeze(model.quantizer_input(ws.adjacency))
    return freeze_after


def _dataset_record(ws: Workspace) -> DatasetRecord:
    data, c = ws.data, ws.config
    return DatasetRecord(name=data.name, data_dir=c.data_dir, split=c.split, test_fraction=c.test_fraction,
                         split_label=data.split, fingerprint=data.fingerprint(),
                         source_fingerprint=data.source_fingerprint, n_users=data.n_users,
                         n_items=data.n_items, n_train=len(data.train), n_test=len(data.test),
                         n_fit=len(ws.fit_pairs), n_valid=len(ws.valid_pairs), warnings=data.warnings)


def _quantizer_record(model: LightGCN) -> QuantizerRecord | None:
    q = model.quantizer
    if q is None:
        return None
    record = {"class": type(q).__name__, "bits": q.bits, "per_node": q.per_node, **q.record()}
    if isinstance(q, GNAQQuantizer):
        record.update(dynamic=q.dynamic, estimator=q.estimator, eta=q.eta, equalize=q.equalize,
                      clip=q.clip, center=q.center, track_stats=q.track_stats, relative=q.relative,
                      layers=q.layers, frozen=bool(q.frozen))
    return QuantizerRecord(**record)


def _served_description(model: LightGCN) -> str:
    if model.quantizer is None:
        return "final layer-mean embeddings, fp32"
    if model.quantizer.per_layer:
        return "layer-weighted concatenation of every layer's codes (d*(L+1) values per node)"
    return "final layer-mean embeddings, quantized"


def _selected(history: list[EpochRecord], config: TrainConfig) -> dict[str, int]:
    """Per stage, the epoch whose state was kept: the one marked ``kept``, else (an fp32 history cached before
    the mark) the first best validation score, as single-validation selection kept it."""
    selected: dict[str, int] = {}
    for stage in dict.fromkeys(r.stage for r in history):
        records = [r for r in history if r.stage == stage]
        kept = next((r.epoch for r in records if r.kept), None)
        if kept is None:
            validated = [r for r in records if r.valid]
            best = max(r.valid[config.selection_metric] for r in validated)
            kept = next(r.epoch for r in validated if r.valid[config.selection_metric] == best)
        selected[stage] = kept
    return selected


def run_training(config: TrainConfig, *, data: Interactions | None = None,
                 valid_pairs: np.ndarray | None = None, cluster: Cluster | None = None) -> TrainResult | None:
    """Train, select on validation, test once, export the artifact (published unless told not to).

    ``data`` and ``valid_pairs`` replace the configured dataset and validation carve (``gnaq retrain``).
    With several ranks (``cluster``) every rank trains its share; rank 0 tests and writes while the others wait
    at a barrier, so a failure of rank 0 fails them all; the others return ``None``.
    """
    started = time.perf_counter()
    cluster = cluster or Cluster()
    ws = prepare(config, data, valid_pairs, cluster)
    model, history = train_full_precision(ws)
    warm_start_scores = None
    if config.method != "fp32":
        if cluster.is_main:  # the fp32 reference on the same split, for the ratio users ask first
            warm_start_scores = user_scores(*served_tables(model, ws.adjacency), ws.csr(ws.data.train),
                                            ws.csr(ws.data.test), config.ks, ws.device)
        history = history + quantize(ws, model)
    if not cluster.is_main:
        cluster.barrier("waiting for rank 0 to test the model and write the artifact")
        return None
    result = _export(ws, model, history, started, warm_start_scores)
    try:
        cluster.barrier("releasing the other ranks")
    except RuntimeError as error:  # the version is written: report it rather than fail the run
        log.warning("version %s written, but the other ranks did not wait for it: %s", result.path.name, error)
    return result


def _export(ws: Workspace, model: LightGCN, history: list[EpochRecord], started: float,
            warm_start_scores: dict[str, np.ndarray] | None) -> TrainResult:
    """Rank 0's last step: the served tables, validated and tested once, written as a new version.

    ``warm_start_scores``: the fp32 warm start's per-user test metrics, which the model's are compared with.
    """
    config = ws.config  # with what was derived from the data and chosen on validation
    test_split = ws.csr(ws.data.train), ws.csr(ws.data.test)
    user, item = served_tables(model, ws.adjacency)
    valid = _validator(ws, model)()
    test_scores = user_scores(user, item, *test_split, config.ks, ws.device)
    test = mean_metrics(test_scores)
    data = ws.data
    degrees = ws.degrees.astype(np.float32)
    info = ModelInfo(
        method=config.method, bits=None if config.method == "fp32" else config.bits, dim=config.dim,
        layers=config.layers, seed=config.seed, quantizer=_quantizer_record(model), dataset=_dataset_record(ws),
        metrics=Metrics(test=test, valid=valid, selection_metric=config.selection_metric,
                        warm_start_test=None if warm_start_scores is None else mean_metrics(warm_start_scores),
                        warm_start_ratio=_warm_start_ratio(test_scores, warm_start_scores, config.selection_metric)),
        served=_served_description(model),
        training=TrainingRecord(epochs_run={r.stage: r.epoch for r in history},
                                selected_epoch=_selected(history, config), seconds=time.perf_counter() - started,
                                device=str(ws.device), torch=torch.__version__, choices=ws.choices,
                                world_size=ws.cluster.world_size, backend=ws.cluster.backend),
        config=config.recorded())
    # Degrees fold new users in; the validation pairs let a retrain gate on data neither model trained on.
    arrays = {"user_degree": degrees[:data.n_users], "item_degree": degrees[data.n_users:],
              "valid_pairs": ws.valid_pairs.astype(np.int32)}
    if isinstance(model.quantizer, GNAQQuantizer) and model.quantizer.per_node and model.quantizer.dynamic:
        theta = model.quantizer.refined_theta(data.n_users + data.n_items).cpu().numpy().astype(np.float16)
        arrays["item_theta"] = theta[data.n_users:]  # for folding in new users
        arrays["user_theta"] = theta[:data.n_users]  # for folding in new items
    history_json = json.dumps([asdict(r) for r in history], indent=1).encode()
    artifact = ModelArtifact(info=info, user=user, item=item, user_ids=data.user_ids, item_ids=data.item_ids,
                             train=UserItems.from_pairs(data.train, data.n_users), arrays=arrays)
    path = add_version(config.resolved_model_dir(), artifact, version=config.version, publish=config.publish,
                       extra_files={"history.json": history_json,
                                    "training_curve.png": training_curve_png(history, config.selection_metric)})
    # Read back from disk: the manifest returned is the written one, with every checksum verified.
    return TrainResult(path, read_artifact(path).manifest)


def _warm_start_ratio(test_scores: dict[str, np.ndarray], warm_start_scores: dict[str, np.ndarray] | None,
                      metric: str) -> RatioInterval | None:
    """The model's test ``metric`` against its warm start's, with a 95% interval over test users (none without a
    warm start, or when the warm start scores 0: no ratio to speak of).

    1,000 resamples up to 100k test users, fewer beyond (200 from 500k), where the interval is narrow anyway: a
    resample draws every user, so 1,000 of a million users would cost a minute or two.
    """
    if warm_start_scores is None or warm_start_scores[metric].mean() <= 0:
        return None
    users = len(test_scores[metric])
    return ratio_interval(test_scores[metric], warm_start_scores[metric], metric,
                          resamples=max(200, min(1000, RATIO_RESAMPLED_SCORES // users)))


def evaluate_artifact(artifact: ModelArtifact, dataset: str | None = None, data_dir: str | None = None,
                      device: str = "cpu") -> dict[str, float]:
    """Recompute the test metrics of a loaded artifact from its own tables and its dataset's test split.

    The dataset is reloaded as the manifest records it (``dataset`` and ``data_dir`` may say where it lies now);
    a different fingerprint means other data than the model was trained on, which is an error rather than a
    silent mismatch. A retrained model added logged interactions to its dataset: its test pairs are the
    dataset's, matched into the model's ids by external id, less any pair the model trained on.
    """
    manifest = artifact.manifest
    record = manifest.dataset
    config = TrainConfig.from_manifest(manifest, **({"dataset": dataset} if dataset else {}))
    data = load_data(config, data_dir)
    expected = record.source_fingerprint or record.fingerprint
    if data.fingerprint() != expected:
        raise ValueError(f"dataset {config.dataset!r} is not the data this model was trained on (fingerprint "
                         f"{data.fingerprint()[:12]} != {expected[:12]}); pass the file or named dataset it was "
                         f"trained on with --dataset, and --data-dir for a named one")
    users = {u: i for i, u in enumerate(artifact.user_ids)}
    items = {v: i for i, v in enumerate(artifact.item_ids)}
    train = artifact.train.pairs()
    test = without_pairs(reindex(data.test, data.user_ids, data.item_ids, users, items), train)
    n_users, n_items = len(users), len(items)
    return rank_tables(artifact.user, artifact.item, pairs_to_csr(train, n_users, n_items),
                       pairs_to_csr(test, n_users, n_items), config.ks, torch.device(device))
