"""Quality of a bulk-encoding variant as `bne build` + `bne search` use it: STS-B test Spearman
(the variant on both sides) and SciFact test Recall@10 / nDCG@10 with the documents encoded by the
variant and the queries by ONNX Runtime fp32 (the query default), exact Hamming top-10 through
bne.Index. Needs shared/data.

    HF_HUB_OFFLINE=1 python benchmarks/bulk_quality.py --variant openvino-int8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", default="openvino-int8", help="backend-precision, e.g. openvino-bf16, onnx-fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data", default=None)
    p.add_argument("--save-logits", default=None, help="write the SciFact document logits here (.npy)")
    args = p.parse_args()

    from bne.codes import pack
    from bne.encoder.base import default_head
    from bne.encoder.runtime import load
    from bne.index import Index
    from bne.training.data import data_root, load_beir, load_sts
    from bne.training.evaluate import hamming_rows, retrieval_metrics, spearman

    root = data_root(args.data)
    backend, precision = args.variant.split("-")
    enc = load(default_head(1024), backend=backend, precision=precision, threads=args.threads, quiet=True)
    queries_enc = load(default_head(1024), backend="onnx", threads=args.threads, quiet=True)
    out: dict[str, object] = {"variant": args.variant, "precision": enc.precision}

    s1, s2, gold = load_sts("stsb-test", root)
    uniq = sorted(set(s1) | set(s2))
    at = {t: i for i, t in enumerate(uniq)}
    codes = enc.encode(uniq, batch_size=args.batch_size, show_progress=False)
    a, b = codes[[at[t] for t in s1]], codes[[at[t] for t in s2]]
    out["stsb-test"] = round(spearman(1.0 - 2.0 * hamming_rows(a, b) / enc.bits, gold), 4)

    corpus, queries, qrels = load_beir("scifact", "test", root)
    dids, qids = list(corpus), list(queries)
    row = {d: i for i, d in enumerate(dids)}
    t = time.perf_counter()
    docs = [corpus[d] for d in dids]
    _, logits = enc.encode(docs, batch_size=args.batch_size, return_logits=True, show_progress=False)
    out["scifact_docs_per_s"] = round(len(dids) / (time.perf_counter() - t), 1)
    if args.save_logits:
        np.save(args.save_logits, logits)
    index = Index(enc.bits)
    index.add(pack(logits >= 0))
    _, ids = index.search(queries_enc.encode([queries[q] for q in qids], show_progress=False), 10)
    rels = [{row[d]: s for d, s in qrels[q].items() if d in row} for q in qids]
    r, n = retrieval_metrics(ids, rels, 10)
    out["scifact-test R@10"], out["scifact-test nDCG@10"] = round(r, 4), round(n, 4)
    out["load_average"] = round(os.getloadavg()[0], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
