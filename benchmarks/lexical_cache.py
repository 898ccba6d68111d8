"""BM25 (``bne.lexical_postings.Searcher``) in the two cases docs/HYBRID_RESEARCH.md section 10 is about.

``append``: a long-lived Searcher reading a collection that is being appended to. A copy of a built
docstore is appended to in batches of 2,048 documents (one segment per commit, as ``bne build
--append``; level merges happen as they fall due) on a second connection; after each commit the
reader runs ``--per-round`` of the first 100 SciFact test claims (top 100, as the hybrid side asks).
Reported: the median query while appending against the same queries with no writes before the
appends and after them (the file then holds the appended documents too), and the median of the
first query after each write (the one that meets the new state).

``allow``: small allow-lists (a bool mask with k allowed ids, as ``Collection.search(allow=...)``
passes) on a built docstore, read only: the median query per k, with the postings cache warm and
with no cache (every query reads its postings from SQLite). Every result is checked against the
numpy oracle of the tests (exhaustive, no cache; identical ids and scores) for ``--check`` queries.

Results are JSON lines. ``BNE_BENCH_BASE=DIR`` imports bne from DIR instead (a copy of an older
``python/bne`` with its ``_core`` module beside it), for before/after numbers on the same files.

    python benchmarks/lexical_cache.py append --src /tmp/bne-bench-hybrid/hybrid-100000.bne.docs.sqlite
    python benchmarks/lexical_cache.py allow --db /tmp/bne-bench-hybrid/hybrid-1000000.bne.docs.sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import time

if os.environ.get("BNE_BENCH_BASE"):  # the older copy, not the editable install
    sys.meta_path[:] = [f for f in sys.meta_path if "Redirecting" not in type(f).__name__]
    sys.path.insert(0, os.environ["BNE_BENCH_BASE"])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import lexical_engines as le  # noqa: E402
from bne import lexical  # noqa: E402
from bne import lexical_postings as lp  # noqa: E402
from bne import lexical_segments as lseg  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from test_lexical_postings import reference  # noqa: E402

BATCH = 2048  # Collection.add's commit_every
LIMIT = 100


def ms(xs: list[float]) -> float:
    return round(1e3 * statistics.median(xs), 3)


def load() -> dict:
    return {"load_avg": [round(x, 1) for x in os.getloadavg()], "bne": os.path.dirname(lp.__file__)}


def warm_then_time(s, qs) -> list[float]:
    """Each query's search time after one untimed pass over them all."""
    for t in qs:
        s.search(t, LIMIT)
    out = []
    for t in qs:
        t0 = time.perf_counter()
        s.search(t, LIMIT)
        out.append(time.perf_counter() - t0)
    return out


def append(src: str, work: str, rounds: int, per_round: int) -> dict:
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "append.sqlite")
    shutil.copyfile(src, path)  # a fresh copy each run: before and after start from the same file
    w = sqlite3.connect(path)
    r = sqlite3.connect(path, check_same_thread=False)
    s = lp.Searcher(r)
    qs = [lexical.query_terms(q, repeats=True) for q in le.queries()[:100]]
    idle = warm_then_time(s, qs)  # the cache as a running collection has it
    start = int(w.execute("SELECT max(id) FROM docs").fetchone()[0]) + 1
    n = start
    rows = le.corpus(start + rounds * BATCH)
    texts = [f"{x[2]} {x[3]}" if x[2] else x[3] for x in rows if x[0] >= start]
    busy, first, write_s, merges = [], [], 0.0, 0
    k = 0
    for rnd in range(rounds):
        segs = w.execute("SELECT count(*) FROM lexp_seg").fetchone()[0]
        t0 = time.perf_counter()
        lseg.insert(w, list(range(n, n + BATCH)), texts[rnd * BATCH : (rnd + 1) * BATCH])
        w.commit()
        write_s += time.perf_counter() - t0
        merges += w.execute("SELECT count(*) FROM lexp_seg").fetchone()[0] != segs + 1
        n += BATCH
        for j in range(per_round):
            t0 = time.perf_counter()
            s.search(qs[k % len(qs)], LIMIT)
            dt = time.perf_counter() - t0
            busy.append(dt)
            if j == 0:
                first.append(dt)
            k += 1
    after = warm_then_time(s, qs)  # the new segments' rows cached: the file as it is now, with no writes
    fresh = lp.Searcher(r, cache_mb=0)
    same = sum(s.search(t, LIMIT) == fresh.search(t, LIMIT) for t in qs)
    w.close()
    r.close()
    os.remove(path)
    return {
        "bench": "append",
        "src": src,
        "docs_before": start,
        "docs_after": n,
        "commits": rounds,
        "commits_with_merges": merges,
        "queries_per_commit": per_round,
        "idle_median_ms": ms(idle),
        "appending_median_ms": ms(busy),
        "appending_mean_ms": round(1e3 * statistics.mean(busy), 3),
        "first_after_commit_median_ms": ms(first),
        "idle_after_median_ms": ms(after),
        "appending_over_idle": round(statistics.median(busy) / statistics.median(idle), 2),
        "appending_over_idle_after": round(statistics.median(busy) / statistics.median(after), 2),
        "write_s_per_commit": round(write_s / rounds, 3),
        "same_as_fresh_searcher": f"{same} / {len(qs)}",
        **load(),
    }


def allow(db_path: str, sizes: list[int], queries: int, check: int) -> list[dict]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)
    qs = [lexical.query_terms(q, repeats=True) for q in le.queries()[:queries]]
    warm = lp.Searcher(db)
    cold = lp.Searcher(db, cache_mb=0)
    for t in qs:
        warm.search(t, LIMIT)
    n = len(warm.dl)
    rng = np.random.default_rng(0)
    out = []
    for k in sizes:
        mask = np.zeros(n, bool)
        mask[rng.choice(n, k, replace=False)] = True
        row: dict = {"bench": "allow", "n": n, "allowed": k}
        for name, s in (("cached", warm), ("no_cache", cold)):
            times, wrong = [], 0
            s.search(qs[0], LIMIT, allowed=mask)
            for j, t in enumerate(qs):
                t0 = time.perf_counter()
                got = s.search(t, LIMIT, allowed=mask)
                times.append(time.perf_counter() - t0)
                if j < check:
                    wrong += got != reference(cold, t, LIMIT, allowed=mask)
            row[f"{name}_median_ms"] = ms(times)
            row[f"{name}_p90_ms"] = round(1e3 * sorted(times)[int(0.9 * len(times))], 3)
            row[f"{name}_wrong_of_{min(check, len(qs))}"] = wrong
        out.append({**row, **load()})
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("append")
    a.add_argument("--src", required=True, help="a built docstore (copied, never written)")
    a.add_argument("--work", default="/tmp/bne-lexcache")
    a.add_argument("--rounds", type=int, default=16)
    a.add_argument("--per-round", type=int, default=10)
    b = sub.add_parser("allow")
    b.add_argument("--db", required=True)
    b.add_argument("--sizes", default="1,5,20,50,200,1000,5000,20000")
    b.add_argument("--queries", type=int, default=100)
    b.add_argument("--check", type=int, default=20, help="queries checked against the numpy oracle")
    args = p.parse_args()
    if args.cmd == "append":
        print(json.dumps(append(args.src, args.work, args.rounds, args.per_round)), flush=True)
    else:
        for r in allow(args.db, [int(x) for x in args.sizes.split(",")], args.queries, args.check):
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
