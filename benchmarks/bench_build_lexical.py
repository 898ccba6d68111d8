"""Issue 17, item 6: building with the lexical (BM25) index against building without it.

    python -m pytest benchmarks/bench_build_lexical.py --benchmark-only -s
    BNE_BENCH_DOCS=1000 BNE_BENCH_ROUNDS=3 BNE_BENCH_DEVICE=cuda python -m pytest \
        benchmarks/bench_build_lexical.py --benchmark-only -s

Two measurements over the first BNE_BENCH_DOCS (default 5,000) SciFact documents
(/work/shared/data/beir/scifact, or BNE_SCIFACT):

* ``build``: ``Collection.create(...).add(docs)`` end to end with the default model, documents/s,
  with the lexical index (what every new docstore gets) and without it (a docstore made with
  ``DocStore(..., lexical=False)``). The postings are written on the committer thread, beside
  the encoder, so they cost nothing while a commit takes less than encoding the next batch.
  Target: with >= 0.9x the documents/s without. Also the docstore's size with and without.
* ``docstore``: the docstore's own writes only (rows, and rows + postings) in 2,048-document
  commits, no model: the worst case, as if encoding were free.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import statistics
import tempfile
import time

import pytest

import bne
from bne import collection as bcoll
from bne.docstore import DocStore, path_for

N = int(os.environ.get("BNE_BENCH_DOCS", "5000"))
SCIFACT = os.environ.get("BNE_SCIFACT", "/work/shared/data/beir/scifact")
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def docs():
    if not os.path.isdir(SCIFACT):
        pytest.skip(f"no SciFact at {SCIFACT} (set BNE_SCIFACT)")
    return list(itertools.islice(bne.read_corpus(SCIFACT), N))


@pytest.fixture
def folder():
    d = tempfile.mkdtemp(prefix="bne-bench-lex-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _report() -> None:
    if {"build_lexical", "build_plain"} <= RESULTS.keys():
        print(
            f"\nbuild, {N} SciFact documents: {RESULTS['build_lexical']:.0f} docs/s with the lexical index, "
            f"{RESULTS['build_plain']:.0f} without: ratio {RESULTS['build_lexical'] / RESULTS['build_plain']:.3f} "
            f"(CPU seconds {RESULTS['cpu_lexical']:.1f} with, {RESULTS['cpu_plain']:.1f} without); "
            f"docstore {RESULTS['size_lexical'] / 1e6:.2f} MB with, {RESULTS['size_plain'] / 1e6:.2f} MB without"
        )
    if {"store_lexical", "store_plain"} <= RESULTS.keys():
        print(
            f"\ndocstore writes only, {N} documents: {RESULTS['store_lexical']:.0f} docs/s with postings, "
            f"{RESULTS['store_plain']:.0f} rows only; size {RESULTS['ssize_lexical'] / 1e6:.2f} MB with, "
            f"{RESULTS['ssize_plain'] / 1e6:.2f} MB without"
        )


def test_build(benchmark, docs, folder, monkeypatch):
    """Builds without and with the lexical index, alternating (BNE_BENCH_ROUNDS pairs, default 2), so
    a load that comes and goes on a shared machine falls on both; medians of wall and CPU time."""
    device = os.environ.get("BNE_BENCH_DEVICE", "cpu")
    warm = bne.Collection.create(os.path.join(folder, "warm.bne"), device=device)
    warm.add(docs[:64])  # the model loads (and quantises) outside the timed runs
    warm.close()
    plain = functools.partial(DocStore, lexical=False)
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "lexical": []}

    def pairs() -> None:
        for r in range(int(os.environ.get("BNE_BENCH_ROUNDS", "2"))):
            for key in ("plain", "lexical"):
                monkeypatch.setattr(bcoll, "DocStore", plain if key == "plain" else DocStore)
                c = bne.Collection.create(os.path.join(folder, f"{key}{r}.bne"), device=device)
                c._encoders = warm._encoders
                t, cpu = time.perf_counter(), time.process_time()
                c.add(docs)
                times[key].append((time.perf_counter() - t, time.process_time() - cpu))
                c.close()

    benchmark.pedantic(pairs, rounds=1, iterations=1)  # the pytest-benchmark row is all the builds
    for key in times:
        store = DocStore(os.path.join(folder, f"{key}0.bne"))
        try:
            assert store.has_lexical == (key == "lexical") and store.count() == N
        finally:
            store.close()
        RESULTS[f"build_{key}"] = N / statistics.median(w for w, _ in times[key])
        RESULTS[f"cpu_{key}"] = statistics.median(c for _, c in times[key])
        RESULTS[f"size_{key}"] = os.path.getsize(path_for(os.path.join(folder, f"{key}0.bne")))
    print(f"\nbuild times (wall s, CPU s), {device}: {times}")
    _report()


@pytest.mark.parametrize("lexical", [True, False], ids=["lexical", "plain"])
def test_docstore_writes(benchmark, docs, folder, lexical):
    runs = itertools.count()

    def write() -> None:
        store = DocStore(os.path.join(folder, f"s{next(runs)}.bne"), create=True, lexical=lexical)
        for start in range(0, len(docs), 2048):
            store.insert(range(start, min(start + 2048, len(docs))), docs[start : start + 2048])
            store.commit()
        store.close()

    benchmark.pedantic(write, rounds=3, iterations=1)
    key = "lexical" if lexical else "plain"
    RESULTS[f"store_{key}"] = N / benchmark.stats.stats.median
    RESULTS[f"ssize_{key}"] = os.path.getsize(path_for(os.path.join(folder, "s0.bne")))
    _report()
