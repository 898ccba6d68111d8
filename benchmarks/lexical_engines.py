"""Lexical index candidates for hybrid search (issue 17), measured on realistic text: SciFact's corpus
plus the Python standard library's docstrings, repeated with varied ids up to N documents.

Per variant: build documents/s through a docstore-like ``docs`` table with bne's commit size (2048)
and durability (rollback journal, synchronous=FULL), the file size, and BM25 top-100 latency for
SciFact's real queries (terms OR-ed, from bne.lexical.query_terms): median for nq = 1, and the
time of 100 queries in a row (nq = 100). Results go to stdout as JSON lines.

    python benchmarks/lexical_engines.py --n 100000 --variants docs,contentless,unicode61,external
    python benchmarks/lexical_engines.py --n 1000000 --variants docs,contentless --keep /tmp/lex1m
"""

from __future__ import annotations

import argparse
import ast
import glob
import gzip
import json
import os
import sqlite3
import statistics
import sysconfig
import time
from collections.abc import Iterator

from bne import lexical
from bne.docstore import DOCS_SQL, INDEX_SQL

DATA = os.environ.get("BNE_DATA", "/work/shared/data")
COMMIT_EVERY = 2048  # Collection.add's commit_every default


def scifact_docs() -> list[tuple[str, str]]:
    out = []
    with gzip.open(os.path.join(DATA, "beir/scifact/corpus.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            out.append((d.get("title") or "", d["text"]))
    return out


def stdlib_docs() -> list[tuple[str, str]]:
    out = []
    root = sysconfig.get_paths()["stdlib"]
    for p in sorted(glob.glob(root + "/**/*.py", recursive=True)):
        if "/test" in p or "site-packages" in p:
            continue
        try:
            with open(p, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    out.append((getattr(node, "name", os.path.basename(p)), doc))
    return out


_BASE: list[tuple[str, str]] = []


def corpus(n: int) -> Iterator[tuple[int, str, str, str]]:
    """(row id, ext_id, title, text): the base documents over and over, each copy with new ids."""
    if not _BASE:
        _BASE.extend(scifact_docs() + stdlib_docs())
    base = _BASE
    for i in range(n):
        title, text = base[i % len(base)]
        yield i, f"d{i // len(base)}-{i % len(base)}", title, text


def queries(split: str = "test") -> list[str]:
    ids = set()
    with open(os.path.join(DATA, f"beir/scifact/qrels/{split}.tsv"), encoding="utf-8") as f:
        next(f)
        ids = {line.split("\t")[0] for line in f}
    out = []
    with open(os.path.join(DATA, "beir/scifact/queries.jsonl"), encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if d["_id"] in ids:
                out.append(d["text"])
    return out


VARIANTS = {
    "docs": None,  # the docstore alone, the baseline
    "contentless": lexical.CREATE_SQL,
    "unicode61": lexical.CREATE_SQL.replace("porter unicode61", "unicode61"),
    "external": "CREATE VIRTUAL TABLE docs_fts USING fts5(title, text, content='docs', content_rowid='id', "
    "detail=full, tokenize='porter unicode61 remove_diacritics 2')",
    "column": lexical.CREATE_SQL.replace("content=''", "content='docs', content_rowid='id'")
    .replace("detail=full", "detail=column")
    .replace("fts5(text,", "fts5(title, text,"),
}


def fresh_docstore(path: str) -> sqlite3.Connection:
    """A new, empty docstore file at ``path`` (any old one removed) with the docstore's tables and
    its durability settings, as ``bne build`` writes them."""
    for suffix in ("", "-journal"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(DOCS_SQL)
    db.execute(INDEX_SQL)
    return db


def build(path: str, variant: str, n: int) -> dict:
    db = fresh_docstore(path)
    if VARIANTS[variant]:
        db.execute(VARIANTS[variant])
    db.commit()
    rows = corpus(n)
    first = next(rows)  # the base corpus is read before the clock starts
    t0 = time.perf_counter()
    batch: list[tuple[int, str, str, str]] = []

    def flush() -> None:
        db.executemany("INSERT INTO docs (id, ext_id, title, text, meta) VALUES (?, ?, ?, ?, '')", batch)
        if variant in ("contentless", "unicode61"):
            lexical.insert(db, (r[0] for r in batch), (f"{r[2]} {r[3]}" if r[2] else r[3] for r in batch))
        elif variant in ("external", "column"):
            db.executemany(
                "INSERT INTO docs_fts (rowid, title, text) VALUES (?, ?, ?)", [(r[0], r[2], r[3]) for r in batch]
            )
        db.commit()
        batch.clear()

    batch.append(first)
    for row in rows:
        batch.append(row)
        if len(batch) == COMMIT_EVERY:
            flush()
    if batch:
        flush()
    t_build = time.perf_counter() - t0
    size = os.path.getsize(path)
    t0 = time.perf_counter()
    if VARIANTS[variant]:
        db.execute("INSERT INTO docs_fts(docs_fts) VALUES ('optimize')")
        db.commit()
    t_opt = time.perf_counter() - t0
    db.close()
    return {
        "variant": variant,
        "n": n,
        "build_s": round(t_build, 2),
        "docs_per_s": round(n / t_build),
        "optimize_s": round(t_opt, 2),
        "bytes": size,
        "bytes_optimized": os.path.getsize(path),
    }


def latency(path: str, variant: str, qs: list[str], limit: int = 100, n_global: int = 100) -> dict:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.execute("PRAGMA trusted_schema=OFF")
    terms = [lexical.query_terms(q) for q in qs]
    res: dict = {"variant": variant}
    if variant == "docs":
        return res
    lexical.bm25_search(db, terms[0], limit)  # warm the page cache
    one = []
    for t in terms:
        t0 = time.perf_counter()
        lexical.bm25_search(db, t, limit)
        one.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for t in terms:
        lexical.bm25_search(db, t, limit)
    res.update(
        nq1_median_ms=round(1e3 * statistics.median(one), 2),
        nq1_p90_ms=round(1e3 * sorted(one)[int(0.9 * len(one))], 2),
        nq100_s=round(time.perf_counter() - t0, 3),
        terms_median=statistics.median(len(t) for t in terms),
    )
    if variant == "contentless":  # the sharded path: own scoring with outside statistics
        st = [lexical.local_stats(db, t) for t in terms]
        glob_ = []
        for t in terms[:n_global]:
            t0 = time.perf_counter()
            lexical.bm25_search(db, t, limit, stats=lexical.local_stats(db, t))
            glob_.append(time.perf_counter() - t0)
        res.update(
            global_nq1_median_ms=round(1e3 * statistics.median(glob_), 2),
            global_nq1_p90_ms=round(1e3 * sorted(glob_)[int(0.9 * len(glob_))], 2),
            df_max_median=statistics.median(max(s.df.values(), default=0) for s in st),
            postings_median=statistics.median(sum(s.df.values()) for s in st),
        )
        # the cost of FTS5 finding the matches alone, without bm25() or sorting
        cnt = []
        for t in terms:
            t0 = time.perf_counter()
            db.execute("SELECT count(*) FROM docs_fts WHERE docs_fts MATCH ?", (lexical.match_expr(t),)).fetchone()
            cnt.append(time.perf_counter() - t0)
        res["match_only_nq1_median_ms"] = round(1e3 * statistics.median(cnt), 2)
    db.close()
    return res


def bm25s_engine(folder: str, n: int, qs: list[str], limit: int = 100) -> list[dict]:
    """bm25s (eager sparse BM25 in numpy/scipy) with PyStemmer's English (Porter 2) stemmer, no
    stopwords: the same documents; index size is its saved folder. Not a bne dependency."""
    import bm25s
    import Stemmer

    stem = Stemmer.Stemmer("english")
    texts = [f"{t} {x}" if t else x for _, _, t, x in corpus(n)]
    t0 = time.perf_counter()
    tok = bm25s.tokenize(texts, stopwords=None, stemmer=stem, show_progress=False)
    ret = bm25s.BM25(k1=lexical.K1, b=lexical.B)
    ret.index(tok, show_progress=False)
    t_build = time.perf_counter() - t0
    out = os.path.join(folder, f"bm25s-{n}")
    ret.save(out)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    del texts, tok
    qtok = [bm25s.tokenize(q, stopwords=None, stemmer=stem, show_progress=False, return_ids=False)[0] for q in qs]
    ret.retrieve([qtok[0]], k=limit, show_progress=False, n_threads=1)
    one = []
    for q in qtok:
        t0 = time.perf_counter()
        ret.retrieve([q], k=limit, show_progress=False, n_threads=1)
        one.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ret.retrieve(qtok, k=limit, show_progress=False, n_threads=1)
    return [
        {"variant": "bm25s", "n": n, "build_s": round(t_build, 2), "docs_per_s": round(n / t_build), "bytes": size},
        {
            "variant": "bm25s",
            "nq1_median_ms": round(1e3 * statistics.median(one), 2),
            "nq1_p90_ms": round(1e3 * sorted(one)[int(0.9 * len(one))], 2),
            "nq100_s": round(time.perf_counter() - t0, 3),
        },
    ]


def tantivy_engine(
    folder: str, n: int, qs: list[str], limit: int = 100, commit_every: int = COMMIT_EVERY
) -> list[dict]:
    """tantivy (Lucene-like, Rust; block-max WAND top-k) with its English stemmer, committed every
    COMMIT_EVERY documents like the docstore. Queries: query_terms' quoted words, OR-ed (the query
    parser sees only quoted words). Not a bne dependency."""
    import shutil

    import tantivy

    out = os.path.join(folder, f"tantivy-{n}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("text", stored=False, tokenizer_name="en_stem")
    sb.add_integer_field("id", stored=True, indexed=True, fast=True)
    schema = sb.build()
    index = tantivy.Index(schema, path=out)
    writer = index.writer(heap_size=128_000_000, num_threads=1)
    t0 = time.perf_counter()
    for k, (i, _, title, text) in enumerate(corpus(n), 1):
        writer.add_document(tantivy.Document(id=i, text=f"{title} {text}" if title else text))
        if k % commit_every == 0:
            writer.commit()
    writer.commit()
    writer.wait_merging_threads()
    t_build = time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    index.reload()
    searcher = index.searcher()
    parsed = [index.parse_query(" ".join(lexical.query_terms(q)) or '""', ["text"]) for q in qs]
    searcher.search(parsed[0], limit)
    one = []
    for q in parsed:
        t0 = time.perf_counter()
        searcher.search(q, limit).hits  # noqa: B018
        one.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for q in parsed:
        searcher.search(q, limit).hits  # noqa: B018
    return [
        {
            "variant": "tantivy",
            "n": n,
            "commit_every": commit_every,
            "build_s": round(t_build, 2),
            "docs_per_s": round(n / t_build),
            "bytes": size,
        },
        {
            "variant": "tantivy",
            "nq1_median_ms": round(1e3 * statistics.median(one), 2),
            "nq1_p90_ms": round(1e3 * sorted(one)[int(0.9 * len(one))], 2),
            "nq100_s": round(time.perf_counter() - t0, 3),
        },
    ]


def dense_engine(n: int, qs: list[str], limit: int = 100) -> list[dict]:
    """The dense side for comparison: the shipped query encoder (ONNX Runtime, as ``bne search``)
    plus exact Hamming top-``limit`` over n random 1024-bit codes (search time does not depend on
    the codes), end to end per query."""
    import numpy as np

    from bne.encoder.runtime import load
    from bne.index import Index

    enc = load("default", 1024, purpose="query", threads=2, quiet=True)
    index = Index(1024)
    index.add(np.random.default_rng(0).integers(0, 256, (n, 128), dtype=np.uint8))
    enc.search(index, qs[:1], limit)
    one = []
    for q in qs:
        t0 = time.perf_counter()
        enc.search(index, [q], limit)
        one.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    enc.search(index, qs, limit)
    return [
        {
            "variant": "dense",
            "n": n,
            "nq1_median_ms": round(1e3 * statistics.median(one), 2),
            "nq1_p90_ms": round(1e3 * sorted(one)[int(0.9 * len(one))], 2),
            "nq100_s": round(time.perf_counter() - t0, 3),
        }
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--variants", default="docs,contentless,unicode61,external")
    p.add_argument("--keep", default="/tmp/bne-lex", help="folder for the databases (kept for reruns)")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--global-queries", type=int, default=100, help="queries timed on the outside-statistics path")
    p.add_argument("--tantivy-commit", type=int, default=COMMIT_EVERY)
    args = p.parse_args()
    os.makedirs(args.keep, exist_ok=True)
    qs = queries()[: args.queries]
    for v in args.variants.split(","):
        if v == "dense":
            for r in dense_engine(args.n, qs):
                print(json.dumps(r), flush=True)
            continue
        if v in ("bm25s", "tantivy"):
            rows = (
                bm25s_engine(args.keep, args.n, qs)
                if v == "bm25s"
                else tantivy_engine(args.keep, args.n, qs, commit_every=args.tantivy_commit)
            )
            for r in rows:
                print(json.dumps(r), flush=True)
            continue
        path = os.path.join(args.keep, f"{v}-{args.n}.sqlite")
        if not args.skip_build:
            print(json.dumps(build(path, v, args.n)), flush=True)
        print(json.dumps(latency(path, v, qs, n_global=args.global_queries)), flush=True)


if __name__ == "__main__":
    main()
