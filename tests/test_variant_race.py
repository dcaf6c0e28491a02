"""The default recipe's race of GNAQ variants: halving on validation, and a winner that trains on as it would alone."""

import json

import numpy as np

from cli.main import main
from contracts.versions import read_current
from tests.conftest import FAST
from training.pipeline import _race_rounds


def test_rounds_halve_the_candidates_to_one_and_end_at_the_trial_epochs():
    assert _race_rounds(4, 3) == [1, 3]
    assert _race_rounds(3, 2) == [1, 2]
    assert _race_rounds(2, 3) == [3]
    assert _race_rounds(1, 3) == []


def test_the_winner_trains_on_as_it_would_alone_and_the_first_round_losers_stop_after_one_epoch(tmp_path):
    flags = [*FAST, "--qat-epochs", "4", "--select-epochs", "2", "--patience", "5", "--method", "gnaq", "--bits", "2",
             "--model-dir", str(tmp_path)]  # one model dir: both runs share the fp32 warm start
    assert main(["train", *flags, "--version", "raced"]) == 0
    raced = read_current(tmp_path / "raced")
    variant = raced.manifest.training.choices["gnaq_variant"]
    assert sorted(trial["epochs"] for trial in variant["trials"]) == [1, 1, 2, 2]
    finalists = [trial for trial in variant["trials"] if trial["epochs"] == 2]
    winner = max(finalists, key=lambda trial: trial["recall@20"])  # the earlier candidate on ties, as the race
    assert all(winner[key] == value for key, value in variant["chosen"].items())
    assert raced.manifest.training.epochs_run["gnaq-2bit"] == 4  # the race's 2 epochs, then 2 more
    history = json.loads((tmp_path / "raced" / "history.json").read_text())
    kept = {r["stage"]: r["epoch"] for r in history if r["kept"]}  # one state kept per stage, the selected epoch
    assert kept == raced.manifest.training.selected_epoch
    assert raced.manifest.config["qat"]["select_window"] == 3  # the default recipe's window, recorded
    pinned = [f"--{'' if value else 'no-'}{key.replace('_', '-')}" for key, value in variant["chosen"].items()]
    assert main(["train", *flags, *pinned, "--version", "alone"]) == 0
    alone = read_current(tmp_path / "alone")
    assert alone.manifest.training.choices.get("gnaq_variant", {}).get("trials") in (None, [])
    assert alone.manifest.metrics == raced.manifest.metrics
    np.testing.assert_array_equal(alone.item.codes, raced.item.codes)
    np.testing.assert_array_equal(alone.user.scale, raced.user.scale)
