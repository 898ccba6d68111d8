"""Issue 17, item 6: building with the lexical (BM25) index against building without it.

    python -m pytest benchmarks/bench_build_lexical.py --benchmark-only -s
    BNE_BENCH_DOCS=5000 BNE_BENCH_DEVICE=cuda python -m pytest benchmarks/bench_build_lexical.py --benchmark-only -s

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
import tempfile

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
            f"{RESULTS['build_plain']:.0f} without: ratio {RESULTS['build_lexical'] / RESULTS['build_plain']:.3f}; "
            f"docstore {RESULTS['size_lexical'] / 1e6:.2f} MB with, {RESULTS['size_plain'] / 1e6:.2f} MB without"
        )
    if {"store_lexical", "store_plain"} <= RESULTS.keys():
        print(
            f"\ndocstore writes only, {N} documents: {RESULTS['store_lexical']:.0f} docs/s with postings, "
            f"{RESULTS['store_plain']:.0f} rows only; size {RESULTS['ssize_lexical'] / 1e6:.2f} MB with, "
            f"{RESULTS['ssize_plain'] / 1e6:.2f} MB without"
        )


@pytest.mark.parametrize("lexical", [True, False], ids=["lexical", "plain"])
def test_build(benchmark, docs, folder, monkeypatch, lexical):
    device = os.environ.get("BNE_BENCH_DEVICE", "cpu")
    if not lexical:
        monkeypatch.setattr(bcoll, "DocStore", functools.partial(DocStore, lexical=False))
    warm = bne.Collection.create(os.path.join(folder, "warm.bne"), device=device)
    warm.add(docs[:64])  # the model loads (and quantises) outside the timed runs
    warm.close()
    runs = itertools.count()

    def build() -> None:
        c = bne.Collection.create(os.path.join(folder, f"b{next(runs)}.bne"), device=device)
        c._encoders = warm._encoders
        c.add(docs)
        c.close()

    benchmark.pedantic(build, rounds=int(os.environ.get("BNE_BENCH_ROUNDS", "1")), iterations=1)
    key = "lexical" if lexical else "plain"
    RESULTS[f"build_{key}"] = N / benchmark.stats.stats.median
    RESULTS[f"size_{key}"] = os.path.getsize(path_for(os.path.join(folder, "b0.bne")))
    store = DocStore(os.path.join(folder, "b0.bne"))
    try:
        assert store.has_lexical == lexical and store.count() == N
    finally:
        store.close()
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
