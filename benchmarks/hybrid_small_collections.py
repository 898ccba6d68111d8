"""Hybrid search in small collections, on SciFact TRAIN (never the held-out sets).

Each train query ranks its relevant documents among N - |relevant| random other SciFact documents:
a small collection of N. The dense side is the cross-fitted head of ``hybrid_crossfit.py`` that
never saw the query (Hamming distance, ties by id, as ``bne search`` orders them); BM25 is computed
over the small collection alone, as a collection of N documents would score it. Reported per N:
nDCG@10 of dense alone, of hybrid with the defaults, and of hybrid with English stopwords dropped
from the query words, with paired randomisation tests.

    python benchmarks/hybrid_small_collections.py --data ../shared/data --crossfit /tmp/crossfit
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hybrid_fusion_tuning import ENGLISH_STOPWORDS, _ndcg10, paired_p


def fold_distances(out: Path, corpus, queries, qids, dids) -> np.ndarray:
    """(queries, documents) Hamming distances, each query's row from the fold head that never saw it."""
    from bne.encoder.encoder import Encoder, load_minilm
    from bne.encoder.model import BinaryEmbedder, bert_tokenizer, minilm_dir
    from bne.training.features import backbone_features

    enc = Encoder(
        BinaryEmbedder(1024, encoder=load_minilm(), normalize=True),
        bert_tokenizer(minilm_dir() / "vocab.txt"),
        max_length=256,
    )
    cache = str(out / "features")
    dfeat = backbone_features([corpus[d] for d in dids], enc, cache_dir=cache, show_progress=False)
    qfeat = backbone_features([queries[q] for q in qids], enc, cache_dir=cache, show_progress=False)
    folds = len(list(out.glob("fold*.safetensors")))
    dist = np.zeros((len(qids), len(dids)), np.int32)
    for f in range(folds):
        fenc = Encoder.from_head(out / f"fold{f}.safetensors")
        rows = np.arange(f, len(qids), folds)  # fold = position in sorted id order mod folds
        cd, _ = fenc.project(dfeat, return_logits=True)
        cq, _ = fenc.project(qfeat[rows], return_logits=True)
        bd = np.unpackbits(cd, axis=1).astype(np.int32)
        bq = np.unpackbits(cq, axis=1).astype(np.int32)
        dist[rows] = bq.sum(1)[:, None] + bd.sum(1)[None, :] - 2 * (bq @ bd.T)  # popcount(x ^ y)
    return dist


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--crossfit", required=True, help="the --out folder of hybrid_crossfit.py")
    p.add_argument("--sizes", default="10,30,100,300")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    from bne import lexical
    from bne.training.data import load_beir
    from bne.training.evaluate import bm25_scored

    corpus, queries, qrels = load_beir("scifact", "train", a.data)
    qids, dids = sorted(queries), list(corpus)
    dist = fold_distances(Path(a.crossfit), corpus, queries, qids, dids)
    row = {d: i for i, d in enumerate(dids)}
    words = lexical.query_terms

    def without_stopwords(text, repeats=False):
        return [t for t in words(text, repeats=repeats) if t.strip('"') not in ENGLISH_STOPWORDS]

    rng = np.random.default_rng(a.seed)
    for n in (int(x) for x in a.sizes.split(",")):
        got: dict[str, list[float]] = {"dense": [], "hybrid": [], "no stopwords": []}
        for qi, q in enumerate(qids):
            rel = [row[d] for d in qrels[q] if d in row]
            sub = np.array(rel + list(rng.choice(np.setdiff1d(np.arange(len(dids)), rel), n - len(rel), replace=False)))
            gains = {j: qrels[q][dids[d]] for j, d in enumerate(sub) if d in rel}
            dense = np.lexsort((np.arange(n), dist[qi, sub])).tolist()  # positions in sub, ties by position
            got["dense"].append(_ndcg10(np.array(dense), gains))
            for name, qt in (("hybrid", words), ("no stopwords", without_stopwords)):
                lexical.query_terms = qt
                try:
                    lex, _ = bm25_scored([corpus[dids[d]] for d in sub], [queries[q]], lexical.DEPTH)
                finally:
                    lexical.query_terms = words
                fused = lexical.rrf_fuse(dense, [int(i) for i in lex[0] if i >= 0], depth=lexical.DEPTH, limit=10)
                got[name].append(_ndcg10(np.array([f.id for f in fused]), gains))
        d, h, s = (np.array(got[k]) for k in ("dense", "hybrid", "no stopwords"))
        print(
            f"N={n}: dense {d.mean():.4f}  hybrid {h.mean():.4f} (p vs dense {paired_p(h, d):.3f})  "
            f"hybrid without query stopwords {s.mean():.4f} (p vs hybrid {paired_p(s, h):.3f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
