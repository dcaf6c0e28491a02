"""Static checks of the optional multi-pod training Job (deploy/k8s/distributed/): what `kubectl apply` and
torchrun's rendezvous depend on. No cluster here: the files are read, torchrun's and gnaq's own parsers check the
command."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from torch.distributed.run import get_args_parser

from cli.main import config_of

REPO = Path(__file__).resolve().parents[1]
JOB_FILE = REPO / "deploy" / "k8s" / "distributed" / "train-job.yaml"


def _objects() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(JOB_FILE.read_text()) if doc}


def _container() -> dict:
    (container,) = _objects()["Job"]["spec"]["template"]["spec"]["containers"]
    return container


def _torchrun():
    command = _container()["command"]
    assert command[0] == "torchrun"
    return get_args_parser().parse_args(command[1:])


def _env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in _container()["env"]}


def test_an_indexed_job_with_one_pod_per_torchrun_node():
    job, args = _objects()["Job"], _torchrun()
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(args.nnodes)
    assert int(args.nproc_per_node) == 1 and int(args.max_restarts) == 0 and spec["backoffLimit"] == 0
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_the_rendezvous_is_pod_0_under_the_headless_service():
    objects, args = _objects(), _torchrun()
    service, job = objects["Service"], objects["Job"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    host, port = args.rdzv_endpoint.rsplit(":", 1)
    assert args.rdzv_backend == "c10d"
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"  # Indexed pod 0's DNS name
    (service_port,) = service["spec"]["ports"]
    assert int(port) == service_port["port"] == service_port["targetPort"]
    assert {"name": service_port["name"], "containerPort": int(port)} in _container()["ports"]


def test_the_ranks_run_a_gnaq_train_command_that_parses():
    args, env = _torchrun(), _env()
    assert args.module and args.training_script == "cli"
    script = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], part) for part in args.training_script_args]
    assert script[0] == "train"
    config = config_of(script[1:])
    assert (config.method, config.bits, config.dataset) == ("gnaq", 2, env["GNAQ_DATASET"])
    assert env["GNAQ_MODEL_DIR"] == "/models"
    (volume,) = _objects()["Job"]["spec"]["template"]["spec"]["volumes"]
    assert volume["persistentVolumeClaim"] == {"claimName": "gnaq-models"}  # rank 0 publishes where the API reads
    assert {"name": volume["name"], "mountPath": "/models"} in _container()["volumeMounts"]


def test_runs_as_the_images_non_root_user_and_is_not_applied_by_default():
    context = _objects()["Job"]["spec"]["template"]["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001 and context["fsGroup"] == 10001
    assert _container()["image"] == "gnaq-rec:latest"
    default = " ".join(path.read_text() for path in (REPO / "deploy" / "k8s").glob("*.yaml"))
    assert "torchrun" not in default  # `kubectl apply -f deploy/k8s/` stays single-process
