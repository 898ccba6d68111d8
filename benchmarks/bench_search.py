"""bne against faiss.IndexBinaryFlat on the same random codes, in the same run.

    python -m pytest benchmarks/bench_search.py --benchmark-only          # all cases (a few minutes)
    BNE_ISA=avx2 FAISS_SIMD_LEVEL=AVX2 python -m pytest benchmarks/bench_search.py --benchmark-only -k "1024 and nq16"

Sizes: BNE_BENCH_N (default 1,000,000 codes). Ratios are printed at the end of the run.
"""

import os

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
