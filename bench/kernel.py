"""The index searches alone, in one process: codes (compiled scan) against float (FAISS flat + IDSelector).

Random 2-bit codes, d = 64, per-node float16 parameters, centred; 60 queries, 30 excluded items, k = 10, one
thread. Times are the searching thread's CPU time (``time.thread_time``): on a shared machine wall time
counts other people's jobs. Also the process's RSS growth while the codes index is built, per item.

Usage: OMP_NUM_THREADS=1 python bench/kernel.py [--items 41000 1000000] [--queries 60]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from model.tables import QuantizedTable
from service.engine.faiss_build import faiss
from service.engine.index import CodeIndex, FloatIndex


def rss_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096


def table(rng: np.random.Generator, n: int) -> QuantizedTable:
    return QuantizedTable(rng.integers(0, 4, (n, 64), dtype=np.uint8), (rng.random(n) + .1).astype(np.float16),
                          rng.standard_normal(n).astype(np.float16), 2, (rng.random(64) + .5).astype(np.float16),
                          rng.standard_normal(64).astype(np.float16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[41_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=60)
    args = parser.parse_args()
    if min(args.items) < 100 or args.queries < 1:
        parser.error("--items must be at least 100 and --queries at least 1")
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    CodeIndex(table(rng, 100)).search(np.ones(64, np.float32), 10, np.array([1]))  # compile or load the cache
    print("| items | index | CPU ms min | CPU ms median | RSS growth B/item (build) |\n|---:|---|---:|---:|---:|")
    for n in args.items:
        items = table(rng, n)
        before = rss_bytes()
        codes = CodeIndex(items)
        growth = (rss_bytes() - before) / n
        flat = FloatIndex(items.dequantize())
        exclude = rng.choice(n, 30, replace=False)
        for name, index in (("codes", codes), ("float", flat)):
            times = []
            for _ in range(args.queries):
                query = rng.standard_normal(64).astype(np.float32)
                started = time.thread_time()
                index.search(query, 10, exclude)
                times.append(time.thread_time() - started)
            extra = f"{growth:.1f}" if name == "codes" else ""
            print(f"| {n:,} | {name} | {1e3 * min(times):.2f} | {1e3 * float(np.median(times)):.2f} | {extra} |")


if __name__ == "__main__":
    main()
