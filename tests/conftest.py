"""Shared fixtures: one small GNAQ model trained through the real CLI on the embedded MovieLens-100K."""

import os
import shutil

import pytest
import redis

from training.cli import main

FAST = ["--dataset", "ml-100k", "--dim", "16", "--layers", "2", "--epochs", "2", "--qat-epochs", "2",
        "--eval-every", "1", "--patience", "1", "--no-progress"]


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
