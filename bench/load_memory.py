"""Peak memory and time of loading one model version, in this fresh process: ``read_artifact`` alone, or the
service's whole ``ServedModel.load`` (artifact, index build, fold-in fits, smoke query).

Why a process of its own: the peak (``VmHWM``) is the process's all-time high, so each measure needs a fresh
process; the imports are done first and their RSS is given apart, so the growth is the load's own. Run it
twice on a tree whose numba kernel is not cached yet: the first served load compiles it.

Usage: python bench/load_memory.py VERSION_DIR [--served codes|float]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import contracts.artifact
from contracts.artifact import read_artifact
from service.engine.model import ServedModel

sys.path.insert(0, str(Path(__file__).parent))
from scale import status_kib  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--served", choices=("codes", "float"), default=None,
                        help="load as the service does, with this index (default: read_artifact alone)")
    args = parser.parse_args()
    pid = os.getpid()
    before_kib = status_kib(pid, "VmRSS")
    started, cpu = time.perf_counter(), time.process_time()
    loaded = ServedModel.load(args.version_dir, args.served) if args.served else read_artifact(args.version_dir)
    row = {"what": f"ServedModel.load ({args.served} index)" if args.served else "read_artifact",
           "reader": str(Path(contracts.artifact.__file__).resolve()), "load_s": time.perf_counter() - started,
           "load_cpu_s": time.process_time() - cpu, "rss_before_mib": before_kib / 1024,
           "rss_after_mib": status_kib(pid, "VmRSS") / 1024, "peak_mib": status_kib(pid, "VmHWM") / 1024,
           "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    row["peak_growth_mib"] = row["peak_mib"] - row["rss_before_mib"]
    row["kept_mib"] = row["rss_after_mib"] - row["rss_before_mib"]
    del loaded
    print(json.dumps(row))


if __name__ == "__main__":
    main()
