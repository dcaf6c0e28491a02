"""Shared fixtures: one small GNAQ model trained through the real CLI on the embedded MovieLens-100K.

``bench/`` is put on the import path: its ``harness`` (private redis-server, ``gnaq serve``, fault proxy) is
what the fault tests and the fault benchmarks both use.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest
import redis

from cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

FAST = ["--dataset", "ml-100k", "--dim", "16", "--layers", "2", "--epochs", "2", "--qat-epochs", "2",
        "--eval-every", "1", "--patience", "1", "--select-epochs", "1", "--no-progress"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Model dir holding one published GNAQ 2-bit version (a few epochs: fast, not accurate)."""
    model_dir = tmp_path_factory.mktemp("models")
    assert main(["train", *FAST, "--method", "gnaq", "--bits", "2", "--model-dir", str(model_dir)]) == 0
    return model_dir


@pytest.fixture
def model_dir(trained, tmp_path):
    """A private copy of the trained model dir, so a test may publish or corrupt versions."""
    copy = tmp_path / "models"
    shutil.copytree(trained, copy, ignore=shutil.ignore_patterns(".cache"))
    return copy


@pytest.fixture
def redis_url():
    """The real Redis of this machine (``REDIS_URL``, a test database), emptied before each test."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.ConnectionError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis at {url}: {error}")
    yield url
    client.flushdb()
    client.close()


def flat_config(config: dict) -> dict:
    """A nested ``TrainConfig`` dump in the flat form of releases before the sections (``qat_lr``, ``clip``);
    settings added since (``distill.candidates``, ``qat.select_window``) are left out, as those releases never wrote
    them."""
    out = {k: v for k, v in config.items() if not isinstance(v, dict)}
    out.update(config["bpr"])
    out.update({k: v for k, v in config["fp32"].items() if k != "ema"})
    out.update({f"qat_{k}": v for k, v in config["qat"].items() if k not in ("patience", "select_window")})
    out.update(config["gnaq"])
    out.update(distill=config["distill"]["weight"],
               **{f"distill_{k}": v for k, v in config["distill"].items() if k not in ("weight", "candidates")})
    out.update(ptq_granularity=config["ptq"]["granularity"], bigear_gamma=config["bigear"]["gamma"])
    return out


def as_format_2(manifest: dict) -> dict:
    """A format 3 ``manifest.json`` as a format 2 writer wrote it: a flat config repeating the data settings."""
    dataset = dict(manifest["dataset"])
    config = flat_config({**manifest["config"], "dataset": dataset["name"], "data_dir": dataset.pop("data_dir"),
                          "split": dataset.pop("split"), "test_fraction": dataset["test_fraction"],
                          "method": manifest["method"], "bits": manifest["bits"] or 2, "dim": manifest["dim"],
                          "layers": manifest["layers"], "seed": manifest["seed"], "model_dir": None,
                          "publish": True, "version": None, "progress": False})
    dataset.update(split=dataset.pop("split_label"), seed=manifest["seed"], valid_fraction=config["valid_fraction"])
    layout = {side: {k: v for k, v in entry.items() if (k, v) not in (("dim_center", False), ("segments", 1))}
              if side != "arrays" else entry for side, entry in manifest["layout"].items()}
    return {**manifest, "format_version": 2, "dataset": dataset, "config": config, "layout": layout}
