"""Versioned, checksummed, atomically published model artifacts (one directory per version).

The trainer writes and the service reads the same directory, possibly at the same time, so a version
directory appears only once it is complete (written under ``.tmp-*``, fsynced, renamed) and
``CURRENT`` names the served version (replaced atomically). Every file is listed in
``manifest.json`` with its size and sha256, so a truncated or corrupted artifact is refused with the
name of the bad file instead of serving wrong recommendations.

Version directory layout::

    manifest.json               metadata + format_version, created_at, version, files, sizes, layout
    {user,item}_codes.bin       quantized side: codes packed at `bits` bits/value (model.packing)
    {user,item}_params.npy      quantized side: float16 (N, 2) or (1, 2) columns scale, offset;
                                (N, 2, S) for S row segments (layout ``segments``, absent = 1)
    {user,item}_dim_scale.npy   quantized side, optional: float16 (d,) per-dimension scale
    {user,item}_dim_center.npy  quantized side, optional (format 2): float16 (d,) table mean vector
    {user,item}_embeddings.npy  full-precision side: float32 (N, d)
    ids.json                    {"users": [...], "items": [...]} external ids by row
    train_interactions.npz      training items per user as CSR (indptr, indices), compressed
    <name>.npy                  one per entry of ModelArtifact.arrays
    <extra files>               e.g. training curve, history.json, as given
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.packing import pack_codes, unpack_codes
from model.quantized_table import QuantizedTable

# 2: a quantized table may carry its mean vector (``dim_center``). Version 1 artifacts, which never do, stay readable;
# a version 1 reader rejects version 2 rather than serve a centred table without its centre.
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
_DIM_VECTORS = ("dim_scale", "dim_center")  # optional (d,) float16 vectors of a quantized table, one file each
CURRENT_FILE = "CURRENT"
PUBLISHED_FILE = "PUBLISHED"  # every version CURRENT has named, one per line, oldest first
MANIFEST_FILE = "manifest.json"
IDS_FILE = "ids.json"
TRAIN_FILE = "train_interactions.npz"
_TMP_PREFIX = ".tmp-"
_SIDES = ("user", "item")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete, corrupt, of an unknown format, or cannot be written."""


Table = QuantizedTable | np.ndarray


@dataclass(frozen=True, eq=False)
class ModelArtifact:
    """Everything the service needs to score one model version; a float32 array is an fp32 side."""

    manifest: dict[str, Any]
    user: Table
    item: Table
    user_ids: list[str]
    item_ids: list[str]
    train_pairs: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for side in _SIDES:
            table = getattr(self, side)
            if isinstance(table, np.ndarray) and (table.dtype != np.float32 or table.ndim != 2):
                raise TypeError(f"{side} embeddings must be 2-D float32, got {table.dtype} {table.shape}")
            if not isinstance(table, (QuantizedTable, np.ndarray)):
                raise TypeError(f"{side} must be a QuantizedTable or a float32 array")
            ids = getattr(self, f"{side}_ids")
            if len(ids) != _rows(table) or _rows(table) == 0:
                raise ValueError(f"{side} table has {_rows(table)} rows but {len(ids)} ids (need >= 1)")
            if not all(isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
                raise ValueError(f"{side}_ids must be unique strings")
        if _dim(self.user) != _dim(self.item) or _dim(self.user) == 0:
            raise ValueError(f"user dim {_dim(self.user)} and item dim {_dim(self.item)} must be equal and > 0")
        pairs = self.train_pairs
        if not isinstance(pairs, np.ndarray) or pairs.ndim != 2 or pairs.shape[1] != 2 \
                or not np.issubdtype(pairs.dtype, np.integer):
            raise ValueError("train_pairs must be an integer array of shape (n, 2) (user, item)")
        for column, side in enumerate(_SIDES):
            values, n_rows = pairs[:, column], _rows(getattr(self, side))
            if values.size and (values.min() < 0 or values.max() >= n_rows):
                raise ValueError(f"train_pairs has {side} indices outside 0..{n_rows - 1}")
        for name in self.arrays:
            if not _NAME.fullmatch(name) or f"{name}.npy" in _reserved_files():
                raise ValueError(f"array name {name!r} is not a plain file name or clashes with a reserved file")

    @property
    def dim(self) -> int:
        """Embedding dimension shared by both sides."""
        return _dim(self.user)


def write_artifact(model_dir: Path, artifact: ModelArtifact, *, version: str | None = None,
                   publish: bool = True, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write ``artifact`` as a new version under ``model_dir`` atomically; return its directory.

    The version defaults to the UTC time (``20261123T204501Z``, with a random suffix if taken). An
    existing version is never overwritten. On failure nothing is left behind; if only the final
    ``CURRENT`` update fails, the complete (unpublished) version stays and the error propagates.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC)
    version = _choose_version(model_dir, version, created)
    extra_files = dict(extra_files or {})
    for name, data in extra_files.items():
        if not _NAME.fullmatch(name) or name in _reserved_files() \
                or name in {f"{a}.npy" for a in artifact.arrays}:
            raise ArtifactError(f"extra file name {name!r} is not a plain file name or clashes with artifact files")
        if not isinstance(data, bytes):
            raise ArtifactError(f"extra file {name!r} must be bytes, got {type(data).__name__}")

    tmp = model_dir / f"{_TMP_PREFIX}{version}-{secrets.token_hex(4)}"
    os.mkdir(tmp)
    try:
        files: dict[str, dict[str, Any]] = {}
        for name, data in _payload(artifact, extra_files):
            _write_file(tmp / name, data)
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        manifest = _manifest(artifact, version, created, files)
        _write_file(tmp / MANIFEST_FILE, manifest)
        _fsync_dir(tmp)
        final = model_dir / version
        if final.exists():
            raise ArtifactError(f"version {version} already exists in {model_dir}")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(model_dir)
    if publish:
        publish_version(model_dir, version)
    return final


def read_artifact(path: Path) -> ModelArtifact:
    """Load and verify a version directory, or the ``CURRENT`` version of a model directory."""
    path = Path(path)
    if not (path / MANIFEST_FILE).exists():
        if not path.is_dir():
            raise ArtifactError(f"{path} does not exist or is not a directory")
        if not (path / CURRENT_FILE).exists() and not list_versions(path):
            raise ArtifactError(f"{path} has no {MANIFEST_FILE} (not a version directory) "
                                f"and no {CURRENT_FILE} (not a model directory)")
        path = resolve_version(path)
    manifest = _read_manifest(path)
    files = manifest["files"]
    layout = manifest["layout"]
    required = {IDS_FILE, TRAIN_FILE, *(f"{name}.npy" for name in layout["arrays"])}
    for side in _SIDES:
        required.update(_side_files(side, layout[side]))
    missing = sorted(required - set(files))
    if missing:
        raise ArtifactError(f"{path / MANIFEST_FILE} does not list required file(s) {', '.join(missing)}")
    data = {name: _read_verified(path, name, entry) for name, entry in files.items()}

    try:
        ids = json.loads(data[IDS_FILE])
        tables = {side: _load_table(side, layout[side], data) for side in _SIDES}
        pairs = _csr_to_pairs(_load_npz(data, TRAIN_FILE), len(ids["users"]), len(ids["items"]))
        arrays = {name: _load_npy(data, f"{name}.npy") for name in layout["arrays"]}
        return ModelArtifact(manifest=manifest, user=tables["user"], item=tables["item"],
                             user_ids=ids["users"], item_ids=ids["items"], train_pairs=pairs,
                             arrays=arrays)
    except ArtifactError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ArtifactError(f"artifact {path} is inconsistent: {exc}") from exc


def resolve_version(model_dir: Path) -> Path:
    """The version directory that ``<model_dir>/CURRENT`` names."""
    current = Path(model_dir) / CURRENT_FILE
    try:
        name = current.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ArtifactError(f"no {CURRENT_FILE} in {model_dir}: no version has been published") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read {current}: {exc}") from exc
    if not _NAME.fullmatch(name) or name == CURRENT_FILE:
        raise ArtifactError(f"{current} holds an invalid version name {name!r}")
    version_dir = Path(model_dir) / name
    if not version_dir.is_dir():
        raise ArtifactError(f"{current} names version {name!r}, which does not exist")
    return version_dir


def list_versions(model_dir: Path) -> list[str]:
    """Sorted (i.e. chronological) version names in ``model_dir``; ``[]`` if it does not exist."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(p.name for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


# --- writing -------------------------------------------------------------------------------------

def _choose_version(model_dir: Path, version: str | None, created: datetime) -> str:
    if version is not None:
        if not _NAME.fullmatch(version) or version == CURRENT_FILE:
            raise ArtifactError(f"invalid version name {version!r}")
        if (model_dir / version).exists():
            raise ArtifactError(f"version {version} already exists in {model_dir}")
        return version
    version = created.strftime("%Y%m%dT%H%M%SZ")
    while (model_dir / version).exists():
        version = f"{created:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    return version


def _payload(artifact: ModelArtifact, extra_files: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Every file of the version except the manifest, serialised in memory (so hashes are exact)."""
    out: list[tuple[str, bytes]] = []
    for side in _SIDES:
        table = getattr(artifact, side)
        if isinstance(table, QuantizedTable):
            out.append((f"{side}_codes.bin", pack_codes(table.codes, table.bits).tobytes()))
            out.append((f"{side}_params.npy", _npy(np.stack([table.scale, table.offset], axis=1))))  # (N, 2[, S])
            out.extend((f"{side}_{name}.npy", _npy(getattr(table, name))) for name in _DIM_VECTORS
                       if getattr(table, name) is not None)
        else:
            out.append((f"{side}_embeddings.npy", _npy(table)))
    ids = {"users": list(artifact.user_ids), "items": list(artifact.item_ids)}
    out.append((IDS_FILE, json.dumps(ids, ensure_ascii=False).encode()))
    out.append((TRAIN_FILE, _pairs_to_csr(artifact.train_pairs, len(artifact.user_ids))))
    out.extend((f"{name}.npy", _npy(array)) for name, array in artifact.arrays.items())
    out.extend(extra_files.items())
    return out


def _manifest(artifact: ModelArtifact, version: str, created: datetime,
              files: dict[str, dict[str, Any]]) -> bytes:
    """Manifest bytes; ``sizes.artifact_bytes`` is exact: all files plus the manifest itself."""
    manifest = copy.deepcopy(artifact.manifest)
    embedding_bytes = sum(_embedding_bytes(getattr(artifact, side)) for side in _SIDES)
    # Against an fp32 model of the trainer's dimension d: served rows may be wider (BiGeaR: d*(L+1)).
    model_dim = manifest.get("dim")
    model_dim = model_dim if isinstance(model_dim, int) and model_dim > 0 else artifact.dim
    fp32_bytes = (len(artifact.user_ids) + len(artifact.item_ids)) * model_dim * 4
    sizes: dict[str, Any] = {"embedding_bytes": embedding_bytes, "fp32_embedding_bytes": fp32_bytes,
                             "compression_ratio": fp32_bytes / embedding_bytes}
    manifest.update(format_version=FORMAT_VERSION, version=version,
                    created_at=created.isoformat(timespec="seconds").replace("+00:00", "Z"),
                    files=files, sizes=sizes, layout=_layout(artifact))
    files_bytes = sum(entry["bytes"] for entry in files.values())
    total = files_bytes
    while True:  # the manifest's length depends on the digits of its own size: iterate to fixpoint
        sizes["artifact_bytes"] = total
        text = json.dumps(manifest, indent=2, sort_keys=True, default=_json_default).encode()
        if files_bytes + len(text) == total:
            return text
        total = files_bytes + len(text)


def _layout(artifact: ModelArtifact) -> dict[str, Any]:
    """What the reader needs to rebuild the tables, independent of trainer-filled metadata."""
    layout: dict[str, Any] = {"arrays": sorted(artifact.arrays)}
    for side in _SIDES:
        table = getattr(artifact, side)
        entry = {"rows": _rows(table), "dim": _dim(table)}
        if isinstance(table, QuantizedTable):
            entry.update(kind="quantized", bits=int(table.bits), param_rows=int(table.scale.shape[0]),
                         dim_scale=table.dim_scale is not None)
            if table.dim_center is not None:  # only then, like segments
                entry.update(dim_center=True)
            if table.segments > 1:  # only then: layouts of unsegmented tables stay as they were
                entry.update(segments=table.segments)
        else:
            entry.update(kind="float32")
        layout[side] = entry
    return layout


def _pairs_to_csr(pairs: np.ndarray, n_users: int) -> bytes:
    """Training items per user as compressed CSR in the smallest unsigned dtypes that fit."""
    pairs = pairs.astype(np.int64, copy=False)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    users, items = pairs[order, 0], pairs[order, 1]
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, indptr=indptr.astype(np.min_scalar_type(len(pairs))),
                        indices=items.astype(np.min_scalar_type(int(items.max(initial=0)))))
    return buffer.getvalue()


def publish_version(model_dir: Path, version: str) -> None:
    """Point CURRENT at ``version``: write a temp file, fsync, rename over CURRENT, fsync the dir."""
    model_dir = Path(model_dir)
    if not _NAME.fullmatch(version) or not (model_dir / version / MANIFEST_FILE).is_file():
        raise ArtifactError(f"cannot publish {version!r}: no such version in {model_dir}")
    tmp = model_dir / f"{_TMP_PREFIX}{CURRENT_FILE}-{secrets.token_hex(4)}"
    try:
        _write_file(tmp, f"{version}\n".encode())
        os.replace(tmp, model_dir / CURRENT_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(model_dir)
    with open(model_dir / PUBLISHED_FILE, "a", encoding="utf-8") as history:  # what rollback walks back
        history.write(f"{version}\n")
        history.flush()
        os.fsync(history.fileno())


def published_versions(model_dir: Path) -> list[str]:
    """Versions in the order they were published (``PUBLISHED``); ``[]`` if none recorded."""
    try:
        return (Path(model_dir) / PUBLISHED_FILE).read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return []


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _json_default(value: object) -> object:
    """Let trainers put numpy scalars/arrays (e.g. metrics) in the manifest."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"manifest value of type {type(value).__name__} is not JSON serialisable")


# --- reading -------------------------------------------------------------------------------------

def _read_manifest(version_dir: Path) -> dict[str, Any]:
    path = version_dir / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing") from None
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"{path} is corrupt or truncated: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} is not a JSON object")
    if manifest.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise ArtifactError(f"{path} has unknown format version {manifest.get('format_version')!r} "
                            f"(this reader understands {', '.join(map(str, READABLE_FORMAT_VERSIONS))})")
    files, layout = manifest.get("files"), manifest.get("layout")
    if not isinstance(files, dict) or not isinstance(layout, dict) \
            or not all(side in layout for side in _SIDES) or "arrays" not in layout:
        raise ArtifactError(f"{path} lacks a valid 'files' or 'layout' section")
    for name, entry in files.items():
        if not _NAME.fullmatch(name) or name == MANIFEST_FILE or not isinstance(entry, dict):
            raise ArtifactError(f"{path} has an invalid files entry {name!r}")
    return manifest


def _read_verified(version_dir: Path, name: str, entry: dict[str, Any]) -> bytes:
    path = version_dir / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    if len(data) != entry.get("bytes"):
        raise ArtifactError(f"{path} is truncated or altered: {len(data)} bytes, expected {entry.get('bytes')}")
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ArtifactError(f"{path} is corrupt: sha256 does not match the manifest")
    return data


def _load_npy(data: dict[str, bytes], name: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data[name]), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"{name} is not a valid .npy file: {exc}") from exc


def _load_npz(data: dict[str, bytes], name: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data[name]), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError, KeyError) as exc:
        raise ArtifactError(f"{name} is not a valid .npz file: {exc}") from exc


def _load_table(side: str, entry: dict[str, Any], data: dict[str, bytes]) -> Table:
    shape = (int(entry["rows"]), int(entry["dim"]))
    if entry["kind"] == "float32":
        table = _load_npy(data, f"{side}_embeddings.npy")
        if table.shape != shape:
            raise ArtifactError(f"{side}_embeddings.npy has shape {table.shape}, manifest says {shape}")
        return table
    params = _load_npy(data, f"{side}_params.npy")
    segments = int(entry.get("segments", 1))
    expected = "(rows, 2)" if segments == 1 else f"(rows, 2, {segments})"
    if params.ndim != (2 if segments == 1 else 3) or params.shape[1] != 2 \
            or (segments > 1 and params.shape[2] != segments):
        raise ArtifactError(f"{side}_params.npy must be {expected} scale, offset; got {params.shape}")
    packed = np.frombuffer(data[f"{side}_codes.bin"], dtype=np.uint8)
    codes = unpack_codes(packed, int(entry["bits"]), shape)
    vectors = {name: _load_npy(data, f"{side}_{name}.npy") if entry.get(name) else None for name in _DIM_VECTORS}
    try:
        return QuantizedTable(codes=codes, scale=params[:, 0].copy(), offset=params[:, 1].copy(),
                              bits=int(entry["bits"]), **vectors)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{side} table is inconsistent: {exc}") from exc


def _csr_to_pairs(csr: dict[str, np.ndarray], n_users: int, n_items: int) -> np.ndarray:
    indptr, indices = csr["indptr"].astype(np.int64), csr["indices"].astype(np.int64)
    if indptr.shape != (n_users + 1,) or indptr[0] != 0 or indptr[-1] != len(indices) \
            or (np.diff(indptr) < 0).any() or (indices.size and indices.max() >= n_items):
        raise ArtifactError(f"{TRAIN_FILE} is not a valid CSR for {n_users} users x {n_items} items")
    users = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(indptr))
    return np.stack([users, indices], axis=1)


# --- shared --------------------------------------------------------------------------------------

def _side_files(side: str, entry: dict[str, Any]) -> tuple[str, ...]:
    kind = entry["kind"]
    if kind == "quantized":
        files = (f"{side}_codes.bin", f"{side}_params.npy")
        return files + tuple(f"{side}_{name}.npy" for name in _DIM_VECTORS if entry.get(name))
    if kind == "float32":
        return (f"{side}_embeddings.npy",)
    raise ArtifactError(f"unknown table kind {kind!r} for {side}")


def _reserved_files() -> set[str]:
    reserved = {MANIFEST_FILE, IDS_FILE, TRAIN_FILE, CURRENT_FILE}
    for side in _SIDES:
        reserved.update(_side_files(side, {"kind": "quantized", **dict.fromkeys(_DIM_VECTORS, True)})
                        + _side_files(side, {"kind": "float32"}))
    return reserved


def _rows(table: Table) -> int:
    return table.n_rows if isinstance(table, QuantizedTable) else int(table.shape[0])


def _dim(table: Table) -> int:
    return table.dim if isinstance(table, QuantizedTable) else int(table.shape[1])


def _embedding_bytes(table: Table) -> int:
    return table.nbytes_packed if isinstance(table, QuantizedTable) else int(table.nbytes)
