"""The typed manifest of a model version (``manifest.json``).

``ModelInfo`` is what the training job says about a model; ``Manifest`` adds what writing the version adds
(its name, time, files, sizes and table layout). Each fact is recorded once: the method and its shape at the
top, the data (where it came from, how it was split, its fingerprint) under ``dataset``, and the rest of the
training configuration, which only training reads back, under ``config``.

Format versions: 1 and 2 wrote an untyped manifest whose ``config`` repeated the dataset and split; they are
read by moving those settings into ``dataset`` (``upgrade``). 3 is this module.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetRecord(_Record):
    """The data a model was trained on: how to load it again, how it was split, and what came out."""

    name: str = Field(description="dataset name or path, as given to the loader")
    data_dir: str | None = Field(None, description="directory of the named datasets, if one was given")
    split: Literal["auto", "random", "temporal"] = Field(description="split mode asked for")
    test_fraction: float = Field(description="per-user test share of a random or temporal split")
    split_label: str = Field(description="the split as made: official, random-80/20 seed=0, temporal-80/20")
    fingerprint: str = Field(description="sha256 of the sizes and the train and test pairs")
    source_fingerprint: str | None = Field(None, description="the fingerprint of the dataset as loaded, when the "
                                           "model trained on more (a retrain adds logged interactions); None: same")
    n_users: int
    n_items: int
    n_train: int
    n_test: int
    n_fit: int = Field(description="training pairs the model fitted (train minus validation)")
    n_valid: int = Field(description="training pairs held out for validation")
    warnings: dict[str, int] = Field(default_factory=dict, description="what the loader skipped, by reason")


class QuantizerRecord(BaseModel):
    """The quantizer as trained: its class and grid, plus what it learned or chose (method-specific keys)."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    class_name: str = Field(alias="class")
    bits: int
    per_node: bool
    clip: float | None = Field(None, description="GNAQ: grid step as a multiple of the Gaussian MSE-optimal step")


class RatioInterval(_Record):
    """A quantized model's test metric as a fraction of its fp32 warm start's, with a paired bootstrap interval."""

    metric: str
    users: int = Field(description="test users scored by both models (resampled together)")
    ratio: float = Field(description="mean over users of the model's metric / the same of the warm start's")
    low: float
    high: float
    confidence: float = Field(description="two-sided coverage of [low, high]")
    resamples: int = Field(description="bootstrap resamples of the users")


class Metrics(_Record):
    """Full-ranking metrics of the served vectors: validation (selection) and test (reported once)."""

    test: dict[str, float]
    valid: dict[str, float]
    selection_metric: str
    warm_start_test: dict[str, float] | None = Field(
        None, description="test metrics of the fp32 warm start a quantized model was trained from")
    warm_start_ratio: RatioInterval | None = Field(
        None, description="the selection metric on test against the warm start's, with its interval")


class TrainingRecord(_Record):
    epochs_run: dict[str, int] = Field(description="epochs trained per stage")
    selected_epoch: dict[str, int] = Field(description="per stage, the epoch whose state was kept")
    seconds: float
    device: str = Field(description="rank 0's device")
    torch: str
    choices: dict[str, Any] = Field(default_factory=dict, description="settings the default recipe derived from "
                                    "the data, and variants it chose on validation with each candidate's score")
    world_size: int = Field(1, description="training processes (ranks); their gradients were averaged each step")
    backend: str | None = Field(None, description="torch.distributed backend (gloo, nccl); None: one process")


class ModelInfo(_Record):
    """What training records about a model (everything in the manifest but the file-level facts)."""

    method: str
    bits: int | None = Field(description="bits per value; None for a full-precision model")
    dim: int = Field(description="embedding dimension d of the model (served rows may be wider: BiGeaR)")
    layers: int = Field(description="LightGCN propagation layers L")
    seed: int
    quantizer: QuantizerRecord | None = None
    dataset: DatasetRecord
    metrics: Metrics
    served: str = Field(description="what the served vectors are")
    training: TrainingRecord
    config: dict[str, Any] = Field(description="the rest of the training configuration; read back by training only")


class FileEntry(_Record):
    sha256: str
    bytes: int


class TableLayout(_Record):
    """What a reader needs to rebuild one side's table from its files."""

    kind: Literal["quantized", "float32"]
    rows: int
    dim: int
    bits: int | None = None
    param_rows: int | None = None
    dim_scale: bool = False
    dim_center: bool = False
    segments: int = 1


class Layout(_Record):
    user: TableLayout
    item: TableLayout
    arrays: list[str]


class Sizes(_Record):
    embedding_bytes: int = Field(description="the served tables: codes and parameters, or float32 rows")
    fp32_embedding_bytes: int = Field(description="an fp32 model of the same users, items and d")
    compression_ratio: float
    artifact_bytes: int = Field(description="every file of the version, the manifest included")


class Manifest(ModelInfo):
    """``manifest.json`` of a written version."""

    format_version: int
    version: str
    created_at: str
    files: dict[str, FileEntry]
    sizes: Sizes
    layout: Layout


def upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """A format 1 or 2 manifest in format 3's shape: the data settings move from ``config`` to ``dataset``."""
    if raw.get("format_version") not in (1, 2):
        return raw
    config = raw.get("config") or {}
    dataset = dict(raw.get("dataset") or {})
    for duplicate in ("seed", "valid_fraction"):  # kept in the top level and the config
        dataset.pop(duplicate, None)
    dataset["split_label"] = dataset.pop("split", None)
    dataset.update(data_dir=config.get("data_dir"), split=config.get("split", "auto"),
                   test_fraction=config.get("test_fraction", dataset.get("test_fraction", 0.2)))
    return {**raw, "dataset": dataset}
