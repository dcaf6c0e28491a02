#!/usr/bin/env bash
# Create .venv (once) and install the project with its dev extra.
# torch==2.13.0 first: its CPU wheel is what pip finds here; a bare `torch` would pull the CUDA build.
# recbole is installed without dependencies: only its packaged MovieLens-100K file is used.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "recbole==1.2.1"
