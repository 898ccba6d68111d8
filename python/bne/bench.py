"""``bne bench``: the "Why binary?" table on the machine at hand.

Exact top-k for a batch of queries against N random vectors: float32 ``IndexFlatIP`` (384-d, the
MiniLM width), FAISS INT8 ``IndexScalarQuantizer``, FAISS ``IndexBinaryFlat`` at 1024 and 2048
bits, and bne at 1024 and 2048 bits. Medians of repeated runs; writes a JSON file and a log-log
PNG plot (when matplotlib is installed). Without faiss (a dev dependency) only the bne rows are
measured, with a one-line note.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time

import numpy as np

from . import _core
from .console import safe
from .fileio import check_writable
from .index import Index

DIM = 384
DEFAULT_OUT = "bne-bench"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, as lscpu shows it), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() == "model name" and value.strip():
                    return safe(value.strip())[:200]
    except OSError:
        pass
    return safe(platform.processor() or platform.machine() or "unknown CPU")[:200]


def out_prefix(out: str) -> str:
    """The prefix of the files ``bne bench --out OUT`` writes: a folder gets ``bne-bench`` in it,
    a ``.json`` / ``.png`` ending is dropped; ValueError (one line) when they cannot be written,
    checked before the benchmark runs, not after."""
    prefix = str(out)
    if not prefix or prefix.endswith(("/", os.sep)) or os.path.isdir(prefix):
        prefix = os.path.join(prefix or ".", DEFAULT_OUT)
    for ending in (".json", ".png"):
        if prefix.endswith(ending) and len(os.path.basename(prefix)) > len(ending):
            prefix = prefix[: -len(ending)]
    for ending in (".json", ".png"):
        check_writable(prefix + ending, "--out")
    return prefix


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm up (page faults, caches)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def run_bench(args) -> int:
    prefix = out_prefix(args.out)
    cpu = cpu_model()
    try:
        import faiss
    except ImportError:
        faiss = None  # type: ignore[assignment]
        print("note: faiss is not installed: FAISS rows skipped (pip install faiss-cpu to compare)")
    sizes = sorted(int(s) for s in str(args.sizes).split(","))
    nq, k = args.queries, args.k
    threads = args.threads or os.cpu_count() or 1
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    n_max = sizes[-1]
    print(f"generating {n_max:,} random vectors ({DIM}-d float32) and codes (1024 and 2048 bits)...", flush=True)
    xf = rng.standard_normal((n_max, DIM), dtype=np.float32) if faiss is not None else None
    qf = rng.standard_normal((nq, DIM), dtype=np.float32)
    codes = {b: rng.integers(0, 256, (n_max, b // 8), dtype=np.uint8) for b in (1024, 2048)}
    qcodes = {b: rng.integers(0, 256, (nq, b // 8), dtype=np.uint8) for b in (1024, 2048)}
    faiss_methods = ["float32 IndexFlatIP", "INT8 IndexScalarQuantizer", "FAISS binary 1024", "FAISS binary 2048"]
    methods = (faiss_methods if faiss is not None else []) + ["bne 1024", "bne 2048"]
    table: dict[str, dict[int, float]] = {m: {} for m in methods}
    for n in sizes:
        if faiss is not None:
            assert xf is not None
            flat = faiss.IndexFlatIP(DIM)
            flat.add(xf[:n])
            table["float32 IndexFlatIP"][n] = _median_ms(functools.partial(flat.search, qf, k), args.repeat)
            del flat
            sq = faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            sq.train(xf[: min(n, 100_000)])
            sq.add(xf[:n])
            table["INT8 IndexScalarQuantizer"][n] = _median_ms(functools.partial(sq.search, qf, k), args.repeat)
            del sq
        for b in (1024, 2048):
            if faiss is not None:
                fb = faiss.IndexBinaryFlat(b)
                fb.add(codes[b][:n])
                table[f"FAISS binary {b}"][n] = _median_ms(functools.partial(fb.search, qcodes[b], k), args.repeat)
                del fb
            ix = Index(b)
            ix.add(codes[b][:n])
            table[f"bne {b}"][n] = _median_ms(functools.partial(ix.search, qcodes[b], k, threads=threads), args.repeat)
            del ix
        print(f"  {n:>11,} codes done", flush=True)

    head = f"{'method':28s}" + "".join(f"{n:>12,}" for n in sizes)
    print(
        f"\nexact top-{k}, {nq} queries, {threads} thread(s), ms (median of {args.repeat}); "
        f"bne ISA {_core.active_isa()}; CPU {cpu}"
    )
    print(head)
    for m in methods:
        print(f"{m:28s}" + "".join(f"{table[m][n]:12.2f}" for n in sizes))
    pairs = [
        ("bne 1024", "float32 IndexFlatIP"),
        ("bne 1024", "INT8 IndexScalarQuantizer"),
        ("bne 1024", "FAISS binary 1024"),
        ("bne 2048", "FAISS binary 2048"),
    ]
    if faiss is not None:
        print("\nspeed-up of bne (x times faster)")
    for ours, theirs in pairs if faiss is not None else []:
        print(f"{ours + ' vs ' + theirs:40s}" + "".join(f"{table[theirs][n] / table[ours][n]:10.1f}x" for n in sizes))
    result = {
        "sizes": sizes,
        "queries": nq,
        "k": k,
        "threads": threads,
        "isa": _core.active_isa(),
        "cpu": cpu,
        "ms": table,
        "repeat": args.repeat,
    }
    with open(prefix + ".json", "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {safe(prefix)}.json", end="")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(" (no plot: matplotlib is not installed)")
        return 0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        ax.plot(sizes, [table[m][n] for n in sizes], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("database size (vectors)")
    ax.set_ylabel(f"latency for {nq} queries, top-{k} (ms)")
    ax.set_title(f"Exact search, {threads} thread(s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=120)
    print(f" and {safe(prefix)}.png")
    return 0
