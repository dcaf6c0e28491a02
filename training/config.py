"""Training configuration: one validated object, from defaults, a TOML/JSON file and CLI flags.

A small common part (data, model shape, run) plus one section per concern, as in the config file::

    dataset = "gowalla"
    method = "gnaq"

    [bpr]             # the BPR objective, both stages
    batch_size = 16384
    [fp32]            # the full-precision stage every method starts from
    lr = 0.02
    [qat]             # the quantization-aware stage (gnaq, lsq, n2uq, bigear)
    minutes = 20
    [gnaq]            # GNAQ's quantizer; [distill], [ptq], [bigear] likewise
    clip = 0.8

Fields that cannot change the fp32 warm start say so (``affects_fp32=False``); the warm start's cache key is
every other setting, so a new setting is part of it unless declared otherwise.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.manifest import ModelInfo
from model.distillation import softmax_width
from model.quantizers import DEFAULT_CLIP, SUPPORTED_BITS
from training.loaders import Columns

# Weight of GNAQ's default distillation, chosen on MovieLens-1M validation Recall@20 (docs/method.md).
GNAQ_DISTILL = 1.0
# Settings left unset are derived from the data (docs/method.md, "One default recipe"). A step costs one
# full-graph propagation whatever its batch, so the batch grows with the data to keep about 48 steps an epoch;
# the learning rate follows the batch as Gowalla's validation chose it (0.02 at 16384); the quantization-aware
# stage starts at 0.02 whatever the batch and anneals by halving on stalls: from 5e-3 it peaked within 1-3 epochs
# and the halving froze it there (validation on MovieLens-1M, Last.fm and MovieLens-100K, docs/method.md).
# Distillation scores users x softmax items each step: the users per step shrink as that softmax grows, within
# about 1e7 scores. The softmax is at most DISTILL_CANDIDATES wide (model.distillation.softmax_width), so with the
# default candidates every catalogue distils 1,024 users a step (Gowalla had 256, from its 41k items, after the
# sampled softmax had cut each user's scores to 8,192; 1,024 raised its validation and test, docs/method.md).
STEPS_PER_EPOCH, BATCH_RANGE = 48, (2048, 16384)
DISTILL_SCORES, DISTILL_USERS_RANGE = 10_000_000, (256, 1024)
# Beyond this many items a user's distilled softmax is over the teacher's top items plus a sample of the rest
# (model/distillation.py): the three smaller benchmark catalogues (up to 4.5k items) keep the exact softmax,
# Gowalla's 41k items cost a fifth of the exact one's scores (docs/method.md).
DISTILL_CANDIDATES = 8192
BASE_LR, BASE_BATCH, QAT_LR = 5e-3, 2048, 2e-2
# Both stages halve their rate when validation stalls for two validations in a row (what Gowalla's and
# MovieLens-1M's validation chose for fp32 in issue 5): a constant fp32 rate left Gowalla 0.01 lower on validation
# after 120 epochs; halving the quantization-aware rate raised validation on MovieLens-1M and Last.fm (docs/method.md).
LR_PATIENCE = 1
# The quantization-aware stage keeps the state that ends its best three validations in a row, not its best single
# one: on about three validation items a user, one epoch's score is noisier than the late epochs' gains, and the
# best single validation was at times an early lucky state (test 0.954x where the window kept 0.966x); over 29
# runs the window gained 0.001 of the ratio on average (docs/method.md, "The state kept").
SELECT_WINDOW = 3
# Settings added with a default that is not the behaviour before them, at the value every run before them had:
# a record written then is what today's command trains only if it asks for that value (bench/report.py).
RAN_BEFORE_THEY_EXISTED: dict[tuple[str, str], Any] = {("qat", "select_window"): 1}
# GNAQ's variants chosen on validation when unset: centring, and (b) tracking node statistics with absolute
# corrections ("tracked") or fixed statistics with mean-free corrections ("relative"). First is the default.
_REFINEMENTS = ({"track_stats": True, "relative_refinement": False},
                {"track_stats": False, "relative_refinement": True})
_NOT_FP32 = {"affects_fp32": False}
_ADVANCED = {"advanced": True}  # research settings the default recipe sets: out of --help (--help-advanced)


class Section(BaseModel):
    """A section of the config: its own table in the file, its own group of flags."""

    model_config = ConfigDict(extra="forbid")


class ColumnsConfig(Section):
    """Which columns of a CSV, TSV or .inter file hold what."""

    user: str | None = Field(None, description="user column: its header name, or its 0-based position in a file "
                             "without a header (unset: found by name: user, user_id, userId, ...)")
    item: str | None = Field(None, description="item column (unset: item, item_id, movieId, ...)")
    time: str | None = Field(None, description="timestamp column, numeric (unset: timestamp, time, ...)")
    rating: str | None = Field(None, description="rating column (unset: rating, score, stars)")
    min_rating: float | None = Field(None, description="keep only rows rated at least this (unset: every row is an "
                                     "interaction)")

    def spec(self) -> Columns:
        """The loader's form."""
        return Columns(**self.model_dump())


class BPRConfig(Section):
    """The BPR objective, in both stages."""

    batch_size: int | None = Field(None, ge=1, description="BPR triples per step (unset: from the number of "
                                   "training interactions, about 48 steps an epoch, 2048 to 16384)")
    negatives: int = Field(1, ge=1, description="BPR negatives per training interaction (their terms averaged)")
    l2: float = Field(1e-4, ge=0, description="L2 weight on the batch's ego embeddings")


class Schedule(Section):
    """How long one training stage runs and how it validates."""

    epochs: int = Field(ge=1, description="max epochs")
    lr: float = Field(gt=0, description="Adam learning rate")
    eval_every: int = Field(ge=1, description="validate every N epochs")
    minutes: float | None = Field(None, gt=0, description="wall-time budget in minutes: it stops after the epoch "
                                  "that crosses it, selection stays on validation (unset: none)")
    patience: int = Field(10, ge=1, description="validations without improvement before stopping")
    lr_patience: int | None = Field(LR_PATIENCE, ge=0, description="halve the learning rate after more than this "
                                    "many validations without improvement (a large value: constant)")
    ema: float | None = Field(None, gt=0, lt=1, description="validate and keep an exponential moving average of "
                              "the weights, this decay per step (unset: off)",
                              json_schema_extra=_ADVANCED)


class FP32Schedule(Schedule):
    """The full-precision stage, which every method starts from."""

    epochs: int = Field(400, ge=1, description="max epochs")
    lr: float | None = Field(None, gt=0, description="Adam learning rate (unset: 5e-3 x (batch / 2048)^(2/3))")
    eval_every: int = Field(5, ge=1, description="validate every N epochs")
    minutes: float | None = Field(30, gt=0, description="wall-time budget in minutes: it stops after the epoch "
                                  "that crosses it, selection stays on validation (unset: none)")


class QATSchedule(Schedule):
    """The quantization-aware stage (gnaq, lsq, n2uq, bigear), from the fp32 warm start."""

    epochs: int = Field(150, ge=1, description="max epochs")
    lr: float | None = Field(None, gt=0, description="Adam learning rate (unset: 0.02)")
    eval_every: int = Field(1, ge=1, description="validate every N epochs")
    minutes: float | None = Field(20, gt=0, description="wall-time budget in minutes, GNAQ's choice of variant "
                                  "included (unset: none)")
    select_window: int = Field(SELECT_WINDOW, ge=1, description="keep the state that ends the best mean of this "
                               "many consecutive validations (1: the best single validation)",
                               json_schema_extra=_ADVANCED)


class GNAQConfig(Section):
    """GNAQ's quantizer: (a) node-aware grids, (b) refined by message passing, (c) its gradient estimator."""

    node_aware: bool = Field(True, description="(a): per-node parameters (--no-node-aware: one per table)")
    dynamic: bool = Field(True, description="(b): parameters refined by message passing and learned "
                          "(--no-dynamic: fixed at initialisation)")
    estimator: Literal["graph", "ste"] = Field("graph", description="(c): graph relation-aware gradient "
                                               "estimator, or the plain straight-through estimator")
    eta: float = Field(0.5, ge=0, description="weight of the graph relation-aware term (c)",
                       json_schema_extra=_ADVANCED)
    equalize: bool = Field(True, description="shared per-dimension scale before the per-node grids",
                           json_schema_extra=_ADVANCED)
    clip: float = Field(DEFAULT_CLIP, gt=0, description="grid step as a multiple of the Gaussian MSE-optimal step",
                        json_schema_extra=_ADVANCED)
    center: bool | None = Field(None, description="subtract each table's mean vector (stored once) before the "
                                "grids (unset: chosen on validation)",
                                json_schema_extra=_ADVANCED)
    track_stats: bool | None = Field(None, description="(b): recompute each node's mean and std from its current "
                                     "embedding at every step, or keep them from initialisation (unset: chosen on "
                                     "validation with --relative-refinement)",
                                     json_schema_extra=_ADVANCED)
    relative_refinement: bool | None = Field(None, description="(b): make the refined corrections mean-free per "
                                             "table (unset: chosen on validation)",
                                             json_schema_extra=_ADVANCED)
    theta_lr_scale: float = Field(1.0, gt=0, description="(b): learning rate of the corrections as a multiple of "
                                  "the stage's",
                                  json_schema_extra=_ADVANCED)
    refine_epochs: int | None = Field(None, ge=1, description="(b): refine the grids for this many epochs, then "
                                      "freeze them (unset: throughout)",
                                      json_schema_extra=_ADVANCED)
    select_epochs: int = Field(3, ge=1, description="quantization-aware epochs of the last two candidates when "
                               "the unset variants are raced on validation",
                               json_schema_extra=_ADVANCED)


class DistillConfig(Section):
    """Listwise distillation from the fp32 warm start in the quantization-aware stage."""

    weight: float | None = Field(None, ge=0, description="weight of the term; 0 is off (unset: on for gnaq, off "
                                 "otherwise)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature",
                               json_schema_extra=_ADVANCED)
    users: int | None = Field(None, ge=1, description="users per step distilled (unset: about 1e7 / the items "
                              "in each softmax, 256 to 1024)",
                              json_schema_extra=_ADVANCED)
    candidates: int = Field(DISTILL_CANDIDATES, ge=2, description="items in each distilled softmax: every item "
                            "of a catalogue up to this size; of a larger one, the teacher's top 64 and a uniform "
                            "sample of the rest",
                            json_schema_extra=_ADVANCED)
    unseen: bool = Field(False, description="distil each user's ranking of the items outside their training "
                         "pairs only",
                         json_schema_extra=_ADVANCED)


class PTQConfig(Section):
    """Post-training quantization (method ptq)."""

    granularity: Literal["node", "tensor"] = Field("node", description="grid per node or per table")


class BiGeaRConfig(Section):
    """BiGeaR-style 1-bit per-layer codes (method bigear)."""

    gamma: float = Field(1.0, gt=0, description="width gamma of the Dirac-delta gradient "
                         "gamma/sqrt(pi)*exp(-(gamma*x)^2) of sign",
                         json_schema_extra=_ADVANCED)


class TrainConfig(BaseModel):
    """Everything that determines a training run; recorded in the artifact manifest."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("ml-100k", description="ml-100k (embedded default), gowalla, movielens1m, lastfm, or a path")
    data_dir: str | None = Field(None, description="directory of the named datasets (else $GNAQ_DATA_DIR)")
    split: Literal["auto", "random", "temporal"] = Field(
        "auto", description="auto: official train/test where the dataset has one, else per-user random")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="per-user test share of random/temporal splits")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="per-user share of train held out for selection")
    method: Literal["fp32", "gnaq", "ptq", "lsq", "n2uq", "bigear"] = Field(
        "gnaq", json_schema_extra=_NOT_FP32,
        description="fp32 LightGCN, post-training uniform quantization (ptq), GNAQ, or a quantization-aware "
                    "baseline: LSQ, N2UQ-style, BiGeaR-style (1-bit, per layer)")
    bits: int = Field(2, json_schema_extra=_NOT_FP32, description="bits per embedding value: 1-8")
    dim: int = Field(64, ge=1, description="embedding dimension d")
    layers: int = Field(3, ge=0, description="LightGCN propagation layers L")
    ks: list[int] = Field(default_factory=lambda: [10, 20], description="cut-offs of Recall@K / NDCG@K; "
                          "the largest selects checkpoints")
    seed: int = Field(0, description="fixes split, validation carve, initialisation and negatives")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, ...")
    model_dir: str | None = Field(None, json_schema_extra=_NOT_FP32,
                                  description="where versions are written (default: $GNAQ_MODEL_DIR, else ./models)")
    publish: bool = Field(True, json_schema_extra=_NOT_FP32, description="point <model dir>/CURRENT at the new "
                          "version")
    version: str | None = Field(None, json_schema_extra=_NOT_FP32,
                                description="version directory name (default: UTC timestamp)")
    progress: bool = Field(True, json_schema_extra=_NOT_FP32, description="progress bars")
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    bpr: BPRConfig = Field(default_factory=BPRConfig)
    fp32: FP32Schedule = Field(default_factory=FP32Schedule)
    qat: QATSchedule = Field(default_factory=QATSchedule, json_schema_extra=_NOT_FP32)
    gnaq: GNAQConfig = Field(default_factory=GNAQConfig, json_schema_extra=_NOT_FP32)
    distill: DistillConfig = Field(default_factory=DistillConfig, json_schema_extra=_NOT_FP32)
    ptq: PTQConfig = Field(default_factory=PTQConfig, json_schema_extra=_NOT_FP32)
    bigear: BiGeaRConfig = Field(default_factory=BiGeaRConfig, json_schema_extra=_NOT_FP32)

    @field_validator("bits")
    @classmethod
    def _supported_bits(cls, bits: int) -> int:
        if bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}")
        return bits

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, ks: list[int]) -> list[int]:
        if not ks or min(ks) < 1:
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(ks))

    @model_validator(mode="after")
    def _bigear_is_one_bit(self) -> TrainConfig:
        if self.method == "bigear" and self.bits != 1:
            raise ValueError("method bigear binarizes every layer: it needs bits = 1 (--bits 1)")
        return self

    @property
    def distill_weight(self) -> float:
        """``distill.weight`` resolved: GNAQ distils from its fp32 warm start by default; the baselines do not."""
        if self.distill.weight is not None:
            return self.distill.weight
        return GNAQ_DISTILL if self.method == "gnaq" else 0.0

    @property
    def selection_metric(self) -> str:
        """Validation metric used for early stopping and checkpoint selection."""
        return f"recall@{max(self.ks)}"

    def for_data(self, n_fit: int, n_items: int) -> tuple[TrainConfig, dict[str, float]]:
        """This config with the settings left unset derived from ``n_fit`` training pairs over ``n_items``
        items, and the values derived."""
        batch = self.bpr.batch_size or _power_of_two(n_fit / STEPS_PER_EPOCH, BATCH_RANGE)
        fp32_lr = self.fp32.lr or BASE_LR * (batch / BASE_BATCH) ** (2 / 3)
        qat_lr = self.qat.lr or QAT_LR
        softmax = max(1, softmax_width(n_items, self.distill.candidates))
        users = self.distill.users or _power_of_two(DISTILL_SCORES / softmax, DISTILL_USERS_RANGE)
        values = {"bpr.batch_size": (batch, self.bpr.batch_size), "fp32.lr": (fp32_lr, self.fp32.lr),
                  "qat.lr": (qat_lr, self.qat.lr), "distill.users": (users, self.distill.users)}
        derived = {name: value for name, (value, given) in values.items() if given is None}
        update: dict[str, dict[str, Any]] = {}
        for name, (value, _) in values.items():
            section, _, key = name.partition(".")
            update.setdefault(section, {})[key] = value
        return self.model_copy(update={section: getattr(self, section).model_copy(update=keys)
                                       for section, keys in update.items()}), derived

    def gnaq_candidates(self) -> list[dict[str, bool]]:
        """GNAQ variants to try on validation: every combination of the unset ones (one: nothing to choose)."""
        g = self.gnaq
        centers = [False, True] if g.center is None else [g.center]
        refinements = [r for r in _REFINEMENTS if all(g.model_dump()[k] in (None, v) for k, v in r.items())]
        if not g.dynamic or not refinements:  # without (b) the refinement variant does not matter
            refinements = [{k: _REFINEMENTS[0][k] if g.model_dump()[k] is None else g.model_dump()[k]
                            for k in _REFINEMENTS[0]}]
        return [{"center": c, **r} for c, r in itertools.product(centers, refinements)]

    def resolved_model_dir(self) -> Path:
        """``--model-dir``, else ``GNAQ_MODEL_DIR``, else ``./models``."""
        return Path(self.model_dir or os.environ.get("GNAQ_MODEL_DIR") or "models")

    def fp32_settings(self) -> dict[str, Any]:
        """Every setting the fp32 warm start depends on (all but those declared ``affects_fp32=False``)."""
        kept = {name for name, field in type(self).model_fields.items()
                if (field.json_schema_extra or {}).get("affects_fp32", True)}
        return self.model_dump(mode="json", include=kept)

    def recorded(self) -> dict[str, Any]:
        """What the manifest's ``config`` holds: the settings the manifest does not record elsewhere."""
        return self.model_dump(mode="json", exclude=_RECORDED_ELSEWHERE)

    @classmethod
    def from_manifest(cls, info: ModelInfo, **overrides: Any) -> TrainConfig:
        """The configuration a model was trained with (``overrides`` replace settings, sections merged)."""
        dataset = info.dataset
        recorded = upgrade_flat(info.config)
        recorded.update(dataset=dataset.name, data_dir=dataset.data_dir, split=dataset.split,
                        test_fraction=dataset.test_fraction, method=info.method, dim=info.dim, layers=info.layers,
                        seed=info.seed, **({"bits": info.bits} if info.bits is not None else {}))
        for name in _OUTPUT:
            recorded.pop(name, None)
        return cls(**merge_settings(recorded, overrides))


# Recorded in the manifest's own fields (ModelInfo, DatasetRecord), or where the version was written.
_OUTPUT = frozenset({"model_dir", "publish", "version", "progress"})
_RECORDED_ELSEWHERE = frozenset({"dataset", "data_dir", "split", "test_fraction", "method", "bits", "dim", "layers",
                                 "seed"}) | _OUTPUT

# Where each setting of the flat configuration of format 1 and 2 manifests lives now: (section, key).
_FLAT_KEYS: dict[str, list[tuple[str, str]]] = {
    **{key: [("bpr", key)] for key in ("batch_size", "negatives", "l2")},
    **{key: [("fp32", key)] for key in ("epochs", "lr", "minutes", "lr_patience", "eval_every")},
    "patience": [("fp32", "patience"), ("qat", "patience")],
    **{f"qat_{key}": [("qat", key)] for key in ("epochs", "lr", "minutes", "lr_patience", "eval_every", "ema")},
    **{key: [("gnaq", key)] for key in GNAQConfig.model_fields},
    "distill": [("distill", "weight")],
    **{f"distill_{key}": [("distill", key)] for key in ("temperature", "users", "unseen")},
    "ptq_granularity": [("ptq", "granularity")],
    "bigear_gamma": [("bigear", "gamma")],
}


def _is_flat(key: str, value: Any) -> bool:
    """Whether ``key`` is a setting of the earlier flat form (``distill`` was its weight, now its section)."""
    return key in _FLAT_KEYS and not (key in TrainConfig.model_fields and isinstance(value, dict))


def as_requested(settings: dict[str, Any], choices: dict[str, Any]) -> dict[str, Any]:
    """A manifest's ``settings`` as they were asked for: what the recipe derived or chose (``choices``) unset."""
    requested = {key: dict(value) if isinstance(value, dict) else value for key, value in settings.items()}
    for name in choices.get("derived", {}):
        section, _, key = name.partition(".")
        requested[section][key] = None
    for key in choices.get("gnaq_variant", {}).get("chosen", {}):
        requested["gnaq"][key] = None
    return requested


def _power_of_two(target: float, bounds: tuple[int, int]) -> int:
    """The power of two nearest ``target`` (in log scale), within ``bounds``."""
    low, high = bounds
    return int(min(max(2 ** round(math.log2(max(target, 1))), low), high))


def as_run(settings: dict[str, Any]) -> dict[str, Any]:
    """Recorded settings (either form) in today's sections, where a setting the record predates is at the value
    the record ran with: its default, or for a setting whose default changed the behaviour, the value before it."""
    out = upgrade_flat(settings)
    for (section, key), value in RAN_BEFORE_THEY_EXISTED.items():
        out.setdefault(section, {}).setdefault(key, value)
    return out


def upgrade_flat(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings in the flat form of earlier versions (``qat_lr``, ``clip``, ...) moved into their sections."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if _is_flat(key, value):
            for section, name in _FLAT_KEYS[key]:
                out.setdefault(section, {})[name] = value
        elif isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


def merge_settings(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied; a section given in both is merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a ``.toml`` or ``.json`` file (keys and sections as in ``TrainConfig``)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    try:
        settings = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot parse config: {error}") from error
    misplaced = sorted(key for key, value in settings.items() if _is_flat(key, value))
    if misplaced:
        where = ", ".join(f"{key} -> [{_FLAT_KEYS[key][0][0]}] {_FLAT_KEYS[key][0][1]}" for key in misplaced)
        raise ValueError(f"{path}: these settings now live in sections: {where}")
    return settings
