#!/usr/bin/env bash
# Create .venv (once) and install the project with its dev extra, saying what each step does.
# torch==2.13.0 first: its CPU wheel is what pip finds here; a bare `torch` would pull the CUDA build.
# recbole is installed without dependencies: only its packaged MovieLens-100K file is used.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
say() { printf 'install: %s\n' "$*"; }
started=$SECONDS
if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
say "torch 2.13.0 (CPU build; the largest download, about a minute the first time)"
"${pip[@]}" "torch==2.13.0"
say "the project with its train, serve and dev extras (FastAPI, FAISS, Redis client, pytest, ...)"
"${pip[@]}" -e ".[dev]"
say "recbole 1.2.1 without its dependencies (only its packaged MovieLens-100K file is used)"
"${pip[@]}" --no-deps "recbole==1.2.1"
say "done in $((SECONDS - started)) s: .venv/bin/gnaq is ready"
