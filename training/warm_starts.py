"""The fp32 warm-start cache of a model directory, kept in step with its versions.

Every training run on new data writes ``<model dir>/.cache/fp32-<digest>.pt`` (the digest names the data and the
fp32 settings). Nightly retrains on new data would add one per night for ever, so the nightly job prunes the cache
together with the versions: a warm start stays only while a version still on disk, the current one included, was
trained from it, i.e. while re-running that version's configuration on its data could reuse it. Each version's
manifest records its data fingerprint and settings, so the key is recomputed from the manifest alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from contracts.artifact import ArtifactError, read_manifest
from contracts.versions import list_versions
from training.config import TrainConfig
from training.pipeline import WARM_START_DIR, warm_start_name

log = logging.getLogger(__name__)


def reusable_warm_starts(model_dir: Path) -> set[str]:
    """File names of the warm starts the versions on disk were trained from (unreadable versions: none)."""
    names = set()
    for version in list_versions(model_dir):
        try:
            manifest = read_manifest(Path(model_dir) / version)
            names.add(warm_start_name(manifest.dataset.fingerprint, TrainConfig.from_manifest(manifest),
                                      manifest.training.world_size))
        except (ArtifactError, ValueError) as error:  # pydantic's ValidationError is a ValueError
            log.warning("version %s: cannot tell its warm start (%s); not keeping one for it", version, error)
    return names


def prune_warm_starts(model_dir: Path) -> list[str]:
    """Delete the cached warm starts (and leftover temporary files) no version on disk can reuse."""
    cache = Path(model_dir) / WARM_START_DIR
    if not cache.is_dir():
        return []
    keep = reusable_warm_starts(model_dir)
    doomed = sorted(p for p in cache.glob("fp32-*") if p.name not in keep)
    for path in doomed:
        path.unlink(missing_ok=True)
    return [p.name for p in doomed]


def warm_start_bytes(model_dir: Path) -> int:
    """Size of the largest cached warm start: what a retrain on new data may add to the cache."""
    cache = Path(model_dir) / WARM_START_DIR
    return max((p.stat().st_size for p in cache.glob("fp32-*.pt")), default=0) if cache.is_dir() else 0
