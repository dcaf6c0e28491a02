"""The versions of a model directory: which one is served, publishing, rollback and pruning.

``<model dir>/CURRENT`` names the served version and is replaced atomically (temporary file, fsync, rename),
so a reader sees the old name or the new one, never a torn write. ``<model dir>/PUBLISHED`` lists every version
``CURRENT`` has named, oldest first: rollback walks back through it, and pruning never deletes the current
version or the newest published ones. A version written but never published (``gnaq train --no-publish``, or a
retrain refused by its quality gate) stays on disk for inspection until pruned.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from contracts.artifact import (
    CURRENT_FILE,
    MANIFEST_FILE,
    TMP_PREFIX,
    ArtifactError,
    ModelArtifact,
    fsync_dir,
    is_plain_name,
    read_artifact,
    write_artifact,
    write_file,
)

PUBLISHED_FILE = "PUBLISHED"
REFUSED_FILE = "REFUSED"  # candidates the nightly job's quality gate refused: "<version>\t<reason>" per line
RETRAIN_STATUS_FILE = "RETRAIN_STATUS.json"


class RetrainStatus(BaseModel):
    """How the last nightly run ended, for operators and the service's metrics."""

    finished_at: datetime
    outcome: Literal["published", "refused", "skipped"]
    version: str | None = None
    pending_interactions: int = 0  # logged and still not in a published model after this run
    runs_pending: int = 0  # consecutive runs that ended with interactions still pending
    pending_since: datetime | None = None  # when the first of those runs ended


def publish_version(model_dir: Path, version: str) -> None:
    """Point ``CURRENT`` at ``version`` and append it to ``PUBLISHED``."""
    model_dir = Path(model_dir)
    if not is_plain_name(version) or not (model_dir / version / MANIFEST_FILE).is_file():
        raise ArtifactError(f"cannot publish {version!r}: no such version in {model_dir}")
    tmp = model_dir / f"{TMP_PREFIX}{CURRENT_FILE}-{secrets.token_hex(4)}"
    try:
        write_file(tmp, f"{version}\n".encode())
        os.replace(tmp, model_dir / CURRENT_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(model_dir)
    with open(model_dir / PUBLISHED_FILE, "a", encoding="utf-8") as history:
        history.write(f"{version}\n")
        history.flush()
        os.fsync(history.fileno())


def add_version(model_dir: Path, artifact: ModelArtifact, *, version: str | None = None, publish: bool = True,
                extra_files: dict[str, bytes] | None = None) -> Path:
    """Write ``artifact`` as a new version (``write_artifact``) and, if ``publish``, serve it.

    If only the final ``CURRENT`` update fails, the complete (unpublished) version stays and the error propagates.
    """
    path = write_artifact(model_dir, artifact, version=version, extra_files=extra_files)
    if publish:
        publish_version(model_dir, path.name)
    return path


def resolve_version(model_dir: Path) -> Path:
    """The version directory that ``<model_dir>/CURRENT`` names."""
    current = Path(model_dir) / CURRENT_FILE
    try:
        name = current.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ArtifactError(f"no {CURRENT_FILE} in {model_dir}: no version has been published") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read {current}: {exc}") from exc
    if not is_plain_name(name):
        raise ArtifactError(f"{current} holds an invalid version name {name!r}")
    version_dir = Path(model_dir) / name
    if not version_dir.is_dir():
        raise ArtifactError(f"{current} names version {name!r}, which does not exist")
    return version_dir


def version_dir(path: Path) -> Path:
    """``path`` itself if it is a version directory, else the version its ``CURRENT`` names."""
    path = Path(path)
    if (path / MANIFEST_FILE).exists():
        return path
    if not path.is_dir():
        raise ArtifactError(f"{path} does not exist or is not a directory")
    if not (path / CURRENT_FILE).exists() and not list_versions(path):
        raise ArtifactError(f"{path} has no {MANIFEST_FILE} (not a version directory) "
                            f"and no {CURRENT_FILE} (not a model directory)")
    return resolve_version(path)


def read_current(path: Path) -> ModelArtifact:
    """The verified artifact of a version directory, or of the version a model directory serves."""
    return read_artifact(version_dir(path))


def list_versions(model_dir: Path) -> list[str]:
    """Sorted (i.e. chronological) version names in ``model_dir``; ``[]`` if it does not exist."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(p.name for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def published_versions(model_dir: Path) -> list[str]:
    """Versions in the order they were published (``PUBLISHED``); ``[]`` if none recorded."""
    try:
        return (Path(model_dir) / PUBLISHED_FILE).read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return []


def prune(model_dir: Path, keep: int) -> list[str]:
    """Delete old versions beyond ``keep``; the current one and the last ``keep`` published are never deleted."""
    current = resolve_version(model_dir).name
    protected = {current, *published_versions(model_dir)[-keep:]}
    others = [v for v in list_versions(model_dir) if v not in protected]
    doomed = others[:max(0, len(others) - max(0, keep - len(protected)))]
    for version in doomed:
        shutil.rmtree(Path(model_dir) / version)
    return doomed


def rollback(model_dir: Path, version: str | None = None) -> str:
    """Point ``CURRENT`` at ``version``, verified; by default at the version that served before the current one
    was first published, so repeated rollbacks walk further back and never forward again.

    Refused candidates were never published, so the default never lands on one.
    """
    current = resolve_version(model_dir).name
    if version is None:
        history = published_versions(model_dir)
        before = history[:history.index(current)] if current in history else history
        earlier = [v for v in dict.fromkeys(reversed(before)) if v != current and (Path(model_dir) / v).is_dir()]
        if not earlier:
            raise ArtifactError(f"no version served before {current} in {model_dir}: nothing to roll back to")
        version = earlier[0]
    read_artifact(Path(model_dir) / version)  # refuse to publish a missing or corrupt version
    publish_version(model_dir, version)
    return version


def record_refused(model_dir: Path, version: str, reason: str) -> None:
    """Remember that the quality gate refused ``version`` (``gnaq versions`` shows why)."""
    with open(Path(model_dir) / REFUSED_FILE, "a", encoding="utf-8") as log:
        log.write(f"{version}\t{' '.join(reason.split())}\n")
        log.flush()
        os.fsync(log.fileno())


def refused_versions(model_dir: Path) -> dict[str, str]:
    """Refused candidates and why, by version."""
    try:
        lines = (Path(model_dir) / REFUSED_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


def write_retrain_status(model_dir: Path, status: RetrainStatus) -> None:
    """Replace the status file atomically."""
    tmp = Path(model_dir) / f"{TMP_PREFIX}{RETRAIN_STATUS_FILE}-{secrets.token_hex(4)}"
    try:
        write_file(tmp, status.model_dump_json(indent=1).encode())
        os.replace(tmp, Path(model_dir) / RETRAIN_STATUS_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_retrain_status(model_dir: Path) -> RetrainStatus | None:
    """The last run's status, or None if no run has finished (or the file is unreadable)."""
    try:
        return RetrainStatus.model_validate(json.loads((Path(model_dir) / RETRAIN_STATUS_FILE).read_bytes()))
    except (FileNotFoundError, ValueError):  # pydantic's ValidationError is a ValueError
        return None
