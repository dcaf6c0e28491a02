"""Training configuration: one validated object, from defaults, a TOML/JSON file and CLI flags."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model.quantizers import SUPPORTED_BITS

# Settings only GNAQ's quantizer reads: they cannot change a row of another method.
GNAQ_SETTINGS = frozenset({"node_aware", "dynamic", "track_stats", "relative_refinement", "theta_lr_scale",
                           "refine_epochs", "estimator", "eta", "equalize", "clip", "center"})

# Weight of GNAQ's default distillation, chosen on MovieLens-1M validation Recall@20 (docs/method.md).
GNAQ_DISTILL = 1.0


class TrainConfig(BaseModel):
    """Everything that determines a training run; recorded verbatim in the artifact manifest."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "ml-100k"
    data_dir: str | None = Field(None, description="directory of the named datasets (else $GNAQ_DATA_DIR)")
    split: Literal["auto", "random", "temporal"] = Field(
        "auto", description="auto: official train/test where the dataset has one, else per-user random")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="per-user test share of random/temporal splits")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="per-user share of train held out for selection")
    method: Literal["fp32", "gnaq", "ptq", "lsq", "n2uq", "bigear"] = "gnaq"
    bits: int = Field(2, description="bits per embedding value: 1-8")
    dim: int = Field(64, ge=1, description="embedding dimension d")
    layers: int = Field(3, ge=0, description="LightGCN propagation layers L")
    epochs: int = Field(400, ge=1, description="max epochs of the full-precision stage")
    lr: float = Field(5e-3, gt=0, description="Adam learning rate of the fp32 stage")
    qat_epochs: int = Field(150, ge=1, description="max epochs of the quantization-aware stage (GNAQ, LSQ, "
                            "N2UQ, BiGeaR)")
    qat_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the quantization-aware stage")
    minutes: float | None = Field(None, gt=0, description="wall-time budget of the fp32 stage in minutes "
                                  "(it stops after the epoch that crosses it; selection stays on validation)")
    qat_minutes: float | None = Field(None, gt=0, description="wall-time budget of the quantization-aware stage")
    batch_size: int = Field(2048, ge=1, description="BPR triples per step")
    negatives: int = Field(1, ge=1, description="BPR negatives per training interaction (their terms averaged)")
    l2: float = Field(1e-4, ge=0, description="L2 weight on the batch's ego embeddings")
    patience: int = Field(10, ge=1, description="validations without improvement before stopping")
    lr_patience: int | None = Field(None, ge=0, description="halve the learning rate after more than this many "
                                    "validations without improvement (unset: constant)")
    eval_every: int = Field(5, ge=1, description="validate every N epochs in the fp32 stage")
    qat_lr_patience: int | None = Field(None, ge=0, description="--lr-patience of the quantization-aware stage")
    qat_ema: float | None = Field(None, gt=0, lt=1, description="validate and keep an exponential moving average "
                                  "of the quantization-aware stage's weights, this decay per step (unset: off)")
    qat_eval_every: int = Field(1, ge=1, description="validate every N epochs in the quantization-aware stage")
    ks: list[int] = Field(default_factory=lambda: [10, 20], description="cut-offs of Recall@K / NDCG@K; "
                          "the largest selects checkpoints")
    seed: int = Field(0, description="fixes split, validation carve, initialisation and negatives")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, ...")
    ptq_granularity: Literal["node", "tensor"] = Field("node", description="--method ptq: grid per node or per table")
    node_aware: bool = True
    dynamic: bool = True
    estimator: Literal["graph", "ste"] = "graph"
    eta: float = Field(0.5, ge=0, description="weight of the graph relation-aware term (c)")
    equalize: bool = Field(True, description="shared per-dimension scale before per-node grids")
    center: bool = Field(False, description="GNAQ: subtract each table's mean vector (stored once) before "
                         "the per-node grids")
    track_stats: bool = Field(True, description="GNAQ (b): recompute each node's mean and std from its current "
                              "embedding at every step (--no-track-stats: keep them from initialisation and learn "
                              "only the refined corrections)")
    relative_refinement: bool = Field(False, description="GNAQ (b): make the refined corrections mean-free per "
                                      "table, so they redistribute step and centre among a table's nodes but "
                                      "leave the table's own, the clip chosen on validation, where it is")
    theta_lr_scale: float = Field(1.0, gt=0, description="GNAQ (b): learning rate of the corrections theta as a "
                                  "multiple of --qat-lr")
    refine_epochs: int | None = Field(None, ge=1, description="GNAQ (b): refine the grids for this many "
                                      "quantization-aware epochs, then freeze them where they stand (unset: "
                                      "refine throughout)")
    clip: float = Field(0.8, gt=0, description="grid step as a multiple of the Gaussian MSE-optimal step")
    distill: float | None = Field(None, ge=0, description="weight of the listwise distillation from the fp32 model "
                                  "in the quantization-aware stage; 0 is off (unset: on for gnaq, off otherwise)")
    distill_temperature: float = Field(1.0, gt=0, description="softmax temperature of --distill")
    distill_users: int = Field(1024, ge=1, description="users per step distilled over all items (--distill)")
    distill_unseen: bool = Field(False, description="distil each user's ranking of the items outside their "
                                 "training pairs only, the ones ranking shows (--distill)")
    bigear_gamma: float = Field(1.0, gt=0, description="--method bigear: width gamma of the Dirac-delta "
                                "gradient gamma/sqrt(pi)*exp(-(gamma*x)^2) of sign")
    model_dir: str | None = None
    publish: bool = True
    version: str | None = Field(None, description="version directory name (default: UTC timestamp)")
    progress: bool = Field(True, description="progress bars")

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
        """``distill`` resolved: GNAQ distils from its fp32 warm start by default; the baselines do not."""
        if self.distill is not None:
            return self.distill
        return GNAQ_DISTILL if self.method == "gnaq" else 0.0

    @property
    def selection_metric(self) -> str:
        """Validation metric used for early stopping and checkpoint selection."""
        return f"recall@{max(self.ks)}"

    def resolved_model_dir(self) -> Path:
        """``--model-dir``, else ``GNAQ_MODEL_DIR``, else ``./models``."""
        return Path(self.model_dir or os.environ.get("GNAQ_MODEL_DIR") or "models")


def read_config_file(path: Path) -> dict:
    """Settings from a ``.toml`` or ``.json`` file (keys as in ``TrainConfig``)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot parse config: {error}") from error
