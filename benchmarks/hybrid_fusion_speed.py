"""End-to-end ``Collection.search`` time of each fusion and depth, one query at a time (nq = 1).

Opens a collection built by ``benchmarks/bench_hybrid.py`` (default: its 1M one in
``$BNE_BENCH_HYBRID_DIR``), runs the 100 SciFact test claims once through every setting to warm the
postings cache, then times each setting on each query, interleaved, and prints the medians.

    python benchmarks/hybrid_fusion_speed.py [--index /tmp/bne-bench-hybrid/hybrid-1000000.bne]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

SETTINGS = [
    ("dense", {"mode": "dense"}),
    ("rrf, depth 100 (the default)", {"mode": "hybrid"}),
    ("linear, depth 100", {"mode": "hybrid", "fusion": "linear"}),
    ("rrf, depth 1000", {"mode": "hybrid", "depth": 1000}),
    ("linear, depth 1000", {"mode": "hybrid", "fusion": "linear", "depth": 1000}),
]


def main() -> int:
    import bench_hybrid
    import bne

    folder = os.environ.get("BNE_BENCH_HYBRID_DIR", "/tmp/bne-bench-hybrid")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", default=os.path.join(folder, "hybrid-1000000.bne"))
    a = p.parse_args()
    qs = bench_hybrid.queries()
    times: dict[str, list[float]] = {name: [] for name, _ in SETTINGS}
    with bne.Collection.open(a.index) as c:
        for q in qs:  # warm: every query's postings cached, as in a running service
            for _, kw in SETTINGS:
                c.search([q], 10, **kw)
        for q in qs:
            for name, kw in SETTINGS:
                t0 = time.perf_counter()
                c.search([q], 10, **kw)
                times[name].append(time.perf_counter() - t0)
        n = len(c.index)
    dense = statistics.median(times["dense"])
    for name, _ in SETTINGS:
        m = statistics.median(times[name])
        print(f"{name:30s} median {m * 1e3:6.1f} ms  ({m / dense:.2f}x dense)  N = {n:,}, nq = 1")
    print("load average {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
