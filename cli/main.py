"""``gnaq`` command line: train, evaluate an artifact, dataset statistics, serve, retrain, roll back.

The one module above both the training job and the service: each command imports what it runs, so a
service-only install can serve without the training dependencies and the other way round.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from cli.flags import (
    SEPARATOR,
    add_config_flags,
    add_distributed_flags,
    add_section_flags,
    flag_of,
    settings_from_flags,
    train_config,
)
from training.config import TrainConfig

_TRAIN_ARGS = frozenset({"command", "config", "nproc", "dist_timeout", "raw_argv"})
_STATS_ARGS = frozenset({"command", "data_command", "dataset", "data_dir"})
_RETRAIN_ARGS = frozenset({"command", "tolerance", "gate_confidence", "gate_min_users", "alert_after", "keep", "wait",
                           "force"})
# Where a retrain runs and reads from: honoured, but not settings of the new model.
_RETRAIN_PLACES = frozenset({"model_dir", "data_dir"})
# `gnaq train` flags a retrain cannot honour: it trains on the current model's data (dataset, split, validation
# pairs, CSV columns, all recorded in its manifest) plus the logged interactions, and its quality gate publishes.
_RETRAIN_REFUSED = {
    "dataset": "a retrain trains on the current model's dataset, recorded in its manifest, plus the logged "
               "interactions; train a model on other data with `gnaq train`",
    "split": "the test split is the current model's, recorded in its manifest, so that versions compare",
    "test_fraction": "the test split is the current model's, recorded in its manifest, so that versions compare",
    "valid_fraction": "the candidate is gated on the current model's own validation pairs, stored in its artifact",
    "publish": "the quality gate decides whether a retrained version is published; `gnaq rollback` undoes one",
    "columns": "a retrain reads the data with the CSV columns recorded in the current model's manifest "
               "([columns] of its config); train a model on a differently laid-out file with `gnaq train`",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gnaq", description="GNAQ-Rec: train node-aware quantized LightGCN "
                                     "models, serve their recommendations, retrain them nightly.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", help="train a model and export a versioned artifact",
        description="Train on a dataset, select on validation, test once, write a versioned artifact. The common "
                    "settings come first; then one group per section of the configuration ([bpr], [fp32], [qat], "
                    "[gnaq], [distill], [ptq], [bigear]), which a --config file sets as TOML tables.")
    train.add_argument("--config", type=Path, help="TOML or JSON file of settings and [sections]")
    add_config_flags(train)
    add_distributed_flags(train)
    evaluate = commands.add_parser("evaluate", help="recompute an artifact's test metrics")
    evaluate.add_argument("artifact", type=Path, help="a version directory, or a model dir (uses CURRENT)")
    evaluate.add_argument("--dataset", help="dataset name or path (default: the one in the manifest)")
    evaluate.add_argument("--data-dir", help="directory of the named datasets (default: $GNAQ_DATA_DIR)")
    evaluate.add_argument("--device", default="cpu")
    data = commands.add_parser("data", help="dataset utilities")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    stats = data_commands.add_parser("stats", help="users, items, interactions, density")
    stats.add_argument("dataset")
    stats.add_argument("--data-dir")
    add_section_flags(stats, "columns")
    retrain = commands.add_parser("retrain", help="the nightly job: merge logged interactions, train, gate, publish")
    retrain.add_argument("--tolerance", type=float, default=0.05,
                         help="refuse a candidate whose valid recall@20 is clearly below (1 - tolerance) x the "
                              "current model's (default: 0.05)")
    retrain.add_argument("--gate-confidence", type=float, default=0.95,
                         help="'clearly': the one-sided bootstrap confidence over validation users (default: 0.95)")
    retrain.add_argument("--gate-min-users", type=int, default=20,
                         help="with fewer validation users the gate cannot judge and passes (default: 20)")
    retrain.add_argument("--alert-after", type=int, default=3,
                         help="warn when interactions have stayed pending this many runs in a row (default: 3)")
    retrain.add_argument("--keep", type=int, default=5, help="versions kept after publishing (default 5)")
    retrain.add_argument("--wait", action="store_true", help="wait for a running retrain instead of exiting 4")
    retrain.add_argument("--force", action="store_true", help="train even if no new interaction was logged")
    add_config_flags(retrain)  # overrides of the current model's recorded settings (epochs, lr, ...)
    rollback = commands.add_parser("rollback", help="point CURRENT back at an earlier version")
    rollback.add_argument("version", nargs="?", help="default: the version that served before the current one was "
                                                     "first published (repeated rollbacks walk further back)")
    rollback.add_argument("--model-dir", type=Path, help="default: $GNAQ_MODEL_DIR, else ./models")
    versions = commands.add_parser("versions", help="every version in the model dir: current, published, refused")
    versions.add_argument("--model-dir", type=Path, help="default: $GNAQ_MODEL_DIR, else ./models")
    serve = commands.add_parser("serve", help="serve <model dir>/CURRENT over HTTP (settings: GNAQ_* environment)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model-dir", type=Path, help="default: $GNAQ_MODEL_DIR, else ./models")
    serve.add_argument("--workers", type=int, default=1, help="server processes (each loads the model)")
    serve.add_argument("--http", default="h11", choices=["h11", "httptools"],
                       help="HTTP parser: h11 (default) bounds the request line and headers by "
                            "GNAQ_MAX_HEADER_BYTES; httptools is faster but bounds neither: use it only behind a "
                            "proxy that does")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def config_of(argv: list[str]) -> TrainConfig:
    """The configuration that ``gnaq train`` with these arguments (after ``train``) would run with."""
    return train_config(_parser().parse_args(["train", *argv]), ignore=_TRAIN_ARGS)


def _train(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from cli.launch import launched_here, torchrun
    from training.distributed import cluster_from_environment, process_group
    from training.pipeline import run_training

    config = train_config(args, ignore=_TRAIN_ARGS)
    if launched_here(args.nproc):
        return torchrun(args.raw_argv, args.nproc, config.resolved_model_dir())
    cluster = cluster_from_environment(config.device, expected_world_size=args.nproc)
    if not cluster.is_main:  # rank 0 speaks for the run; the others only say what goes wrong
        logging.getLogger().setLevel(logging.WARNING)
    with process_group(cluster, args.dist_timeout) as cluster, logging_redirect_tqdm():
        result = run_training(config, cluster=cluster)
    if result is None:
        return 0
    manifest = result.manifest
    sizes = manifest.sizes
    print(f"artifact: {result.path}" + ("" if config.publish else " (not published)"))
    print(f"method {manifest.method}" + (f", {manifest.bits} bits" if manifest.bits else "")
          + f", d={manifest.dim}, L={manifest.layers}, dataset {manifest.dataset.name} "
          f"({manifest.dataset.split_label}), seed {manifest.seed}")
    metrics, choices = manifest.metrics, manifest.training.choices
    print("test:  " + _metric_line(metrics.test, config.ks))
    if metrics.warm_start_test:
        ratio = metrics.warm_start_ratio
        print("fp32:  " + _metric_line(metrics.warm_start_test, config.ks) + "  (the warm start" + (
            "" if ratio is None else f"; {ratio.ratio:.3f}x of its {ratio.metric}, {ratio.confidence:.0%} interval "
            f"{ratio.low:.3f}-{ratio.high:.3f} over {ratio.users:,} test users") + ")")
    if choices:
        derived = ", ".join(f"{name} {value if isinstance(value, int) else format(value, '.4g')}"
                            for name, value in choices.get("derived", {}).items())
        variant = choices.get("gnaq_variant", {})
        chosen = ", ".join(f"{name}={value}" for name, value in variant.get("chosen", {}).items())
        print("recipe: " + "; ".join(filter(None, [derived and f"from the data: {derived}",
                                                  chosen and f"on validation: {chosen}"])))
    print(f"size:  embeddings {sizes.embedding_bytes:,} B vs fp32 table {sizes.fp32_embedding_bytes:,} B "
          f"= {sizes.compression_ratio:.1f}x smaller; whole artifact {sizes.artifact_bytes:,} B")
    if cluster.distributed:
        print(f"ranks: {cluster.world_size} ({cluster.backend}), global batch {manifest.config['bpr']['batch_size']}")
    return 0


def _metric_line(metrics: dict[str, float], ks: list[int]) -> str:
    return "  ".join(f"{m}@{k} {metrics[f'{m}@{k}']:.4f}" for k in ks for m in ("recall", "ndcg"))


def _evaluate(args: argparse.Namespace) -> int:
    from contracts.versions import read_current
    from training.pipeline import evaluate_artifact

    artifact = read_current(args.artifact)
    recorded = artifact.manifest.metrics.test
    metrics = evaluate_artifact(artifact, args.dataset, args.data_dir, args.device)
    for name, value in metrics.items():
        print(f"{name:10s} {value:.6f}  (recorded {recorded.get(name, float('nan')):.6f})")
    return 0 if all(abs(v - recorded.get(k, float("inf"))) < 1e-6 for k, v in metrics.items()) else 1


def _stats(args: argparse.Namespace) -> int:
    from training.config import ColumnsConfig
    from training.datasets import dataset_stats, load_dataset

    columns = ColumnsConfig(**settings_from_flags(args, ignore=_STATS_ARGS).get("columns", {}))
    print(json.dumps(dataset_stats(load_dataset(args.dataset, data_dir=args.data_dir, columns=columns.spec())),
                     indent=2))
    return 0


def _model_dir(value: object) -> Path:
    return Path(str(value)) if value else Path(os.environ.get("GNAQ_MODEL_DIR", "models"))


def _refuse_unhonoured(args: argparse.Namespace) -> None:
    """A ``gnaq train`` flag that a retrain would have to ignore is an error, never silently dropped."""
    given = sorted(dest for dest in vars(args) if dest.partition(SEPARATOR)[0] in _RETRAIN_REFUSED)
    if given:
        reasons = dict.fromkeys(_RETRAIN_REFUSED[dest.partition(SEPARATOR)[0]] for dest in given)
        flags = [flag_of(d) if getattr(args, d) is not False else f"--no-{flag_of(d)[2:]}" for d in given]
        raise ValueError(f"gnaq retrain cannot honour {', '.join(flags)}: "
                         + "; ".join(reasons))


def _retrain(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from service.core.config import Settings
    from training.log_reader import RedisInteractionLog, SqliteInteractionLog
    from training.quality_gate import GateSettings
    from training.retrain import EXIT_LOCKED, EXIT_NO_SPACE, NotEnoughSpace, RetrainLocked, retrain, retrain_lock

    flags = settings_from_flags(args, ignore=_RETRAIN_ARGS)
    _refuse_unhonoured(args)
    overrides = {k: v for k, v in flags.items() if k not in _RETRAIN_PLACES}
    model_dir = _model_dir(flags.get("model_dir"))
    service = Settings(model_dir=model_dir)  # where the service logs interactions: same settings, same place
    gate = GateSettings(args.tolerance, args.gate_confidence, args.gate_min_users)
    try:
        with retrain_lock(model_dir, wait=args.wait), logging_redirect_tqdm():
            log = RedisInteractionLog(service.redis_url) if service.redis_url \
                else SqliteInteractionLog(service.interaction_log_path)
            outcome = retrain(model_dir, log, overrides=overrides, gate=gate, keep=args.keep, force=args.force,
                              data_dir=flags.get("data_dir"), alert_after=args.alert_after)
    except RetrainLocked as error:
        print(f"retrain: skipped; {error}")
        return EXIT_LOCKED
    except NotEnoughSpace as error:
        print(f"gnaq: error: retrain not started: {error}", file=sys.stderr)
        return EXIT_NO_SPACE
    print(outcome.summary())
    return outcome.exit_code


def _rollback(args: argparse.Namespace) -> int:
    from contracts.versions import rollback

    print(f"CURRENT -> {rollback(_model_dir(args.model_dir), args.version)}")
    return 0


def _versions(args: argparse.Namespace) -> int:
    from contracts.artifact import ArtifactError, read_manifest
    from contracts.versions import list_versions, published_versions, refused_versions, resolve_version

    model_dir = _model_dir(args.model_dir)
    try:
        current = resolve_version(model_dir).name
    except ArtifactError:
        current = None
    published, refused = set(published_versions(model_dir)), refused_versions(model_dir)
    print("valid and test: each version's selection metric (recall@20 by default)")
    print(f"{'version':<24} {'status':<12} {'method':<12} {'valid':>8} {'test':>8}  note")
    for version in list_versions(model_dir):
        status = ("current" if version == current else "published" if version in published
                  else "refused" if version in refused else "unpublished")
        try:
            manifest = read_manifest(model_dir / version)
        except ArtifactError as error:
            print(f"{version:<24} {status:<12} {'?':<12} {'':>8} {'':>8}  unreadable: {error}")
            continue
        method = manifest.method + (f" {manifest.bits}-bit" if manifest.bits else "")
        metric = manifest.metrics.selection_metric
        valid, test = manifest.metrics.valid.get(metric, float("nan")), manifest.metrics.test.get(metric, float("nan"))
        print(f"{version:<24} {status:<12} {method:<12} {valid:>8.4f} {test:>8.4f}  {refused.get(version, '')}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from contracts.versions import resolve_version
    from service.core.config import Settings

    if args.model_dir is not None:
        os.environ["GNAQ_MODEL_DIR"] = str(args.model_dir)  # read by the workers' settings
    model_dir = _model_dir(args.model_dir)
    print(f"serving {resolve_version(model_dir)} on http://{args.host}:{args.port} (docs at /docs)")
    # uvicorn drains, shuts the app down, then re-raises the SIGTERM it caught; with the default handler that
    # kills the process (exit 143) and an orchestrator counts a normal stop as a failure. A no-op handler
    # takes the re-raised signal instead: the drain is unchanged and a requested stop exits 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run("service.main:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, access_log=False, http=args.http,
                h11_max_incomplete_event_size=Settings().max_header_bytes)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gnaq`` console script; errors become one clear line and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.command == "train":
        args.raw_argv = argv  # what `gnaq train --nproc N` hands on to the ranks it starts
    handler = {"train": _train, "evaluate": _evaluate, "data": _stats, "serve": _serve,
               "retrain": _retrain, "rollback": _rollback, "versions": _versions}[args.command]
    try:
        return handler(args)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        print(f"gnaq: error: invalid settings: {problems}", file=sys.stderr)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"gnaq: error: {error}", file=sys.stderr)
    return 2
