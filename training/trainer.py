"""BPR training loop with validation-based early stopping and best-checkpoint selection."""

from __future__ import annotations

import copy
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from model.lightgcn import LightGCN
from training.distributed import Cluster
from training.sampling import NegativeSampler

log = logging.getLogger(__name__)
ExtraLoss = Callable[[Tensor, Tensor], Tensor]  # (served embeddings, batch users) -> loss term


@dataclass(frozen=True)
class FitSettings:
    """How one training stage runs; ``patience`` counts validations without improvement."""

    epochs: int
    batch_size: int = 2048
    lr: float = 1e-3
    l2: float = 1e-4
    patience: int = 10
    eval_every: int = 5
    metric: str = "recall@20"
    max_seconds: float | None = None  # wall-time budget of the stage; the last epoch is validated
    lr_patience: int | None = None  # halve lr after more than this many validations without improvement
    negatives: int = 1  # BPR negatives per positive
    ema: float | None = None  # validate and keep an exponential moving average of the weights (decay per step)
    select_window: int = 1  # keep the state that ends the best mean of this many consecutive validations


class WeightAverage:
    """Exponential moving average of the trainable parameters, ``avg <- decay*avg + (1-decay)*p`` per step.

    Why: late in a quantization-aware stage single steps flip codes back and forth and validation
    wanders within noise; the average of the latent weights sits in the middle of that walk.
    ``swapped_in`` lends the averaged weights to the model (to validate, or to keep them).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for avg, p in zip(self.average, self.params, strict=True):
            avg.lerp_(p, 1 - self.decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        with torch.no_grad():
            current = [p.detach().clone() for p in self.params]
            for p, avg in zip(self.params, self.average, strict=True):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, saved in zip(self.params, current, strict=True):
                    p.copy_(saved)


@dataclass
class EpochRecord:
    """One row of the training history (what the curve PNG and history.json show)."""

    stage: str
    epoch: int
    loss: float | None  # None for epoch 0: the starting state, validated before any training
    seconds: float
    valid: dict[str, float] = field(default_factory=dict)
    lr: float | None = None  # the learning rate this epoch trained with
    kept: bool = False  # the state the stage ended with (its selected epoch)


def train_epoch(model: LightGCN, optimizer: torch.optim.Optimizer, adjacency: Tensor,
                pairs: np.ndarray, sampler: NegativeSampler, settings: FitSettings,
                rng: np.random.Generator, extra_loss: ExtraLoss | None = None,
                average: WeightAverage | None = None, cluster: Cluster | None = None) -> float:
    """One pass over every training interaction in shuffled mini-batches; returns the mean loss.

    ``extra_loss(final, users)``, if given, is added to each step's BPR + L2 loss (e.g. distillation);
    ``average``, if given, is updated after every step. With several ranks (``cluster``), ``rng`` must draw the
    same order on every rank: each global batch of ``settings.batch_size`` triples is split between the ranks,
    each rank draws its negatives with its own ``sampler``, and the gradients are averaged before each step. A
    last global batch with fewer rows than ranks is left out (its rows are in the next epoch's shuffle).
    """
    cluster = cluster or Cluster()
    model.train()
    device = adjacency.device
    order = rng.permutation(len(pairs))
    total, batches = 0.0, 0
    for start in range(0, len(order), settings.batch_size):
        batch = pairs[order[start:start + settings.batch_size]]
        if len(batch) < cluster.world_size:
            break
        batch = cluster.shard(batch)
        negatives = sampler.sample(batch[:, 0], settings.negatives)
        users, pos, neg = (torch.from_numpy(a).to(device) for a in (batch[:, 0], batch[:, 1], negatives))
        final = model(adjacency)
        bpr, reg = model.bpr_loss(final, users, pos, neg, settings.l2)
        loss = bpr + reg if extra_loss is None else bpr + reg + extra_loss(final, users)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        cluster.average_gradients(model)
        optimizer.step()
        if average is not None:
            average.update()
        total += loss.item()
        batches += 1
    return cluster.mean(total / max(batches, 1))


class StageRun:
    """One training stage, advanced a few epochs at a time; ``finish`` leaves the model at its kept state.

    Why a class: the default recipe races candidate variants of the quantization-aware stage a round of epochs at
    a time and lets the winner go on where its race ended, rather than training it again from the start.
    The state kept is chosen on the validation split only (``validate`` scores the served vectors); the test split
    is never looked at here. With ``settings.select_window`` w > 1 it is the state that ends the w consecutive
    validations of best mean score, so that one validation's luck cannot choose it; early stopping, the rate's
    halving and ``best_score`` (the race's ranking) still follow single validations. The starting state (epoch 0)
    is a candidate too, and no state scoring below it is kept, so a warm-started stage can never end worse on
    validation than where it began. With ``settings.ema`` the averaged weights are what is validated and kept;
    training continues from the raw ones.
    ``lr_scales`` multiplies the learning rate of the named parameters (e.g. ``{"quantizer.theta": 0.1}``).
    ``after_epoch(epoch)``, if given, runs after each epoch's training, before its validation. ``started`` is the
    ``time.perf_counter()`` from which ``settings.max_seconds`` counts (default: now), so that racing runs share
    one budget.
    With several ranks (``cluster``) every rank runs the stage alike; rank 0 alone runs ``validate`` and keeps the
    clock, and broadcasts the score and the time-budget verdict, so every rank takes the same decisions (stop,
    learning rate, kept state) and ends at the same state. Only rank 0's history carries the validation scores.
    """

    def __init__(self, model: LightGCN, adjacency: Tensor, pairs: np.ndarray, sampler: NegativeSampler,
                 validate: Callable[[], dict[str, float]], settings: FitSettings, *, stage: str,
                 rng: np.random.Generator, progress: bool = True, extra_loss: ExtraLoss | None = None,
                 lr_scales: dict[str, float] | None = None, after_epoch: Callable[[int], None] | None = None,
                 cluster: Cluster | None = None, started: float | None = None) -> None:
        self.model, self.adjacency, self.pairs, self.sampler = model, adjacency, pairs, sampler
        self.validate, self.settings, self.stage, self.rng = validate, settings, stage, rng
        self.extra_loss, self.after_epoch = extra_loss, after_epoch
        self.cluster = cluster = cluster or Cluster()
        cluster.broadcast_module(model)  # every rank starts the stage from rank 0's weights
        self.optimizer = torch.optim.Adam(_parameter_groups(model, settings.lr, lr_scales or {}), lr=settings.lr)
        self.plateau = None if settings.lr_patience is None else torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=0.5, patience=settings.lr_patience)
        start = validate() if cluster.is_main else {}
        self.history = [EpochRecord(stage, 0, None, 0.0, start)]
        (self.best_score,) = cluster.decide(start[settings.metric] if cluster.is_main else 0.0)
        self.start_score = self.best_score
        self.recent = deque([self.best_score], maxlen=settings.select_window)  # the last validations' scores
        self.kept_score, self.kept_epoch, self.kept_state = self.best_score, 0, copy.deepcopy(model.state_dict())
        self.waited, self.ended = 0, False
        self.deadline = None if settings.max_seconds is None else (
            (time.perf_counter() if started is None else started) + settings.max_seconds)
        self.average = None if settings.ema is None else WeightAverage(model, settings.ema)
        self.bar = tqdm(total=settings.epochs, desc=stage, disable=not progress, leave=False)

    @property
    def epochs(self) -> int:
        """Epochs trained so far."""
        return self.history[-1].epoch

    def advance(self, epochs: int) -> bool:
        """Train up to ``epochs`` more epochs (fewer if the stage ends); returns whether the stage has ended:
        its epochs done, early-stopped, or out of time."""
        settings, cluster = self.settings, self.cluster
        for _ in range(epochs):
            if self.ended:
                break
            epoch = self.epochs + 1
            began = time.perf_counter()
            loss = train_epoch(self.model, self.optimizer, self.adjacency, self.pairs, self.sampler, settings,
                               self.rng, self.extra_loss, self.average, cluster)
            if self.after_epoch is not None:
                self.after_epoch(epoch)
            record = EpochRecord(self.stage, epoch, loss, time.perf_counter() - began,
                                 lr=self.optimizer.param_groups[0]["lr"])
            (late,) = cluster.decide(float(self.deadline is not None and time.perf_counter() >= self.deadline))
            out_of_time = bool(late)
            if epoch % settings.eval_every == 0 or epoch == settings.epochs or out_of_time:
                self._validate(record)
            self.history.append(record)
            self.bar.update(1)
            if out_of_time:
                log.info("[%s] time budget of %.0f s spent after epoch %d", self.stage, settings.max_seconds, epoch)
            self.ended = self.waited >= settings.patience or out_of_time or epoch >= settings.epochs
        return self.ended

    def _validate(self, record: EpochRecord) -> None:
        settings, cluster = self.settings, self.cluster
        with nullcontext() if self.average is None else self.average.swapped_in():
            record.valid = self.validate() if cluster.is_main else {}
            (score,) = cluster.decide(record.valid[settings.metric] if cluster.is_main else 0.0)
            if score > self.best_score:
                self.best_score, self.waited = score, 0
            else:
                self.waited += 1
            self.recent.append(score)
            window = sum(self.recent) / len(self.recent)
            if len(self.recent) == self.recent.maxlen and window > self.kept_score and score > self.start_score:
                self.kept_score, self.kept_epoch = window, record.epoch
                self.kept_state = copy.deepcopy(self.model.state_dict())
        if self.plateau is not None:
            self.plateau.step(score)
        self.bar.set_postfix(loss=f"{record.loss:.4f}", **{settings.metric: f"{score:.4f}"})
        log.info("[%s] epoch %4d  loss %.4f  valid %s %.4f  (%.2fs/epoch, lr %.2g)", self.stage, record.epoch,
                 record.loss, settings.metric, score, record.seconds, record.lr)

    def finish(self) -> list[EpochRecord]:
        """Leave the model at its kept state (marked ``kept`` in the history); returns the stage's history."""
        self.bar.close()
        self.model.load_state_dict(self.kept_state)
        next(r for r in self.history if r.epoch == self.kept_epoch).kept = True
        return self.history


def fit(model: LightGCN, adjacency: Tensor, pairs: np.ndarray, sampler: NegativeSampler,
        validate: Callable[[], dict[str, float]], settings: FitSettings, *, stage: str,
        rng: np.random.Generator, progress: bool = True,
        extra_loss: ExtraLoss | None = None, lr_scales: dict[str, float] | None = None,
        after_epoch: Callable[[int], None] | None = None, cluster: Cluster | None = None) -> list[EpochRecord]:
    """Train until ``settings.epochs`` or early stop (a ``StageRun`` run to its end); leaves ``model`` at its kept
    state and returns the history."""
    run = StageRun(model, adjacency, pairs, sampler, validate, settings, stage=stage, rng=rng, progress=progress,
                   extra_loss=extra_loss, lr_scales=lr_scales, after_epoch=after_epoch, cluster=cluster)
    run.advance(settings.epochs)
    return run.finish()


def _parameter_groups(model: torch.nn.Module, lr: float, lr_scales: dict[str, float]) -> list[dict]:
    """Trainable parameters in Adam groups: the named ones at their scaled rate, the rest at ``lr``."""
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    unknown = lr_scales.keys() - named.keys()
    if unknown:
        raise ValueError(f"no trainable parameter named {', '.join(sorted(unknown))}")
    groups = [{"params": [p for name, p in named.items() if name not in lr_scales]}]
    groups += [{"params": [named[name]], "lr": lr * scale} for name, scale in lr_scales.items()]
    return [g for g in groups if g["params"]]
