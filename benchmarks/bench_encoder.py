"""Encoder throughput / latency: bne.encoder.Encoder vs sentence-transformers on the same backbone.

    OMP_NUM_THREADS=1 pytest benchmarks/bench_encoder.py --benchmark-only --benchmark-columns=mean,stddev,rounds

Threads: BNE_BENCH_THREADS (default 1). Sentences/s are written to each benchmark's extra_info.
The bne encoder does strictly more work (the head + packing); both run all-MiniLM-L6-v2 on CPU.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
st_mod = pytest.importorskip("sentence_transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bne.encoder import Encoder, minilm_dir  # noqa: E402
from texts import SHORT, passages  # noqa: E402

THREADS = int(os.environ.get("BNE_BENCH_THREADS", "1"))
PASSAGES = passages(32, 140)  # > 128 tokens, truncated


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def bne_enc():
    enc = Encoder.default(1024)
    enc.max_length = 128
    return enc


@pytest.fixture(scope="module")
def st_model():
    m = st_mod.SentenceTransformer(str(minilm_dir()), device="cpu")
    m.max_seq_length = 128
    return m


def _rate(benchmark, n):
    benchmark.extra_info["texts_per_s"] = round(n / benchmark.stats.stats.mean, 1)
    benchmark.extra_info["threads"] = THREADS


@pytest.mark.benchmark(group="short sentences x256")
def test_bne_short(benchmark, bne_enc):
    benchmark.pedantic(
        bne_enc.encode, args=(SHORT,), kwargs={"batch_size": 64, "show_progress": False}, rounds=3, warmup_rounds=1
    )
    _rate(benchmark, len(SHORT))


@pytest.mark.benchmark(group="short sentences x256")
def test_st_short(benchmark, st_model):
    benchmark.pedantic(
        st_model.encode, args=(SHORT,), kwargs={"batch_size": 64, "show_progress_bar": False}, rounds=3, warmup_rounds=1
    )
    _rate(benchmark, len(SHORT))


@pytest.mark.benchmark(group="128-token passages x32")
def test_bne_passages(benchmark, bne_enc):
    benchmark.pedantic(
        bne_enc.encode, args=(PASSAGES,), kwargs={"batch_size": 32, "show_progress": False}, rounds=3, warmup_rounds=1
    )
    _rate(benchmark, len(PASSAGES))


@pytest.mark.benchmark(group="128-token passages x32")
def test_st_passages(benchmark, st_model):
    benchmark.pedantic(
        st_model.encode,
        args=(PASSAGES,),
        kwargs={"batch_size": 32, "show_progress_bar": False},
        rounds=3,
        warmup_rounds=1,
    )
    _rate(benchmark, len(PASSAGES))


@pytest.mark.benchmark(group="single query latency")
def test_bne_single_query(benchmark, bne_enc):
    benchmark(bne_enc.encode, ["what causes inflammation in mouse models?"], show_progress=False)


@pytest.mark.benchmark(group="single query latency")
def test_st_single_query(benchmark, st_model):
    benchmark(st_model.encode, ["what causes inflammation in mouse models?"], show_progress_bar=False)
