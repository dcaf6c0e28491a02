"""End to end through the ``gnaq`` CLI on the embedded MovieLens-100K (few epochs, real files)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from cli.main import main
from contracts.manifest import FORMAT_VERSION
from contracts.versions import read_current
from service.engine.index import CodeIndex
from tests.conftest import FAST, as_format_2
from training.pipeline import evaluate_artifact


def test_train_publishes_a_complete_artifact(trained, capsys):
    version = (trained / "CURRENT").read_text().strip()
    artifact = read_current(trained / version)
    manifest = artifact.manifest
    assert manifest.method == "gnaq" and manifest.bits == 2 and manifest.dim == 16
    assert set(manifest.metrics.test) == {"recall@10", "ndcg@10", "recall@20", "ndcg@20"}
    assert manifest.dataset.split_label == "random-80/20 seed=0" and manifest.seed == 0
    assert manifest.sizes.compression_ratio > 5  # d=16: 4 B codes + 4 B params vs 64 B
    assert artifact.item.bits == 2 and artifact.item.codes.shape == (1682, 16)
    assert (trained / version / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(artifact.train) == 80000 and len(artifact.user_ids) == 943


def test_the_default_recipe_records_what_it_derived_and_chose(trained):
    manifest = read_current(trained).manifest
    choices, config = manifest.training.choices, manifest.config
    assert choices["derived"] == {"bpr.batch_size": 2048, "fp32.lr": 0.005, "qat.lr": 0.02, "distill.users": 1024}
    variant = choices["gnaq_variant"]
    assert len(variant["trials"]) == 4 and set(variant["chosen"]) == {"center", "track_stats", "relative_refinement"}
    best = max(trial["recall@20"] for trial in variant["trials"])
    assert {**variant["chosen"], "recall@20": best, "epochs": 1} in [
        {key: value for key, value in trial.items() if key != "seconds"} for trial in variant["trials"]]
    assert all(config["gnaq"][key] == value for key, value in variant["chosen"].items())  # what ran
    assert set(manifest.metrics.warm_start_test) == set(manifest.metrics.test)
    ratio, test, fp32 = manifest.metrics.warm_start_ratio, manifest.metrics.test, manifest.metrics.warm_start_test
    assert ratio.metric == "recall@20" and ratio.users == 943 and ratio.confidence == 0.95 and ratio.resamples == 1000
    assert ratio.ratio == pytest.approx(test["recall@20"] / fp32["recall@20"]) and ratio.low < ratio.ratio < ratio.high


def test_evaluate_reproduces_the_recorded_metrics(trained, capsys):
    assert main(["evaluate", str(trained)]) == 0
    out = capsys.readouterr().out
    assert "recall@20" in out and "recorded" in out


def test_evaluate_refuses_a_corrupt_artifact(trained, capsys, tmp_path):
    version = (trained / "CURRENT").read_text().strip()
    copy = tmp_path / version
    subprocess.run(["cp", "-r", str(trained / version), str(copy)], check=True)
    codes = copy / "item_codes.bin"
    data = bytearray(codes.read_bytes())
    data[10] ^= 0xFF
    codes.write_bytes(bytes(data))
    assert main(["evaluate", str(copy)]) == 2
    assert "item_codes.bin" in capsys.readouterr().err


def test_no_publish_and_fp32_warm_start_reuse(trained, capsys):
    before = (trained / "CURRENT").read_text()
    assert main(["train", *FAST, "--method", "ptq", "--bits", "2", "--model-dir", str(trained),
                 "--no-publish", "--version", "ptq-test"]) == 0
    assert (trained / "CURRENT").read_text() == before
    manifest = json.loads((trained / "ptq-test" / "manifest.json").read_text())
    assert manifest["quantizer"]["class"] == "UniformQuantizer" and "not published" in capsys.readouterr().out
    assert len(list((trained / ".cache").glob("fp32-*.pt"))) == 1


def test_config_file_and_flag_override(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('method = "fp32"\nbits = 9\n')
    assert main(["train", "--config", str(config), "--model-dir", str(tmp_path)]) == 2
    assert "bits" in capsys.readouterr().err
    config.write_text('method = "fp32"\ndatset = "typo"\n')
    assert main(["train", "--config", str(config), "--model-dir", str(tmp_path)]) == 2
    assert "datset" in capsys.readouterr().err


def test_bad_dataset_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,timestamp\nu1,i1,now\n")
    assert main(["train", "--dataset", str(bad), "--model-dir", str(tmp_path)]) == 2
    assert f"{bad}:2: timestamp 'now'" in capsys.readouterr().err
    assert not any(p.name != "bad.csv" for p in tmp_path.iterdir() if not p.name.startswith("."))


def test_console_script_and_data_stats():
    out = subprocess.run([sys.executable, "-m", "cli", "data", "stats", "ml-100k"],
                         capture_output=True, text=True, check=True).stdout
    stats = json.loads(out)
    assert stats["users"] == 943 and stats["interactions"] == 100000


def test_a_run_with_every_recipe_option_serves_exactly_what_it_was_tested_on(tmp_path):
    assert main(["train", *FAST, "--method", "gnaq", "--bits", "2", "--center", "--distill-unseen",
                 "--qat-ema", "0.9", "--theta-lr-scale", "0.1", "--no-track-stats", "--relative-refinement",
                 "--model-dir", str(tmp_path), "--version", "v1"]) == 0
    artifact = read_current(tmp_path / "v1")
    manifest = artifact.manifest
    quantizer = manifest.quantizer.model_dump()
    assert quantizer["center"] is True and quantizer["track_stats"] is False and quantizer["relative"] is True
    assert manifest.config["qat"]["ema"] == 0.9 and manifest.config["gnaq"]["theta_lr_scale"] == 0.1
    assert artifact.user.dim_center is not None and artifact.item.dim_center is not None
    assert evaluate_artifact(artifact) == manifest.metrics.test  # the stored centres are the tested ones
    query = artifact.user.dequantize(np.array([0]))[0]
    np.testing.assert_allclose(CodeIndex(artifact.item).scores(query), artifact.item.dequantize() @ query,
                               rtol=1e-5, atol=1e-5)


def test_a_format_2_artifact_still_evaluates_and_retrains(model_dir, redis_url, monkeypatch, capsys):
    """Versions written before the typed manifest (format 2) are read, evaluated and retrained from."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    current = model_dir / (model_dir / "CURRENT").read_text().strip()
    path = current / "manifest.json"
    path.write_text(json.dumps(as_format_2(json.loads(path.read_text()))))
    old = read_current(model_dir)
    assert old.manifest.format_version == 2 and old.manifest.dataset.split_label == "random-80/20 seed=0"
    assert main(["evaluate", str(model_dir)]) == 0
    assert main(["retrain", "--force", "--tolerance", "1", "--model-dir", str(model_dir), "--epochs", "1",
                 "--qat-epochs", "1", "--no-progress"]) == 0
    new = read_current(model_dir).manifest
    assert new.format_version == FORMAT_VERSION and new.version != old.version
    assert new.config["gnaq"]["clip"] == old.manifest.config["clip"] and new.method == old.manifest.method
    assert new.config["fp32"]["epochs"] == 1 and new.config["bpr"]["batch_size"] == old.manifest.config["batch_size"]
    assert main(["evaluate", str(model_dir)]) == 0


def test_data_that_cannot_train_well_is_refused_before_training_with_what_to_do(tmp_path, capsys):
    headerless_times = tmp_path / "visits.csv"
    headerless_times.write_text("user,timestamp\n" + "".join(f"u{k % 9},{1_700_000_000 + k}\n" for k in range(50)))
    assert main(["train", "--dataset", str(headerless_times), "--model-dir", str(tmp_path / "m")]) == 2
    assert f"{headerless_times}:1: the header names no item column" in capsys.readouterr().err
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("user,item\na,x\na,y\nb,y\nb,z\na,z\n")
    assert main(["train", "--dataset", str(tiny), "--model-dir", str(tmp_path / "m")]) == 2
    assert "has 3 items, fewer than the largest cut-off K = 20" in capsys.readouterr().err
    assert main(["train", "--dataset", str(tiny), "--ks", "1", "--model-dir", str(tmp_path / "m")]) == 2
    assert "too small to carve a validation split" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() or not list((tmp_path / "m").glob("2*"))


def test_data_stats_reads_columns_from_flags(tmp_path, capsys):
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n1,10,4,100\n1,11,2,101\n2,10,5,99\n")
    assert main(["data", "stats", str(ratings), "--min-rating", "3"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["interactions"] == 2 and stats["warnings"] == {"below_min_rating": 1}
