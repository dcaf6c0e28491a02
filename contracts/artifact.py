"""One model version on disk: checksummed files written atomically, read back verified.

The trainer writes and the service reads the same directory, possibly at the same time, so a version
directory appears only once it is complete (written under ``.tmp-*``, fsynced, renamed). Every file is
listed in ``manifest.json`` with its size and sha256, so a truncated or corrupted artifact is refused with
the name of the bad file instead of serving wrong recommendations. Which version is served, and the rest of
the lifecycle, is ``contracts.versions``.

Version directory layout::

    manifest.json               contracts.manifest.Manifest
    {user,item}_codes.bin       quantized side: codes packed at `bits` bits/value (model.packing)
    {user,item}_params.npy      quantized side: float16 (N, 2) or (1, 2) columns scale, offset;
                                (N, 2, S) for S row segments
    {user,item}_dim_scale.npy   quantized side, optional: float16 (d,) per-dimension scale
    {user,item}_dim_center.npy  quantized side, optional: float16 (d,) table mean vector
    {user,item}_embeddings.npy  full-precision side: float32 (N, d)
    ids.json                    {"users": [...], "items": [...]} external ids by row
    train_interactions.npz      training items per user as CSR (indptr, indices), compressed
    <name>.npy                  one per entry of ModelArtifact.arrays
    <extra files>               e.g. training curve, history.json, as given
"""

from __future__ import annotations

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

import numpy as np
from pydantic import ValidationError

from contracts.manifest import (
    FORMAT_VERSION,
    READABLE_FORMAT_VERSIONS,
    FileEntry,
    Layout,
    Manifest,
    ModelInfo,
    Sizes,
    TableLayout,
    upgrade,
)
from model.foldin import FoldIn
from model.item_foldin import ItemFoldIn, norm_fit
from model.packing import pack_codes, packed_size, unpack_codes
from model.quantizers import DEFAULT_CLIP
from model.tables import EmbeddingTable, FloatTable, QuantizedTable

MANIFEST_FILE = "manifest.json"
IDS_FILE = "ids.json"
TRAIN_FILE = "train_interactions.npz"
CURRENT_FILE = "CURRENT"
TMP_PREFIX = ".tmp-"
_DIM_VECTORS = ("dim_scale", "dim_center")  # optional (d,) float16 vectors of a quantized table, one file each
_SIDES = ("user", "item")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_CHUNK = 1 << 20  # bytes hashed, or codes unpacked, at a time when reading: bounds the reader's temporaries


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete, corrupt, of an unknown format, or cannot be written."""


def is_plain_name(name: str) -> bool:
    """A file or version name that stays inside its directory and is not a reserved name."""
    return bool(_NAME.fullmatch(name)) and name != CURRENT_FILE


@dataclass(frozen=True, eq=False)
class UserItems:
    """Items per user in CSR form: user ``u``'s items are ``items[indptr[u]:indptr[u + 1]]``, sorted."""

    indptr: np.ndarray
    items: np.ndarray

    def __post_init__(self) -> None:
        indptr, items = self.indptr, self.items
        if indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != len(items) \
                or (np.diff(indptr) < 0).any() or (items.size and items.min() < 0):
            raise ValueError("not a valid CSR: indptr must start at 0, never decrease and end at len(items)")

    @classmethod
    def from_pairs(cls, pairs: np.ndarray, n_users: int) -> UserItems:
        """From ``(user, item)`` pairs, ``(n, 2)``."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if pairs.size and (pairs[:, 0].min() < 0 or pairs[:, 0].max() >= n_users):
            raise ValueError(f"user indices outside 0..{n_users - 1}")
        order = np.lexsort((pairs[:, 1], pairs[:, 0]))
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(pairs[:, 0], minlength=n_users), out=indptr[1:])
        return cls(indptr, pairs[order, 1])

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def __len__(self) -> int:
        return len(self.items)

    def of(self, user: int) -> np.ndarray:
        """The items of user row ``user``."""
        return self.items[self.indptr[user]:self.indptr[user + 1]]

    def pairs(self) -> np.ndarray:
        """``(user, item)`` pairs, ``(n, 2)`` int64, ordered by user then item."""
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.indptr))
        return np.stack([users, self.items.astype(np.int64)], axis=1)


@dataclass(frozen=True, eq=False)
class ModelArtifact:
    """Everything the service needs to score one model version.

    ``info`` is what training records; after ``read_artifact`` it is the whole ``Manifest`` (``.manifest``).
    ``train`` holds each user's training items (masked when ranking, the base of a folded-in user).
    ``arrays`` are named extra arrays: node degrees, validation pairs, GNAQ's refined item parameters.
    """

    info: ModelInfo
    user: EmbeddingTable
    item: EmbeddingTable
    user_ids: list[str]
    item_ids: list[str]
    train: UserItems
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for side in _SIDES:
            table, ids = getattr(self, side), getattr(self, f"{side}_ids")
            if not isinstance(table, EmbeddingTable):
                raise TypeError(f"{side} must be an EmbeddingTable, got {type(table).__name__}")
            if len(ids) != table.n_rows or table.n_rows == 0:
                raise ValueError(f"{side} table has {table.n_rows} rows but {len(ids)} ids (need >= 1)")
            if set(map(type, ids)) - {str} or len(set(ids)) != len(ids):  # map: 2M ids in 0.1 s, not 2 s
                raise ValueError(f"{side}_ids must be unique strings")
        if self.user.dim != self.item.dim or self.user.dim == 0:
            raise ValueError(f"user dim {self.user.dim} and item dim {self.item.dim} must be equal and > 0")
        if self.train.n_users != len(self.user_ids):
            raise ValueError(f"training items are given for {self.train.n_users} users, the model has "
                             f"{len(self.user_ids)}")
        if len(self.train) and self.train.items.max() >= len(self.item_ids):
            raise ValueError(f"training items has item indices outside 0..{len(self.item_ids) - 1}")
        for name in self.arrays:
            if not is_plain_name(name) or f"{name}.npy" in _reserved_files():
                raise ValueError(f"array name {name!r} is not a plain file name or clashes with a reserved file")

    @property
    def manifest(self) -> Manifest:
        """The manifest of a written version (``read_artifact``)."""
        if not isinstance(self.info, Manifest):
            raise ArtifactError("this artifact has not been written: it has no manifest yet")
        return self.info

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def dim(self) -> int:
        """Width of the served rows, the same on both sides."""
        return self.user.dim

    @property
    def _clip(self) -> float:
        """The quantizer's step as a multiple of the Gaussian MSE-optimal one (training's default when none is
        recorded)."""
        quantizer = self.info.quantizer
        return quantizer.clip if quantizer is not None and quantizer.clip is not None else DEFAULT_CLIP

    def foldin(self) -> FoldIn:
        """What folding a new user in needs, from this artifact: item table, degrees, quantizer settings."""
        return FoldIn(self.item, self.arrays["item_degree"], clip=self._clip, item_theta=self.arrays.get("item_theta"),
                      layers=self.info.layers)

    def item_foldin(self) -> ItemFoldIn:
        """What folding a new item in needs: user table and degrees, item table form, the trained items' norms."""
        degree = self.arrays["user_degree"]
        fit = norm_fit(self.user, degree, self.train.indptr, self.train.items, self.item)
        return ItemFoldIn(self.user, degree, self.item, fit=fit, clip=self._clip,
                          user_theta=self.arrays.get("user_theta"), layers=self.info.layers)


def write_artifact(model_dir: Path, artifact: ModelArtifact, *, version: str | None = None,
                   extra_files: dict[str, bytes] | None = None) -> Path:
    """Write ``artifact`` as a new, unpublished version under ``model_dir`` atomically; return its directory.

    The version defaults to the UTC time (``20261123T204501Z``, with a random suffix if taken). An existing
    version is never overwritten. On failure nothing is left behind.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC)
    version = _choose_version(model_dir, version, created)
    extra_files = dict(extra_files or {})
    for name, data in extra_files.items():
        if not is_plain_name(name) or name in _reserved_files() or name in {f"{a}.npy" for a in artifact.arrays}:
            raise ArtifactError(f"extra file name {name!r} is not a plain file name or clashes with artifact files")
        if not isinstance(data, bytes):
            raise ArtifactError(f"extra file {name!r} must be bytes, got {type(data).__name__}")

    tmp = model_dir / f"{TMP_PREFIX}{version}-{secrets.token_hex(4)}"
    os.mkdir(tmp)
    try:
        files: dict[str, FileEntry] = {}
        for name, data in _payload(artifact, extra_files):
            write_file(tmp / name, data)
            files[name] = FileEntry(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        write_file(tmp / MANIFEST_FILE, _manifest_bytes(artifact, version, created, files))
        fsync_dir(tmp)
        final = model_dir / version
        if final.exists():
            raise ArtifactError(f"version {version} already exists in {model_dir}")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(model_dir)
    return final


def read_artifact(version_dir: Path) -> ModelArtifact:
    """Load and verify a version directory."""
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    layout = manifest.layout
    required = {IDS_FILE, TRAIN_FILE, *(f"{name}.npy" for name in layout.arrays)}
    for side in _SIDES:
        required.update(_side_files(side, getattr(layout, side)))
    missing = sorted(required - set(manifest.files))
    if missing:
        raise ArtifactError(f"{version_dir / MANIFEST_FILE} does not list required file(s) {', '.join(missing)}")
    for name, entry in manifest.files.items():  # every file checked before any is parsed
        _verify(version_dir, name, entry)

    try:
        ids = json.loads((version_dir / IDS_FILE).read_bytes())  # no streaming JSON parser: bytes freed once parsed
        tables = {side: _load_table(version_dir, side, getattr(layout, side)) for side in _SIDES}
        csr = _load_npz(version_dir, TRAIN_FILE)
        train = UserItems(csr["indptr"].astype(np.int64), csr["indices"].astype(np.int64))
        arrays = {name: _load_npy(version_dir, f"{name}.npy") for name in layout.arrays}
        return ModelArtifact(info=manifest, user=tables["user"], item=tables["item"], user_ids=ids["users"],
                             item_ids=ids["items"], train=train, arrays=arrays)
    except ArtifactError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ArtifactError(f"artifact {version_dir} is inconsistent: {exc}") from exc
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {version_dir}: {exc}") from exc


def read_manifest(version_dir: Path) -> Manifest:
    """The verified-shape manifest of a version directory (files are checked by ``read_artifact``)."""
    path = Path(version_dir) / MANIFEST_FILE
    if not Path(version_dir).is_dir():
        raise ArtifactError(f"{version_dir} does not exist or is not a directory")
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing") from None
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"{path} is corrupt or truncated: {exc}") from exc
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path} is not a JSON object")
    found = raw.get("format_version")
    if found not in READABLE_FORMAT_VERSIONS:
        raise ArtifactError(f"{path} has unknown format version {found!r} "
                            f"(this reader understands {', '.join(map(str, READABLE_FORMAT_VERSIONS))})")
    try:
        manifest = Manifest.model_validate(upgrade(raw))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ArtifactError(f"{path} (format version {found}) is not a valid manifest: {problems}") from None
    for name in manifest.files:
        if not is_plain_name(name) or name == MANIFEST_FILE:
            raise ArtifactError(f"{path} has an invalid files entry {name!r}")
    return manifest


# --- writing -------------------------------------------------------------------------------------

def _choose_version(model_dir: Path, version: str | None, created: datetime) -> str:
    if version is not None:
        if not is_plain_name(version):
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
            out.append((f"{side}_embeddings.npy", _npy(table.dequantize())))
    ids = {"users": list(artifact.user_ids), "items": list(artifact.item_ids)}
    out.append((IDS_FILE, json.dumps(ids, ensure_ascii=False).encode()))
    out.append((TRAIN_FILE, _csr_bytes(artifact.train)))
    out.extend((f"{name}.npy", _npy(array)) for name, array in artifact.arrays.items())
    out.extend(extra_files.items())
    return out


def _manifest_bytes(artifact: ModelArtifact, version: str, created: datetime, files: dict[str, FileEntry]) -> bytes:
    """Manifest bytes; ``sizes.artifact_bytes`` is exact: all files plus the manifest itself."""
    embedding_bytes = artifact.user.stored_bytes + artifact.item.stored_bytes
    # Against an fp32 model of the trainer's dimension d: served rows may be wider (BiGeaR: d*(L+1)).
    fp32_bytes = (len(artifact.user_ids) + len(artifact.item_ids)) * artifact.info.dim * 4
    files_bytes = sum(entry.bytes for entry in files.values())
    total = files_bytes
    while True:  # the manifest's length depends on the digits of its own size: iterate to fixpoint
        sizes = Sizes(embedding_bytes=embedding_bytes, fp32_embedding_bytes=fp32_bytes,
                      compression_ratio=fp32_bytes / embedding_bytes, artifact_bytes=total)
        manifest = Manifest(**artifact.info.model_dump(by_alias=True, include=set(ModelInfo.model_fields)),
                            format_version=FORMAT_VERSION,
                            version=version, created_at=created.isoformat(timespec="seconds").replace("+00:00", "Z"),
                            files=files, sizes=sizes, layout=_layout(artifact))
        try:
            text = json.dumps(manifest.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True).encode()
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"the manifest is not JSON serialisable: {exc}") from exc
        if files_bytes + len(text) == total:
            return text
        total = files_bytes + len(text)


def _layout(artifact: ModelArtifact) -> Layout:
    """What the reader needs to rebuild the tables, independent of trainer-filled metadata."""
    sides = {}
    for side in _SIDES:
        table = getattr(artifact, side)
        if isinstance(table, QuantizedTable):
            sides[side] = TableLayout(kind="quantized", rows=table.n_rows, dim=table.dim, bits=int(table.bits),
                                      param_rows=int(table.scale.shape[0]), dim_scale=table.dim_scale is not None,
                                      dim_center=table.dim_center is not None, segments=table.segments)
        else:
            sides[side] = TableLayout(kind="float32", rows=table.n_rows, dim=table.dim)
    return Layout(arrays=sorted(artifact.arrays), **sides)


def _csr_bytes(train: UserItems) -> bytes:
    """Training items per user as compressed CSR in the smallest unsigned dtypes that fit."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, indptr=train.indptr.astype(np.min_scalar_type(len(train))),
                        indices=train.items.astype(np.min_scalar_type(int(train.items.max(initial=0)))))
    return buffer.getvalue()


def write_file(path: Path, data: bytes) -> None:
    """Create ``path`` (never overwrite) with ``data``, flushed to disk."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


# --- reading -------------------------------------------------------------------------------------

def _verify(version_dir: Path, name: str, entry: FileEntry) -> None:
    """Refuse ``name`` unless its size and sha256 match the manifest, hashing it ``_CHUNK`` bytes at a time.

    The arrays are then parsed from the path, a second read that the page cache serves: never a whole file's
    bytes beside its parsed arrays. Nothing can change a file between the check and the parse: a version
    directory is complete and immutable once renamed into place (``write_artifact``), and a retired one is
    deleted, never rewritten.
    """
    path = version_dir / name
    digest, buffer = hashlib.sha256(), bytearray(_CHUNK)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size != entry.bytes:
                raise ArtifactError(f"{path} is truncated or altered: {size} bytes, expected {entry.bytes}")
            view = memoryview(buffer)
            while read := handle.readinto(buffer):
                digest.update(view[:read])
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    if digest.hexdigest() != entry.sha256:
        raise ArtifactError(f"{path} is corrupt: sha256 does not match the manifest")


def _load_npy(version_dir: Path, name: str, *, mmap: bool = False) -> np.ndarray:
    """One owned array read straight from the file (``np.fromfile`` inside ``np.load``), or a read-only memory map
    when the caller copies what it keeps: the map closes once the caller drops it."""
    try:
        return np.load(version_dir / name, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        raise ArtifactError(f"{name} is not a valid .npy file: {exc}") from exc


def _load_npz(version_dir: Path, name: str) -> dict[str, np.ndarray]:
    """Members decompressed from the file in numpy's buffer-sized pieces, one owned array each."""
    try:
        with np.load(version_dir / name, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError, KeyError, EOFError) as exc:
        raise ArtifactError(f"{name} is not a valid .npz file: {exc}") from exc


def _load_codes(version_dir: Path, name: str, bits: int, shape: tuple[int, int]) -> np.ndarray:
    """Codes unpacked a slice of rows at a time into one owned ``(N, d)`` array: neither the packed file nor
    ``unpack_codes``'s bit planes (``bits`` bytes per value) are ever whole in memory beside it."""
    rows, dim = shape
    path, expected = version_dir / name, packed_size(rows * dim, bits)
    size = path.stat().st_size
    if size != expected:
        raise ArtifactError(f"{name} holds {size} bytes, expected {expected} for {rows}x{dim} codes of {bits} bits")
    codes = np.empty(shape, dtype=np.uint8)
    step = max(8, _CHUNK // max(1, dim * bits) // 8 * 8)  # 8 rows are whole bytes: each slice starts on a byte
    with open(path, "rb") as handle:
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            packed = np.fromfile(handle, dtype=np.uint8, count=packed_size((stop - start) * dim, bits))
            codes[start:stop] = unpack_codes(packed, bits, (stop - start, dim))
    return codes


def _load_table(version_dir: Path, side: str, entry: TableLayout) -> EmbeddingTable:
    shape = (entry.rows, entry.dim)
    if entry.kind == "float32":
        table = _load_npy(version_dir, f"{side}_embeddings.npy")
        if table.shape != shape:
            raise ArtifactError(f"{side}_embeddings.npy has shape {table.shape}, manifest says {shape}")
        return FloatTable(table)
    params = _load_npy(version_dir, f"{side}_params.npy", mmap=True)  # only the two columns are kept
    segments, bits = entry.segments, entry.bits
    expected = "(rows, 2)" if segments == 1 else f"(rows, 2, {segments})"
    if params.ndim != (2 if segments == 1 else 3) or params.shape[1] != 2 \
            or (segments > 1 and params.shape[2] != segments):
        raise ArtifactError(f"{side}_params.npy must be {expected} scale, offset; got {params.shape}")
    if bits is None:
        raise ArtifactError(f"the layout of the quantized {side} table gives no bits")
    scale, offset = np.array(params[:, 0]), np.array(params[:, 1])  # owned copies (plain ndarrays): map closed
    del params
    codes = _load_codes(version_dir, f"{side}_codes.bin", bits, shape)
    vectors = {name: _load_npy(version_dir, f"{side}_{name}.npy") if getattr(entry, name) else None
               for name in _DIM_VECTORS}
    try:
        return QuantizedTable(codes=codes, scale=scale, offset=offset, bits=bits, **vectors)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{side} table is inconsistent: {exc}") from exc


# --- shared --------------------------------------------------------------------------------------

def _side_files(side: str, entry: TableLayout) -> tuple[str, ...]:
    if entry.kind == "quantized":
        files = (f"{side}_codes.bin", f"{side}_params.npy")
        return files + tuple(f"{side}_{name}.npy" for name in _DIM_VECTORS if getattr(entry, name))
    return (f"{side}_embeddings.npy",)


def _reserved_files() -> set[str]:
    reserved = {MANIFEST_FILE, IDS_FILE, TRAIN_FILE, CURRENT_FILE}
    for side in _SIDES:
        reserved.update(_side_files(side, TableLayout(kind="quantized", rows=0, dim=0, dim_scale=True,
                                                      dim_center=True)))
        reserved.update(_side_files(side, TableLayout(kind="float32", rows=0, dim=0)))
    return reserved

