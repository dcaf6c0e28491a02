"""Peak memory and seconds per step of the training job on synthetic power-law graphs (fp32 and GNAQ).

``python bench/train_memory.py --nodes 100000 300000 1000000 --out bench/results/train-memory.json`` runs each
(size, method) in a fresh process, through the pipeline's own functions (``prepare``, ``train_full_precision``,
``quantize``): the graph, the model, the sampler, GNAQ's quantizer and distillation are built exactly as ``gnaq
train`` builds them, and each stage trains ``--steps`` steps of ``--batch`` triples. Peak RSS is read per phase
(``VmHWM``, reset between phases through ``/proc/self/clear_refs``). It then fits ``peak = a*E + b*N*d + c`` per
method over the runs (E edges, N nodes, d the dimension) and prints the table. One thread per process unless
``--threads`` says more.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
GIB = 1024 ** 3


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def _measure(nodes: int, method: str, dim: int, steps: int, batch: int, distill_users: int) -> dict:
    """One size and method, in this process: peak RSS per phase and median seconds per training step."""
    import torch
    from synthetic import power_law_graph

    import training.trainer as trainer
    from training.config import TrainConfig
    from training.interactions import Interactions
    from training.pipeline import prepare, quantize, train_full_precision

    step_seconds: list[float] = []
    original = trainer.train_epoch

    def few_steps(model, optimizer, adjacency, pairs, sampler, settings, rng, *args):
        """``steps`` steps (one "epoch" over the first ``steps * batch`` pairs), each one timed."""
        for start in range(0, steps * settings.batch_size, settings.batch_size):
            began = time.perf_counter()
            loss = original(model, optimizer, adjacency, pairs[start:start + settings.batch_size], sampler,
                            settings, rng, *args)
            step_seconds.append(time.perf_counter() - began)
        return loss

    trainer.train_epoch = few_steps
    out: dict = {"nodes": nodes, "method": method, "dim": dim, "steps": steps, "batch": batch,
                 "threads": torch.get_num_threads()}
    began = time.perf_counter()
    pairs, n_users, n_items = power_law_graph(nodes)
    rng = np.random.default_rng(1)
    held = rng.choice(len(pairs), size=400, replace=False)  # tiny valid and test sets: validation stays cheap
    keep = np.ones(len(pairs), dtype=bool)
    keep[held] = False
    data = Interactions(f"synthetic-{nodes}", n_users, n_items, pairs[keep], pairs[held[:200]],
                        [str(u) for u in range(n_users)], [str(i) for i in range(n_items)], "synthetic")
    del pairs, keep
    out.update(edges=len(data.train), generate_seconds=time.perf_counter() - began,
               rss_data_gib=_status_kib("VmRSS") / 2 ** 20)
    with tempfile.TemporaryDirectory() as model_dir:
        config = TrainConfig(dataset="synthetic", method=method, dim=dim, layers=3, model_dir=model_dir,
                             progress=False, bpr={"batch_size": batch},
                             fp32={"epochs": 1, "eval_every": 1}, qat={"epochs": 1, "eval_every": 1},
                             distill={"users": distill_users})
        _reset_peak()
        began = time.perf_counter()
        ws = prepare(config, data, valid_pairs=data.train[:200])
        out.update(build_seconds=time.perf_counter() - began, peak_build_gib=_status_kib("VmHWM") / 2 ** 20,
                   rss_built_gib=_status_kib("VmRSS") / 2 ** 20)
        _reset_peak()
        model, _ = train_full_precision(ws)
        out.update(peak_fp32_gib=_status_kib("VmHWM") / 2 ** 20, fp32_step_seconds=float(np.median(step_seconds)))
        if method == "gnaq":
            step_seconds.clear()
            _reset_peak()
            quantize(ws, model)
            out.update(peak_qat_gib=_status_kib("VmHWM") / 2 ** 20, qat_step_seconds=float(np.median(step_seconds)))
    out["peak_gib"] = max(v for k, v in out.items() if k.startswith("peak_"))
    return out


def _child(args: argparse.Namespace, nodes: int, method: str, dim: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--child", str(nodes), method, str(dim), "--steps", str(args.steps),
               "--batch", str(args.batch), "--distill-users", str(args.distill_users)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"nodes": nodes, "method": method, "dim": dim, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_plan(args: argparse.Namespace) -> list[dict]:
    plan = [(n, m, d) for n in args.nodes for d in args.dims for m in args.methods]
    if args.extra_dim_run:
        nodes, dim = map(int, args.extra_dim_run.split(":"))
        plan += [(nodes, m, dim) for m in args.methods]
    rows = []
    for nodes, method, dim in plan:
        rows.append(_child(args, nodes, method, dim))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def fit_formula(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Least squares ``peak bytes = a*E + b*N*d + c`` per method: bytes per edge, per embedding value, fixed."""
    formulas = {}
    for method in sorted({r["method"] for r in rows if "peak_gib" in r}):
        runs = [r for r in rows if r["method"] == method and "peak_gib" in r]
        x = np.array([[r["edges"], r["nodes"] * r["dim"], 1.0] for r in runs])
        y = np.array([r["peak_gib"] * GIB for r in runs])
        (a, b, c), *_ = np.linalg.lstsq(x, y, rcond=None)
        formulas[method] = {"bytes_per_edge": float(a), "bytes_per_value": float(b), "fixed_bytes": float(c),
                            "runs": len(runs)}
    return formulas


def largest_nodes(formula: dict[str, float], budget_gib: float, dim: int, edges_per_node: float) -> int:
    """The most nodes (at ``edges_per_node`` edges each) whose predicted peak fits in ``budget_gib``."""
    per_node = formula["bytes_per_edge"] * edges_per_node + formula["bytes_per_value"] * dim
    return int((budget_gib * GIB - formula["fixed_bytes"]) / per_node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--methods", nargs="+", default=["fp32", "gnaq"], choices=["fp32", "gnaq"])
    parser.add_argument("--dims", type=int, nargs="+", default=[64])
    parser.add_argument("--extra-dim-run", type=str, default="300000:16",
                        help="NODES:DIM of one more run per method, so the fit can tell edges from N*d")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--distill-users", type=int, default=256, help="GNAQ's [distill] users per step "
                        "(BENCHMARKS.md's memory table: 256)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train-memory.json"))
    parser.add_argument("--merge", type=Path, nargs="+", help="no runs: the rows of these earlier --out files, "
                        "fitted and tabled together (written to --out)")
    parser.add_argument("--child", nargs=3, metavar=("NODES", "METHOD", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        nodes, method, dim = args.child
        print(json.dumps(_measure(int(nodes), method, int(dim), args.steps, args.batch, args.distill_users)))
        return
    if args.merge:
        rows = [row for path in args.merge for row in json.loads(path.read_text())["rows"]]
    else:
        rows = _run_plan(args)
    formulas = fit_formula(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows, "formulas": formulas}, indent=1))
    print("| nodes | edges | d | method | build peak GiB | train peak GiB | s/step fp32 | s/step GNAQ |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['nodes']:,} | | {r['dim']} | {r['method']} | failed: {r['error']} | | | |")
            continue
        train_peak = max(r["peak_fp32_gib"], r.get("peak_qat_gib", 0.0))
        qat = f"{r['qat_step_seconds']:.2f}" if "qat_step_seconds" in r else ""
        print(f"| {r['nodes']:,} | {r['edges']:,} | {r['dim']} | {r['method']} | {r['peak_build_gib']:.2f} | "
              f"{train_peak:.2f} | {r['fp32_step_seconds']:.2f} | {qat} |")
    for method, f in formulas.items():
        print(f"{method}: peak bytes = {f['bytes_per_edge']:.0f} x E + {f['bytes_per_value']:.1f} x N x d + "
              f"{f['fixed_bytes'] / GIB:.2f} GiB  ({f['runs']} runs); at 20 edges per node and d = 64: "
              + ", ".join(f"{budget} GiB -> {largest_nodes(f, budget, 64, 20):,} nodes" for budget in (24, 80)))


if __name__ == "__main__":
    main()
