"""Time to the best validation, read from what gnaq train recorded: the race's losers count, fp32 has no stage."""

import json

import pytest
from time_to_best import main as time_to_best_main
from time_to_best import stage_summary

from contracts.artifact import read_manifest
from contracts.versions import version_dir


def test_the_seconds_to_the_best_count_the_race_and_the_winners_epochs_up_to_it(trained, capsys):
    version = version_dir(trained)
    history = [r for r in json.loads((version / "history.json").read_text()) if r["stage"] == "gnaq-2bit"]
    variant = read_manifest(version).training.choices["gnaq_variant"]
    winner = next(t for t in variant["trials"] if all(t[key] == value for key, value in variant["chosen"].items()))
    summary = stage_summary(version, within=0.0)
    epoch, seconds, score = summary["best"]
    assert score == max(r["valid"]["recall@20"] for r in history if r["valid"] and r["epoch"] > 0)
    assert summary["race"] == pytest.approx(sum(t["seconds"] for t in variant["trials"]) - winner["seconds"])
    assert summary["race"] > 0  # the FAST flags race the four variants
    assert seconds == pytest.approx(summary["race"] + sum(r["seconds"] for r in history if r["epoch"] <= epoch))
    assert summary["close"][2] == score and summary["close"][0] <= epoch  # within 0: the first to score the best
    assert time_to_best_main([str(version)]) == 0
    assert f"{score:.4f} ({epoch})" in capsys.readouterr().out


def test_a_missing_version_is_refused_with_its_path(tmp_path, capsys):
    with pytest.raises(SystemExit):
        time_to_best_main([str(tmp_path / "missing")])
    assert "does not exist" in capsys.readouterr().err


def test_a_stage_without_a_validated_epoch_is_refused(model_dir, capsys):
    version = version_dir(model_dir)
    history = json.loads((version / "history.json").read_text())
    for record in history:
        if record["stage"] != "fp32" and record["epoch"] > 0:
            record["valid"] = {}
    (version / "history.json").write_text(json.dumps(history))
    with pytest.raises(SystemExit):
        time_to_best_main([str(version)])
    assert "no quantization-aware epoch was validated" in capsys.readouterr().err
