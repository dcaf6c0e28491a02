"""Training configuration: one validated object, from defaults, a TOML/JSON file and CLI flags."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.quantizers import SUPPORTED_BITS


class TrainConfig(BaseModel):
    """Everything that determines a training run; recorded verbatim in the artifact manifest."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "ml-100k"
    data_dir: str | None = None
    split: Literal["auto", "random", "temporal"] = "auto"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    valid_fraction: float = Field(0.1, gt=0, lt=1)
    method: Literal["fp32", "gnaq", "ptq"] = "gnaq"
    bits: int = 2
    dim: int = Field(64, ge=1)
    layers: int = Field(3, ge=0)
    epochs: int = Field(400, ge=1, description="max epochs of the full-precision stage")
    lr: float = Field(5e-3, gt=0)
    qat_epochs: int = Field(150, ge=1, description="max epochs of the GNAQ stage")
    qat_lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(2048, ge=1)
    l2: float = Field(1e-4, ge=0)
    patience: int = Field(10, ge=1, description="validations without improvement before stopping")
    eval_every: int = Field(5, ge=1, description="validate every N epochs in the fp32 stage")
    qat_eval_every: int = Field(1, ge=1, description="validate every N epochs in the GNAQ stage")
    ks: list[int] = Field(default_factory=lambda: [10, 20])
    seed: int = 0
    device: str = "cpu"
    ptq_granularity: Literal["node", "tensor"] = "node"
    node_aware: bool = True
    dynamic: bool = True
    estimator: Literal["graph", "ste"] = "graph"
    eta: float = Field(0.5, ge=0)
    equalize: bool = True
    clip: float = Field(0.8, gt=0)
    model_dir: str | None = None
    publish: bool = True
    version: str | None = None
    progress: bool = True

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
