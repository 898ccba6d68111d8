"""Cross-fitted dense lists for tuning hybrid fusion on SciFact train without the head's confound.

The shipped heads were trained on every SciFact train query, so fusing their train-set rankings
with BM25 overrates the dense side and tunes the fusion for a dense list that is better than any
user will see. This script trains five heads with the shipped recipe and settings, each with one
fifth of the SciFact train queries left out (fold = position of the query id in sorted order, mod 5;
their relevant pairs and pool texts are dropped too), and writes, for every train query, the dense
ranking produced by the head that never saw it. Nothing from SciFact test, CISI or Cranfield is used.

    python benchmarks/hybrid_crossfit.py --data ../shared/data --out /tmp/crossfit [--threads 2]

Writes ``OUT/fold{f}.safetensors|json`` (the heads), ``OUT/features/`` (the backbone feature
cache) and ``OUT/oof.npz``: ``qids`` (sorted train query ids), ``ids`` / ``dist`` (Hamming top
``--depth``, rows of the corpus in load order), ``rids`` / ``rscore`` (the same candidates re-ranked by
float query logits, as ``--rescore`` does). ``benchmarks/hybrid_fusion_tuning.py`` reads it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="shared/data")
    p.add_argument("--out", required=True)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--depth", type=int, default=1000, help="dense candidates kept per query")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch

    from bne.encoder.base import rescore_candidates
    from bne.encoder.encoder import Encoder, load_minilm
    from bne.encoder.model import BinaryEmbedder, bert_tokenizer, minilm_dir, save_safetensors
    from bne.index import Index
    from bne.training import data as tdata
    from bne.training import train as ttrain
    from bne.training.features import backbone_features
    from bne.training.recipes import train_head

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "features"
    # The shipped head's own command line (python/bne/heads/minilm-l6-1024.json), minus --out.
    shipped = json.loads((Path(tdata.__file__).parents[1] / "heads" / "minilm-l6-1024.json").read_text())
    args = ttrain.build_parser().parse_args(
        ["--recipe", "minilm-default", "--bits", "1024", "--epochs", "2", "--seed", "0", "--out", str(out / "x")]
    )
    cfg = ttrain.config_from_args(args)
    assert shipped["epochs"] == cfg.epochs and shipped["bits"] == cfg.bits

    corpus, queries, qrels = tdata.load_beir("scifact", "train", a.data)
    qids = sorted(queries)
    fold_of = {q: i % a.folds for i, q in enumerate(qids)}
    real_load = tdata.load_beir

    def recipe_without(fold: int | None):
        def load(name, split="test", root=None):
            c, qs, qr = real_load(name, split, root)
            if (name, split) == ("scifact", "train") and fold is not None:
                qs = {q: t for q, t in qs.items() if fold_of[q] != fold}
                qr = {q: v for q, v in qr.items() if q in qs}
            return c, qs, qr

        tdata.load_beir = load
        try:
            return tdata.recipe_minilm_default(a.data)
        finally:
            tdata.load_beir = real_load

    enc = Encoder(
        BinaryEmbedder(cfg.bits, encoder=load_minilm(), normalize=cfg.normalize),
        bert_tokenizer(minilm_dir() / "vocab.txt"),
        max_length=cfg.max_length,
    )
    enc.info["backbone"] = "all-MiniLM-L6-v2"
    rows, scored, pool = recipe_without(None)
    texts = list(dict.fromkeys([t for r in rows for t in r] + [t for s in scored for t in s[:2]] + pool))
    pos = {t: i for i, t in enumerate(texts)}
    t0 = time.time()
    feats = backbone_features(texts, enc, cache_dir=str(cache), show_progress=False)
    print(f"{len(texts)} training texts: features in {time.time() - t0:.0f}s", flush=True)
    dids = list(corpus)
    dfeat = backbone_features([corpus[d] for d in dids], enc, cache_dir=str(cache), show_progress=False)
    qfeat = backbone_features([queries[q] for q in qids], enc, cache_dir=str(cache), show_progress=False)

    nq = len(qids)
    ids = np.full((nq, a.depth), -1, np.int64)
    dist = np.full((nq, a.depth), -1, np.int32)
    rids = np.full((nq, a.depth), -1, np.int64)
    rscore = np.full((nq, a.depth), -np.inf, np.float32)
    for f in range(a.folds):
        rows, scored, pool = recipe_without(f)
        pair_index = np.array([[pos[r[0]], pos[r[1]]] for r in rows], dtype=np.int64)
        sc = np.array([[pos[x], pos[y], g] for x, y, g in scored], dtype=np.float64)
        pl = np.array([pos[t] for t in pool], dtype=np.int64)
        head_path = out / f"fold{f}.safetensors"
        if not head_path.is_file():
            t0 = time.time()
            head = train_head(pair_index, feats, cfg, pool=pl, scored=sc, log=None)
            sd = {"projection." + k: v.detach().contiguous() for k, v in head.state_dict().items()}
            save_safetensors(sd, head_path)
            info = {**shipped, "training_data": [f"recipe:minilm-default without SciFact train fold {f} of {a.folds}"]}
            info.pop("scores", None)
            (out / f"fold{f}.json").write_text(json.dumps(info, indent=2) + "\n")
            print(f"fold {f}: {len(rows)} pairs, trained in {time.time() - t0:.0f}s", flush=True)
        fenc = Encoder.from_head(head_path, threads=a.threads)
        rows_q = np.array([i for i, q in enumerate(qids) if fold_of[q] == f])
        cd, _ = fenc.project(dfeat, return_logits=True)
        cq, lq = fenc.project(qfeat[rows_q], return_logits=True)
        index = Index(cd.shape[1] * 8)
        index.add(cd)
        D, I = index.search(cq, a.depth)
        ids[rows_q], dist[rows_q] = I, D
        s, r = rescore_candidates(lq, cd, I, a.depth)
        rids[rows_q], rscore[rows_q] = r, s
    np.savez(out / "oof.npz", qids=np.array(qids), dids=np.array(dids), ids=ids, dist=dist, rids=rids, rscore=rscore)
    print(f"wrote {out / 'oof.npz'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
