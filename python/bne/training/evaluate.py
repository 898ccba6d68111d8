"""Evaluation of binary encoders (``bne eval``): STS Spearman and BEIR retrieval, with baselines.

For every text the backbone runs once; the methods compared on the same features are:

* ``float``   - the backbone's L2-normalised mean-pooled embedding, cosine similarity;
* ``sign``    - post-hoc sign of the backbone embedding (``hidden`` bits), Hamming;
* ``lsh``     - random-hyperplane LSH of the normalised embedding at the model's bit count, Hamming;
* ``binary``  - the trained head, Hamming (``1 - 2 * hamming / bits`` for STS);
* ``binary+rescore`` - retrieval only: top ``--rescore`` Hamming candidates re-ranked by the float
  query logits against the candidates' {-1,+1} bits.
* ``bm25`` - retrieval only: BM25 over the document texts (:mod:`bne.lexical_postings`, the index
  ``bne build`` writes into the docstore), query words as ``bne search`` reads them;
* ``<method>+hybrid`` - reciprocal rank fusion of that method's list and BM25's, with the defaults of
  ``bne search --mode hybrid`` (``bne.lexical.RRF_K``, ``DEPTH``, ``WEIGHTS``);
* ``<method>+linear`` - the same two lists fused as ``bne search --fusion linear`` fuses them (min-max
  normalised scores: cosine, minus the Hamming distance or the rescore score; BM25), its default weights.

Retrieval searches go through :class:`bne.Index` (exact Hamming top-k). Metrics: STS numbers are
Spearman correlations (not x100); retrieval Recall@10 / nDCG@10 (graded gains, BEIR style).
Held-out sets (SICK, STS12-16, CISI, Cranfield) are marked with ``*``: report them, never tune on them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import lexical
from ..console import int_between
from ..encoder.base import threads_option
from ..fileio import check_writable
from .data import HELD_OUT, STS_SETS, data_root, load_beir, load_sts

DEFAULT_STS = ("stsb-dev", "stsb-test", "sick-test", "sts12", "sts13", "sts14", "sts15", "sts16")
DEFAULT_BEIR = ("scifact", "scifact:train", "cisi", "cranfield")


def _rank(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(a))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation (Pearson of average ranks); numpy only."""
    rx, ry = _rank(x), _rank(y)
    rx -= rx.mean()
    ry -= ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def hamming_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distance between two equally shaped uint8 code arrays."""
    x = np.bitwise_xor(a, b)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).sum(axis=1, dtype=np.int64)
    return np.unpackbits(x, axis=1).sum(axis=1, dtype=np.int64)  # pragma: no cover - numpy < 2


def retrieval_metrics(ranked: np.ndarray, qrels: list[dict[int, int]], k: int = 10) -> tuple[float, float]:
    """(Recall@k, nDCG@k) averaged over queries; ``ranked`` (nq, >=k) doc rows (-1 = none),
    ``qrels[i]`` {doc row: graded relevance > 0}. nDCG uses the graded relevance as gain (BEIR)."""
    rec, nd = [], []
    for row, rel in zip(ranked[:, :k], qrels, strict=True):
        hits = [rel.get(int(d), 0) for d in row]
        rec.append(sum(1 for h in hits if h > 0) / max(1, len(rel)))
        dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
        ideal = sorted(rel.values(), reverse=True)[:k]
        idcg = sum(h / math.log2(i + 2) for i, h in enumerate(ideal))
        nd.append(dcg / idcg if idcg > 0 else 0.0)
    return float(np.mean(rec)), float(np.mean(nd))


class Methods:
    """Turns raw backbone features into each method's representation."""

    def __init__(
        self, encoder, bits: int, lsh_seed: int = 0, baselines: Sequence[str] = ("float", "sign", "lsh")
    ) -> None:
        self.encoder = encoder
        self.bits = bits
        hidden = int(getattr(encoder, "hidden_size", None) or encoder.model.bert_config.hidden_size)
        self.hidden = hidden
        rng = np.random.default_rng(lsh_seed)
        self.lsh_w = rng.standard_normal((hidden, bits)).astype(np.float32)
        self.baselines = tuple(baselines)

    @staticmethod
    def _norm(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def names(self) -> list[str]:
        out = []
        if "float" in self.baselines:
            out.append("float")
        if "sign" in self.baselines:
            out.append(f"sign-{self.hidden}")
        if "lsh" in self.baselines:
            out.append(f"lsh-{self.bits}")
        out.append(f"binary-{self.bits}")
        return out

    def represent(self, name: str, feats: np.ndarray):
        """float: (normalised vectors, None); binary kinds: (packed codes, float logits)."""
        from ..codes import pack

        if name == "float":
            return self._norm(feats), None
        if name.startswith("sign-"):
            pad = (-feats.shape[1]) % 64  # bne.Index needs a multiple of 64 bits (384 already is)
            f = np.pad(feats, ((0, 0), (0, pad))) if pad else feats  # padded bits are 0 for every text
            return pack(f > 0), f
        if name.startswith("lsh-"):
            z = self._norm(feats) @ self.lsh_w
            return pack(z > 0), z
        codes, z = self.encoder.project(feats, return_logits=True)
        return codes, z


def eval_sts(
    methods: Methods, feats: dict[str, np.ndarray], s1: list[str], s2: list[str], gold: np.ndarray
) -> dict[str, float]:
    a = np.stack([feats[t] for t in s1])
    b = np.stack([feats[t] for t in s2])
    out = {}
    for name in methods.names():
        ra, _ = methods.represent(name, a)
        rb, _ = methods.represent(name, b)
        if name == "float":
            sim = (ra * rb).sum(1)
        else:
            nbits = ra.shape[1] * 8
            sim = 1.0 - 2.0 * hamming_rows(ra, rb) / nbits
        out[name] = spearman(sim, gold)
    return out


def bm25_scored(
    doc_texts: Sequence[str], query_texts: Sequence[str], depth: int, *, repeats: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(nq, depth) document rows ranked by BM25 (-1 = no more matches) and their scores (0 there): the
    docs are indexed in an in-memory SQLite file exactly as ``bne build`` indexes a docstore, the
    queries read as ``bne search`` reads them (``repeats``: ``bne.lexical.QUERY_REPEATS`` unless given)."""
    import sqlite3

    from .. import lexical, lexical_postings, lexical_segments

    rep = lexical.QUERY_REPEATS if repeats is None else repeats
    db = sqlite3.connect(":memory:")
    lexical_segments.create(db)
    for start in range(0, len(doc_texts), 4096):
        chunk = range(start, min(start + 4096, len(doc_texts)))
        lexical_segments.insert(db, list(chunk), [doc_texts[i] for i in chunk])
    searcher = lexical_postings.Searcher(db)
    out = np.full((len(query_texts), depth), -1, np.int64)
    scores = np.zeros((len(query_texts), depth), np.float64)
    for qi, q in enumerate(query_texts):
        hits = searcher.search(lexical.query_terms(q, repeats=rep), depth)
        out[qi, : len(hits)] = [i for i, _ in hits]
        scores[qi, : len(hits)] = [x for _, x in hits]
    db.close()
    return out, scores


def fuse_lists(
    dense: np.ndarray,
    lexical_rows: np.ndarray,
    k: int,
    *,
    fusion: str = "rrf",
    dense_scores: np.ndarray | None = None,
    lexical_scores: np.ndarray | None = None,
) -> np.ndarray:
    """(nq, k) rows of the fusion of two ranked row lists (-1 = none), with the search defaults.
    ``fusion="linear"`` needs each list's scores (higher = better), aligned with its rows."""
    from .. import lexical

    if fusion not in lexical.FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(lexical.FUSIONS)}, got {fusion!r}")
    if fusion == "linear" and (dense_scores is None or lexical_scores is None):
        raise ValueError("linear fusion needs dense_scores and lexical_scores")
    out = np.full((len(dense), k), -1, np.int64)
    for qi, (d, lx) in enumerate(zip(dense, lexical_rows, strict=True)):
        dn = [int(i) for i in d if i >= 0]
        ln = [int(i) for i in lx if i >= 0]
        if fusion == "rrf":
            fused = lexical.rrf_fuse(dn, ln, depth=lexical.DEPTH, limit=k)
        else:
            assert dense_scores is not None and lexical_scores is not None  # checked above
            fused = lexical.linear_fuse(
                list(zip(dn, map(float, dense_scores[qi][d >= 0]), strict=True)),
                list(zip(ln, map(float, lexical_scores[qi][lx >= 0]), strict=True)),
                lexical.default_weights("linear"),
                depth=lexical.DEPTH,
                limit=k,
            )
        out[qi, : len(fused)] = [f.id for f in fused]
    return out


def eval_retrieval(
    methods: Methods,
    qf: np.ndarray,
    df: np.ndarray,
    qrels: list[dict[int, int]],
    *,
    k: int = 10,
    rescore: int = 0,
    threads: int | None = None,
    bm25: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Recall@k / nDCG@k of every method; with ``bm25`` (the rows and scores of :func:`bm25_scored`),
    also a ``bm25`` row and the float and binary methods fused with it (``+hybrid``: RRF, the default
    fusion; ``+linear``: linear fusion)."""
    from .. import lexical
    from ..index import Index

    out: dict[str, dict[str, float]] = {}

    def score(key: str, ranked: np.ndarray) -> None:
        r, n = retrieval_metrics(ranked, qrels, k)
        out[key] = {"recall@10": r, "ndcg@10": n}

    def fused(key: str, rows: np.ndarray, scores: np.ndarray) -> None:
        assert bm25 is not None
        score(key + "+hybrid", fuse_lists(rows, bm25[0], k))
        score(
            key + "+linear", fuse_lists(rows, bm25[0], k, fusion="linear", dense_scores=scores, lexical_scores=bm25[1])
        )

    depth = max(k, lexical.DEPTH) if bm25 is not None else k
    if bm25 is not None:
        score("bm25", bm25[0])
    for name in methods.names():
        rq, lq = methods.represent(name, qf)
        rd, _ = methods.represent(name, df)
        if name == "float":
            s = rq @ rd.T
            top = np.argsort(-s, axis=1, kind="stable")[:, :depth]
            score(name, top)
            if bm25 is not None:
                fused(name, top, np.take_along_axis(s, top, 1))
            continue
        index = Index(rd.shape[1] * 8)
        index.add(rd)
        m = max(depth, rescore or 0)
        dist, ids = index.search(rq, m, threads=threads)
        score(name, ids)
        lex = bm25 is not None and name.startswith("binary")  # fused: the model's own rows, not the baselines
        if lex:
            fused(name, ids, -dist.astype(np.float64))
        if rescore and name.startswith("binary"):
            from ..encoder.base import rescore_candidates

            rs, rids = rescore_candidates(lq, rd, ids[:, : max(k, rescore)], max(k, min(rescore, depth)))
            score(name + "+rescore", rids)
            if lex:
                fused(name + "+rescore", rids, rs)
    return out


def _parse_beir(spec: str) -> tuple[str, str]:
    name, _, split = spec.partition(":")
    return name, split or "test"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bne eval",
        allow_abbrev=False,  # a prefix is not an option
        description="Evaluate a binary encoder on STS and BEIR retrieval, next to float / sign / LSH baselines.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--head",
        nargs="+",
        default=None,
        help="head file(s) (.safetensors + .json) on all-MiniLM-L6-v2 (default: the shipped heads for --bits)",
    )
    src.add_argument("--model", default=None, help="a BinaryEmbedder checkpoint (file or folder, bne-binary layout)")
    p.add_argument(
        "--bits",
        type=int,
        nargs="+",
        default=[1024],
        help="shipped head(s) to evaluate (1024, 2048); the backbone runs once for all",
    )
    p.add_argument("--cache-dir", default=None, help="cache backbone features here (.npy), reused by later runs")
    p.add_argument(
        "--data", default=None, metavar="DIR", help="data folder (shared/data: STS and BEIR sets; default: $BNE_DATA)"
    )
    p.add_argument("--sts", nargs="*", default=list(DEFAULT_STS), help=f"STS sets ({', '.join(STS_SETS)})")
    p.add_argument(
        "--beir",
        nargs="*",
        default=list(DEFAULT_BEIR),
        help="BEIR sets as name[:split] (scifact, scifact:train, cisi, cranfield)",
    )
    p.add_argument(
        "--baselines",
        nargs="*",
        default=["float", "sign", "lsh"],
        choices=["float", "sign", "lsh"],
        help="baselines next to the model: float cosine, sign bits, random-hyperplane LSH (default: all)",
    )
    p.add_argument(
        "--no-novel",
        dest="novel",
        action="store_false",
        help="do not add the '<set>-novel' rows: STS12-16 minus the pairs that also occur in STS-B train "
        "(21-50%% of STS12-16 pairs do; a model trained on STS-B train has seen them)",
    )
    p.add_argument(
        "--rescore",
        type=int_between(0, 100_000),
        default=100,
        help="Hamming candidates re-ranked by float query logits (0: off; at most 100000)",
    )
    p.add_argument(
        "--no-lexical",
        dest="lexical",
        action="store_false",
        help="do not add the bm25, +hybrid and +linear retrieval rows (BM25 over the document texts, fused "
        "by RRF and by linear fusion)",
    )
    p.add_argument("--lsh-seed", type=int, default=0, help="seed of the LSH baseline's hyperplanes (default 0)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per encoder call (default 64)")
    p.add_argument(
        "--limit",
        type=int_between(1),
        default=None,
        help="evaluate a slice: first N STS pairs / N queries (smoke tests; recorded, not comparable to full runs)",
    )
    p.add_argument("--threads", type=threads_option, default=None, help="torch and search threads")
    p.add_argument(
        "--backend",
        choices=("torch", "onnx", "openvino"),
        default="torch",
        help="inference runtime of the backbone (torch: the reference)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help="backbone precision (torch: autocast; openvino: inference precision hint)",
    )
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def load_encoders(args) -> list[Any]:
    from ..encoder.encoder import Encoder

    if args.model:
        from ..encoder.model import BinaryEmbedder, default_tokenizer

        model = BinaryEmbedder.from_pretrained(args.model)
        encs = [
            Encoder(
                model,
                default_tokenizer(),
                max_length=args.max_length or 128,
                threads=args.threads,
                info={"name": str(args.model), "backbone": str(args.model)},
            )
        ]
    elif getattr(args, "backend", "torch") != "torch" or getattr(args, "precision", None):
        from ..encoder.backend import load
        from ..encoder.base import default_head

        heads = args.head or [default_head(b) for b in args.bits]
        encs = [load(h, backend=args.backend, threads=args.threads, precision=args.precision) for h in heads]
    elif args.head:
        encs = [Encoder.from_head(h, threads=args.threads) for h in args.head]
    else:
        encs = [Encoder.default(b, threads=args.threads) for b in args.bits]
    if len(encs) > 1 and all(e.backend == "torch" for e in encs):  # one backbone for all heads
        for e in encs[1:]:
            e.model.encoder = encs[0].model.encoder
    for e in encs:
        if args.max_length:
            e.max_length = args.max_length
    if len({e.max_length for e in encs}) > 1:
        raise SystemExit("the heads disagree on max_length; pass --max-length")
    return encs


def _stsb_train_pairs(root) -> set[tuple[str, str]]:
    a, b, _ = load_sts("stsb-train", root)
    pairs = {(x.strip().lower(), y.strip().lower()) for x, y in zip(a, b, strict=True)}
    return pairs | {(y, x) for x, y in pairs}


def _embed(enc, texts: list[str], args, show) -> np.ndarray:
    if args.cache_dir:
        from .features import backbone_features

        return backbone_features(texts, enc, batch_size=args.batch_size, cache_dir=args.cache_dir, show_progress=show)
    return enc.embed(texts, batch_size=args.batch_size, show_progress=show, normalize=False)


def run(args) -> dict[str, Any]:
    """Evaluates every requested head; returns {"runs": [result per head]} sharing backbone features."""
    root = data_root(args.data)
    encs = load_encoders(args)
    # the backbone features are shared: computed once, then every head is scored on them
    show = None if not args.quiet else False
    enc0 = encs[0]
    enc0.info.setdefault("backbone", "all-MiniLM-L6-v2")
    t0 = time.time()
    sts_data = {}
    for name in args.sts:
        s1, s2, gold = load_sts(name, root)
        if args.limit:
            s1, s2, gold = s1[: args.limit], s2[: args.limit], gold[: args.limit]
        sts_data[name] = (s1, s2, gold)
        if args.novel and name.startswith("sts1"):
            seen = _stsb_train_pairs(root)
            novel = [
                i
                for i, (a, b) in enumerate(zip(s1, s2, strict=True))
                if (a.strip().lower(), b.strip().lower()) not in seen
            ]
            sts_data[name + "-novel"] = ([s1[i] for i in novel], [s2[i] for i in novel], gold[novel])
    texts = list(dict.fromkeys(t for s1, s2, _ in sts_data.values() for t in s1 + s2))
    feats = dict(zip(texts, _embed(enc0, texts, args, show), strict=True)) if texts else {}
    beir_data = []
    for spec in args.beir:
        name, split = _parse_beir(spec)
        corpus, queries, qrels = load_beir(name, split, root)
        qids = list(queries)
        if args.limit:
            qids = qids[: args.limit]
            keep = {d for q in qids for d in qrels[q]}
            extra = [d for d in corpus if d not in keep][: max(0, 10 * args.limit)]
            corpus = {d: corpus[d] for d in list(keep) + extra}
        dids = list(corpus)
        row = {d: i for i, d in enumerate(dids)}
        qrel_rows = [{row[d]: s for d, s in qrels[q].items() if d in row} for q in qids]
        df = _embed(enc0, [corpus[d] for d in dids], args, show)
        qf = _embed(enc0, [queries[q] for q in qids], args, show)
        lex = None
        if getattr(args, "lexical", True):
            lex = bm25_scored([corpus[d] for d in dids], [queries[q] for q in qids], lexical.DEPTH)
        beir_data.append((f"{name}-{split}", qf, df, qrel_rows, lex))
    runs = []
    for i, enc in enumerate(encs):
        methods = Methods(
            enc, enc.bits, args.lsh_seed, args.baselines if i == 0 else [b for b in args.baselines if b == "lsh"]
        )
        res: dict[str, Any] = {
            "model": enc.info.get("name", "custom"),
            "bits": enc.bits,
            "max_length": enc.max_length,
            "rescore": args.rescore,
            "lsh_seed": args.lsh_seed,
            "limit": args.limit,
            "sts": {},
            "retrieval": {},
        }
        for name, (s1, s2, gold) in sts_data.items():
            res["sts"][name] = eval_sts(methods, feats, s1, s2, gold)
        for key, qf, df, qrel_rows, lex in beir_data:
            res["retrieval"][key] = eval_retrieval(
                methods, qf, df, qrel_rows, rescore=args.rescore, threads=args.threads, bm25=lex
            )
        runs.append(res)
    return {"runs": runs, "limit": args.limit, "seconds": round(time.time() - t0, 1)}


def format_table(results: dict[str, Any]) -> str:
    """The results of one head (one entry of ``run(...)["runs"]``) as a text table."""
    lines = [f"model {results['model']}  bits {results['bits']}  max_length {results['max_length']}  (* = held out)"]
    if results.get("limit"):  # a slice: a smaller corpus scores higher, so say so where the numbers are
        n = results["limit"]
        lines.append(f"SLICE (--limit {n}): first {n} STS pairs / {n} queries per set; not comparable to full runs")
    sts = results["sts"]
    if sts:
        names = list(sts)
        methods = list(next(iter(sts.values())))
        w = max(len(m) for m in methods) + 2
        lines.append(
            "STS Spearman".ljust(w)
            + "".join(
                f"{n.replace('-novel', '-nov') + ('*' if n.split('-')[0] in HELD_OUT or n in HELD_OUT else ''):>11}"
                for n in names
            )
        )
        for m in methods:
            lines.append(m.ljust(w) + "".join(f"{sts[n][m]:>11.4f}" for n in names))
    ret = results["retrieval"]
    if ret:
        names = list(ret)
        methods = []
        for n in names:
            methods += [m for m in ret[n] if m not in methods]
        w = max(len(m) for m in methods) + 2
        lines.append("")
        lines.append(
            "R@10 / nDCG@10".ljust(w)
            + "".join(f"{n + ('*' if n.split('-')[0] in HELD_OUT else ''):>18}" for n in names)
        )
        for m in methods:
            cells = []
            for n in names:
                v = ret[n].get(m)
                cells.append(f"{v['recall@10']:.4f} / {v['ndcg@10']:.4f}".rjust(18) if v else "-".rjust(18))
            lines.append(m.ljust(w) + "".join(cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json:  # before the run, not after it
        check_writable(args.json, "--json")
    if args.threads and args.backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    results = run(args)
    print("\n\n".join(format_table(r) for r in results["runs"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    print(f"({results['seconds']}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
