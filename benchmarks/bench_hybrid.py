"""Hybrid search (issue 17) end to end through a real collection: ``Collection.search`` in each mode
(query encoding included) at 100k and 1M documents, build documents/s with and without the lexical
index, and the docstore's size with and without it.

    python -m pytest benchmarks/bench_hybrid.py --benchmark-only -s        # 100k and 1M (builds once)
    BNE_BENCH_HYBRID_N=100000 python -m pytest benchmarks/bench_hybrid.py --benchmark-only
    python benchmarks/bench_hybrid.py --prepare 100000,1000000              # only encode + build the caches

Corpus: SciFact's 5,183 passages (title + text) and the standard library's docstrings, cycled with
new ids up to N (``lexical_engines.corpus``). Encoding a million texts is out of reach here (~80
documents/s), so the ~12k distinct texts are encoded once by the collection's own bulk encoder
(cached in ``<cache>/codes-*.npy``) and the build runs through ``Collection.add`` with an encoder
that looks up each text's code: the docstore, lexical postings and index are what ``bne build``
writes, and the same text gets the same code. Queries: 100 SciFact test claims, encoded for real
by the collection's query encoder (timed). The built collections are kept in ``$BNE_BENCH_HYBRID_DIR``
(default /tmp/bne-bench-hybrid), so reruns skip the build.

The modes are interleaved (each query runs in every mode, in a rotating order) so that they see the
same machine load; the summary at the end prints medians and the hybrid/dense and lexical/dense ratios.
Build speed: the 100k corpus built with and without the lexical index, alternately, ``BNE_BENCH_BUILD_ROUNDS``
times each; the encoder is a lookup, so this is the storage side's speed, the worst case for the ratio
(a real build is bound by its encoder at ~80 documents/s on two cores).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import statistics
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import lexical_engines  # noqa: E402  (the corpus builder)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CACHE = os.environ.get("BNE_BENCH_HYBRID_DIR", "/tmp/bne-bench-hybrid")
SIZES = [int(s) for s in os.environ.get("BNE_BENCH_HYBRID_N", "100000,1000000").split(",") if s]
BUILD_N = int(os.environ.get("BNE_BENCH_BUILD_N", 100_000))
BUILD_ROUNDS = int(os.environ.get("BNE_BENCH_BUILD_ROUNDS", 2))
MODES = os.environ.get("BNE_BENCH_HYBRID_MODES", "dense,hybrid,lexical").split(",")
NQ = 100  # real SciFact test claims
K = 10

SUMMARY: list[str] = []  # printed at the end of the run by the plugin below
RESULTS: dict[str, object] = {}  # written to $BNE_BENCH_HYBRID_JSON when set ($BNE_BENCH_JSON is conftest's)


def load_text() -> str:
    one = os.getloadavg()
    return f"load {one[0]:.1f}/{one[1]:.1f}/{one[2]:.1f}"


# -- the corpus and its codes -------------------------------------------------------------------


def docs(n: int):
    from bne.corpus import Doc

    for _, ext_id, title, text in lexical_engines.corpus(n):
        yield Doc(ext_id, text, title)


def timed_add(coll, n: int):
    """(the result of adding the first ``n`` documents, wall seconds, CPU seconds); closes ``coll``."""
    t, c = time.perf_counter(), time.process_time()
    try:
        res = coll.add(docs(n))
    finally:
        coll.close()
    return res, time.perf_counter() - t, time.process_time() - c


def base_texts() -> list[str]:
    """The distinct texts the encoder sees (``bne.doc_text``), in first-seen order."""
    from bne.corpus import doc_text

    lexical_engines.corpus(1).__next__()  # fills the base corpus
    seen: dict[str, None] = {}
    for title, text in lexical_engines._BASE:
        seen.setdefault(doc_text(title, text), None)
    return list(seen)


def cached_codes() -> dict[str, np.ndarray]:
    """text -> code, encoded once by the collection's bulk encoder (as for a large build)."""
    import bne

    texts = base_texts()
    key = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    path = os.path.join(CACHE, f"codes-{key}.npy")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        probe = os.path.join(CACHE, "probe.bne")
        enc = bne.Collection.create(probe).encoder("bulk", docs=1_000_000)
        t = time.perf_counter()
        codes = enc.encode(texts, show_progress=False)
        print(
            f"# encoded {len(texts)} distinct texts in {time.perf_counter() - t:.0f} s ({load_text()})",
            file=sys.stderr,
            flush=True,
        )
        with open(path + ".json", "w", encoding="utf-8") as f:
            json.dump({"bits": enc.bits, "max_length": enc.max_length, "texts": len(texts)}, f)
        np.save(path + ".tmp.npy", codes)
        os.replace(path + ".tmp.npy", path)
    codes = np.load(path)
    assert len(codes) == len(texts)
    with open(path + ".json", encoding="utf-8") as f:
        META.update(json.load(f))
    return dict(zip(texts, codes, strict=True))


META: dict[str, int] = {}  # the bulk encoder's bits and max_length, recorded with its codes


class LookupEncoder:
    """Stands in for the bulk encoder in ``Collection.add``: each text's cached code."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.bits, self.max_length = META["bits"], META["max_length"]
        self.table = table

    def encode(self, texts, batch_size=64, show_progress=False, **kw):
        return np.stack([self.table[t] for t in texts])


def lexical_off(coll) -> None:
    """Makes ``coll`` write its docstore without the lexical index (a docstore as bne wrote it
    before issue 17): the writer store is created with ``lexical=False``."""
    import stat

    from bne.docstore import DocStore

    def store():
        mode = stat.S_IMODE(os.stat(coll.path).st_mode)
        return DocStore(coll.path, create=True, file_mode=mode, threaded=True, lexical=False)

    coll._writer_store = store


def build(path: str, n: int, table: dict[str, np.ndarray], *, lexical: bool = True) -> dict:
    """Builds ``n`` documents at ``path`` through ``Collection.add``; returns the timing."""
    import bne
    from bne.docstore import path_for

    for p in (path, path_for(path), path_for(path) + "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)
    coll = bne.Collection.create(path)
    coll._encoders["bulk"] = LookupEncoder(table)
    if not lexical:
        lexical_off(coll)
    load0 = load_text()
    res, seconds, cpu = timed_add(coll, n)
    assert res.added == n, (res.added, n)
    return {
        "n": n,
        "lexical": lexical,
        "seconds": round(seconds, 2),
        "docs_per_s": round(n / seconds),
        "cpu_s": round(cpu, 2),  # this process, all threads: less disturbed by other jobs than the wall time
        "docs_per_cpu_s": round(n / cpu),
        "docstore_bytes": os.path.getsize(path_for(path)),
        "index_bytes": os.path.getsize(path),
        "load_before": load0,
        "load_after": load_text(),
    }


def collection_path(n: int) -> str:
    """The cached collection of ``n`` documents, built on first use (once: keep it)."""
    path = os.path.join(CACHE, f"hybrid-{n}.bne")
    done = path + ".build.json"
    if not (os.path.exists(done) and usable(path)):
        os.makedirs(CACHE, exist_ok=True)
        info = build(path, n, cached_codes())
        with open(done, "w", encoding="utf-8") as f:
            json.dump(info, f)
        print(f"# built {json.dumps(info)}", file=sys.stderr, flush=True)
    return path


def usable(path: str) -> bool:
    """The cached collection opens with this bne, its lexical index complete: else it is rebuilt
    (a changed format), never measured."""
    import bne
    from bne.docstore import DocStore

    try:
        bne.Collection.open(path).close()
        store = DocStore(path)
    except Exception as e:  # noqa: BLE001  (any failure: rebuild)
        print(f"# {path}: {e}; rebuilding", file=sys.stderr)
        return False
    try:
        return bool(store.lexical_ready)
    finally:
        store.close()


# -- searching ----------------------------------------------------------------------------------


def queries() -> list[str]:
    return lexical_engines.queries("test")[:NQ]


_OPEN: dict[int, object] = {}


def collection(n: int):
    import bne

    if n not in _OPEN:
        for c in _OPEN.values():
            c.close()
        _OPEN.clear()
        _OPEN[n] = bne.Collection.open(collection_path(n))
    return _OPEN[n]


def search_fn(coll, mode: str, qs: list[str]):
    return lambda: coll.search(qs, K, mode=mode)


def interleaved(coll, qs: list[str], nq: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call for each mode; every query (nq = 1) or every round (nq = 100) runs all
    modes back to back, starting from a different mode each time."""
    times: dict[str, list[float]] = {m: [] for m in MODES}
    parts: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    calls = [[q] for q in qs] if nq == 1 else [qs[:nq]] * rounds
    for i, texts in enumerate(calls):
        order = MODES[i % len(MODES) :] + MODES[: i % len(MODES)]
        for m in order:
            t = time.perf_counter()
            r = coll.search(texts, K, mode=m)
            times[m].append(time.perf_counter() - t)
            parts[m].append((r.encode_ms, r.search_ms))
            assert len(r.hits) == len(texts)
    PARTS.update(
        {
            m: {"encode_ms": statistics.median(e for e, _ in v), "search_ms": statistics.median(s for _, s in v)}
            for m, v in parts.items()
        }
    )
    return times


PARTS: dict[str, dict[str, float]] = {}  # the latest interleaved run's medians of SearchResult's own timings


@pytest.fixture(scope="module", autouse=True)
def summary_plugin(request):
    """Prints SUMMARY in pytest's terminal summary (a plugin registered for this run only)."""

    class Plugin:
        def pytest_terminal_summary(self, terminalreporter):
            if SUMMARY:
                terminalreporter.write_sep("=", "hybrid search through a collection (medians, modes interleaved)")
                for line in SUMMARY:
                    terminalreporter.write_line(line)
            path = os.environ.get("BNE_BENCH_HYBRID_JSON")
            if path and RESULTS:
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(RESULTS, f, indent=1)

    pm = request.config.pluginmanager
    if not pm.has_plugin("bench_hybrid_summary"):
        pm.register(Plugin(), "bench_hybrid_summary")
    yield


@pytest.mark.parametrize("nq", [1, NQ])
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"{n // 1000}k")
def test_search_modes(benchmark, n, nq):
    """End-to-end Collection.search per mode, interleaved; the benchmark record is hybrid's."""
    coll = collection(n)
    qs = queries()
    assert len(qs) == NQ
    for m in MODES:  # warm: the query encoder, the page cache, the lexical searcher
        coll.search(qs[:2], K, mode=m)
    load0 = load_text()
    times = interleaved(coll, qs, nq, rounds=5)
    load1 = load_text()
    med = {m: statistics.median(v) for m, v in times.items()}
    key = f"{n}-nq{nq}"
    RESULTS[key] = {
        "n": len(coll),
        "nq": nq,
        "median_s": med,
        "p90_s": {m: sorted(v)[int(0.9 * len(v))] for m, v in times.items()},
        "calls": {m: len(v) for m, v in times.items()},
        "result_timings_median": dict(PARTS),
        "load_before": load0,
        "load_after": load1,
    }
    unit, scale = ("ms", 1e3)
    cells = "  ".join(f"{m} {med[m] * scale:8.1f} {unit}" for m in MODES)
    ratios = "  ".join(f"{m}/dense {med[m] / med['dense']:.2f}" for m in MODES if m != "dense" and "dense" in med)
    SUMMARY.append(f"N={len(coll):>9,d} nq={nq:<3d} {cells}   {ratios}   ({load0} -> {load1})")
    what = [qs[0]] if nq == 1 else qs
    benchmark.pedantic(search_fn(coll, "hybrid" if "hybrid" in MODES else MODES[0], what), rounds=3, warmup_rounds=0)


def test_build_rate(benchmark):
    """Documents/s of Collection.add at BUILD_N with and without the lexical index, alternately,
    and the docstore's size with each; the benchmark record is the last lexical build."""
    table = cached_codes()
    folder = os.path.join(CACHE, "build-rate")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    rows: dict[bool, list[dict]] = {True: [], False: []}
    try:
        for r in range(BUILD_ROUNDS):
            for lex in (True, False) if r % 2 == 0 else (False, True):
                rows[lex].append(build(os.path.join(folder, f"b{r}-{int(lex)}.bne"), BUILD_N, table, lexical=lex))
        benchmark.pedantic(lambda: None, rounds=1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    best = {lex: max(x["docs_per_s"] for x in v) for lex, v in rows.items()}
    cpu = {lex: max(x["docs_per_cpu_s"] for x in v) for lex, v in rows.items()}
    size = {lex: v[-1]["docstore_bytes"] for lex, v in rows.items()}
    RESULTS["build"] = {"with_lexical": rows[True], "without_lexical": rows[False]}
    SUMMARY.append(
        f"build {BUILD_N:,d} docs (codes looked up): with lexical {best[True]:,d} docs/s, without {best[False]:,d} "
        f"docs/s, ratio {best[True] / best[False]:.2f} (best of {BUILD_ROUNDS}; "
        + ", ".join(f"{x['docs_per_s']:,d}{'L' if x['lexical'] else ''}" for x in rows[True] + rows[False])
        + ")"
    )
    SUMMARY.append(
        f"  per CPU second: with lexical {cpu[True]:,d} docs/s, without {cpu[False]:,d} docs/s, "
        f"ratio {cpu[True] / cpu[False]:.2f}"
    )
    SUMMARY.append(
        f"docstore {BUILD_N:,d} docs: with lexical {size[True] / 2**20:.1f} MiB, without {size[False] / 2**20:.1f} MiB "
        f"(x{size[True] / size[False]:.2f}); index {rows[True][-1]['index_bytes'] / 2**20:.1f} MiB"
    )
    for lex in (True, False):
        for x in rows[lex]:
            SUMMARY.append(f"  build {json.dumps(x)}")
    assert size[True] > size[False]


REAL_N = int(os.environ.get("BNE_BENCH_BUILD_REAL_N", 0))


@pytest.mark.skipif(not REAL_N, reason="set BNE_BENCH_BUILD_REAL_N (e.g. 2048): minutes of real encoding")
def test_build_rate_real_encoder(benchmark):
    """As ``bne build`` runs: the collection's own bulk encoder, REAL_N documents (the first of the
    corpus), with and without the lexical index, alternately."""
    import bne

    folder = os.path.join(CACHE, "build-real")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    rows = []
    warm = bne.Collection.create(os.path.join(folder, "warm.bne")).encoder("bulk", docs=REAL_N)
    warm.encode([t.text for t in docs(256)], show_progress=False)  # the runtime's first calls are slower
    try:
        for lex in (True, False, False, True, True, False):
            path = os.path.join(folder, f"r{len(rows)}.bne")
            coll = bne.Collection.create(path)
            coll.encoder("bulk", docs=REAL_N)  # loaded before the clock, as the build's model load is not the add
            if not lex:
                lexical_off(coll)
            res, seconds, cpu = timed_add(coll, REAL_N)
            assert res.added == REAL_N
            rows.append(
                {
                    "lexical": lex,
                    "docs_per_s": round(REAL_N / seconds, 1),
                    "docs_per_cpu_s": round(REAL_N / cpu, 1),
                    "load": load_text(),
                }
            )
        benchmark.pedantic(lambda: None, rounds=1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    RESULTS["build_real_encoder"] = rows
    for key in ("docs_per_s", "docs_per_cpu_s"):
        w = statistics.mean(r[key] for r in rows if r["lexical"])
        wo = statistics.mean(r[key] for r in rows if not r["lexical"])
        SUMMARY.append(
            f"build {REAL_N:,d} docs, real encoder, {key}: with lexical {w:.1f}, without {wo:.1f}, ratio {w / wo:.3f}"
        )
    for r in rows:
        SUMMARY.append(f"  real build {json.dumps(r)}")


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepare", default=",".join(map(str, SIZES)), help="sizes to encode and build (cached)")
    args = p.parse_args()
    cached_codes()
    for n in (int(s) for s in args.prepare.split(",") if s):
        path = collection_path(n)
        with open(path + ".build.json", encoding="utf-8") as f:
            print(f.read(), flush=True)


if __name__ == "__main__":
    main()
