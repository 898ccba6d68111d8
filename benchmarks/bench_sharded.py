"""Sharded search on Ray against one process, on this machine (docs/SCALING.md uses these numbers).

Run inside a loopback-only network namespace, like the tests (root needed):

    ip netns add bne-bench && ip netns exec bne-bench ip link set lo up
    ip netns exec bne-bench python -m pytest benchmarks/bench_sharded.py --benchmark-only -s
    ip netns del bne-bench
"""

import os
import tempfile
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import bne  # noqa: E402
from bne import distributed  # noqa: E402

N = int(os.environ.get("BNE_BENCH_N", 1_000_000))
BITS, K, NQ, SHARDS = 1024, 10, 16, 2


@pytest.fixture(scope="module")
def setup():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False)
    folder = tempfile.mkdtemp(prefix="bne-shard-bench-")
    rng = np.random.default_rng(0)
    index = bne.Index(BITS)
    index.add(rng.integers(0, 256, (N, BITS // 8), dtype=np.uint8))
    path = os.path.join(folder, "all.bne")
    index.save(path)
    distributed.shard_index(path, SHARDS, os.path.join(folder, "shards"))
    sharded = distributed.ShardedIndex(os.path.join(folder, "shards"), threads=1)
    q = rng.integers(0, 256, (NQ, BITS // 8), dtype=np.uint8)
    yield index, sharded, q
    sharded.close()
    ray.shutdown()


def med(fn, rounds=15):
    fn()
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def test_sharded_vs_single(benchmark, setup):
    index, sharded, q = setup
    benchmark.pedantic(lambda: sharded.search(q, K), rounds=15, warmup_rounds=1)
    t_sharded = benchmark.stats.stats.median
    t_single = med(lambda: index.search(q, K, threads=SHARDS))
    t_one_thread = med(lambda: index.search(q, K, threads=1))
    t_q1 = med(lambda: sharded.search(q[:1], K))
    t_q1_single = med(lambda: index.search(q[:1], K, threads=SHARDS))
    ping = med(lambda: ray.get([a.info.remote() for a in sharded.actors]), rounds=50)
    parts = [
        (np.zeros((NQ, K), np.int32), np.arange(NQ * K).reshape(NQ, K) + i * 10**6, np.arange(NQ * K).reshape(NQ, K))
        for i in range(8)
    ]
    merge = med(lambda: bne.index.merge_topk(parts, K, NQ), rounds=200)
    rate = N / t_one_thread  # codes scanned per second per core at nq=16
    print(f"\n{N:,} x {BITS} bits, {SHARDS} shards (1 thread each), {NQ} queries, k={K}:")
    print(
        f"  sharded on Ray {t_sharded * 1e3:.2f} ms | one process, {SHARDS} threads {t_single * 1e3:.2f} ms | "
        f"one thread {t_one_thread * 1e3:.2f} ms"
    )
    print(
        f"  overhead per call {(t_sharded - t_single) * 1e3:.2f} ms; nq=1: sharded {t_q1 * 1e3:.2f} ms vs "
        f"{t_q1_single * 1e3:.2f} ms"
    )
    print(
        f"  actor round trip (all shards) {ping * 1e3:.2f} ms; merge of 8 shard lists {merge * 1e6:.0f} us; "
        f"scan rate {rate / 1e6:.1f} M codes/s/core at nq={NQ}"
    )
