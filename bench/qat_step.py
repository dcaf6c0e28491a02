"""Cost of one quantization-aware training step, method against method, side by side in one process.

Why: the speed bar compares GNAQ's quantization-aware stage with LSQ's on the same warm start, and a stage's wall
time is its steps' cost times its epochs. This benchmark times the steps alone: for each method it attaches the
quantizer (and GNAQ's distillation) exactly as ``gnaq train`` does, then runs ``training.trainer.train_epoch`` over
the same ``--steps`` batches of the fit split, after one warm-up batch, one step of each method in turn (so that load
from other processes falls on every method alike), and prints milliseconds per step and each method's ratio to the
first. The weights are the cached fp32 warm start of ``--model-dir`` when ``gnaq train`` left
one there for these settings, else a fresh initialisation (a step costs the same arithmetic either way).

Usage: python bench/qat_step.py [--steps N] [--methods M ...] [gnaq train arguments ...]
       e.g. OMP_NUM_THREADS=1 python bench/qat_step.py --methods lsq gnaq:c+trk gnaq:c+rel --dataset gowalla
A GNAQ method names its variant after the colon: ``c`` centring, ``trk`` tracked statistics, ``rel`` relative
refinement (the race's four candidates are ``trk``, ``rel``, ``c+trk``, ``c+rel``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

import training.pipeline as pipeline
from cli.main import config_of
from model.lightgcn import LightGCN
from training.config import TrainConfig
from training.trainer import train_epoch

QUANTIZATION_AWARE = ("gnaq", "lsq", "n2uq", "bigear")
# gnaq train flags that mean nothing here: refused rather than ignored.
UNUSED_FLAGS = ("--method", "--nproc", "--dist-timeout", "--version", "--publish")
VARIANT_PARTS = {"c": "center", "trk": "track_stats", "rel": "relative_refinement"}


def method_config(config: TrainConfig, method: str) -> TrainConfig:
    """``config`` for ``method`` (``lsq``, ``gnaq:c+trk``, ...), every GNAQ variant switch set."""
    name, _, variant = method.partition(":")
    if name not in QUANTIZATION_AWARE:
        raise ValueError(f"{method!r}: a method is one of {', '.join(QUANTIZATION_AWARE)} (fp32 and ptq have no such "
                         f"stage)")
    parts = set(variant.split("+")) - {""}
    if parts - VARIANT_PARTS.keys() or (parts and name != "gnaq"):
        raise ValueError(f"{method!r}: a variant is gnaq:<parts> with parts among {', '.join(VARIANT_PARTS)}")
    config = config.model_copy(update={"method": name})
    if name == "gnaq":
        switches = {key: part in parts for part, key in VARIANT_PARTS.items()}
        config = config.model_copy(update={"gnaq": config.gnaq.model_copy(update=switches)})
    return config


def warm_start(ws: pipeline.Workspace) -> tuple[LightGCN, bool]:
    """The cached fp32 warm start for ``ws``'s settings if there is one (True), else a fresh model (False)."""
    c = ws.config
    if pipeline.warm_start_path(c, ws.data.fingerprint()).exists():
        return pipeline.train_full_precision(ws)[0], True
    return LightGCN(ws.data.n_users, ws.data.n_items, c.dim, c.layers).to(ws.device), False


def stage_steps(ws: pipeline.Workspace) -> tuple[Callable[[int], None], bool]:
    """A function that runs step ``i`` of ``ws.config``'s quantization-aware stage (batch ``i mod`` the fit split's
    batches), and whether the weights are the cached warm start."""
    c = ws.config
    model, cached = warm_start(ws)
    run = pipeline._start_stage(ws, model, c, pipeline._distillation(ws, model, c))
    batch = run.settings.batch_size
    order = np.random.default_rng(c.seed).permutation(len(ws.fit_pairs))

    def step(i: int) -> None:
        pairs = ws.fit_pairs[order[(i * batch) % len(order):][:batch]]
        train_epoch(model, run.optimizer, ws.adjacency, pairs, run.sampler, run.settings,
                    np.random.default_rng(i), run.extra_loss)
    return step, cached


def step_times(steps: list[Callable[[int], None]], count: int) -> list[list[float]]:
    """Seconds of ``count`` steps of each stage, taken in turn (one step of each, then the next of each): load from
    other processes then falls on every method alike. A first step of each warms up allocations and is not counted."""
    times: list[list[float]] = [[] for _ in steps]
    for i in range(count + 1):
        for step, seconds in zip(steps, times, strict=True):
            began = time.perf_counter()
            step(i)
            seconds.append(time.perf_counter() - began)
    return [seconds[1:] for seconds in times]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method (default: 10)")
    parser.add_argument("--methods", nargs="+", default=["lsq", "gnaq:c+trk", "gnaq:c+rel"],
                        help="methods to time; the first is the reference of the ratios")
    args, train_args = parser.parse_known_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    unused = [flag for flag in (arg.split("=")[0] for arg in train_args) if flag in UNUSED_FLAGS]
    if unused:
        parser.error(f"{', '.join(unused)}: not used here (--methods names the methods; this benchmark runs one "
                     f"process and writes no version)")
    config = config_of([*train_args, "--no-progress"])
    try:
        configs = [method_config(config, method) for method in args.methods]
    except ValueError as error:
        parser.error(str(error))
    print(f"dataset {config.dataset}, {torch.get_num_threads()} thread(s), {args.steps} steps per method, "
          f"the methods' steps in turn")
    print(f"{'method':>14} {'ms/step':>8} {'(min-max)':>13} {'ratio':>6}  weights")
    stages = [stage_steps(pipeline.prepare(method_cfg)) for method_cfg in configs]
    seconds = step_times([step for step, _ in stages], args.steps)
    reference = None
    for method, (_, cached), method_seconds in zip(args.methods, stages, seconds, strict=True):
        times = [1000 * t for t in method_seconds]
        median = statistics.median(times)
        reference = reference or median
        print(f"{method:>14} {median:8.1f} {f'({min(times):.0f}-{max(times):.0f})':>13} {median / reference:6.2f}  "
              f"{'fp32 warm start' if cached else 'fresh initialisation'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
