"""The paired interval of a version's test ratio: the figures gnaq train recorded, and refusals that say why."""

import sys
from pathlib import Path

import pytest

from contracts.artifact import read_artifact
from contracts.versions import resolve_version
from training.quality_gate import ratio_interval

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from ratio_interval import main as ratio_interval_main  # noqa: E402
from ratio_interval import paired_test_scores  # noqa: E402


def test_the_paired_scores_reproduce_the_manifest_and_the_interval_holds_the_ratio(trained, tmp_path):
    metrics = read_artifact(resolve_version(trained)).manifest.metrics
    # A model dir (its CURRENT version); where named data lies now is not part of the warm start's key.
    model, fp32 = paired_test_scores(trained, "recall@20", data_dir=str(tmp_path))
    assert model.shape == fp32.shape and len(model) > 900
    assert model.mean() == pytest.approx(metrics.test["recall@20"], abs=1e-9)
    assert fp32.mean() == pytest.approx(metrics.warm_start_test["recall@20"], abs=1e-9)
    assert ratio_interval(model, fp32, "recall@20") == metrics.warm_start_ratio  # what gnaq train recorded


def test_a_version_without_its_warm_start_or_with_an_unknown_metric_is_refused(trained, model_dir):
    version = resolve_version(model_dir)  # the copy leaves .cache behind
    with pytest.raises(SystemExit, match="warm start of .* is needed"):
        paired_test_scores(version, "recall@20")
    with pytest.raises(SystemExit, match="not one of this version's cut-offs: recall@10"):
        paired_test_scores(resolve_version(trained), "recall@50")


def test_the_command_names_a_path_that_is_not_a_version(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ratio_interval.py", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="nowhere: .* does not exist or is not a directory"):
        ratio_interval_main()
