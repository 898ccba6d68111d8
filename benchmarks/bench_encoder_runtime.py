"""Inference backends vs sentence-transformers, same backbone (all-MiniLM-L6-v2), same max_length,
same run; plus the cold start of `bne search` on a 4-document index.

    HF_HUB_OFFLINE=1 pytest benchmarks/bench_encoder_runtime.py --benchmark-only \\
        --benchmark-columns=median,min,rounds --benchmark-sort=name

Texts/s and bit agreement with the torch fp32 codes go to each benchmark's extra_info (see
--benchmark-json). Threads: BNE_BENCH_THREADS (default "1,2"). SciFact passages come from
shared/data when present, else synthetic passages of the same length class.

`test_bulk_vs_sentence_transformers` is the issue-10 target: the bulk default (what `bne build`
runs) against sentence-transformers on 128 SciFact passages, max_length 256, 2 threads, both run
in every round (interleaved), the ratio of the medians printed at the end (goal >= 2.5).

    pytest benchmarks/bench_encoder_runtime.py --benchmark-only -k bulk_vs
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bne.encoder import runtime  # noqa: E402
from bne.encoder.base import default_head, minilm_dir  # noqa: E402
from bne.training.data import load_beir  # noqa: E402
from texts import SHORT, passages  # noqa: E402

THREADS = [int(t) for t in os.environ.get("BNE_BENCH_THREADS", "1,2").split(",")]


def _passages(n: int) -> list[str]:
    root = os.environ.get("BNE_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
    try:
        corpus, _, _ = load_beir("scifact", "test", root)
        return list(corpus.values())[:n]
    except (OSError, KeyError):
        pass
    return passages(n, 300)


PASSAGES = _passages(64)
CASES = {"short": (SHORT, 128), "passages128": (PASSAGES, 128), "passages256": (PASSAGES, 256)}
BACKENDS = [
    "torch-fp32",
    "torch-bf16",
    "onnx-fp32",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
    "sentence-transformers",
]
#: Lines for the terminal summary (conftest.py): the bulk ratio measured in this run.
BULK_RATIO: list[str] = []


def _make(backend: str, threads: int, max_length: int):
    import torch

    torch.set_num_threads(threads)
    if backend == "sentence-transformers":
        st = pytest.importorskip("sentence_transformers")
        m = st.SentenceTransformer(str(minilm_dir()), device="cpu")
        m.max_seq_length = max_length
        return lambda texts: m.encode(texts, batch_size=32, show_progress_bar=False)
    name, precision = backend.split("-")
    if name == "openvino":
        pytest.importorskip("openvino")
    if precision == "int8":
        pytest.importorskip("nncf")
    enc = runtime.load(default_head(1024), backend=name, precision=precision, threads=threads, quiet=True)
    enc.max_length = max_length
    return lambda texts: enc.encode(texts, batch_size=32, show_progress=False)


_REF: dict[str, np.ndarray] = {}


def _reference_bits(case: str) -> np.ndarray:
    """The torch fp32 codes of a case, computed once (outside any timing)."""
    if case not in _REF:
        texts, max_length = CASES[case]
        enc = runtime.load(default_head(1024), backend="torch", precision="fp32")
        enc.max_length = max_length
        _REF[case] = np.unpackbits(enc.encode(texts, batch_size=32, show_progress=False))
    return _REF[case]


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_encode(benchmark, backend, case, threads):
    texts, max_length = CASES[case]
    fn = _make(backend, threads, max_length)
    benchmark.group = f"{case} x{len(texts)}, {threads} thread(s)"
    out = benchmark.pedantic(fn, args=(texts,), rounds=3, warmup_rounds=1)
    benchmark.extra_info["texts_per_s"] = round(len(texts) / benchmark.stats.stats.median, 1)
    if backend != "sentence-transformers":
        bits = np.unpackbits(out)
        benchmark.extra_info["bits_equal_to_torch_fp32"] = round(float(np.mean(bits == _reference_bits(case))), 5)


def test_bulk_vs_sentence_transformers(benchmark):
    """Each round encodes the same passages with bne's bulk default and with sentence-transformers
    (2 threads each, max_length 256), so load from other processes hits both alike."""
    import torch

    st = pytest.importorskip("sentence_transformers")
    threads, max_length = 2, 256
    texts = _passages(128)
    torch.set_num_threads(threads)
    m = st.SentenceTransformer(str(minilm_dir()), device="cpu")
    m.max_seq_length = max_length
    bulk = runtime.load("default", 1024, purpose="bulk", threads=threads, quiet=True)
    bulk.max_length = max_length
    fns = {
        "bne": lambda: bulk.encode(texts, batch_size=64, show_progress=False),  # bne build's batch size
        "sentence-transformers": lambda: m.encode(texts, batch_size=32, show_progress_bar=False),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}

    def both_once():
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)

    benchmark.group = f"bulk: bne vs sentence-transformers, {len(texts)} passages, {threads} threads"
    benchmark.pedantic(both_once, rounds=5, warmup_rounds=1)
    med = {k: float(np.median(v[1:])) for k, v in times.items()}  # v[0]: the warm-up round
    ratio = med["sentence-transformers"] / med["bne"]
    label = f"{bulk.backend} {bulk.precision}"
    benchmark.extra_info.update(
        bne=label,
        bne_texts_per_s=round(len(texts) / med["bne"], 1),
        st_texts_per_s=round(len(texts) / med["sentence-transformers"], 1),
        ratio=round(ratio, 2),
        load_average=round(os.getloadavg()[0], 1),
    )
    BULK_RATIO.append(
        f"bne bulk ({label}) {len(texts) / med['bne']:.1f} passages/s, sentence-transformers "
        f"{len(texts) / med['sentence-transformers']:.1f}/s: {ratio:.2f}x (medians of {len(times['bne']) - 1} "
        f"interleaved rounds, load average {os.getloadavg()[0]:.1f})"
    )


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory):
    d = tmp_path_factory.mktemp("cold")
    (d / "four.txt").write_text(
        "the cat sat on the mat\nprotein folding in mice\nbinary codes for search\nstock markets fell today\n"
    )
    subprocess.run(
        [sys.executable, "-m", "bne.cli", "build", "four.txt", "-o", "four.bne", "-q", "--device", "cpu"],
        cwd=d,
        check=True,
        capture_output=True,
    )
    return d


def test_cold_search(benchmark, tiny_index):
    """Process start to exit of `bne search` on a 4-document index (model already in the cache)."""
    benchmark.group = "cold start: bne search, 4 documents"

    def run():
        subprocess.run(
            [sys.executable, "-m", "bne.cli", "search", "four.bne", "a kitten", "-k", "2"],
            cwd=tiny_index,
            check=True,
            capture_output=True,
        )

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    t = time.perf_counter()
    run()
    benchmark.extra_info["one_more_run_s"] = round(time.perf_counter() - t, 3)
