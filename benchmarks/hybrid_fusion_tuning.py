"""Tune hybrid fusion on SciFact TRAIN with cross-fitted dense lists; report held-out sets untouched.

Reads ``OUT/oof.npz`` from ``benchmarks/hybrid_crossfit.py`` (every train query ranked by a head that
never saw it) and BM25 lists of the same queries (``bne.lexical_postings``, as ``bne search`` reads
them), and scores every cell of a grid over the fusion's options:

* dense side: the Hamming list, or its first 100 re-ranked by float query logits (``--rescore 100``);
* RRF constant k, lexical weight (dense weight 1), per-side depth;
* BM25 with repeated query words counted or each word once.

The choice is made on train alone: the best cell replaces the current defaults only when a paired
randomisation test over the train queries says its gain is real (p < 0.05); otherwise the defaults
stay. Then the chosen and the current defaults are reported on SciFact test, CISI and Cranfield with
the shipped head (held out: reported, never used to choose).

    python benchmarks/hybrid_fusion_tuning.py --data ../shared/data --crossfit /tmp/crossfit \\
        [--cache-dir /tmp/evcache] [--json results.json] [--checks]

``--checks`` instead tests three more candidate changes on train alone, at the defaults: BM25's k1
and b (FTS5's are fixed at 1.2 and 0.75; bne's scorer reads ``bne.lexical.K1``/``B``), query words
without English stopwords, and dense ranks that give documents at the same Hamming distance the
same rank (instead of ordering them by id).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import numpy as np

DEPTH = 1000  # deepest list either side is cut at
KS = (5, 10, 20, 30, 40, 60, 80, 100, 150, 200)
WLEX = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
ALPHAS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DEPTHS = [(d, d) for d in (20, 50, 100, 200, 500, 1000)] + [(500, 100), (1000, 100), (100, 500), (100, 1000)]


def bm25_ranked(doc_texts, query_texts, depth, repeats):
    from bne.training.evaluate import bm25_scored

    return bm25_scored(doc_texts, query_texts, depth, repeats=repeats)


def rescored_prefix(ids, rids, m):
    """Each row's first ``m`` Hamming candidates re-ranked by the float score order in ``rids``
    (which ranks all of ``ids``' candidates), followed by the rest of the Hamming list."""
    out = ids.copy()
    for qi in range(len(ids)):
        head = set(int(x) for x in ids[qi, :m] if x >= 0)
        order = [int(x) for x in rids[qi] if int(x) in head]
        out[qi, : len(order)] = order
    return out


class Grid:
    """Rank matrices of one set's queries over the union of both sides' lists, for fast fusion."""

    def __init__(self, dense, lex, qrels, dscore=None, lscore=None):
        nq = len(dense)
        unions = []
        for qi in range(nq):
            u = list(dict.fromkeys([int(x) for x in dense[qi] if x >= 0] + [int(x) for x in lex[qi] if x >= 0]))
            unions.append(u)
        U = max(len(u) for u in unions)
        big = 1 << 30
        self.ids = np.full((nq, U), big, np.int64)
        self.rd = np.full((nq, U), big, np.int64)
        self.rl = np.full((nq, U), big, np.int64)
        self.gain = np.zeros((nq, U), np.float64)
        self.sd = np.full((nq, U), np.nan)  # each side's raw score (higher = better), for convex fusion
        self.sl = np.full((nq, U), np.nan)
        for qi, u in enumerate(unions):
            col = {d: j for j, d in enumerate(u)}
            self.ids[qi, : len(u)] = u
            for r, d in enumerate(dense[qi], 1):
                if d >= 0 and self.rd[qi, col[int(d)]] == big:
                    self.rd[qi, col[int(d)]] = r
                    if dscore is not None:
                        self.sd[qi, col[int(d)]] = dscore[qi, r - 1]
            for r, d in enumerate(lex[qi], 1):
                if d >= 0 and self.rl[qi, col[int(d)]] == big:
                    self.rl[qi, col[int(d)]] = r
                    if lscore is not None:
                        self.sl[qi, col[int(d)]] = lscore[qi, r - 1]
            for d, g in qrels[qi].items():
                if d in col:
                    self.gain[qi, col[d]] = g
        self.idcg = np.array(
            [sum(g / math.log2(i + 2) for i, g in enumerate(sorted(q.values(), reverse=True)[:10])) for q in qrels]
        )
        self.nrel = np.array([max(1, len(q)) for q in qrels])
        self.disc = 1.0 / np.log2(np.arange(2, 12))

    def rrf(self, k, wlex, dd, dl):
        sd = np.where(self.rd <= dd, 1.0 / (k + self.rd), 0.0)
        sl = np.where(self.rl <= dl, wlex / (k + self.rl), 0.0)
        return sd + sl

    def convex(self, alpha, dd, dl):
        """Min-max normalised scores, ``alpha * dense + (1 - alpha) * lexical`` (a side a document is
        not in adds 0): Elasticsearch's linear retriever with minmax, Weaviate's relativeScoreFusion."""

        def norm(x, r, depth):
            x = np.where(r <= depth, x, np.nan)
            with np.errstate(all="ignore"):
                lo, hi = np.nanmin(x, 1, keepdims=True), np.nanmax(x, 1, keepdims=True)
                n = np.where(hi > lo, (x - lo) / (hi - lo), 1.0)
            return np.nan_to_num(np.where(np.isnan(x), 0.0, n))

        return alpha * norm(self.sd, self.rd, dd) + (1 - alpha) * norm(self.sl, self.rl, dl)

    def top10(self, s, dd, dl):
        """Positions (into the union) of the top 10 of fused scores ``s``, in ``rrf_fuse``'s order."""
        s = s.copy()
        s[(self.rd > dd) & (self.rl > dl)] = -1.0
        cand = (
            np.argpartition(-s, 40, axis=1)[:, :40] if s.shape[1] > 40 else np.tile(np.arange(s.shape[1]), (len(s), 1))
        )
        big = 1 << 62
        out = np.empty((len(s), 10), np.int64)
        for qi in range(len(s)):
            c = cand[qi]
            rd = np.where(self.rd[qi, c] <= dd, self.rd[qi, c], big)
            rl = np.where(self.rl[qi, c] <= dl, self.rl[qi, c], big)
            order = np.lexsort((self.ids[qi, c], rl, rd, -s[qi, c]))[:10]
            out[qi] = c[order]
        return out, s

    def ndcg(self, k, wlex, dd, dl, fusion="rrf"):
        """Per-query nDCG@10 and R@10 of one fusion setting (``fusion="convex"``: ``k`` is alpha)."""
        top, s = self.top10(self.rrf(k, wlex, dd, dl) if fusion == "rrf" else self.convex(k, dd, dl), dd, dl)
        g = np.take_along_axis(self.gain, top, 1)
        g[np.take_along_axis(s, top, 1) < 0] = 0.0  # an empty slot is no hit
        nd = np.where(self.idcg > 0, (g * self.disc).sum(1) / np.maximum(self.idcg, 1e-12), 0.0)
        return nd, (g > 0).sum(1) / self.nrel


def paired_p(a, b, rounds=10000, seed=0):
    """Two-sided paired randomisation test of mean(a - b) = 0."""
    d = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(rounds, len(d)))
    null = np.abs((signs * d).mean(1))
    return float((null >= abs(d.mean()) - 1e-15).mean())


# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET
ENGLISH_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "  # noqa: SIM905
    "they this to was will with".split()
)


def tie_ranked_grid(g: Grid, ids: np.ndarray, dist: np.ndarray) -> Grid:
    """``g`` with each dense rank replaced by 1 + the number of strictly closer candidates."""
    for qi in range(len(ids)):
        rmin = np.searchsorted(dist[qi], dist[qi], side="left") + 1
        col = {int(x): j for j, x in enumerate(g.ids[qi])}
        for r, x in enumerate(ids[qi]):
            j = col[int(x)]
            if g.rd[qi, j] == r + 1:
                g.rd[qi, j] = rmin[r]
    return g


def checks(docs, qtexts, qrel_rows, z) -> None:
    """Train-only tests of BM25's k1 and b and of tie-aware dense ranks, at the current defaults."""
    from bne import lexical

    k, w, d = lexical.RRF_K, lexical.WEIGHTS[1], lexical.DEPTH
    ids, dist = z["ids"], z["dist"]
    base = Grid(ids, bm25_ranked(docs, qtexts, DEPTH, True)[0], qrel_rows).ndcg(k, w, d, d)[0]
    print(f"default (k1 {lexical.K1}, b {lexical.B}): hybrid nDCG@10 {base.mean():.4f}")
    k1b = lexical.K1, lexical.B
    try:
        for lexical.K1, lexical.B in itertools.product((0.6, 0.9, 1.2, 1.5, 2.0), (0.3, 0.5, 0.75, 0.9)):
            rows = bm25_ranked(docs, qtexts, DEPTH, True)[0]
            nd = Grid(ids, rows, qrel_rows).ndcg(k, w, d, d)[0]
            alone = np.mean([_ndcg10(r, q) for r, q in zip(rows, qrel_rows, strict=True)])
            print(
                f"  k1 {lexical.K1} b {lexical.B}: BM25 {alone:.4f}  hybrid {nd.mean():.4f}  p {paired_p(nd, base):.3f}"
            )
    finally:
        lexical.K1, lexical.B = k1b
    orig = lexical.query_terms
    try:  # query words without English stopwords (Lucene's EnglishAnalyzer set; Weaviate and Qdrant drop them)
        lexical.query_terms = lambda text, repeats=False: [
            t for t in orig(text, repeats=repeats) if t.strip('"') not in ENGLISH_STOPWORDS
        ]
        nd = Grid(ids, bm25_ranked(docs, qtexts, DEPTH, True)[0], qrel_rows).ndcg(k, w, d, d)[0]
    finally:
        lexical.query_terms = orig
    print(f"query stopwords dropped: {nd.mean():.4f}  p {paired_p(nd, base):.3f}")
    g = tie_ranked_grid(Grid(ids, bm25_ranked(docs, qtexts, DEPTH, True)[0], qrel_rows), ids, dist)
    nd = g.ndcg(k, w, d, d)[0]
    tied = float((dist[:, 1:d] == dist[:, : d - 1]).mean())
    print(f"tie-aware dense ranks: {nd.mean():.4f}  p {paired_p(nd, base):.3f}  ({tied:.0%} of neighbours tie)")


def _ndcg10(rows, qrel) -> float:
    g = [qrel.get(int(x), 0) for x in rows[:10]]
    dcg = sum(x / math.log2(i + 2) for i, x in enumerate(g))
    ideal = sum(x / math.log2(i + 2) for i, x in enumerate(sorted(qrel.values(), reverse=True)[:10]))
    return dcg / ideal if ideal else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--crossfit", required=True, help="the --out folder of hybrid_crossfit.py")
    p.add_argument("--cache-dir", default=None, help="backbone feature cache for the held-out sets")
    p.add_argument("--json", default=None)
    p.add_argument("--checks", action="store_true", help="test BM25 k1/b and tie-aware dense ranks instead")
    a = p.parse_args()

    from bne import lexical
    from bne.training import evaluate as ev
    from bne.training.data import load_beir

    z = np.load(f"{a.crossfit}/oof.npz")
    corpus, queries, qrels = load_beir("scifact", "train", a.data)
    dids = list(corpus)
    assert list(z["dids"]) == dids
    qids = [str(q) for q in z["qids"]]
    row = {d: i for i, d in enumerate(dids)}
    qrel_rows = [{row[d]: s for d, s in qrels[q].items() if d in row} for q in qids]
    docs = [corpus[d] for d in dids]
    if a.checks:
        checks(docs, [queries[q] for q in qids], qrel_rows, z)
        return 0
    t0 = time.time()
    lex = {r: bm25_ranked(docs, [queries[q] for q in qids], DEPTH, r) for r in (True, False)}
    print(f"BM25 lists of {len(qids)} train queries in {time.time() - t0:.0f}s", flush=True)
    dense = {"hamming": z["ids"], "rescore100": rescored_prefix(z["ids"], z["rids"], 100)}
    neg_dist = -z["dist"].astype(np.float64)

    default = ("hamming", lexical.QUERY_REPEATS, lexical.RRF_K, lexical.WEIGHTS[1], lexical.DEPTH, lexical.DEPTH)
    cells, convex = {}, {}
    for dn, rep in itertools.product(dense, (True, False)):
        ham = dn == "hamming"
        g = Grid(dense[dn], lex[rep][0], qrel_rows, neg_dist if ham else None, lex[rep][1])
        for k, w, (dd, dl) in itertools.product(KS, WLEX, DEPTHS):
            cells[(dn, rep, k, w, dd, dl)] = g.ndcg(k, w, dd, dl)
        if ham:  # reported, not chosen from: the fusion is RRF
            for alpha, d in itertools.product(ALPHAS, (20, 50, 100, 200, 1000)):
                convex[(dn, rep, alpha, d, d)] = g.ndcg(alpha, 0, d, d, fusion="convex")
    ranked = sorted(cells, key=lambda c: -cells[c][0].mean())
    base_nd = cells[default][0]
    print(f"{len(cells)} cells on SciFact train (cross-fitted dense lists), nDCG@10 / R@10:")
    print(f"  current default {default}: {base_nd.mean():.4f} / {cells[default][1].mean():.4f}")
    for c in ranked[:15]:
        nd, rc = cells[c]
        print(f"  {c}: {nd.mean():.4f} / {rc.mean():.4f}   p vs default {paired_p(nd, base_nd):.3f}")
    for dn, rep in itertools.product(dense, (True, False)):
        nd_d = ev.retrieval_metrics(dense[dn], qrel_rows, 10)
        nd_l = ev.retrieval_metrics(lex[rep][0], qrel_rows, 10)
        print(f"  dense alone {dn}: nDCG@10 {nd_d[1]:.4f}; BM25 repeats={rep}: {nd_l[1]:.4f}")
    for c in sorted(convex, key=lambda c: -convex[c][0].mean())[:5]:
        nd, rc = convex[c]
        print(f"  convex (min-max) {c}: {nd.mean():.4f} / {rc.mean():.4f}   p vs default {paired_p(nd, base_nd):.3f}")
    best = ranked[0]
    p_best = paired_p(cells[best][0], base_nd)
    chosen = best if p_best < 0.05 else default
    print(f"best {best} p = {p_best:.3f} -> chosen {chosen}", flush=True)

    # Held out, with the shipped head: reported, never used above.
    report = {"train": {str(c): [float(cells[c][0].mean()), float(cells[c][1].mean())] for c in ranked[:50]}}
    report["train_default"] = [float(base_nd.mean()), float(cells[default][1].mean())]
    report["best"], report["p_best"], report["chosen"] = str(best), p_best, str(chosen)
    args = ev.build_parser().parse_args(
        ["--data", a.data, "--quiet"] + (["--cache-dir", a.cache_dir] if a.cache_dir else [])
    )
    enc = ev.load_encoders(args)[0]
    from bne.encoder.base import rescore_candidates
    from bne.index import Index

    for spec in ("scifact:train", "scifact", "cisi", "cranfield"):
        name, split = ev._parse_beir(spec)
        c2, q2, r2 = load_beir(name, split, a.data)
        qd, dd_ = list(q2), list(c2)
        rw = {d: i for i, d in enumerate(dd_)}
        qr = [{rw[d]: s for d, s in r2[q].items() if d in rw} for q in qd]
        df = ev._embed(enc, [c2[d] for d in dd_], args, False)
        qf = ev._embed(enc, [q2[q] for q in qd], args, False)
        cd, _ = enc.project(df, return_logits=True)
        cq, lq = enc.project(qf, return_logits=True)
        index = Index(cd.shape[1] * 8)
        index.add(cd)
        D, I = index.search(cq, DEPTH)
        _, R = rescore_candidates(lq, cd, I, DEPTH)
        dn_lists = {"hamming": I, "rescore100": rescored_prefix(I, R, 100)}
        lx = {r: bm25_ranked([c2[d] for d in dd_], [q2[q] for q in qd], DEPTH, r) for r in (True, False)}
        line = []
        cbest = max(convex, key=lambda c: convex[c][0].mean())
        for label, c in (("default", default), ("chosen", chosen), ("train-best", best), ("convex-best", cbest)):
            g = Grid(dn_lists[c[0]], lx[c[1]][0], qr, -D.astype(np.float64), lx[c[1]][1])
            nd, rc = g.ndcg(*c[2:]) if label != "convex-best" else g.ndcg(c[2], 0, c[3], c[4], fusion="convex")
            report.setdefault(spec, {})[label] = [float(nd.mean()), float(rc.mean())]
            line.append(f"{label} {nd.mean():.4f}/{rc.mean():.4f}")
        print(f"{spec} (shipped head): " + "  ".join(line), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
