"""Results of a study (``bench/study.py``): JSON, the Markdown section of BENCHMARKS.md, and the PNG plots.

Everything is read back from the version directories the rows wrote (manifest, history, tables), so a report
can be regenerated at any time: ``python bench/study.py DATASET --report-only``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from cli.main import config_of  # noqa: E402
from contracts.artifact import read_artifact  # noqa: E402
from training.config import TrainConfig, as_requested, as_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
TITLES = {"ml-100k": "MovieLens-100K", "lastfm": "Last.fm", "movielens1m": "MovieLens-1M", "gowalla": "Gowalla"}


def machine() -> str:
    """CPU model and core count of this machine (every row trained for a report ran here)."""
    model = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    return f"{model}, {os.cpu_count()} cores"


def _stage_seconds(history: list[dict]) -> dict[str, float]:
    seconds: dict[str, float] = {}
    for record in history:
        seconds[record["stage"]] = seconds.get(record["stage"], 0.0) + record["seconds"]
    return seconds


def row_result(version_dir: Path, command: list[str]) -> dict:
    """One row: test metrics, sizes, time and epochs, read from the written artifact."""
    artifact = read_artifact(version_dir)
    manifest = artifact.manifest
    history = json.loads((version_dir / "history.json").read_text())
    n_users, n_items = len(artifact.user_ids), len(artifact.item_ids)
    training = manifest.training
    stage = "fp32" if manifest.method == "fp32" else version_dir.name.split("-")[0]
    return {
        "version": version_dir.name, "command": " ".join(command), "seed": manifest.seed,
        "method": manifest.method, "bits": manifest.bits, "test": manifest.metrics.test,
        "valid": manifest.metrics.valid,
        "stored_bytes_per_node": manifest.sizes.embedding_bytes / (n_users + n_items),
        "served_bytes_per_item": artifact.item.stored_bytes / n_items,
        "run_seconds": training.seconds, "train_seconds_by_stage": _stage_seconds(history),
        "epochs_by_stage": training.epochs_run, "selected_epoch": training.selected_epoch,
        "device": training.device, "torch": training.torch,
        "race_seconds": race_seconds(manifest.training.choices),
        "valid_curve": _valid_curve(history, stage, start=race_seconds(manifest.training.choices)),
        "config": as_requested(TrainConfig.from_manifest(manifest).model_dump(mode="json"),
                               manifest.training.choices),
        "derived": dict(training.choices.get("derived", {})),
        "data": {"n_fit": manifest.dataset.n_fit, "n_items": manifest.dataset.n_items},
    }


def _cell(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def race_seconds(choices: dict) -> float:
    """Training seconds of the GNAQ variant race's losers: what choosing the variant cost beyond the winner's own
    epochs (0 without a race, or for a manifest that did not record them)."""
    variant = choices.get("gnaq_variant", {})
    trials, chosen = variant.get("trials", []), variant.get("chosen", {})
    won = next((t for t in trials if all(t[key] == value for key, value in chosen.items())), {})
    return sum(t.get("seconds", 0.0) for t in trials) - won.get("seconds", 0.0)


def valid_points(history: list[dict], stage_prefix: str, start: float = 0.0,
                 metric: str = "recall@20") -> list[tuple[int, float, float]]:
    """(epoch, cumulative training seconds from ``start``, validation ``metric``) at each validated epoch of the
    stage whose name starts with the prefix."""
    seconds, points = start, []
    for record in history:
        if not record["stage"].startswith(stage_prefix):
            continue
        seconds += record["seconds"]
        if record["valid"]:
            points.append((record["epoch"], seconds, record["valid"][metric]))
    return points


def _valid_curve(history: list[dict], stage_prefix: str, start: float = 0.0) -> list[list[float]]:
    """``valid_points``' seconds and validation Recall@20 as two lists, as they read back from the JSON."""
    points = valid_points(history, stage_prefix, start)
    return [[seconds for _, seconds, _ in points], [score for _, _, score in points]]


def time_to_same_accuracy(rows: list[dict], seed: int, versions: tuple[str, str]) -> dict | None:
    """QAT-stage training seconds each row needs to first reach the validation Recall@20 both reach."""
    curves = {r["version"]: r.get("valid_curve") for r in rows if r["seed"] == seed and r["version"] in versions}
    if len(curves) < len(versions) or not all(curve and curve[1] for curve in curves.values()):
        return None
    target = min(max(recall) for _, recall in curves.values())
    reached = {v: next(s for s, r in zip(*c, strict=True) if r >= target) for v, c in curves.items()}
    return {"target_valid_recall@20": target, "seconds": reached}


def _plot_bits(results: list[dict], out: Path, title: str) -> None:
    seed = results[0]["seed"]
    by_version = {r["version"]: r["test"]["recall@20"] for r in results if r["seed"] == seed}
    figure, axis = plt.subplots(figsize=(6, 3.8))
    if "fp32" in by_version:
        axis.axhline(by_version["fp32"], color="black", linestyle="--", label="fp32 LightGCN (32 bits)")
    for prefix, label, marker in (("gnaq", "GNAQ", "o"), ("lsq", "LSQ", "^"), ("n2uq", "N2UQ-style", "v"),
                                  ("ptq-node", "PTQ per node", "s")):
        points = [(b, by_version[f"{prefix}-{b}bit"]) for b in (1, 2, 4) if f"{prefix}-{b}bit" in by_version]
        if points:
            axis.plot(*zip(*points, strict=True), marker=marker, label=label)
    for version, label, marker in (("bigear-1bit", "BiGeaR-style (4 layers)", "D"),
                                   ("ptq-tensor-2bit", "PTQ per tensor", "x")):
        if version in by_version:
            bits = 1 if version.startswith("bigear") else 2
            axis.plot([bits], [by_version[version]], marker=marker, linestyle="", label=label)
    axis.set(xlabel="bits per value", ylabel="test Recall@20", xticks=[1, 2, 4], title=f"{title}, seed {seed}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def _plot_curves(rows: list[dict], seed: int, out: Path, title: str) -> None:
    figure, (fp32_axis, qat_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    curves = {r["version"]: r.get("valid_curve") for r in rows if r["seed"] == seed}
    if curves.get("fp32"):
        fp32_axis.plot(*curves["fp32"], marker="o", markersize=3, label="fp32")
    for version in ("gnaq-2bit", "lsq-2bit", "n2uq-2bit", "gnaq-2bit-no-distill", "lsq-2bit-distill", "bigear-1bit"):
        if curves.get(version):
            qat_axis.plot(*curves[version], marker="o", markersize=3, label=version)
    fp32_axis.set(xlabel="training seconds (fp32 stage)", ylabel="validation Recall@20", title=f"{title}: fp32")
    qat_axis.set(xlabel="training seconds (quantization-aware stage)",
                 ylabel="validation Recall@20", title=f"{title}: quantization-aware stage")
    for axis in (fp32_axis, qat_axis):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:  # rows kept from records written without curves have none
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def _markdown(dataset: str, report: dict) -> str:
    title, rows = TITLES.get(dataset, dataset), report["rows"]
    seeds = sorted({r["seed"] for r in rows})
    versions = list(dict.fromkeys(r["version"] for r in rows))
    fp32 = {r["seed"]: r["test"]["recall@20"] for r in rows if r["version"] == "fp32"}
    seed_args = " --seeds " + " ".join(map(str, seeds)) if seeds != [0] else ""
    budget = f" --budget-minutes {report['budget_minutes']:g}" if report["budget_minutes"] else ""
    lines = [f"Command: `python bench/study.py {dataset}{seed_args}{budget}` (results: "
             f"`bench/results/{dataset}.json`). Seeds: {', '.join(map(str, seeds))}"
             + (" (mean ± sample std)" if len(seeds) > 1 else "")
             + f". Machine: {report['machine']}, torch device {rows[0]['device']}. "
             "Each row's full `gnaq train` command is in the JSON. Stored bytes per node: the served tables "
             "(codes, float16 parameters) over all users and items; served bytes per item: what the codes "
             "index holds per item. Training seconds exclude validation; the fp32 stage is shared by every "
             "quantized row, so quantized rows show only their own stage (GNAQ's with its variant race's losing "
             "epochs, which also shift its validation curve). Epochs: fp32 + quantization-aware.",
             "",
             "| row | bits | Recall@10 | NDCG@10 | Recall@20 | NDCG@20 | R@20 / fp32 | stored B/node "
             "| served B/item | training s | epochs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for version in versions:
        found = [r for r in rows if r["version"] == version]
        first = found[0]
        metrics = [_cell([r["test"][m] for r in found]) for m in METRICS]
        ratio = _cell([r["test"]["recall@20"] / fp32[r["seed"]] for r in found if r["seed"] in fp32], 3) \
            if fp32 else "n/a"
        own = [s for stage, s in first["train_seconds_by_stage"].items() if stage != "fp32" or version == "fp32"]
        own.append(first.get("race_seconds", 0.0))
        stages = sorted(first["epochs_by_stage"], key=lambda stage: stage != "fp32")  # fp32 first
        epochs = " + ".join(str(first["epochs_by_stage"][stage]) for stage in stages)
        name = f"{version} †" if any(r.get("kept") for r in found) else version
        lines.append(f"| {name} | {first['bits'] or 32} | " + " | ".join(metrics)
                     + f" | {ratio} | {first['stored_bytes_per_node']:.1f} | {first['served_bytes_per_item']:.1f}"
                     f" | {_cell([sum(own)], 0)} | {epochs} |")
    lines += [""] + _verdicts(rows, fp32, report)
    kept_on = sorted({r["machine"] for r in rows if r.get("kept")})
    if kept_on:
        lines.append(f"* † Kept from an earlier run of the same command and settings on {'; '.join(kept_on)} "
                     "(its run directory was not on disk when this report was written); the others were (re)trained "
                     "for it. Where a stage has a wall-time budget, a kept row's fp32 warm start may have run a "
                     "different number of epochs than the fp32 row above (see its epochs column).")
    if report["not_run"]:
        lines.append(f"* Not run (left out by `--rows`, or the time budget ran out): {', '.join(report['not_run'])}.")
    lines += ["", f"![Recall@20 against bits, {title}](bench/plots/{dataset}-bits.png)",
              f"![Validation Recall@20 against training time, {title}](bench/plots/{dataset}-curves.png)"]
    return "\n".join(lines)


def _verdicts(rows: list[dict], fp32: dict[int, float], report: dict) -> list[str]:
    """Computed, not typed: GNAQ 2-bit against fp32 and every other 2-bit row; its time against LSQ."""
    lines = []
    for seed in sorted(fp32):
        two_bit = {r["version"]: r["test"]["recall@20"] for r in rows if r["seed"] == seed and r["bits"] == 2}
        if "gnaq-2bit" not in two_bit:
            continue
        gnaq = two_bit.pop("gnaq-2bit")
        others = {v: s for v, s in two_bit.items() if not v.startswith("gnaq-2bit-")}  # ablations are GNAQ
        best_other = max(others.items(), key=lambda kv: kv[1]) if others else None
        verdict = f"* Seed {seed}: GNAQ 2-bit Recall@20 {gnaq:.4f} = **{gnaq / fp32[seed]:.3f}x** fp32"
        if best_other:
            relation = "above" if gnaq > best_other[1] else "**not** above"
            verdict += (f"; {relation} every other 2-bit row (best other: {best_other[0]} {best_other[1]:.4f}, "
                        f"GNAQ {100 * (gnaq / best_other[1] - 1):+.1f}%)")
        lines.append(verdict + ".")
    for seed, timing in report["time_to_same_accuracy"].items():
        if timing:
            gnaq, lsq = timing["seconds"]["gnaq-2bit"], timing["seconds"]["lsq-2bit"]
            ratio = (f"GNAQ takes {gnaq / lsq:.2f}x LSQ's time" if gnaq > 0 and lsq > 0 else
                     "GNAQ's starting point, before any quantization-aware epoch, already reaches it" if gnaq == 0
                     else "LSQ's starting point already reaches it")
            lines.append(f"* Seed {seed}, quantization-aware stage to validation Recall@20 "
                         f"{timing['target_valid_recall@20']:.4f} (the lower of the two best): GNAQ 2-bit "
                         f"{gnaq:.0f} s, LSQ 2-bit {lsq:.0f} s ({ratio}).")
    return lines


def _replace_section(path: Path, dataset: str, body: str) -> None:
    text = path.read_text()
    begin, end = f"<!-- study:{dataset} -->", f"<!-- /study:{dataset} -->"
    section = f"{begin}\n{body}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: section, text, flags=re.DOTALL)
    else:
        text = text.rstrip("\n") + f"\n\n## Quantization study: {TITLES.get(dataset, dataset)}\n{section}\n"
    path.write_text(text)


def _earlier_rows(results_path: Path) -> dict[tuple[int, str], dict]:
    """Rows of the dataset's previous JSON, by (seed, version): kept where their run is no longer on disk."""
    if not results_path.is_file():
        return {}
    earlier = json.loads(results_path.read_text())
    return {(r["seed"], r["version"]): {"machine": earlier.get("machine", "unrecorded"), **r} for r in earlier["rows"]}


def _still_valid(record: dict, command: list[str]) -> bool:
    """Whether a recorded row is what ``command`` would train today: same command, same settings, and the same
    settings derived from the data.

    A setting added after the record was written matches when it is at the value the record ran with: its
    default, as new settings default to the behaviour before them, except those that changed it
    (``RAN_BEFORE_THEY_EXISTED``: the quantization-aware stage's ``select_window``, 1 before it existed).
    GNAQ's own settings are not compared for other methods' rows, nor where a row was written. Records in the
    flat form of earlier versions are read in today's sections. Records written before rows carried their
    settings, or what the recipe derived from the data, are never kept: the config file their command names, or
    the recipe's rules (its quantization-aware rate, say), may have changed since, and nothing recorded says.
    """
    if record["command"] != " ".join(command) or not {"config", "derived", "data"} <= record.keys():
        return False
    expected = config_of(command[2:])
    try:
        recorded = TrainConfig(**as_run(record["config"]))
    except ValidationError:  # a setting that no longer exists
        return False
    ignored = {"model_dir", "version", "publish", "progress"} | ({"gnaq"} if expected.method != "gnaq" else set())
    if expected.model_dump(exclude=ignored) != recorded.model_dump(exclude=ignored):
        return False
    _, derived = expected.for_data(record["data"]["n_fit"], record["data"]["n_items"])
    return derived.keys() == record["derived"].keys() and all(
        math.isclose(value, record["derived"][name]) for name, value in derived.items())


def write_report(dataset: str, runs_dir: Path, commands: dict[int, dict[str, list[str]]], *,
                 budget_minutes: float | None, out_root: Path = ROOT) -> dict:
    """Collect the rows, then write the JSON, the BENCHMARKS.md section and both plots under ``out_root``.

    A row is read from its version directory under ``runs_dir``; a row not trained there but recorded with the
    same command in the previous ``bench/results/DATASET.json`` is kept from that record (``"kept": true``), so
    a study can rerun some rows on a fresh checkout (``runs/`` is not in git) without retraining every row.
    """
    results, plots = out_root / "bench" / "results", out_root / "bench" / "plots"
    earlier = _earlier_rows(results / f"{dataset}.json")
    here = machine()  # where the rows on disk were trained; kept rows carry their own
    rows, not_run = [], []
    for seed, by_version in commands.items():
        for version, command in by_version.items():
            directory = runs_dir / f"{dataset}-seed{seed}" / version
            record = earlier.get((seed, version))
            if (directory / "manifest.json").is_file():
                rows.append({**row_result(directory, command), "machine": here})
            elif record is not None and _still_valid(record, command):
                rows.append({**record, "kept": True})
            else:
                not_run.append(f"seed {seed} {version}")
    if not rows:
        raise SystemExit(f"no trained row under {runs_dir}/{dataset}-seed*: nothing to report")
    report = {"dataset": dataset, "machine": here, "budget_minutes": budget_minutes, "rows": rows,
              "not_run": not_run,
              "time_to_same_accuracy": {seed: time_to_same_accuracy(rows, seed, ("gnaq-2bit", "lsq-2bit"))
                                        for seed in commands}}
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{dataset}.json").write_text(json.dumps(report, indent=1) + "\n")
    plots.mkdir(parents=True, exist_ok=True)
    title = TITLES.get(dataset, dataset)
    _plot_bits(rows, plots / f"{dataset}-bits.png", title)
    _plot_curves(rows, rows[0]["seed"], plots / f"{dataset}-curves.png", title)
    _replace_section(out_root / "BENCHMARKS.md", dataset, _markdown(dataset, report))
    return report
