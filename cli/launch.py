"""``gnaq train --nproc N``: start the N ranks with torchrun on this machine, and say plainly how a failed run ended."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path


def launched_here(nproc: int | None) -> bool:
    """Whether this process is to start the ranks: ``--nproc`` above 1 and not already under torchrun."""
    return nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ


def _current(model_dir: Path) -> str | None:
    try:
        return (model_dir / "CURRENT").read_text(encoding="utf-8").strip()
    except OSError:
        return None


def torchrun(argv: list[str], nproc: int, model_dir: Path) -> int:
    """Run ``gnaq <argv>`` as ``nproc`` ranks under ``torch.distributed.run --standalone``; 2 if it failed.

    ``--standalone`` makes the rendezvous on a free local port; ``--max-restarts 0``: a failed rank fails the run
    (torchrun stops the others) rather than restarting every rank from scratch. Each rank sees the same ``argv``,
    ``--nproc`` included, which it checks against the ``WORLD_SIZE`` torchrun gives it; the ``--`` keeps torchrun's
    parser off gnaq's flags (it would take ``--nproc`` for an abbreviation of its own ``--nproc-per-node``).
    """
    before = _current(model_dir)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "--max-restarts=0", "-m", "--", "cli", *argv]
    print(f"gnaq: starting {nproc} ranks: python {shlex.join(command[1:])}", file=sys.stderr, flush=True)
    code = subprocess.call(command)
    if code == 0:
        return 0
    after = _current(model_dir)
    state = (f"{model_dir / 'CURRENT'} is unchanged ({before or 'none'})" if after == before
             else f"{model_dir / 'CURRENT'} now names {after}: rank 0 published it before the failure")
    print(f"gnaq: error: distributed training failed (torchrun exit code {code}); the failing rank's own "
          f"'gnaq: error:' line and torchrun's summary above say which rank and why; {state}", file=sys.stderr)
    return 2
