"""The validation-against-test diagnostic: test scored on every validated state, and nothing of it in the run."""

import json

import pytest
from val_test_gap import main as val_test_gap_main

from cli.main import main
from contracts.versions import read_current
from tests.conftest import FAST

FLAGS = [*FAST, "--qat-epochs", "4", "--patience", "5", "--method", "gnaq", "--bits", "2", "--no-publish"]


def test_every_validated_state_is_tested_and_the_run_is_the_plain_commands(tmp_path, capsys):
    flags = [*FLAGS, "--model-dir", str(tmp_path)]  # one model dir: both runs share the fp32 warm start
    assert val_test_gap_main([*flags, "--version", "gap"]) == 0
    assert "(* kept)" in capsys.readouterr().out
    assert main(["train", *flags, "--version", "plain"]) == 0
    gap, plain = read_current(tmp_path / "gap").manifest, read_current(tmp_path / "plain").manifest
    assert gap.metrics == plain.metrics and gap.training.selected_epoch == plain.training.selected_epoch
    history = json.loads((tmp_path / "gap" / "history_with_test.json").read_text())
    quantized = [r for r in history if r["stage"] == "gnaq-2bit" and r["valid"]]
    assert len(quantized) == 5 and all("test_recall@20" in r["valid"] for r in quantized)  # epochs 0-4
    (kept,) = [r for r in quantized if r["kept"]]
    assert kept["valid"]["test_recall@20"] == pytest.approx(gap.metrics.test["recall@20"], abs=1e-9)
