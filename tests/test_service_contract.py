"""The OpenAPI contract, checked by schemathesis against a real ``gnaq serve`` with a real Redis.

``schemathesis run --checks all``: every status, content type, header and body (problem+json included) must
be what /openapi.json documents, invalid input must be refused and valid input accepted. Bounded: a fixed
number of cases per operation and a fixed seed; once with the API key and once without.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from harness import KEY, serving

CONFIG = Path(__file__).with_name("schemathesis.toml")
CASES_PER_OPERATION = 30


@pytest.fixture(scope="module")
def service(trained):
    """One server for both runs, on the tests' Redis database (emptied before and after)."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    redis.Redis.from_url(url).flushdb()
    with serving(trained, {"REDIS_URL": url, "GNAQ_MAX_BATCH": "50"}) as service:
        yield service
    redis.Redis.from_url(url).flushdb()


@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_schemathesis_finds_nothing(service, with_key):
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
               f"{service.url}/openapi.json", "--checks", "all", "--max-examples", str(CASES_PER_OPERATION),
               "--seed", "17", "--no-color", "--workers", "1"]
    if with_key:
        command += ["--header", f"X-API-Key: {KEY}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    summary = re.search(r"(\d+) generated", run.stdout)
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-6000:]
    assert summary and int(summary.group(1)) >= 150, "schemathesis ran too few cases"
