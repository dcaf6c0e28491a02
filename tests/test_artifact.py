"""Artifacts must round-trip exactly, publish atomically and refuse anything damaged."""

from __future__ import annotations

import dataclasses
import json
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import contracts.artifact as artifact_module
from contracts.artifact import ArtifactError, ModelArtifact, UserItems, read_artifact, write_artifact
from contracts.manifest import FORMAT_VERSION, DatasetRecord, Metrics, ModelInfo, TrainingRecord
from contracts.versions import add_version, list_versions, read_current, resolve_version
from model.tables import EmbeddingTable, FloatTable, QuantizedTable


def _table(rng: np.random.Generator, n: int, dim: int, bits: int, *, per_node: bool = True) -> QuantizedTable:
    n_params = n if per_node else 1
    return QuantizedTable(codes=rng.integers(0, 2**bits, size=(n, dim), dtype=np.uint8),
                          scale=rng.uniform(0.01, 0.5, n_params).astype(np.float16),
                          offset=rng.normal(size=n_params).astype(np.float16), bits=bits)


def _pairs(rng: np.random.Generator, n_users: int, n_items: int, n: int) -> np.ndarray:
    return np.stack([rng.integers(0, n_users, n), rng.integers(0, n_items, n)], axis=1).astype(np.int64)


def _info(n_users: int, n_items: int, dim: int, *, method: str = "gnaq", bits: int | None = 3,
          config: dict | None = None) -> ModelInfo:
    dataset = DatasetRecord(name="toy", split="auto", test_fraction=0.2, split_label="official", fingerprint="f",
                            n_users=n_users, n_items=n_items, n_train=30, n_test=3, n_fit=27, n_valid=3)
    return ModelInfo(method=method, bits=bits, dim=dim, layers=1, seed=0, dataset=dataset,
                     metrics=Metrics(test={"recall@20": 0.25}, valid={"recall@20": 0.5}, selection_metric="recall@20"),
                     served="toy", training=TrainingRecord(epochs_run={}, selected_epoch={}, seconds=1.0,
                                                           device="cpu", torch="x"),
                     config=config or {})


def _train(rng: np.random.Generator, n_users: int, n_items: int, n: int) -> UserItems:
    return UserItems.from_pairs(_pairs(rng, n_users, n_items, n), n_users)


def _artifact(n_users: int = 7, n_items: int = 11, dim: int = 5, bits: int = 3, *,
              quantized: bool = True, arrays: dict[str, np.ndarray] | None = None) -> ModelArtifact:
    rng = np.random.default_rng(0)
    if quantized:
        user: EmbeddingTable = _table(rng, n_users, dim, bits)
        item: EmbeddingTable = _table(rng, n_items, dim, bits, per_node=False)
    else:
        user = FloatTable(rng.normal(size=(n_users, dim)).astype(np.float32))
        item = FloatTable(rng.normal(size=(n_items, dim)).astype(np.float32))
    info = _info(n_users, n_items, dim, method="gnaq" if quantized else "fp32", bits=bits if quantized else None)
    return ModelArtifact(info=info, user=user, item=item,
                         user_ids=[f"u{i}" for i in range(n_users)],
                         item_ids=[f"i{i}" for i in range(n_items)],
                         train=_train(rng, n_users, n_items, 30),
                         arrays={"item_degree": np.arange(n_items, dtype=np.int32)} if arrays is None
                         else arrays)


def _sorted_pairs(pairs: np.ndarray) -> np.ndarray:
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _assert_same_table(a: EmbeddingTable, b: EmbeddingTable) -> None:
    assert type(a) is type(b)
    if isinstance(a, QuantizedTable):
        assert isinstance(b, QuantizedTable)
        assert a.bits == b.bits
        np.testing.assert_array_equal(a.codes, b.codes)
        np.testing.assert_array_equal(a.scale, b.scale)
        np.testing.assert_array_equal(a.offset, b.offset)
        assert a.scale.dtype == b.scale.dtype == np.float16
        np.testing.assert_array_equal(a.dequantize(), b.dequantize())
    else:
        assert b.dequantize().dtype == np.float32
        np.testing.assert_array_equal(a.dequantize(), b.dequantize())


@pytest.mark.parametrize("quantized", [True, False])
def test_round_trip(tmp_path: Path, quantized: bool) -> None:
    original = _artifact(quantized=quantized)
    version_dir = write_artifact(tmp_path, original, extra_files={"history.json": b"[]"})
    loaded = read_artifact(version_dir)

    _assert_same_table(original.user, loaded.user)
    _assert_same_table(original.item, loaded.item)
    assert loaded.user_ids == original.user_ids
    assert loaded.item_ids == original.item_ids
    assert loaded.train.pairs().dtype == np.int64
    np.testing.assert_array_equal(loaded.train.pairs(), _sorted_pairs(original.train.pairs()))
    np.testing.assert_array_equal(loaded.train.indptr, original.train.indptr)
    assert set(loaded.arrays) == {"item_degree"}
    np.testing.assert_array_equal(loaded.arrays["item_degree"], original.arrays["item_degree"])
    assert loaded.arrays["item_degree"].dtype == np.int32

    manifest = loaded.manifest
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.version == version_dir.name
    assert manifest.method == original.info.method
    assert manifest.metrics.test["recall@20"] == pytest.approx(0.25)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest.created_at)
    on_disk = {p.name for p in version_dir.iterdir()} - {"manifest.json"}
    assert set(manifest.files) == on_disk
    assert "history.json" in on_disk
    expected = {"user_codes.bin", "user_params.npy"} if quantized else {"user_embeddings.npy"}
    assert expected <= on_disk
    total = sum(p.stat().st_size for p in version_dir.iterdir())
    assert manifest.sizes.artifact_bytes == total


def test_quantized_sizes_and_param_layout(tmp_path: Path) -> None:
    original = _artifact(bits=3)
    version_dir = write_artifact(tmp_path, original)
    params = np.load(version_dir / "user_params.npy")
    assert params.dtype == np.float16
    assert params.shape == (7, 2)
    assert np.load(version_dir / "item_params.npy").shape == (1, 2)
    assert (version_dir / "user_codes.bin").stat().st_size == -(-7 * 5 * 3 // 8)
    sizes = read_artifact(version_dir).manifest.sizes
    assert sizes.embedding_bytes == original.user.stored_bytes + original.item.stored_bytes
    assert sizes.fp32_embedding_bytes == (7 + 11) * 5 * 4
    assert sizes.compression_ratio == pytest.approx(sizes.fp32_embedding_bytes / sizes.embedding_bytes)


def test_compression_ratio_two_bits_per_node(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n_users, n_items, dim = 1000, 1625, 64  # N = 2625 nodes
    artifact = ModelArtifact(info=_info(n_users, n_items, dim), user=_table(rng, n_users, dim, 2),
                             item=_table(rng, n_items, dim, 2), user_ids=[str(i) for i in range(n_users)],
                             item_ids=[str(i) for i in range(n_items)], train=_train(rng, n_users, n_items, 100))
    sizes = read_artifact(write_artifact(tmp_path, artifact)).manifest.sizes
    assert sizes.embedding_bytes == 2625 * 64 * 2 // 8 + 2625 * 4
    assert sizes.compression_ratio >= 10


def test_train_interactions_use_small_dtypes(tmp_path: Path) -> None:
    version_dir = write_artifact(tmp_path, _artifact())
    with np.load(version_dir / "train_interactions.npz") as csr:
        assert csr["indptr"].dtype == np.uint8
        assert csr["indices"].dtype == np.uint8
        assert csr["indptr"].shape == (8,)


def test_publish_current_and_no_publish(tmp_path: Path) -> None:
    first = add_version(tmp_path, _artifact(), version="v1")
    assert (tmp_path / "CURRENT").read_text().strip() == "v1"
    assert resolve_version(tmp_path) == first
    second = add_version(tmp_path, _artifact(), version="v2", publish=False)
    assert resolve_version(tmp_path) == first
    assert read_current(tmp_path).version == "v1"
    assert read_artifact(second).version == "v2"
    add_version(tmp_path, _artifact(), version="v3")
    assert read_current(tmp_path).version == "v3"
    assert list_versions(tmp_path) == ["v1", "v2", "v3"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_no_current_is_an_error(tmp_path: Path) -> None:
    write_artifact(tmp_path, _artifact())
    with pytest.raises(ArtifactError, match="CURRENT"):
        read_current(tmp_path)
    with pytest.raises(ArtifactError, match="CURRENT"):
        resolve_version(tmp_path)


def test_default_versions_are_distinct_timestamps(tmp_path: Path) -> None:
    a = add_version(tmp_path, _artifact())
    b = add_version(tmp_path, _artifact())
    assert a != b
    assert re.fullmatch(r"\d{8}T\d{6}Z(-[0-9a-f]+)?", a.name)
    assert re.fullmatch(r"\d{8}T\d{6}Z(-[0-9a-f]+)?", b.name)
    assert sorted(list_versions(tmp_path)) == sorted([a.name, b.name])
    assert resolve_version(tmp_path) == b


def test_refuses_to_overwrite_a_version(tmp_path: Path) -> None:
    write_artifact(tmp_path, _artifact(), version="v1")
    with pytest.raises(ArtifactError, match="already exists"):
        write_artifact(tmp_path, _artifact(), version="v1")
    assert list_versions(tmp_path) == ["v1"]


def test_list_versions_ignores_temporaries(tmp_path: Path) -> None:
    write_artifact(tmp_path, _artifact(), version="v1")
    (tmp_path / ".tmp-v2-dead").mkdir()
    assert list_versions(tmp_path) == ["v1"]
    assert list_versions(tmp_path / "missing") == []


@pytest.mark.parametrize("name", ["user_codes.bin", "ids.json", "train_interactions.npz", "item_degree.npy"])
def test_tampered_byte_names_the_file(tmp_path: Path, name: str) -> None:
    version_dir = add_version(tmp_path, _artifact())
    path = version_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=re.escape(name)):
        read_current(tmp_path)


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    version_dir = write_artifact(tmp_path, _artifact())
    path = version_dir / "item_params.npy"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ArtifactError, match="item_params.npy.*truncated"):
        read_artifact(version_dir)


def test_files_over_many_chunks_load_exactly_and_a_flip_in_the_last_chunk_is_caught(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifact_module, "_CHUNK", 64)  # every file spans many chunks, the codes many row slices
    original = _artifact(n_users=203, bits=3, arrays={"item_degree": np.arange(5000, dtype=np.int64)})
    version_dir = write_artifact(tmp_path, original)  # 203 rows: the last slice of 8 is partial, its byte padded
    loaded = read_artifact(version_dir)
    _assert_same_table(original.user, loaded.user)
    np.testing.assert_array_equal(loaded.arrays["item_degree"], original.arrays["item_degree"])
    for name in ("user_codes.bin", "item_degree.npy"):
        path = version_dir / name
        intact = path.read_bytes()
        path.write_bytes(intact[:-1] + bytes([intact[-1] ^ 0x01]))
        with pytest.raises(ArtifactError, match=f"{re.escape(name)} is corrupt"):
            read_artifact(version_dir)
        path.write_bytes(intact)


@pytest.mark.parametrize("quantized", [True, False])
def test_reading_never_holds_a_whole_file_beside_its_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           quantized: bool) -> None:
    """Python-heap peak (numpy's buffers included) of a read, over what the loaded artifact keeps: a whole file
    read into bytes, or the codes' bit planes unpacked at once, would exceed a quarter of the biggest array."""
    monkeypatch.setattr(artifact_module, "_CHUNK", 1 << 16)
    version_dir = write_artifact(tmp_path, _artifact(n_items=4000, dim=512, bits=2, quantized=quantized))
    tracemalloc.start()
    try:
        loaded = read_artifact(version_dir)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    biggest = loaded.item.codes.nbytes if quantized else loaded.item.vectors.nbytes
    assert kept >= biggest  # the measure sees numpy's buffers
    assert peak - kept < biggest / 4, f"peak {peak:,} B while {kept:,} B are kept (biggest array {biggest:,} B)"


def test_deleted_file_names_the_file(tmp_path: Path) -> None:
    version_dir = write_artifact(tmp_path, _artifact())
    (version_dir / "user_params.npy").unlink()
    with pytest.raises(ArtifactError, match=r"user_params\.npy.*missing"):
        read_artifact(version_dir)


def test_file_dropped_from_manifest_is_detected(tmp_path: Path) -> None:
    version_dir = write_artifact(tmp_path, _artifact())
    manifest_path = version_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]["item_codes.bin"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"item_codes\.bin"):
        read_artifact(version_dir)


def test_truncated_manifest(tmp_path: Path) -> None:
    version_dir = write_artifact(tmp_path, _artifact())
    path = version_dir / "manifest.json"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ArtifactError, match=r"manifest\.json.*corrupt or truncated"):
        read_artifact(version_dir)


def test_missing_manifest(tmp_path: Path) -> None:
    version_dir = write_artifact(tmp_path, _artifact())
    (version_dir / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"manifest\.json"):
        read_artifact(version_dir)


def test_unknown_format_version(tmp_path: Path) -> None:
    version_dir = write_artifact(tmp_path, _artifact())
    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"unknown format version {FORMAT_VERSION + 1}"):
        read_artifact(version_dir)


def test_table_vectors_round_trip_and_version_1_artifacts_stay_readable(tmp_path: Path) -> None:
    original = _artifact()
    rng = np.random.default_rng(1)
    vectors = {"dim_scale": rng.uniform(0.5, 2, 5).astype(np.float16),
               "dim_center": rng.normal(size=5).astype(np.float16)}
    item = QuantizedTable(original.item.codes, original.item.scale, original.item.offset, original.item.bits, **vectors)
    centred = write_artifact(tmp_path, dataclasses.replace(original, item=item))
    loaded = read_artifact(centred)
    np.testing.assert_array_equal(loaded.item.dim_center, vectors["dim_center"])
    np.testing.assert_array_equal(loaded.item.dequantize(), item.dequantize())
    assert loaded.user.dim_center is None and "item_dim_center.npy" in loaded.manifest.files
    assert loaded.manifest.layout.item.dim_center and not loaded.manifest.layout.user.dim_center


def _assert_nothing_left(model_dir: Path) -> None:
    assert list_versions(model_dir) == []
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".tmp-")]
    assert not (model_dir / "CURRENT").exists()


def test_unsaveable_array_leaves_nothing(tmp_path: Path) -> None:
    bad = _artifact(arrays={"ok": np.zeros(3), "bad": np.array([object()], dtype=object)})
    with pytest.raises(ValueError, match="pickle"):
        write_artifact(tmp_path, bad)
    _assert_nothing_left(tmp_path)


def test_failure_while_writing_files_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = artifact_module.write_file
    calls = []

    def failing_write(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(artifact_module, "write_file", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_artifact(tmp_path, _artifact())
    _assert_nothing_left(tmp_path)


def test_failure_at_rename_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_rename(src: object, dst: object) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(artifact_module.os, "rename", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        write_artifact(tmp_path, _artifact())
    _assert_nothing_left(tmp_path)


def test_unserialisable_manifest_leaves_nothing(tmp_path: Path) -> None:
    original = _artifact()
    bad = dataclasses.replace(original, info=_info(7, 11, 5, config={"x": object()}))
    with pytest.raises(ArtifactError, match="not JSON serialisable"):
        write_artifact(tmp_path, bad)
    _assert_nothing_left(tmp_path)


def test_invalid_artifacts_are_rejected_before_writing(tmp_path: Path) -> None:
    original = _artifact()
    with pytest.raises(ValueError, match="ids"):
        dataclasses.replace(original, user_ids=original.user_ids[:-1])
    with pytest.raises(ValueError, match="item indices"):
        dataclasses.replace(original, train=UserItems.from_pairs(np.array([[0, 11]]), 7))
    with pytest.raises(ValueError, match="user indices"):
        UserItems.from_pairs(np.array([[7, 0]]), 7)
    with pytest.raises(TypeError, match="float32"):
        FloatTable(np.zeros((7, 5)))
    with pytest.raises(TypeError, match="EmbeddingTable"):
        dataclasses.replace(original, user=np.zeros((7, 5), np.float32))
    with pytest.raises(ValueError, match="reserved"):
        _artifact(arrays={"user_params": np.zeros(2)})
    with pytest.raises(ArtifactError, match="extra file"):
        write_artifact(tmp_path, original, extra_files={"ids.json": b"{}"})
    with pytest.raises(ArtifactError, match="invalid version"):
        write_artifact(tmp_path, original, version="../escape")
    _assert_nothing_left(tmp_path)


def test_quantized_table_validation() -> None:
    codes = np.zeros((3, 4), dtype=np.uint8)
    scale = np.ones(3, dtype=np.float16)
    with pytest.raises(ValueError, match="max value 4"):
        QuantizedTable(codes=codes + 4, scale=scale, offset=scale, bits=2)
    with pytest.raises(TypeError, match="float16"):
        QuantizedTable(codes=codes, scale=scale.astype(np.float32), offset=scale, bits=2)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        QuantizedTable(codes=codes, scale=np.ones(2, dtype=np.float16), offset=scale, bits=2)
    with pytest.raises(ValueError, match="bits"):
        QuantizedTable(codes=codes, scale=scale, offset=scale, bits=9)
    for name in ("dim_scale", "dim_center"):
        with pytest.raises(ValueError, match=rf"{name} must be a finite float16 array of shape \(4,\)"):
            QuantizedTable(codes=codes, scale=scale, offset=scale, bits=2, **{name: np.ones(3, dtype=np.float16)})
        with pytest.raises(ValueError, match=name):
            QuantizedTable(codes=codes, scale=scale, offset=scale, bits=2,
                           **{name: np.array([1, np.inf, 1, 1], dtype=np.float16)})


def test_dequantize_matches_formula_and_rows() -> None:
    table = _table(np.random.default_rng(3), 6, 4, 3)
    full = table.dequantize()
    assert full.dtype == np.float32
    expected = table.offset.astype(np.float32)[:, None] + table.scale.astype(np.float32)[:, None] \
        * table.codes.astype(np.float32)
    np.testing.assert_array_equal(full, expected)
    rows = np.array([4, 1])
    np.testing.assert_array_equal(table.dequantize(rows), full[rows])
    shared = _table(np.random.default_rng(3), 6, 4, 3, per_node=False)
    np.testing.assert_array_equal(shared.dequantize(rows), shared.dequantize()[rows])


def _segmented_table(rng: np.random.Generator, n: int, dim: int, segments: int) -> QuantizedTable:
    """1-bit codes with a (scale, offset) per row and segment, as BiGeaR-style per-layer codes."""
    return QuantizedTable(codes=rng.integers(0, 2, size=(n, dim), dtype=np.uint8),
                          scale=rng.uniform(0.01, 0.5, (n, segments)).astype(np.float16),
                          offset=rng.normal(size=(n, segments)).astype(np.float16), bits=1)


def test_segmented_parameters_decode_each_segment_with_its_own_pair() -> None:
    table = _segmented_table(np.random.default_rng(4), 5, 6, 3)
    assert table.segments == 3
    full = table.dequantize()
    for j in range(3):
        columns = slice(2 * j, 2 * j + 2)
        expected = table.offset.astype(np.float32)[:, j:j + 1] + table.scale.astype(np.float32)[:, j:j + 1] \
            * table.codes[:, columns].astype(np.float32)
        np.testing.assert_array_equal(full[:, columns], expected)
    rows = np.array([3, 0, 3])
    np.testing.assert_array_equal(table.dequantize(rows), full[rows])
    assert table.stored_bytes == -(-5 * 6 // 8) + 2 * 5 * 3 * 2
    with pytest.raises(ValueError, match="S dividing 6"):
        QuantizedTable(codes=table.codes, scale=np.ones((5, 4), np.float16), offset=np.ones((5, 4), np.float16), bits=1)
    with pytest.raises(ValueError, match="shapes differ"):
        QuantizedTable(codes=table.codes, scale=table.scale, offset=table.offset[:, 0].copy(), bits=1)


def test_segmented_round_trip_records_segments_only_where_used(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    model_dim, segments = 4, 3  # served rows: model_dim * segments values
    original = ModelArtifact(info=_info(7, 11, model_dim), user=_segmented_table(rng, 7, 12, segments),
                             item=_segmented_table(rng, 11, 12, segments), user_ids=[f"u{i}" for i in range(7)],
                             item_ids=[f"i{i}" for i in range(11)], train=_train(rng, 7, 11, 20))
    version_dir = write_artifact(tmp_path, original)
    assert np.load(version_dir / "user_params.npy").shape == (7, 2, segments)
    loaded = read_artifact(version_dir)
    _assert_same_table(original.user, loaded.user)
    _assert_same_table(original.item, loaded.item)
    assert loaded.manifest.layout.user.segments == segments
    # Compared with an fp32 model of the trainer's dimension, not with fp32 rows as wide as the served ones.
    assert loaded.manifest.sizes.fp32_embedding_bytes == (7 + 11) * model_dim * 4
    plain = read_artifact(write_artifact(tmp_path, _artifact())).manifest.layout
    assert plain.user.segments == plain.item.segments == 1
