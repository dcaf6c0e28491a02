"""FAISS, imported quietly. Its loader tries the builds for the newest instruction sets first and logs each one
that is not installed as a ``ModuleNotFoundError`` at INFO, which reads like a failure on every start; only its
warnings are kept, and ``describe`` says which build loaded."""

from __future__ import annotations

import logging

logging.getLogger("faiss.loader").setLevel(logging.WARNING)

import faiss  # noqa: E402


def describe() -> str:
    """Version and compile options of the FAISS build in use (e.g. ``1.15.1, OPTIMIZE AVX2``)."""
    return f"{faiss.__version__}, {faiss.get_compile_options().strip()}"
