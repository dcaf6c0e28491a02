"""Operations: what `gnaq retrain` refuses, what it leaves on disk, and how `gnaq serve` stops."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from harness import free_port

from cli.main import main
from contracts.versions import list_versions, read_current
from model.foldin import FoldIn
from training import retrain as retrain_module
from training.config import TrainConfig
from training.pipeline import warm_start_name
from training.warm_starts import reusable_warm_starts

QUICK = ["--epochs", "1", "--qat-epochs", "1", "--eval-every", "1", "--patience", "1", "--no-progress"]


@pytest.mark.parametrize("flags, named", [
    (["--dataset", "gowalla"], "--dataset"),
    (["--split", "temporal"], "--split"),
    (["--test-fraction", "0.3"], "--test-fraction"),
    (["--valid-fraction", "0.2"], "--valid-fraction"),
    (["--no-publish"], "--no-publish"),
    (["--publish"], "--publish"),
    (["--user-col", "who"], "--user-col"),
    (["--item-col", "what"], "--item-col"),
    (["--time-col", "when"], "--time-col"),
    (["--rating-col", "stars"], "--rating-col"),
    (["--min-rating", "4"], "--min-rating"),
])
def test_retrain_refuses_train_flags_it_cannot_honour(model_dir, flags, named, capsys, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    before = list_versions(model_dir)
    assert main(["retrain", "--force", "--model-dir", str(model_dir), *flags]) == 2
    err = capsys.readouterr().err
    assert f"gnaq retrain cannot honour {named}: " in err
    assert ("quality gate decides" if "publish" in named else "current model's") in err
    assert list_versions(model_dir) == before  # refused before anything ran


def test_retrain_names_every_refused_flag_and_says_columns_come_from_the_manifest(model_dir, capsys, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["retrain", "--model-dir", str(model_dir), "--dataset", "x.csv", "--user-col", "who"]) == 2
    err = capsys.readouterr().err
    assert "cannot honour --user-col, --dataset:" in err
    assert "CSV columns recorded in the current model's manifest" in err


def test_retrain_honours_version_and_the_training_settings(model_dir, capsys, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    code = main(["retrain", "--force", "--tolerance", "1", "--model-dir", str(model_dir), "--version", "nightly-1",
                 *QUICK])
    assert code == 0, capsys.readouterr()
    assert (model_dir / "CURRENT").read_text().strip() == "nightly-1"
    recorded = read_current(model_dir).manifest.config
    assert recorded["fp32"]["epochs"] == 1 and recorded["qat"]["epochs"] == 1


def test_repeated_retrains_leave_a_bounded_warm_start_cache(model_dir, capsys, monkeypatch):
    """Each run trains its fp32 stage with another learning rate, so each writes a new warm start."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    cache = model_dir / ".cache"
    for night, lr in enumerate((0.011, 0.012, 0.013, 0.014)):
        code = main(["retrain", "--force", "--tolerance", "1", "--keep", "1", "--model-dir", str(model_dir),
                     "--lr", str(lr), *QUICK])
        assert code == 0, capsys.readouterr()
        warm = sorted(p.name for p in cache.glob("fp32-*"))
        # the current version's warm start and, at most, the one of each other version still on disk
        assert len(warm) <= len(list_versions(model_dir)) <= 2, (night, warm, list_versions(model_dir))
        assert set(warm) == reusable_warm_starts(model_dir) & set(warm)
    current = read_current(model_dir).manifest
    assert warm_start_name(current.dataset.fingerprint, TrainConfig.from_manifest(current)) in warm
    assert "unused fp32 warm start(s) removed" in capsys.readouterr().out


def test_retrain_refuses_to_start_without_room_for_a_new_version(model_dir, capsys, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(retrain_module, "free_bytes", lambda path: 1000)
    before = list_versions(model_dir)
    assert main(["retrain", "--force", "--model-dir", str(model_dir), *QUICK]) == retrain_module.EXIT_NO_SPACE == 5
    err = capsys.readouterr().err
    assert "retrain not started" in err and "0.0 MB free" in err and "a new version needs about" in err
    assert list_versions(model_dir) == before
    # with room enough it runs
    monkeypatch.setattr(retrain_module, "free_bytes", lambda path: 10**12)
    assert main(["retrain", "--force", "--tolerance", "1", "--model-dir", str(model_dir), *QUICK]) == 0


def test_foldin_falls_back_to_the_training_clip(model_dir):
    artifact = read_current(model_dir)
    unrecorded = artifact.info.quantizer.model_copy(update={"clip": None})  # a manifest that does not record it
    artifact = dataclasses.replace(artifact, info=artifact.info.model_copy(update={"quantizer": unrecorded}))
    assert artifact.foldin().clip == TrainConfig().gnaq.clip == FoldIn.clip


def test_serve_exits_0_after_a_graceful_drain_on_sigterm(model_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port), "--model-dir",
                                str(model_dir), "--log-level", "info"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gnaq serve did not become ready"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        out = process.stdout.read()
        assert "Waiting for application shutdown" in out and "Application shutdown complete" in out, out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_trainer_health_check_follows_the_scheduler_heartbeat(tmp_path, monkeypatch, capsys):
    from training import heartbeat, schedule

    beat = tmp_path / "beat"
    monkeypatch.setenv("GNAQ_HEARTBEAT_FILE", str(beat))
    assert heartbeat.main([]) == 1 and "no heartbeat at" in capsys.readouterr().out
    scheduler = schedule.Scheduler(["true"], schedule.parse_hhmm("02:00"), heartbeat=schedule.heartbeat_path())
    scheduler.beat()  # what both loops do, at most every HEARTBEAT_SECONDS
    assert beat.exists() and heartbeat.main([]) == 0 and "scheduler alive" in capsys.readouterr().out
    stale = time.time() - 120
    os.utime(beat, (stale, stale))
    assert heartbeat.main([]) == 1 and "the scheduler loop is not running" in capsys.readouterr().out
    assert heartbeat.main(["--max-age", "300"]) == 0
