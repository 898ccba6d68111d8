"""Quality preview of hybrid search (issue 17): nDCG@10 / R@10 of dense bne (the shipped 1024-bit
model, documents encoded as ``bne build`` does, queries as ``bne search`` does), BM25 (bne.lexical
over SQLite FTS5) and their reciprocal rank fusion.

The fusion constants are tuned on SciFact **train** only; SciFact test, CISI and Cranfield are then
reported with the chosen constants and never used to choose. Document codes are cached in --cache.

    HF_HUB_OFFLINE=1 python benchmarks/hybrid_quality.py --data /work/shared/data --threads 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sqlite3
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEPTH = 100  # each side's list, as the measurements


def bm25_lists(texts: list[str], queries: list[str], depth: int, repeats: bool = False) -> list[list[int]]:
    from bne import lexical

    db = sqlite3.connect(":memory:")
    lexical.create(db)
    lexical.insert(db, range(len(texts)), texts)
    db.commit()
    return [[i for i, _ in lexical.bm25_search(db, lexical.query_terms(q, repeats=repeats), depth)] for q in queries]


def as_array(lists: list[list[int]], k: int = 10) -> np.ndarray:
    out = np.full((len(lists), k), -1, dtype=np.int64)
    for r, ids in enumerate(lists):
        out[r, : min(k, len(ids))] = ids[:k]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default="/tmp/bne-hybrid-quality")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--repeats", action="store_true", help="BM25 counts repeated query words (query_terms)")
    args = p.parse_args()

    from bne import lexical
    from bne.encoder.runtime import load
    from bne.index import Index
    from bne.training.data import data_root, load_beir
    from bne.training.evaluate import retrieval_metrics

    root = data_root(args.data)
    os.makedirs(args.cache, exist_ok=True)
    qenc = load("default", 1024, purpose="query", threads=args.threads, quiet=True)
    benc = None
    results: dict[str, object] = {"load_average_start": round(os.getloadavg()[0], 1), "repeats": args.repeats}

    def side_lists(name: str, split: str):
        """(qrels as rows, dense lists, dense+rescore lists, bm25 lists) for one dataset split."""
        nonlocal benc
        corpus, queries, qrels = load_beir(name, split, root)
        dids, qids = list(corpus), list(queries)
        row = {d: i for i, d in enumerate(dids)}
        texts = [corpus[d] for d in dids]
        cache = os.path.join(args.cache, f"{name}-codes.npy")
        if os.path.exists(cache):
            codes = np.load(cache)
        else:
            if benc is None:
                benc = load("default", 1024, purpose="bulk", threads=args.threads, quiet=True, docs=len(texts))
            t = time.perf_counter()
            codes = benc.encode(texts, show_progress=False)
            print(f"# {name}: {len(texts)} documents encoded in {time.perf_counter() - t:.0f} s", flush=True)
            np.save(cache, codes)
        index = Index(1024)
        index.add(codes)
        qtexts = [queries[q] for q in qids]
        _, dense = qenc.search(index, qtexts, DEPTH)
        _, rescored = qenc.search(index, qtexts, DEPTH, rescore=DEPTH)
        lex = bm25_lists(texts, qtexts, DEPTH, args.repeats)
        rels = [{row[d]: s for d, s in qrels[q].items() if d in row} for q in qids]
        return rels, [list(map(int, r)) for r in dense], [list(map(int, r)) for r in rescored], lex

    def metrics(lists: list[list[int]], rels) -> tuple[float, float]:
        r, n = retrieval_metrics(as_array(lists), rels, 10)
        return round(n, 4), round(r, 4)

    def fused(dense, lex, k, w, depth):
        return [
            [f.id for f in lexical.rrf_fuse(d, x, k=k, weights=(1.0, w), depth=depth, limit=10)]
            for d, x in zip(dense, lex, strict=True)
        ]

    # --- tuning on SciFact train ---
    rels, dense, rescored, lex = side_lists("scifact", "train")
    results["scifact-train"] = {
        "dense": metrics(dense, rels),
        "dense+rescore": metrics(rescored, rels),
        "bm25": metrics(lex, rels),
        "rrf k=60": metrics(fused(dense, lex, 60, 1.0, 100), rels),
        "rrf k=60 rescore": metrics(fused(rescored, lex, 60, 1.0, 100), rels),
    }
    grid = []
    for base, k, w, depth in itertools.product(
        ("dense", "rescore"), (5, 10, 20, 40, 60, 100, 200), (0.5, 0.75, 1.0, 1.25, 1.5, 2.0), (20, 50, 100)
    ):
        d = dense if base == "dense" else rescored
        nd, r = metrics(fused(d, lex, k, w, depth), rels)
        grid.append({"dense": base, "k": k, "w_lex": w, "depth": depth, "nDCG@10": nd, "R@10": r})
    grid.sort(key=lambda g: (-g["nDCG@10"], -g["R@10"]))
    results["train_grid_top10"] = grid[:10]
    best_plain = next(g for g in grid if g["dense"] == "dense")
    best_resc = next(g for g in grid if g["dense"] == "rescore")
    results["chosen"] = {"plain": best_plain, "rescore": best_resc}
    print(json.dumps({"scifact-train": results["scifact-train"], "chosen": results["chosen"]}), flush=True)

    # --- held out: report only ---
    for name, split in (("scifact", "test"), ("cisi", "test"), ("cranfield", "test")):
        rels, dense, rescored, lex = side_lists(name, split)
        bp, br = best_plain, best_resc
        res = {
            "dense": metrics(dense, rels),
            "dense+rescore": metrics(rescored, rels),
            "bm25": metrics(lex, rels),
            "rrf k=60 depth=100": metrics(fused(dense, lex, 60, 1.0, 100), rels),
            "rrf k=60 depth=100 rescore": metrics(fused(rescored, lex, 60, 1.0, 100), rels),
            "rrf chosen": metrics(fused(dense, lex, bp["k"], bp["w_lex"], bp["depth"]), rels),
            "rrf chosen rescore": metrics(fused(rescored, lex, br["k"], br["w_lex"], br["depth"]), rels),
        }
        results[f"{name}-{split}"] = res
        print(json.dumps({f"{name}-{split}": res}), flush=True)
    results["load_average_end"] = round(os.getloadavg()[0], 1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
