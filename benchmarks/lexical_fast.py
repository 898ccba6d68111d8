"""Fast exact BM25 top-100 for hybrid search at 1M documents (issue 17): FTS5 against own postings.

Same documents and queries as ``lexical_engines.py`` (SciFact + stdlib docstrings cycled to N; the
first 100 SciFact test claims). One docstore-like file is built with bne's commit size and
durability, holding per layout: the ``docs`` table, the FTS5 table (``bne.lexical``) and/or the
postings (``bne.lexical_postings``), all written in the same transaction per commit; each part is
timed separately. Then, per query engine (the postings engines interleaved query by query, so all
see the same load): nq = 1 median / p90 and nq = 100 total (``Searcher.search_many`` on 2 threads
for the C++ engines), exactness against FTS5's ``bm25()`` ranking (top-100 overlap, same order) and
against the numpy reference (identical lists, scores to the last bit). Results are JSON lines.

    python benchmarks/lexical_fast.py --n 100000 --layouts docs,fts5,postings   # one file each
    python benchmarks/lexical_fast.py --n 1000000 --layouts both --fts5-queries 10
    python benchmarks/lexical_fast.py --n 1000000 --layouts both --skip-build   # query an existing file
    python benchmarks/lexical_fast.py --n 1000000 --hybrid /tmp/bne-lexfast/both-1000000.sqlite
    python benchmarks/lexical_fast.py --quality   # SciFact test nDCG@10 / R@10, FTS5 vs postings
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lexical_engines as le  # noqa: E402
from bne import lexical  # noqa: E402
from bne import lexical_postings as lp  # noqa: E402
from bne import lexical_segments as lseg  # noqa: E402

# the numpy oracle of the tests (exhaustive, bit-identical to the C++ scorer) is the baseline here
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from test_lexical_postings import reference  # noqa: E402


def build(path: str, layout: str, n: int) -> dict:
    """layout: docs | fts5 | postings | both. Times each part of every commit batch separately."""
    db = le.fresh_docstore(path)
    fts, post = layout in ("fts5", "both"), layout in ("postings", "both")
    if fts:
        lexical.create(db)
    if post:
        lseg.create(db)
    db.commit()
    rows = le.corpus(n)
    first = next(rows)  # the base corpus is read before the clock starts
    t = {"docs": 0.0, "fts5": 0.0, "postings": 0.0, "commit": 0.0}
    batch: list[tuple[int, str, str, str]] = [first]
    slowest = 0.0

    def flush() -> None:
        nonlocal slowest
        t0 = time.perf_counter()
        db.executemany("INSERT INTO docs (id, ext_id, title, text, meta) VALUES (?, ?, ?, ?, '')", batch)
        t1 = time.perf_counter()
        texts = [f"{r[2]} {r[3]}" if r[2] else r[3] for r in batch]
        ids = [r[0] for r in batch]
        if fts:
            lexical.insert(db, ids, texts)
        t2 = time.perf_counter()
        if post:
            lseg.insert(db, ids, texts)
        t3 = time.perf_counter()
        db.commit()
        t4 = time.perf_counter()
        t["docs"] += t1 - t0
        t["fts5"] += t2 - t1
        t["postings"] += t3 - t2
        t["commit"] += t4 - t3
        slowest = max(slowest, t4 - t0)
        batch.clear()

    t0 = time.perf_counter()
    for row in rows:
        batch.append(row)
        if len(batch) == le.COMMIT_EVERY:
            flush()
    if batch:
        flush()
    total = time.perf_counter() - t0
    res = {
        "layout": layout,
        "n": n,
        "build_s": round(total, 1),
        "docs_per_s": round(n / total),
        "part_s": {k: round(v, 1) for k, v in t.items()},
        "slowest_commit_batch_s": round(slowest, 2),
        "bytes": os.path.getsize(path),
        "load_avg": round(os.getloadavg()[0], 1),
    }
    try:  # bytes per table (dbstat is compiled into most SQLite builds, not all)
        sizes = dict(db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
        res["table_bytes"] = {
            "docs": sum(v for k, v in sizes.items() if k == "docs" or k.startswith("sqlite_autoindex_docs")),
            "fts5": sum(v for k, v in sizes.items() if k.startswith("docs_fts")),
            "postings": sum(v for k, v in sizes.items() if k.startswith("lexp_")),
        }
    except sqlite3.OperationalError:
        pass
    if post:
        res["segments"] = db.execute("SELECT count(*) FROM lexp_seg").fetchone()[0]
    db.close()
    return res


def timed(fn, items) -> tuple[list[float], float, list]:
    fn(items[0])  # warm the page cache
    one, out = [], []
    for x in items:
        t0 = time.perf_counter()
        out.append(fn(x))
        one.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for x in items:
        fn(x)
    return one, time.perf_counter() - t0, out


def summary(name: str, one: list[float], total: float, extra: dict | None = None) -> dict:
    return {
        "engine": name,
        "queries": len(one),
        "nq1_median_ms": round(1e3 * statistics.median(one), 2),
        "nq1_p90_ms": round(1e3 * sorted(one)[int(0.9 * len(one))], 2),
        f"nq{len(one)}_total_s": round(total, 3),
        "load_avg": round(os.getloadavg()[0], 1),
        **(extra or {}),
    }


def compare(got: list[list[tuple[int, float]]], want: list[list[tuple[int, float]]]) -> dict:
    """Exactness of ``got`` against ``want`` (FTS5): mean top-k id overlap, identical lists, score error."""
    overlap, same, err = [], 0, 0.0
    for g, w in zip(got, want, strict=False):
        gi, wi = [i for i, _ in g], [i for i, _ in w]
        overlap.append(len(set(gi) & set(wi)) / max(1, len(wi)))
        same += gi == wi
        for (_, a), (_, b) in zip(g, w, strict=False):
            err = max(err, abs(a - b) / max(abs(b), 1e-12))
    return {
        "vs_fts5_queries": len(overlap),
        "top100_overlap_mean": round(statistics.mean(overlap), 5),
        "identical_lists": same,
        "max_rel_score_err": float(f"{err:.2e}"),
    }


def interleaved(fns: dict, items: list) -> dict[str, tuple[list[float], list]]:
    """Each engine once per item, in turn, so all see the same load: {name: (seconds per item, results)}."""
    for fn in fns.values():
        fn(items[0])  # warm the page cache (and the postings cache)
    out: dict[str, tuple[list[float], list]] = {name: ([], []) for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for x in items:
        for name, fn in fns.items():
            c0, t0 = time.thread_time(), time.perf_counter()
            r = fn(x)
            out[name][0].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
            out[name][1].append(r)
    CPU_MS.update({name: round(1e3 * statistics.median(v), 2) for name, v in cpu.items()})
    return out


CPU_MS: dict[str, float] = {}  # the calling thread's CPU time per query, median (less load-dependent than wall)


def total(fn, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` (a whole batch) over ``repeats`` runs."""
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def queries_bench(path: str, qs: list[str], fts5_queries: int, layout: str) -> list[dict]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    db.execute("PRAGMA trusted_schema=OFF")
    terms = [lexical.query_terms(q) for q in qs]
    out = []
    ref = []
    if layout in ("fts5", "both"):
        one, tot, ref = timed(lambda t: lexical.bm25_search(db, t, 100), terms[:fts5_queries])
        out.append(summary("fts5 bm25() OR query", one, tot))
    if layout in ("postings", "both"):
        s = lp.Searcher(db)  # the cache of the common terms' postings: default size
        cold = lp.Searcher(db, cache_mb=0)  # every query reads its postings from SQLite
        t0 = time.perf_counter()
        s._prepare([], None, False)
        cold._prepare([], None, False)
        out.append(
            {"engine": "postings: load id arrays once per open", "ms": round(1e3 * (time.perf_counter() - t0) / 2)}
        )
        t0 = time.perf_counter()
        for t in terms:
            s.search(t, 100)
        out.append({"engine": "postings: first pass, cache filling", "s": round(time.perf_counter() - t0, 3)})
        engines = {
            "numpy reference (exhaustive, no cache)": lambda t: reference(cold, t, 100),
            "C++ exhaustive": lambda t: s.search(t, 100, prune=False),
            "C++ MaxScore, no cache": lambda t: cold.search(t, 100),
            "C++ MaxScore": lambda t: s.search(t, 100),
            "C++ MaxScore, floored-idf terms skipped (near-exact)": lambda t: s.search(t, 100, skip_floor=True),
        }
        res = interleaved(engines, terms)
        want = res["numpy reference (exhaustive, no cache)"][1]
        batch = {
            "C++ exhaustive": lambda: [s.search(t, 100, prune=False) for t in terms],
            "C++ MaxScore, no cache": lambda: cold.search_many(terms, 100, threads=2),
            "C++ MaxScore": lambda: s.search_many(terms, 100, threads=2),
        }
        for name, (one, got) in res.items():
            extra = compare(got[:fts5_queries], ref) if ref else {}
            extra["same_as_reference"] = sum(g == w for g, w in zip(got, want, strict=True))
            extra["nq1_cpu_median_ms"] = CPU_MS[name]
            tot = total(batch[name]) if name in batch else sum(one)
            if name == "C++ MaxScore":
                alone = []  # query after query, as a service runs them (no other engine between)
                for t in terms:
                    t0 = time.perf_counter()
                    s.search(t, 100)
                    alone.append(time.perf_counter() - t0)
                extra["alone_nq1_median_ms"] = round(1e3 * statistics.median(alone), 2)
                extra["alone_nq1_p90_ms"] = round(1e3 * sorted(alone)[int(0.9 * len(alone))], 2)
                extra["search_many_threads1_s"] = round(total(lambda: s.search_many(terms, 100, threads=1)), 3)
                extra["search_many_equals_search"] = s.search_many(terms, 100) == got
                extra["cache_mb"] = round(s._cache_used / 2**20, 1)
                cuts = []
                for t in terms:
                    s.search(t, 100)
                    cuts.append(s.pruned_terms)
                extra["pruned_terms_median"] = statistics.median(cuts)
                extra["terms_median"] = statistics.median(len(t) for t in terms)
            out.append(summary("postings " + name, one, tot, extra))
    db.close()
    return out


def quality() -> dict:
    """SciFact test nDCG@10 / R@10 of FTS5 and of the postings (both modes), same documents."""
    import numpy as np

    from bne.training.data import data_root, load_beir
    from bne.training.evaluate import retrieval_metrics

    corpus, queries, qrels = load_beir("scifact", "test", data_root(le.DATA))
    dids, qids = list(corpus), list(queries)
    row = {d: i for i, d in enumerate(dids)}
    db = sqlite3.connect(":memory:")
    lexical.create(db)
    lseg.create(db)
    texts = [corpus[d] for d in dids]
    for k in range(0, len(texts), le.COMMIT_EVERY):  # segments as a build makes them
        ids = list(range(k, min(k + le.COMMIT_EVERY, len(texts))))
        lexical.insert(db, ids, [texts[i] for i in ids])
        lseg.insert(db, ids, [texts[i] for i in ids])
        db.commit()
    rels = [{row[d]: s for d, s in qrels[q].items() if d in row} for q in qids]
    s = lp.Searcher(db)
    res: dict = {}
    lists = {}
    for name, fn in (
        ("fts5", lambda t: lexical.bm25_search(db, t, 100)),
        ("postings exhaustive", lambda t: s.search(t, 100, prune=False)),
        ("postings MaxScore", lambda t: s.search(t, 100)),
    ):
        lists[name] = [fn(lexical.query_terms(queries[q])) for q in qids]
        arr = np.full((len(qids), 10), -1, np.int64)
        for r, ranked in enumerate(lists[name]):
            ids10 = [i for i, _ in ranked[:10]]
            arr[r, : len(ids10)] = ids10
        rc, nd = retrieval_metrics(arr, rels, 10)  # (recall, nDCG), as hybrid_quality.py reads it
        res[name] = {"nDCG@10": round(nd, 4), "R@10": round(rc, 4)}
    res["postings exhaustive vs fts5"] = compare(lists["postings exhaustive"], lists["fts5"])
    res["postings MaxScore vs fts5"] = compare(lists["postings MaxScore"], lists["fts5"])
    return res


def hybrid(path: str, n: int, qs: list[str], cache_mb: float | None, limit: int = 100) -> list[dict]:
    """End to end per query, interleaved so both see the same load: dense = query encoding (ONNX
    Runtime, as ``bne search``) + exact Hamming top 100 over n random 1024-bit codes (its time does not
    depend on the codes); hybrid = dense + BM25 top 100 from the postings of ``path`` + RRF (k = 60).
    nq = 100: the encoder batches the queries, the lexical side is ``Searcher.search_many`` (2 threads)."""
    import numpy as np

    from bne.encoder.runtime import load
    from bne.index import Index

    enc = load("default", 1024, purpose="query", threads=2, quiet=True)
    index = Index(1024)
    index.add(np.random.default_rng(0).integers(0, 256, (n, 128), dtype=np.uint8))
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    s = lp.Searcher(db, cache_mb=cache_mb)
    terms = [lexical.query_terms(q) for q in qs]

    def dense(q: str):
        return enc.search(index, [q], limit)[1][0]

    def both(k: int):
        d = dense(qs[k])
        lex = s.search(terms[k], limit)
        return lexical.rrf_fuse([int(i) for i in d], [i for i, _ in lex], k=60, depth=limit)

    dense(qs[0]), both(0)  # warm
    for t in terms:  # the postings cache as a running collection has it (no effect with cache_mb=0)
        s.search(t, limit)
    td, th, tl = [], [], []
    for k, q in enumerate(qs):
        t0 = time.perf_counter()
        dense(q)
        t1 = time.perf_counter()
        both(k)
        t2 = time.perf_counter()
        s.search(terms[k], limit)
        t3 = time.perf_counter()
        td.append(t1 - t0)
        th.append(t2 - t1)
        tl.append(t3 - t2)

    def dense_batch():
        return enc.search(index, qs, limit)[1]

    def hybrid_batch():
        dense_all = dense_batch()
        lex = s.search_many(terms, limit, threads=2)
        return [
            lexical.rrf_fuse([int(i) for i in dense_all[k]], [i for i, _ in lex[k]], k=60, depth=limit)
            for k in range(len(qs))
        ]

    dense_batch()
    bd, bh = [], []
    for _ in range(3):  # interleaved
        bd.append(total(dense_batch, 1))
        bh.append(total(hybrid_batch, 1))
    ratios = [h / d for h, d in zip(th, td, strict=True)]
    nd, nh = statistics.median(bd), statistics.median(bh)
    return [
        {
            "engine": "hybrid end to end, postings C++ MaxScore"
            + (", no cache" if cache_mb == 0 else ", postings cache"),
            "n": n,
            "dense_nq1_median_ms": round(1e3 * statistics.median(td), 2),
            "lexical_nq1_median_ms": round(1e3 * statistics.median(tl), 2),
            "hybrid_nq1_median_ms": round(1e3 * statistics.median(th), 2),
            "hybrid_over_dense_nq1": round(statistics.median(th) / statistics.median(td), 3),
            "median_per_query_ratio": round(statistics.median(ratios), 3),
            f"dense_nq{len(qs)}_s": round(nd, 3),
            f"hybrid_nq{len(qs)}_s": round(nh, 3),
            f"hybrid_over_dense_nq{len(qs)}": round(nh / nd, 3),
            "load_avg": round(os.getloadavg()[0], 1),
        }
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--layouts", default="docs,fts5,postings")
    p.add_argument("--keep", default="/tmp/bne-lexfast")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--fts5-queries", type=int, default=100, help="FTS5 takes seconds a query at 1M")
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--quality", action="store_true")
    p.add_argument("--dense", action="store_true", help="also time the dense side at --n (lexical_engines)")
    p.add_argument("--hybrid", default=None, help="time hybrid vs dense end to end on this built file")
    args = p.parse_args()
    if args.quality:
        print(json.dumps(quality()), flush=True)
        return
    os.makedirs(args.keep, exist_ok=True)
    qs = le.queries()[: args.queries]
    if args.hybrid:
        for cache_mb in (None, 0):
            for r in hybrid(args.hybrid, args.n, qs, cache_mb):
                print(json.dumps(r), flush=True)
        return
    for layout in args.layouts.split(","):
        path = os.path.join(args.keep, f"{layout}-{args.n}.sqlite")
        if not args.skip_build:
            print(json.dumps(build(path, layout, args.n)), flush=True)
        if layout != "docs":
            for r in queries_bench(path, qs, args.fts5_queries, layout):
                print(json.dumps(r), flush=True)
    if args.dense:
        for r in le.dense_engine(args.n, qs):
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
