"""Training on torch.distributed: real torchrun ranks (gloo, CPU), the artifact they write, and bad set-ups."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from harness import free_port, serving

from contracts.artifact import read_artifact
from contracts.manifest import Manifest
from contracts.versions import list_versions, read_current, resolve_version
from training.distributed import DistributedError, cluster_from_environment, process_group

TINY = ["train", "--dataset", "ml-100k", "--dim", "8", "--layers", "1", "--eval-every", "1", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_two_ranks_write_an_artifact_that_loads_and_is_served(tmp_path):
    model_dir = tmp_path / "models"
    done = subprocess.run([sys.executable, "-m", "cli", *TINY, "--epochs", "1", "--qat-epochs", "1", "--nproc", "2",
                           "--model-dir", str(model_dir)], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ranks: 2 (gloo), global batch 2048" in done.stdout
    artifact = read_current(model_dir)  # every checksum verified
    training = artifact.manifest.training
    assert (training.world_size, training.backend) == (2, "gloo")
    assert artifact.manifest.method == "gnaq" and artifact.manifest.quantizer.per_node
    assert list_versions(model_dir) == [artifact.manifest.version]  # one version, from rank 0
    with serving(model_dir, {"REDIS_URL": "", "GNAQ_STATE_DIR": str(tmp_path / "state")}) as service:
        user = artifact.user_ids[0]
        reply = httpx.get(f"{service.url}/recommend/{user}", params={"k": 5}, timeout=30)
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["items"]) == 5


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _rank_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((e[5:].decode() for e in environ if e.startswith(b"RANK=")), None)


def test_a_rank_killed_mid_run_fails_the_run_and_writes_no_version(tmp_path):
    model_dir = tmp_path / "models"
    launcher = subprocess.Popen([sys.executable, "-m", "cli", *TINY, "--epochs", "400", "--patience", "400",
                                 "--nproc", "2", "--model-dir", str(model_dir)], env=ENV, stderr=subprocess.PIPE,
                                text=True)
    for line in launcher.stderr:  # rank 0 logs each validated epoch: the ranks are training
        if "[fp32] epoch    2" in line:
            break
    workers = [pid for child in _children(launcher.pid) for pid in _children(child)]
    rank1 = next(pid for pid in workers if _rank_of(pid) == "1")
    os.kill(rank1, 9)
    started = time.monotonic()
    err = launcher.stderr.read()
    assert launcher.wait(timeout=120) == 2
    assert time.monotonic() - started < 60, "the other rank did not stop soon after its peer died"
    assert "distributed training failed" in err and "CURRENT is unchanged (none)" in err, err[-3000:]
    assert list_versions(model_dir) == [] and not (model_dir / "CURRENT").exists()


@pytest.mark.parametrize(("environ", "nproc", "message"), [
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, 3,
     "mismatched world size: --nproc 3 but torchrun started WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, None,
     "mismatched world size: RANK=2 is outside 0..1"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, None,
     "missing rendezvous: WORLD_SIZE=2 but MASTER_ADDR, MASTER_PORT are not set"),
    ({"WORLD_SIZE": "two"}, None, "WORLD_SIZE='two' is not an integer"),
    ({}, 2, "--nproc 2 asks for 2 ranks but this process was not started by torchrun"),
])
def test_bad_environments_are_refused_with_what_to_do(environ, nproc, message):
    with pytest.raises(DistributedError, match="torchrun|--nproc|RANK") as caught:
        cluster_from_environment("cpu", expected_world_size=nproc, environ=environ)
    assert message in str(caught.value)


def test_one_rank_or_none_is_a_plain_single_process_run():
    assert not cluster_from_environment("cpu", environ={}).distributed
    assert not cluster_from_environment("cpu", expected_world_size=1, environ={"WORLD_SIZE": "1"}).distributed


def test_a_rank_whose_peers_never_come_says_so_within_the_timeout(monkeypatch):
    port = free_port()  # nothing listens: rank 0 (the store's host) never started
    environ = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    cluster = cluster_from_environment("cpu")
    started = time.monotonic()
    with pytest.raises(DistributedError, match=f"missing rendezvous: rank 1 of 2 did not meet the other ranks at "
                                               f"127.0.0.1:{port} within 2 s"):
        with process_group(cluster, timeout_seconds=2):
            pass
    assert time.monotonic() - started < 30


def test_a_manifest_written_before_distributed_training_reads_as_one_process(trained):
    raw = json.loads((resolve_version(trained) / "manifest.json").read_text())
    for key in ("world_size", "backend"):
        raw["training"].pop(key, None)
    training = Manifest.model_validate(raw).training
    assert (training.world_size, training.backend) == (1, None)
    assert read_artifact(resolve_version(trained)).manifest.training.world_size == 1
