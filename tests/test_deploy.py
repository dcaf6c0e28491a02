"""Static checks of the Dockerfile, .dockerignore, docker-compose.yml, .env.example and deploy/k8s manifests.

Docker cannot run here, so these tests read the files and check what `docker compose up` and `kubectl apply`
depend on: services, commands, healthchecks, volumes, start order, non-root users and the secret wiring.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from training import schedule

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
GNAQ_SERVICES = ("init", "api", "trainer")
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


# --- helpers ---------------------------------------------------------------------------------------------------

def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages[1:]


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def with_defaults(value: str) -> str:
    """Compose interpolation as on a fresh clone without `.env`: ${VAR:-default} -> default, $$ -> $."""
    return _VARIABLE.sub(lambda m: m[2] or "", value).replace("$$", "$")


def command(name: str) -> list[str]:
    raw = service(name)["command"]
    return [with_defaults(part) for part in (raw if isinstance(raw, list) else shlex.split(raw))]


def mounts(name: str) -> dict[str, tuple[str, str]]:
    """Container path -> (source, mode) of a service's short-syntax volumes."""
    result = {}
    for entry in service(name).get("volumes", []):
        source, target, *mode = with_defaults(entry).split(":")
        result[target] = (source, mode[0] if mode else "rw")
    return result


@cache
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object under deploy/k8s by (kind, name)."""
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return spec["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


# --- image -----------------------------------------------------------------------------------------------------

def stage(name: str) -> list[tuple[str, str]]:
    """The Dockerfile stage ``FROM ... AS name``."""
    return next(st for st in dockerfile_stages() if st[0][1].split()[-1] == name)


def runs_of(name: str) -> str:
    return " ".join(args for instruction, args in stage(name) if instruction == "RUN")


def test_dockerfile_builds_an_api_and_a_trainer_image_api_by_default() -> None:
    names = [st[0][1].split()[-1] for st in dockerfile_stages()]
    assert names == ["torch", "sources", "api-venv", "trainer-venv", "runtime", "trainer", "api"]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in (REPO / "Dockerfile").read_text()
    assert stage("runtime")[0] == ("FROM", "${PYTHON_IMAGE} AS runtime")
    assert stage("api")[0] == ("FROM", "runtime AS api")  # the last stage: what a plain `docker build .` makes


def test_torch_is_the_cpu_build_from_a_build_argument_whose_default_is_the_pytorch_index() -> None:
    torch = dict(stage("torch"))
    assert torch["ARG"] == 'TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"'
    assert 'pip install "torch==2.13.0" ${TORCH_PIP_ARGS}' in runs_of("torch")


def test_the_api_image_leaves_out_the_training_extras_and_the_trainer_has_them() -> None:
    assert "pip install -r serve.txt" in runs_of("api-venv") and "train" not in runs_of("api-venv")
    assert "pip install -r train.txt" in runs_of("trainer-venv") and "recbole==1.2.1" in runs_of("trainer-venv")
    assert "for extras in serve train,serve" in runs_of("torch")  # the requirements files, from pyproject.toml
    for name in ("api-venv", "trainer-venv"):  # dependencies first, sources last: code changes rebuild little
        instructions = [args for _, args in stage(name)]
        assert instructions.index("--from=sources /src /src") > 0 and runs_of(name).endswith("pip install --no-deps .")


def test_final_stages_copy_only_their_venv_and_install_nothing() -> None:
    for name, venv in (("api", "api-venv"), ("trainer", "trainer-venv")):
        final = stage(name)
        copies = [args for instruction, args in final if instruction in ("COPY", "ADD")]
        assert copies == [f"--from={venv} /opt/venv /opt/venv"]
        assert not any(instruction == "RUN" for instruction, _ in final)
    assert not re.search(r"pip |apt-get|apk |gcc|build-essential", runs_of("runtime"))


def test_images_run_as_non_root_with_a_healthcheck_each() -> None:
    assert dict(stage("runtime"))["USER"] == "10001:10001"  # the uid the Kubernetes manifests run as
    assert "GNAQ_MODEL_DIR=/models" in dict(stage("runtime"))["ENV"]
    api = dict(stage("api"))
    assert "urllib.request" in api["HEALTHCHECK"] and "http://127.0.0.1:8000/healthz" in api["HEALTHCHECK"]
    assert re.search(r"--interval=\S+ .*--timeout=\S+", api["HEALTHCHECK"])
    assert yaml.safe_load(api["CMD"]) == ["gnaq", "serve", "--host", "0.0.0.0", "--port", "8000"]
    trainer = dict(stage("trainer"))
    assert trainer["HEALTHCHECK"].endswith('CMD ["python", "-m", "training.heartbeat"]')
    assert yaml.safe_load(trainer["CMD"]) == ["python", "-m", "training.schedule", "--", "gnaq", "retrain"]


def test_dockerignore_keeps_heavy_and_secret_paths_out_but_not_the_sources() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for entry in (".venv", "models", "runs", "data", ".git", ".env", "**/__pycache__", ".pytest_cache",
                  ".ruff_cache", "*.egg-info"):
        assert entry in patterns
    copied = [source for stage in dockerfile_stages() for instruction, args in stage
              if instruction == "COPY" and not args.startswith("--from") for source in args.split()[:-1]]
    assert {"pyproject.toml", "README.md", "model", "contracts", "training", "service", "cli"} <= set(copied)
    for source in copied:
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in patterns), source


# --- docker compose --------------------------------------------------------------------------------------------

def test_compose_runs_the_api_image_for_the_api_and_the_trainer_image_for_the_jobs() -> None:
    assert set(compose()["services"]) == {"redis", *GNAQ_SERVICES}
    images = {"api": ("api", "gnaq-rec-api:latest"), "init": ("trainer", "gnaq-rec-trainer:latest"),
              "trainer": ("trainer", "gnaq-rec-trainer:latest")}
    for name, (target, image) in images.items():
        build = service(name)["build"]
        assert build["context"] == "." and build["target"] == target
        assert with_defaults(build["args"]["TORCH_PIP_ARGS"]) == "--index-url https://download.pytorch.org/whl/cpu"
        assert with_defaults(service(name)["image"]) == image


def test_every_service_has_a_healthcheck_that_up_wait_accepts() -> None:
    for name in ("redis", *GNAQ_SERVICES):
        healthcheck = service(name)["healthcheck"]
        assert "disable" not in healthcheck and healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name
    assert service("trainer")["healthcheck"]["test"] == ["CMD", "python", "-m", "training.heartbeat"]


def test_no_host_directory_is_mounted_unless_configured() -> None:
    """A missing bind-mount source is created by the engine, owned by root: the default is a named volume."""
    for name in ("init", "trainer"):
        source, mode = mounts(name)["/data"]
        assert source in compose()["volumes"] and mode == "ro", name
    for name in ("redis", *GNAQ_SERVICES):
        assert all(source in compose()["volumes"] for source, _ in mounts(name).values()), name


def test_redis_persists_with_aof_on_a_named_volume_and_has_a_healthcheck() -> None:
    redis = service("redis")
    assert redis["image"] == "redis:7"
    assert " ".join(redis["command"]).endswith("--appendonly yes")
    source, mode = mounts("redis")["/data"]
    assert source in compose()["volumes"] and mode == "rw"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_every_gnaq_service_shares_the_model_volume_and_redis() -> None:
    for name in GNAQ_SERVICES:
        environment = service(name)["environment"]
        assert mounts(name)[environment["GNAQ_MODEL_DIR"]][0] == "models"
        assert environment["REDIS_URL"] == "redis://redis:6379/0"
    assert "models" in compose()["volumes"]
    assert mounts("api")["/models"][1] == "ro"
    assert mounts("init")["/models"][1] == mounts("trainer")["/models"][1] == "rw"


def test_init_trains_on_the_embedded_dataset_only_without_current() -> None:
    init = service("init")
    sh, flag, script = command("init")
    assert (sh, flag) == ("sh", "-c")
    assert script.startswith('if [ -e "$GNAQ_MODEL_DIR/CURRENT" ]; then')
    assert ('else exec gnaq train --dataset "$GNAQ_DATASET" --method gnaq --bits 2 --no-progress $GNAQ_TRAIN_ARGS; '
            'fi') in script
    assert with_defaults(init["environment"]["GNAQ_DATASET"]) == "ml-100k"
    assert with_defaults(init["environment"]["GNAQ_TRAIN_ARGS"]) == ""
    assert init["restart"] == "no"


def test_api_waits_for_healthy_redis_and_a_trained_model() -> None:
    api = service("api")
    assert api["depends_on"] == {"redis": {"condition": "service_healthy"},
                                 "init": {"condition": "service_completed_successfully"}}
    assert command("api") == ["gnaq", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert api["ports"] == ["${GNAQ_PORT:-8000}:8000"]
    assert "http://127.0.0.1:8000/healthz" in " ".join(api["healthcheck"]["test"])
    assert with_defaults(api["environment"]["GNAQ_INDEX"]) in ("float", "codes")
    assert set(api["environment"]) >= {"GNAQ_API_KEYS", "GNAQ_CACHE_TTL_SECONDS", "GNAQ_MAX_K",
                                       "GNAQ_RELOAD_POLL_SECONDS", "GNAQ_OPEN_READS", "GNAQ_SEARCH_THREADS"}


def test_trainer_runs_the_nightly_schedule_of_gnaq_retrain_both_from_env() -> None:
    trainer = service("trainer")
    sh, flag, script = command("trainer")
    assert (sh, flag) == ("sh", "-c")
    assert script == 'exec python -m training.schedule --at "$GNAQ_RETRAIN_AT" -- $GNAQ_RETRAIN_COMMAND'
    environment = {k: with_defaults(v) for k, v in trainer["environment"].items()}
    assert environment["GNAQ_RETRAIN_AT"] == "02:00" and environment["GNAQ_RETRAIN_COMMAND"] == "gnaq retrain"
    expanded = shlex.split(script.removeprefix("exec ").replace("$GNAQ_RETRAIN_AT", "02:00")
                           .replace("$GNAQ_RETRAIN_COMMAND", "gnaq retrain"))
    args = schedule._parser().parse_args(expanded[3:])  # the scheduler accepts what the shell passes
    assert schedule.parse_hhmm(args.at).strftime("%H:%M") == "02:00" and args.command == ["gnaq", "retrain"]
    assert trainer["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert trainer["restart"] == "unless-stopped"


def test_every_compose_variable_has_a_default_and_is_documented_in_env_example() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    used = {m[1] for m in _VARIABLE.finditer(text)}
    assert all(":-" in m[0] for m in _VARIABLE.finditer(text)), "a fresh clone has no .env: give every default"
    documented = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            documented[name] = value
    assert used == set(documented)
    for match in _VARIABLE.finditer(text):  # .env.example shows the same defaults compose uses
        assert documented[match[1]] == match[2], match[1]
    for name in ("GNAQ_PORT", "GNAQ_API_KEYS", "GNAQ_DATA_PATH", "GNAQ_DATASET", "GNAQ_RETRAIN_AT", "GNAQ_INDEX"):
        assert name in documented


def _compose_cli() -> list[str] | None:
    """`docker compose` (the v2 plugin), else the standalone `docker-compose`; None if neither runs."""
    for candidate in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(candidate[0]) and subprocess.run([*candidate, "version"], capture_output=True,
                                                        timeout=30).returncode == 0:
            return candidate
    return None


def test_compose_config_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` (plugin) nor `docker-compose` is installed to validate the file")
    result = subprocess.run([*cli, "-f", "docker-compose.yml", "config"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {"redis", *GNAQ_SERVICES}
    assert resolved["services"]["api"]["depends_on"]["init"]["condition"] == "service_completed_successfully"


# --- Kubernetes ------------------------------------------------------------------------------------------------

def test_manifests_parse_with_the_expected_objects() -> None:
    assert set(manifests()) == {
        ("Service", "redis"), ("StatefulSet", "redis"),
        ("PersistentVolumeClaim", "gnaq-models"), ("Service", "gnaq-api"), ("Deployment", "gnaq-api"),
        ("Job", "gnaq-init"), ("CronJob", "gnaq-retrain"), ("Secret", "gnaq-secrets"),
    }


def test_services_select_their_workloads_pods() -> None:
    for (kind, name), obj in manifests().items():
        if kind != "Service":
            continue
        workload = manifests()[("StatefulSet" if name == "redis" else "Deployment", name)]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert obj["spec"]["selector"].items() <= labels.items()
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        port_names = {p["name"] for c in pod_spec(workload)["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in obj["spec"]["ports"]} <= port_names


def test_redis_keeps_aof_data_on_a_persistent_volume() -> None:
    redis = manifests()[("StatefulSet", "redis")]
    (container,) = pod_spec(redis)["containers"]
    assert container["image"] == "redis:7" and container["args"][-2:] == ["--appendonly", "yes"]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    assert container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    assert manifests()[("Service", "redis")]["spec"]["ports"][0]["port"] == 6379


def test_api_deployment_probes_resources_secret_and_read_only_models() -> None:
    api = manifests()[("Deployment", "gnaq-api")]
    assert api["spec"]["replicas"] >= 2
    (container,) = pod_spec(api)["containers"]
    assert container["command"] == ["gnaq", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container["resources"]["limits"]
    env = env_of(container)
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    secret_ref = env["GNAQ_API_KEYS"]["secretKeyRef"]
    secret = manifests()[("Secret", secret_ref["name"])]
    assert secret_ref["key"] in secret["stringData"]
    (volume,) = pod_spec(api)["volumes"]
    assert volume["persistentVolumeClaim"] == {"claimName": "gnaq-models", "readOnly": True}
    assert {"name": volume["name"], "mountPath": env["GNAQ_MODEL_DIR"], "readOnly": True} in container["volumeMounts"]
    assert "ReadOnlyMany" in manifests()[("PersistentVolumeClaim", "gnaq-models")]["spec"]["accessModes"]


def test_retrain_cronjob_never_overlaps_and_writes_the_shared_models() -> None:
    cron = manifests()[("CronJob", "gnaq-retrain")]
    assert cron["spec"]["schedule"] == "0 2 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod_spec(cron)
    (container,) = spec["containers"]
    assert container["command"] == ["gnaq", "retrain"] and spec["restartPolicy"] in ("Never", "OnFailure")
    env = env_of(container)
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    (volume,) = spec["volumes"]
    assert volume["persistentVolumeClaim"] == {"claimName": "gnaq-models"}  # read-write
    assert {"name": volume["name"], "mountPath": env["GNAQ_MODEL_DIR"]} in container["volumeMounts"]
    assert "ReadWriteMany" in manifests()[("PersistentVolumeClaim", "gnaq-models")]["spec"]["accessModes"]


def test_gnaq_pods_run_as_the_images_non_root_user() -> None:
    for key in (("Deployment", "gnaq-api"), ("Job", "gnaq-init"), ("CronJob", "gnaq-retrain")):
        spec = pod_spec(manifests()[key])
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001, key
        assert context["fsGroup"] == 10001, key  # group-writable model volume
        image = "gnaq-rec-api:latest" if key[0] == "Deployment" else "gnaq-rec-trainer:latest"
        assert all(c["image"] == image for c in spec["containers"]), key  # what compose-smoke.sh builds


def test_init_job_matches_the_compose_init() -> None:
    (container,) = pod_spec(manifests()[("Job", "gnaq-init")])["containers"]
    assert container["command"][-1] == command("init")[-1]
    assert env_of(container)["GNAQ_DATASET"] == "ml-100k"


# The Kubernetes API's own schemas (the OpenAPI definitions kubernetes-validate ships, read offline), strict:
# a misspelt or misplaced field is an error, as `kubectl apply --validate=strict` would make it.
K8S_VERSION = "1.30.0"  # an older release the manifests must still apply to; and the newest the package knows


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    for obj in manifests().values():
        kubernetes_validate.validate(obj, version, strict=True)  # raises with the offending path


def test_the_schema_validator_refuses_a_misspelt_field() -> None:
    job = copy.deepcopy(manifests()[("Job", "gnaq-init")])
    pod_spec(job)["containers"][0]["imagePullPolice"] = "IfNotPresent"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolice"):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


# --- the stack on a real engine --------------------------------------------------------------------------------

def _engine_problem() -> str | None:
    """Why the compose smoke test cannot run here, or None when a Docker engine and `docker compose` answer."""
    if not shutil.which("docker"):
        return "no `docker` command (bash ../shared/docker/local-engine.sh installs one where it exists)"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=30)
        if info.returncode != 0:
            return f"no Docker engine answers: {info.stderr.strip().splitlines()[-1] if info.stderr else ''}"
        if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode != 0:
            return "the Docker engine answers but the `docker compose` plugin is missing"
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    return None


def test_compose_smoke_builds_and_runs_the_stack_on_a_real_engine(capsys: pytest.CaptureFixture) -> None:
    """deploy/compose-smoke.sh: build, up --wait, read, write, retrain, Redis restart, down/up, down -v."""
    problem = _engine_problem()
    if problem:
        pytest.skip(f"compose smoke test not run: {problem}")
    result = subprocess.run(["bash", "deploy/compose-smoke.sh"], cwd=REPO, capture_output=True, text=True,
                            timeout=2400)
    with capsys.disabled():  # every step and its time, in the CI log
        print("\n" + result.stdout[-20000:], end="")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.endswith("] passed") for line in lines)
    assert "step 9: docker compose down -v" in lines[-1]
