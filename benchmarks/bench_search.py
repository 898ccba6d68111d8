"""bne against faiss.IndexBinaryFlat on the same random codes, in the same run.

    python -m pytest benchmarks/bench_search.py --benchmark-only          # all cases (a few minutes)
    BNE_ISA=avx2 FAISS_SIMD_LEVEL=AVX2 python -m pytest benchmarks/bench_search.py --benchmark-only -k "1024 and nq16"
    # one core vs FAISS and the limit:
    taskset -c 0 python -m pytest benchmarks/bench_search.py --benchmark-only -k one_core

Sizes: BNE_BENCH_N (default 1,000,000 codes). Ratios are printed at the end of the run.

On a shared machine, `test_one_core_interleaved` is the one to quote: bne, FAISS and the limit
yardstick (../shared/tools/hamlimit.cpp, built with -march=native for this CPU only; never
shipped) run back to back in several rounds, and both wall-clock and thread CPU time are kept,
since CPU time is what other processes disturb least.
"""

import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest

import bne

faiss = pytest.importorskip("faiss")

N = int(os.environ.get("BNE_BENCH_N", 1_000_000))
K = 10
THREADS = [1, os.cpu_count() or 1]
_DATA: dict = {}


def data(bits):
    if bits not in _DATA:
        rng = np.random.default_rng(bits)
        codes = rng.integers(0, 256, size=(N, bits // 8), dtype=np.uint8)
        index = bne.Index(bits)
        index.add(codes)
        ref = faiss.IndexBinaryFlat(bits)
        ref.add(codes)
        _DATA.clear()  # keep one size in memory at a time
        _DATA[bits] = (codes, index, ref, rng.integers(0, 256, size=(1000, bits // 8), dtype=np.uint8))
    return _DATA[bits]


def rounds(nq, bits):
    return 3 if nq >= 1000 else 15


CASES = [(bits, nq, t) for bits in (1024, 2048) for nq in (1, 16, 1000) for t in sorted(set(THREADS))]


@pytest.mark.parametrize("bits,nq,threads", CASES, ids=[f"{b}-nq{q}-t{t}" for b, q, t in CASES])
@pytest.mark.parametrize("engine", ["bne", "faiss"])
def test_search(benchmark, recorder, engine, bits, nq, threads):
    codes, index, ref, queries = data(bits)
    q = queries[:nq]
    if engine == "bne":
        fn = lambda: index.search(q, K, threads=threads)  # noqa: E731
    else:
        faiss.omp_set_num_threads(threads)
        fn = lambda: ref.search(q, K)  # noqa: E731
    D, I = benchmark.pedantic(fn, rounds=rounds(nq, bits), warmup_rounds=1)
    assert D.shape == (nq, K)
    recorder((engine, N, bits, nq, threads, bne.active_isa()), benchmark)


@pytest.mark.parametrize("bits", [1024, 2048])
def test_stream(benchmark, recorder, bits):
    """Time to merely read every code once: the floor for a single-query scan."""
    codes = data(bits)[0]
    benchmark.pedantic(lambda: bne._core.stream_xor(codes), rounds=15, warmup_rounds=1)
    recorder(("stream", N, bits), benchmark)


@pytest.mark.parametrize("segments", [1, 489, 2000])
def test_segments(benchmark, recorder, segments):
    """The same 1M codes as 1, 489 (a `bne build` file: one commit per 2048) or 2,000 segments,
    through the one native call (nq = 16, all threads)."""
    codes, _, _, queries = data(1024)
    segs = np.array_split(codes, segments)
    q = queries[:16]
    benchmark.pedantic(lambda: bne._core.search_segments(segs, q, K), rounds=15, warmup_rounds=1)
    recorder(("segments", N, 1024, 16, segments), benchmark)


# -- one core, interleaved with FAISS and the limit yardstick -------------------------------------

HAMLIMIT = os.environ.get(
    "BNE_HAMLIMIT_SRC", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tools", "hamlimit.cpp")
)


def build_hamlimit():
    """The yardstick binary, or None where it cannot be built here (no source, compiler or AVX-512)."""
    if not os.path.exists(HAMLIMIT) or not shutil.which("g++") or "avx512" not in bne.available_isas():
        return None
    exe = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bne-hamlimit-{os.getpid()}")
    r = subprocess.run(
        ["g++", "-O3", "-march=native", "-std=c++17", "-pthread", HAMLIMIT, "-o", exe], capture_output=True, text=True
    )
    return exe if r.returncode == 0 else None


def limit_times(exe):
    """{bits: seconds}: the yardstick's fused top-k scan (16 queries, one thread), best line."""
    out = subprocess.run([exe, str(N), "5"], capture_output=True, text=True, timeout=1200).stdout
    best, bits = {}, None
    for line in out.splitlines():
        m = re.match(r"=== (\d+) bits", line)
        if m:
            bits = int(m.group(1))
        m = re.match(r"K2 (\+ top-10 heap, SIMD threshold filter|QB=16 \+ SIMD heap).*thr=1\s+([\d.]+) ms", line)
        if m and bits:
            best[bits] = min(best.get(bits, 1e9), float(m.group(2)) / 1e3)
    return best


def timed(fn, reps):
    """(best wall, best thread CPU time) of reps calls; the call runs on this thread."""
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - t)
    return min(wall), min(cpu)


@pytest.mark.parametrize("bits,nq", [(1024, 16), (2048, 16), (1024, 1000), (1024, 1)], ids=lambda v: str(v))
def test_one_core_interleaved(benchmark, bits, nq):
    """One core, several rounds of bne then FAISS then (nq = 16) the yardstick, back to back."""
    codes, index, ref, queries = data(bits)
    q = queries[:nq]
    faiss.omp_set_num_threads(1)
    exe = build_hamlimit() if nq == 16 else None
    reps = 1 if nq >= 1000 else 5
    rows = {"bne": [], "faiss": [], "limit": []}
    for _ in range(3):
        rows["bne"].append(timed(lambda: index.search(q, K, threads=1), reps))
        rows["faiss"].append(timed(lambda: ref.search(q, K), reps))
        if exe:
            lim = limit_times(exe).get(bits)
            if lim:
                rows["limit"].append((lim, lim))
    benchmark.pedantic(lambda: index.search(q, K, threads=1), rounds=3 if nq < 1000 else 1, warmup_rounds=0)
    b_wall, b_cpu = min(w for w, _ in rows["bne"]), min(c for _, c in rows["bne"])
    f_wall, f_cpu = min(w for w, _ in rows["faiss"]), min(c for _, c in rows["faiss"])
    line = (
        f"\n[one core, {bits} bits, nq={nq}, {bne.kernel_info()['kernel']}] bne {b_wall * 1e3:.1f} ms "
        f"(cpu {b_cpu * 1e3:.1f}), faiss {f_wall * 1e3:.1f} ms (cpu {f_cpu * 1e3:.1f}): faiss/bne "
        f"{f_wall / b_wall:.2f} wall, {f_cpu / b_cpu:.2f} cpu"
    )
    if rows["limit"]:
        lim = min(w for w, _ in rows["limit"])
        line += f"; limit yardstick {lim * 1e3:.1f} ms: bne/limit {b_wall / lim:.2f} wall, {b_cpu / lim:.2f} cpu"
        benchmark.extra_info["bne_over_limit"] = b_wall / lim
    if nq == 1:
        s = timed(lambda: bne._core.stream_xor(codes), 5)[0]
        line += f"; stream-read floor {s * 1e3:.1f} ms: bne/stream {b_wall / s:.2f}"
    benchmark.extra_info.update(bne_s=b_wall, bne_cpu_s=b_cpu, faiss_s=f_wall, faiss_cpu_s=f_cpu)
    print(line)
    INTERLEAVED.append(line.strip())
    if exe:
        os.unlink(exe)


INTERLEAVED: list = []


@pytest.mark.parametrize("bits", [1024])
def test_threads_single_query(benchmark, bits):
    """nq = 1 over 1M codes: all cores against one, interleaved (target: <= 0.7x on 2 cores)."""
    codes, index, _, queries = data(bits)
    q = queries[:1]
    cores = bne.get_num_threads()
    one, many = [], []
    for _ in range(21):
        one.append(timed(lambda: index.search(q, K, threads=1), 1)[0])
        many.append(timed(lambda: index.search(q, K, threads=cores), 1)[0])
    benchmark.pedantic(lambda: index.search(q, K, threads=cores), rounds=5, warmup_rounds=1)
    line = (
        f"[nq=1, {bits} bits] 1 thread {np.median(one) * 1e3:.2f} ms, {cores} threads "
        f"{np.median(many) * 1e3:.2f} ms (medians): ratio {np.median(many) / np.median(one):.2f} "
        f"(best-of: {min(many) / min(one):.2f})"
    )
    print("\n" + line)
    INTERLEAVED.append(line)
