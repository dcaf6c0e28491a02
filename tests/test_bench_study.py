"""The study's report: every row read back from real artifacts into JSON, a replaceable Markdown section, plots."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from cli.main import config_of, main
from tests.conftest import FAST, flat_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from report import _still_valid, race_seconds, write_report  # noqa: E402
from study import ROWS, row_command, run_rows  # noqa: E402
from study import main as study_main


def test_report_reads_the_rows_back_and_replaces_its_own_section(tmp_path):
    runs = tmp_path / "runs"
    commands = {}
    for version, flags in dict(ROWS).items():
        if version not in ("fp32", "gnaq-2bit", "lsq-2bit"):
            continue
        command = row_command("ml-100k", flags, 0, runs / "ml-100k-seed0", version, None)
        commands[version] = command
        assert main(["train", *FAST, *command[command.index(flags[0]):]]) == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "BENCHMARKS.md").write_text("# Benchmarks\n\nhand-written text\n")
    for _ in range(2):  # a second report replaces the section instead of appending another one
        report = write_report("ml-100k", runs, {0: {**commands, "n2uq-2bit": ["gnaq", "train"]}}, budget_minutes=1.0,
                              out_root=out)

    rows = {row["version"]: row for row in report["rows"]}
    assert set(rows) == {"fp32", "gnaq-2bit", "lsq-2bit"}
    manifest = json.loads((runs / "ml-100k-seed0" / "gnaq-2bit" / "manifest.json").read_text())
    assert rows["gnaq-2bit"]["test"] == manifest["metrics"]["test"]
    assert rows["gnaq-2bit"]["stored_bytes_per_node"] < rows["fp32"]["stored_bytes_per_node"] == 16 * 4
    assert json.loads((out / "bench" / "results" / "ml-100k.json").read_text())["rows"] == report["rows"]
    text = (out / "BENCHMARKS.md").read_text()
    assert text.startswith("# Benchmarks\n\nhand-written text\n")
    assert text.count("<!-- study:ml-100k -->") == 1 and text.count("| gnaq-2bit | 2 |") == 1
    assert "Not run (left out by `--rows`, or the time budget ran out): seed 0 n2uq-2bit." in text
    for plot in ("ml-100k-bits.png", "ml-100k-curves.png"):
        assert (out / "bench" / "plots" / plot).read_bytes().startswith(b"\x89PNG")
    assert report["time_to_same_accuracy"][0]["seconds"].keys() == {"gnaq-2bit", "lsq-2bit"}


def test_report_keeps_recorded_rows_whose_run_is_gone_only_for_the_same_command(tmp_path):
    runs = tmp_path / "runs"
    flags = dict(ROWS)
    # The recorded command must be what trained the row, settings and all, for the record to be trusted.
    commands = {v: ["gnaq", "train", *FAST, *row_command("ml-100k", flags[v], 0, runs / "ml-100k-seed0", v, None)[2:]]
                for v in ("fp32", "ptq-node-2bit")}
    for command in commands.values():
        assert main(command[1:]) == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "BENCHMARKS.md").write_text("# Benchmarks\n")
    first = write_report("ml-100k", runs, {0: commands}, budget_minutes=None, out_root=out)
    curves = {row["version"]: row["valid_curve"] for row in first["rows"]}
    assert len(curves["fp32"][1]) >= 2 and curves["ptq-node-2bit"] == [[], []]  # PTQ has no stage of its own

    shutil.rmtree(runs / "ml-100k-seed0" / "ptq-node-2bit")  # e.g. a fresh checkout: runs/ is not in git
    kept = write_report("ml-100k", runs, {0: commands}, budget_minutes=None, out_root=out)
    rows = {row["version"]: row for row in kept["rows"]}
    assert rows["ptq-node-2bit"]["kept"] and "kept" not in rows["fp32"]
    assert rows["ptq-node-2bit"]["machine"] == first["machine"]  # where it was trained, for its seconds
    assert rows["ptq-node-2bit"]["test"] == first["rows"][1]["test"]
    assert "| ptq-node-2bit † |" in (out / "BENCHMARKS.md").read_text()
    assert f"same command and settings on {first['machine']} (" in (out / "BENCHMARKS.md").read_text()

    changed = {**commands, "ptq-node-2bit": [*commands["ptq-node-2bit"], "--clip", "0.9"]}
    assert write_report("ml-100k", runs, {0: changed}, budget_minutes=None, out_root=out)["not_run"] == [
        "seed 0 ptq-node-2bit"]


def test_records_without_settings_are_not_kept(tmp_path):
    # Their command's config file may have changed since they were trained; only recorded settings can tell.
    runs, out = tmp_path / "runs", tmp_path / "out"
    (out / "bench" / "results").mkdir(parents=True)
    (out / "BENCHMARKS.md").write_text("# Benchmarks\n")
    flags = dict(ROWS)
    commands = {v: row_command("ml-100k", flags[v], 0, runs / "ml-100k-seed0", v, None)
                for v in ("ptq-node-2bit", "gnaq-2bit")}
    legacy = {"seed": 0, "method": "ptq", "bits": 2, "test": {m: 0.1 for m in ("recall@10", "ndcg@10", "recall@20",
                                                                             "ndcg@20")},
              "stored_bytes_per_node": 20.0, "served_bytes_per_item": 20.0, "train_seconds_by_stage": {"fp32": 1.0},
              "epochs_by_stage": {"fp32": 1}, "device": "cpu"}
    rows = [{**legacy, "version": v, "command": " ".join(c)} for v, c in commands.items()]
    rows[1].update(_record(commands["gnaq-2bit"], config_of(commands["gnaq-2bit"][2:]).model_dump(mode="json")))
    (out / "bench" / "results" / "ml-100k.json").write_text(json.dumps({"rows": rows}))
    report = write_report("ml-100k", runs, {0: commands}, budget_minutes=None, out_root=out)
    assert [row["version"] for row in report["rows"]] == ["gnaq-2bit"]
    assert report["not_run"] == ["seed 0 ptq-node-2bit"]


ML_100K_FIT = {"n_fit": 72_000, "n_items": 1682}


def _record(command: list[str], config: dict) -> dict:
    """A study row's record of ``command``: its settings, and what today's recipe derives for MovieLens-100K."""
    return {"command": " ".join(command), "config": config, "data": ML_100K_FIT,
            "derived": config_of(command[2:]).for_data(**ML_100K_FIT)[1]}


def test_a_setting_added_after_a_record_matches_only_at_the_value_it_ran_with(tmp_path):
    today = row_command("ml-100k", dict(ROWS)["gnaq-2bit"], 0, tmp_path, "gnaq-2bit", None)
    assert _still_valid(_record(today, config_of(today[2:]).model_dump(mode="json")), today)
    # Records predating the quantization-aware select_window ran with 1, not today's default 3.
    command = [*today, "--qat-select-window", "1"]
    config = config_of(command[2:]).model_dump(mode="json")
    older = _record(command, {k: v for k, v in flat_config(config).items() if k != "center"})
    assert _still_valid(older, command)  # a flat record, before --center existed: its default is what ran
    assert not _still_valid({**older, "command": " ".join(today)}, today)
    centred = [*command, "--center"]
    assert not _still_valid({**older, "command": " ".join(centred)}, centred)
    assert not _still_valid(_record(command, {**flat_config(config), "clip": 0.5}), command)
    assert not _still_valid(_record(command, {**config, "nonsense": 1}), command)


def test_a_record_is_not_kept_once_the_recipe_derives_other_settings(tmp_path):
    # The quantization-aware rate went from 5e-3 to 0.02 with the same command and the same (unset) setting.
    command = row_command("ml-100k", dict(ROWS)["lsq-2bit"], 0, tmp_path, "lsq-2bit", None)
    record = _record(command, config_of(command[2:]).model_dump(mode="json"))
    assert _still_valid(record, command)
    assert not _still_valid({**record, "derived": {**record["derived"], "qat.lr": 5e-3}}, command)
    for written_before in ("derived", "data"):
        assert not _still_valid({k: v for k, v in record.items() if k != written_before}, command)


def test_gnaq_settings_do_not_invalidate_other_methods_rows(tmp_path):
    command = row_command("ml-100k", dict(ROWS)["lsq-2bit"], 0, tmp_path, "lsq-2bit", None)
    config = config_of(command[2:]).model_dump(mode="json")
    assert _still_valid(_record(command, {**config, "gnaq": {"clip": 0.5, "center": True}}), command)
    assert not _still_valid(_record(command, {**config, "qat": {"lr": 0.5}}), command)


def test_only_the_named_rows_are_trained(tmp_path, capsys):
    runs = tmp_path / "runs"
    flags = dict(ROWS)
    commands = {v: ["gnaq", "train", *FAST, *row_command("ml-100k", flags[v], 0, runs / "ml-100k-seed0", v, None)[2:]]
                for v in ("fp32", "ptq-node-2bit")}
    assert run_rows({0: commands}, runs, "ml-100k", None, only={"ptq-node-2bit"}) == []
    assert [p.name for p in (runs / "ml-100k-seed0").iterdir() if (p / "manifest.json").is_file()] == [
        "ptq-node-2bit"]
    with pytest.raises(SystemExit):
        study_main(["ml-100k", "--rows", "gnaq-3bit"])
    assert "unknown rows: gnaq-3bit" in capsys.readouterr().err


def test_the_race_costs_its_losers_seconds_and_nothing_without_a_race():
    trials = [{"center": False, "recall@20": 0.30, "epochs": 1, "seconds": 5.0},
              {"center": True, "recall@20": 0.32, "epochs": 3, "seconds": 14.0}]
    assert race_seconds({"gnaq_variant": {"chosen": {"center": True}, "trials": trials}}) == 5.0
    assert race_seconds({"gnaq_variant": {"chosen": {}, "trials": []}}) == 0.0
    assert race_seconds({}) == 0.0
