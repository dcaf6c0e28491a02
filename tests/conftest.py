"""Shared fixtures: one small GNAQ model trained through the real CLI on the embedded MovieLens-100K."""

import pytest

from training.cli import main

FAST = ["--dataset", "ml-100k", "--dim", "16", "--layers", "2", "--epochs", "2", "--qat-epochs", "2",
        "--eval-every", "1", "--patience", "1", "--no-progress"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Model dir holding one published GNAQ 2-bit version (a few epochs: fast, not accurate)."""
    model_dir = tmp_path_factory.mktemp("models")
    assert main(["train", *FAST, "--method", "gnaq", "--bits", "2", "--model-dir", str(model_dir)]) == 0
    return model_dir
