"""The synthetic catalogue-scale artifact is a real one: the service loads it unchanged with either index."""

import sys
from pathlib import Path

import numpy as np
import pytest

from contracts.artifact import ArtifactError, read_artifact
from contracts.versions import add_version
from service.engine.model import ServedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from synth import synthetic_artifact  # noqa: E402


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("synthetic")
    return add_version(model_dir, synthetic_artifact(300, 2000, dim=64, bits=2, per_user=5), version="s1")


def test_the_service_loads_a_synthetic_artifact_with_both_indexes_and_they_agree(synthetic):
    artifact = read_artifact(synthetic)
    assert artifact.item.dim_center is not None and artifact.item.scale.shape == (2000,)
    spread = artifact.item.scale.astype(np.float64)
    assert spread.max() / spread.min() > 3  # per-node scales spread with degree, as trained ones do
    codes, flat = ServedModel.load(synthetic, "codes"), ServedModel.load(synthetic, "float")
    assert (codes.index.kind, flat.index.kind) == ("codes", "float")
    for row in range(0, 300, 37):
        vector, seen = codes.user_vector(row), codes.trained_items(row)
        rows_c, scores_c = codes.index.search(vector, 10, seen)
        rows_f, scores_f = flat.index.search(vector, 10, seen)
        np.testing.assert_allclose(scores_c, scores_f, rtol=1e-5, atol=1e-6)  # the same ranking, ties aside
        assert not set(rows_c.tolist()) & set(seen.tolist()) and len(rows_f) == 10


def test_a_malformed_synthetic_artifact_is_refused_at_load(synthetic, tmp_path):
    broken = tmp_path / "s1"
    broken.mkdir()
    for path in synthetic.iterdir():
        data = path.read_bytes()
        (broken / path.name).write_bytes(data[:-1] if path.name == "item_params.npy" else data)
    with pytest.raises(ArtifactError, match="item_params.npy is truncated or altered"):
        ServedModel.load(broken, "codes")
