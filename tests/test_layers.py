"""The layout reads in the direction the data flows: no package imports from a layer above it.

model (the math) <- contracts (artifact, interaction log) <- training | service <- cli (the `gnaq` command).
Training and the service sit side by side and never import each other; only the CLI imports both.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"model": 0, "contracts": 1, "training": 2, "service": 2, "cli": 3}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_packages(path: Path) -> set[str]:
    """Top-level names of every import in the file, module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(LAYER))
def test_no_package_imports_a_layer_above_or_beside_it(package):
    offences = []
    for path in _modules(package):
        for imported in _imported_packages(path) & LAYER.keys():
            if imported != package and LAYER[imported] >= LAYER[package]:
                offences.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not offences, "; ".join(offences)


@pytest.mark.parametrize("package", sorted(LAYER))
def test_every_module_imports(package):
    for path in _modules(package):
        relative = path.relative_to(ROOT).with_suffix("")
        if relative.name == "__main__":
            continue
        importlib.import_module(".".join(relative.parts).removesuffix(".__init__"))


def test_the_checker_sees_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from training.pipeline import run_training\nimport service.main as m\n")
    assert {"training", "service"} <= _imported_packages(probe)


def test_the_service_runs_without_the_training_extras():
    """`pip install .[serve]` leaves out matplotlib and tqdm: the service and `gnaq serve` must not need them (scipy
    is a core dependency: the item fold-in's fit uses its sparse matrices at every model load)."""
    blocker = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('matplotlib', 'tqdm'):\n"
               "            raise ImportError(f'{name} is not installed (serve extra only)')\n"
               "sys.meta_path.insert(0, Block())\n"
               "import service.main, cli.main, contracts.versions\n"
               "service.main.create_app()\n")
    subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, check=True, capture_output=True, text=True)
