"""The study's report: every row read back from real artifacts into JSON, a replaceable Markdown section, plots."""

import json
import sys
from pathlib import Path

from tests.conftest import FAST
from training.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from report import write_report  # noqa: E402
from study import ROWS, row_command  # noqa: E402


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
    assert "Not run (time budget): seed 0 n2uq-2bit." in text
    for plot in ("ml-100k-bits.png", "ml-100k-curves.png"):
        assert (out / "bench" / "plots" / plot).read_bytes().startswith(b"\x89PNG")
