"""Every kernel this CPU can run against the scalar one, top-10 search on one thread, same run.

    python -m pytest benchmarks/bench_kernels.py --benchmark-only

Written for the Arm kernels (NEON, SVE), which were only tested under qemu, where timings mean
nothing: on a real Arm machine this prints the neon/sve speed-up over scalar. It works the same
on x86 (avx2, avx512 variants). Kernels run back to back in interleaved rounds and the best of
each is kept, so a loaded machine disturbs the ratio less. Size: BNE_BENCH_KERNEL_N codes
(default 200,000) of 1024 bits.
"""

import os
import time

import numpy as np
import pytest

import bne
from bne import _core

N = int(os.environ.get("BNE_BENCH_KERNEL_N", 200_000))
BITS = 1024
ROUNDS = 5


@pytest.fixture(scope="module")
def codes():
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(N, BITS // 8), dtype=np.uint8), rng.integers(
        0, 256, size=(16, BITS // 8), dtype=np.uint8
    )


@pytest.mark.parametrize("nq", [1, 16])
def test_kernels_vs_serial(benchmark, capsys, codes, nq):
    db, queries = codes
    q = queries[:nq]
    kernels = bne.available_kernels()
    run = {name: (lambda name=name: _core.knn(db, q, 10, 1, None, name)) for name in kernels}
    want = run["serial"]()
    best = dict.fromkeys(kernels, float("inf"))
    for _ in range(ROUNDS):
        for name, fn in run.items():
            t0 = time.perf_counter()
            got = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            for a, b in zip(got, want, strict=True):  # a speed-up only counts with the oracle's answer
                np.testing.assert_array_equal(a, b)
    active = bne.kernel_info()["kernel"]
    benchmark.pedantic(run[active], rounds=ROUNDS, iterations=1)
    info = bne.kernel_info()
    lines = [f"{N} x {BITS} bits, nq={nq}, top-10, 1 thread; cpu: {info['vendor']} {info['cpu']}"]
    for name in kernels:
        lines.append(f"  {name:11s} {best[name] * 1e3:9.2f} ms   {best['serial'] / best[name]:5.2f}x serial")
    benchmark.extra_info["kernels_ms"] = {k: v * 1e3 for k, v in best.items()}
    with capsys.disabled():
        print("\n" + "\n".join(lines))
