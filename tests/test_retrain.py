"""``gnaq retrain`` and ``gnaq rollback`` end to end: the service logs, the job consumes, gates, publishes."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import redis
from fastapi.testclient import TestClient

from cli.main import main
from contracts.interaction_log import RETRAIN_GROUP, SQLITE_INSERT, STREAM, Interaction, first_of_each_event
from contracts.versions import add_version, list_versions, prune, read_current, resolve_version
from service.core.config import Settings
from service.main import create_app
from training.log_reader import SqliteInteractionLog
from training.retrain import retrain_lock

KEY = "retrain-key"
QUICK = ["--epochs", "2", "--qat-epochs", "2", "--eval-every", "1", "--patience", "1", "--no-progress"]


def _post(client, pairs, key=None):
    reply = client.post("/interactions", headers={"X-API-Key": KEY, **({"Idempotency-Key": key} if key else {})},
                        json=[{"user_id": u, "item_id": i} for u, i in pairs])
    assert reply.status_code == 200, reply.text
    return reply


def _pending(url):
    return redis.Redis.from_url(url).xpending(STREAM, RETRAIN_GROUP)["pending"]


@pytest.fixture
def service(model_dir, redis_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)  # what `gnaq retrain` reads, like the cron job's environment
    settings = Settings(model_dir=model_dir, redis_url=redis_url, api_keys=[KEY], reload_poll_seconds=0.1,
                        idempotency_ttl_seconds=1)
    with TestClient(create_app(settings)) as client:
        yield client


def test_retrain_consumes_the_log_publishes_and_the_service_reloads(service, model_dir, redis_url, capsys):
    artifact = read_current(model_dir)
    old = artifact.version
    batch = [("night-user", artifact.item_ids[0]), ("night-user", artifact.item_ids[1]),
             (artifact.user_ids[0], artifact.item_ids[2])]
    _post(service, batch, key="nightly-1")
    time.sleep(1.1)  # the service forgets the key (TTL 1 s): a late retry is logged again, with the same event ids
    assert "Idempotent-Replayed" not in _post(service, batch, key="nightly-1").headers
    assert redis.Redis.from_url(redis_url).xlen(STREAM) == 6
    assert main(["retrain", "--model-dir", str(model_dir), "--tolerance", "0.5", *QUICK]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("retrain: published") and "3 logged interactions (3 distinct pairs, 3 new)" in summary
    assert summary.endswith("; 3 repeated events dropped")
    new = resolve_version(model_dir).name
    assert main(["evaluate", str(model_dir)]) == 0  # a retrained model's recorded test metrics reproduce
    assert "(recorded" in capsys.readouterr().out
    assert new != old and "night-user" in read_current(model_dir).user_ids
    assert redis.Redis.from_url(redis_url).xlen(STREAM) == 0  # acknowledged and deleted
    deadline = time.monotonic() + 10
    while service.get("/readyz").json()["model_version"] != new:
        assert time.monotonic() < deadline, "the service did not pick up the new version"
        time.sleep(0.05)
    assert service.get("/recommend/night-user").json()["model_version"] == new

    assert main(["retrain", "--model-dir", str(model_dir), *QUICK]) == 0  # nothing new: skipped
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(
        "retrain: skipped; 0 logged interactions (0 distinct pairs, 0 new); ")
    assert main(["rollback", "--model-dir", str(model_dir)]) == 0
    assert resolve_version(model_dir).name == old
    assert main(["rollback", "--model-dir", str(model_dir)]) == 2  # walks back, never forward again
    assert "nothing to roll back to" in capsys.readouterr().err and resolve_version(model_dir).name == old
    assert main(["rollback", "nope", "--model-dir", str(model_dir)]) == 2


def test_a_worse_model_is_refused_and_nothing_is_consumed(service, model_dir, redis_url, capsys):
    artifact = read_current(model_dir)
    old, versions = resolve_version(model_dir).name, list_versions(model_dir)
    _post(service, [(artifact.user_ids[1], artifact.item_ids[3])])
    # A learning rate of 1e-9 leaves the embeddings at their random start: far below the current model.
    assert main(["retrain", "--model-dir", str(model_dir), "--lr", "1e-9", "--qat-lr", "1e-9", *QUICK]) == 3
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("retrain: refused") and "quality gate" in summary and "clearly below" in summary
    assert resolve_version(model_dir).name == old
    (refused,) = set(list_versions(model_dir)) - set(versions)  # the refused candidate, kept for inspection
    assert main(["versions", "--model-dir", str(model_dir)]) == 0
    listing = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[2:]}
    assert listing[refused] == "refused" and listing[old] == "current"
    assert _pending(redis_url) == 1
    assert main(["rollback", "--model-dir", str(model_dir)]) == 2  # the refused candidate was never published
    assert resolve_version(model_dir).name == old


def test_a_killed_run_leaves_current_and_the_pending_log_intact(service, model_dir, redis_url):
    artifact = read_current(model_dir)
    old, versions = resolve_version(model_dir).name, list_versions(model_dir)
    _post(service, [(artifact.user_ids[2], artifact.item_ids[4]), ("killed-user", artifact.item_ids[5])])
    job = subprocess.Popen([sys.executable, "-m", "cli", "retrain", "--model-dir", str(model_dir),
                            "--epochs", "400", "--eval-every", "1", "--no-progress"],
                           env={**os.environ, "REDIS_URL": redis_url}, stderr=subprocess.PIPE, text=True)
    for line in job.stderr:  # kill it once it is training
        if "epoch" in line:
            break
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert resolve_version(model_dir).name == old and list_versions(model_dir) == versions
    read_current(model_dir)  # the published artifact still verifies
    assert _pending(redis_url) == 2  # claimed by the dead run, never acknowledged
    assert main(["retrain", "--model-dir", str(model_dir), "--tolerance", "0.5", *QUICK]) == 0
    assert "killed-user" in read_current(model_dir).user_ids and _pending(redis_url) == 0


def test_two_runs_never_overlap(model_dir, capsys):
    with retrain_lock(model_dir, wait=False):
        assert main(["retrain", "--model-dir", str(model_dir), *QUICK]) == 4
    assert "another retrain holds" in capsys.readouterr().out


def test_an_embedded_log_from_before_event_ids_is_read_and_deduplicated(tmp_path):
    path = tmp_path / "interactions.sqlite3"
    with sqlite3.connect(path) as db:  # the table as releases before event ids wrote it
        db.execute("CREATE TABLE interactions (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, "
                   "item_id TEXT NOT NULL, timestamp REAL NOT NULL, received_at REAL NOT NULL)")
        db.execute("INSERT INTO interactions (user_id, item_id, timestamp, received_at) VALUES ('u', 'a', 0, 0)")
    log = SqliteInteractionLog(path)
    log._db.executemany(SQLITE_INSERT, [Interaction("u", "b", 1, 1, "k#0").sqlite_row(),
                                        Interaction("u", "b", 1, 2, "k#0").sqlite_row()])
    pending = log.pending()
    assert [(e.item_id, e.interaction.event_id) for e in pending] == [("a", ""), ("b", "k#0"), ("b", "k#0")]
    assert [e.log_id for e in first_of_each_event(pending)] == [pending[0].log_id, pending[1].log_id]


def test_embedded_log_is_consumed_through_a_cursor(tmp_path):
    path = tmp_path / "interactions.sqlite3"
    log = SqliteInteractionLog(path)
    log._db.executemany("INSERT INTO interactions (user_id, item_id, timestamp, received_at) VALUES (?, ?, 0, 0)",
                        [("u", "a"), ("u", "b"), ("v", "a")])
    first = log.pending()
    assert [(e.user_id, e.item_id) for e in first] == [("u", "a"), ("u", "b"), ("v", "a")]
    log.ack(first[:2])
    assert [(e.user_id, e.item_id) for e in SqliteInteractionLog(path).pending()] == [("v", "a")]


def test_prune_keeps_current_and_recently_published(model_dir):
    artifact = read_current(model_dir)
    for name in ("a1", "a2", "a3", "a4"):
        add_version(model_dir, artifact, version=name, publish=name in ("a2", "a3"))
    before = set(list_versions(model_dir))
    deleted = prune(model_dir, keep=2)
    assert resolve_version(model_dir).name == "a3" and {"a2", "a3"} <= set(list_versions(model_dir))
    assert set(deleted) == before - {"a2", "a3"} and len(list_versions(model_dir)) == 2
