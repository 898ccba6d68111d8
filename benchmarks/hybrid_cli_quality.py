"""Hybrid search quality through the CLI (issue 17, item 7): what a user gets from ``bne build`` and
``bne search --queries FILE --json --mode M``.

For each set (SciFact train: the tuning set; SciFact test, CISI, Cranfield: held out, report only),
the corpus is written as JSONL, built once with the default model (``bne build``, cached in --cache),
and searched with ``bne search INDEX --queries Q.jsonl --json -k 10`` in each mode: dense, lexical,
hybrid, hybrid --rescore 100, dense --rescore 100. nDCG@10 and R@10 are computed from the printed
``doc_id`` s with ``bne.training.evaluate.retrieval_metrics`` (BEIR's graded gains).

The float all-MiniLM-L6-v2 row comes from ``bne eval --beir ... --baselines float`` (``--float`` runs
it; ``--float-json FILE`` reads the JSON of a run made elsewhere).

    HF_HUB_OFFLINE=1 python benchmarks/hybrid_cli_quality.py --cache /tmp/bne-cli-quality [--float]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SETS = [  # (name, split, role)
    ("scifact", "train", "tuning"),
    ("scifact", "test", "held out"),
    ("cisi", "test", "held out"),
    ("cranfield", "test", "held out"),
]
RUNS = [  # (label, extra CLI arguments)
    ("(default mode)", []),
    ("dense", ["--mode", "dense"]),
    ("dense --rescore 100", ["--mode", "dense", "--rescore", "100"]),
    ("lexical", ["--mode", "lexical"]),
    ("hybrid", ["--mode", "hybrid"]),
    ("hybrid --rescore 100", ["--mode", "hybrid", "--rescore", "100"]),
    ("hybrid --fusion linear", ["--mode", "hybrid", "--fusion", "linear"]),
    ("hybrid --fusion linear --depth 1000", ["--mode", "hybrid", "--fusion", "linear", "--depth", "1000"]),
]
K = 10


def bne_cmd() -> list[str]:
    """The ``bne`` command: $BNE_CLI (split on spaces) when set, else the one beside this Python."""
    if os.environ.get("BNE_CLI"):
        return os.environ["BNE_CLI"].split()
    exe = os.path.join(os.path.dirname(sys.executable), "bne")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "bne"]


def load_avg() -> str:
    a = os.getloadavg()
    return f"{a[0]:.1f}/{a[1]:.1f}/{a[2]:.1f}"


def write_corpus(src: str, dst: str) -> int:
    """BEIR's corpus.jsonl.gz as the JSONL that ``bne build`` reads (_id, title, text)."""
    n = 0
    with gzip.open(src, "rt", encoding="utf-8") as f, open(dst + ".tmp", "w", encoding="utf-8") as out:
        for line in f:
            d = json.loads(line)
            out.write(json.dumps({"_id": str(d["_id"]), "title": d.get("title") or "", "text": d.get("text") or ""}))
            out.write("\n")
            n += 1
    os.replace(dst + ".tmp", dst)
    return n


def build(name: str, root: str, cache: str, threads: int | None) -> tuple[str, dict]:
    """The set's index, built once with ``bne build`` (default model) and kept in ``cache``."""
    index = os.path.join(cache, f"{name}.bne")
    done = index + ".built.json"
    if os.path.exists(done):
        with open(done, encoding="utf-8") as f:
            return index, json.load(f)
    corpus = os.path.join(cache, f"{name}-corpus.jsonl")
    n = write_corpus(os.path.join(root, "beir", name, "corpus.jsonl.gz"), corpus)
    for p in (index, index + ".docs.sqlite", index + ".docs.sqlite-journal"):
        if os.path.exists(p):
            os.remove(p)
    cmd = [*bne_cmd(), "build", corpus, "-o", index, "--quiet", "--device", "cpu"]
    if threads:
        cmd += ["--threads", str(threads)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    info = {"documents": n, "build_s": round(time.perf_counter() - t, 1), "load": load_avg()}
    with open(done, "w", encoding="utf-8") as f:
        json.dump(info, f)
    print(f"# built {name}: {json.dumps(info)}", file=sys.stderr, flush=True)
    return index, info


def queries_file(name: str, split: str, root: str, cache: str) -> tuple[str, dict[str, dict[str, int]]]:
    """(queries .jsonl of the split's judged queries, qrels {query id: {doc id: grade > 0}})."""
    from bne.training.data import load_beir

    _, queries, qrels = load_beir(name, split, root)
    path = os.path.join(cache, f"{name}-{split}-queries.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    return path, qrels


def search(index: str, qfile: str, extra: list[str], threads: int | None) -> tuple[dict[str, list[str]], float, dict]:
    """{query id: ranked doc ids} from ``bne search --json``, the wall time, and its timing block."""
    cmd = [*bne_cmd(), "search", index, "--queries", qfile, "--json", "-k", str(K), *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    res = json.loads(out.stdout)
    ranked = {r["query_id"]: [h["doc_id"] for h in r["hits"]] for r in res["results"]}
    for line in out.stderr.splitlines():  # notes (e.g. a collection without a lexical index) stay visible
        print(f"# {' '.join(extra)}: {line}", file=sys.stderr)
    return ranked, wall, res.get("timing", {})


def metrics(ranked: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> tuple[float, float]:
    """(nDCG@10, R@10) over every judged query (a query without hits scores 0)."""
    from bne.training.evaluate import retrieval_metrics

    qids = list(qrels)
    docs = sorted({d for q in qids for d in ranked.get(q, [])} | {d for q in qids for d in qrels[q]})
    row = {d: i for i, d in enumerate(docs)}
    arr = np.full((len(qids), K), -1, dtype=np.int64)
    for i, q in enumerate(qids):
        ids = [row[d] for d in ranked.get(q, [])[:K]]
        arr[i, : len(ids)] = ids
    rec, ndcg = retrieval_metrics(arr, [{row[d]: g for d, g in qrels[q].items()} for q in qids], K)
    return round(ndcg, 4), round(rec, 4)


def float_rows(args) -> dict[str, tuple[float, float]]:
    """{'scifact-test': (nDCG@10, R@10), ...} of float MiniLM from a ``bne eval`` JSON."""
    path = args.float_json
    if args.float and not path:
        path = os.path.join(args.cache, "eval-float.json")
        if not os.path.exists(path):
            beir = ["scifact:train", "scifact", "cisi", "cranfield"]
            cmd = [*bne_cmd(), "eval", "--beir", *beir, "--baselines", "float", "--json", path, "--quiet"]
            cmd += ["--cache-dir", os.path.join(args.cache, "eval-features"), "--data", args.data]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            subprocess.run(cmd, check=True)
    if not path or not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return parse_eval(data)


def parse_eval(data) -> dict[str, tuple[float, float]]:
    """The float rows of a ``bne eval --json`` file: runs[*].retrieval[<name>-<split>].float."""
    out: dict[str, tuple[float, float]] = {}
    for run in data.get("runs", []):
        for key, methods in run.get("retrieval", {}).items():
            f = methods.get("float")
            if f:
                out.setdefault(key, (round(f["ndcg@10"], 4), round(f["recall@10"], 4)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("BNE_DATA", "/work/shared/data"))
    p.add_argument("--cache", default="/tmp/bne-cli-quality", help="built collections, kept for reruns")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--sets", default="scifact:train,scifact:test,cisi:test,cranfield:test")
    p.add_argument("--float", action="store_true", help="run bne eval --baselines float for the float row")
    p.add_argument("--float-json", default=None, help="a bne eval --json file with the float baseline")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--build-only", action="store_true", help="only build (and cache) the collections")
    args = p.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    wanted = {tuple(s.split(":")) for s in args.sets.split(",")}
    sets = [s for s in SETS if (s[0], s[1]) in wanted]
    results: dict[str, dict] = {"load_start": {"load": load_avg()}}
    for name, split, role in sets:
        index, built = build(name, args.data, args.cache, args.threads)
        if args.build_only:
            continue
        qfile, qrels = queries_file(name, split, args.data, args.cache)
        row: dict[str, object] = {"role": role, "queries": len(qrels), "documents": built["documents"]}
        for label, extra in RUNS:
            ranked, wall, timing = search(index, qfile, extra, args.threads)
            nd, rc = metrics(ranked, qrels)
            row[label] = {"nDCG@10": nd, "R@10": rc, "wall_s": round(wall, 1), "load": load_avg()}
            print(f"{name}-{split} {label:22s} nDCG@10 {nd:.3f}  R@10 {rc:.3f}  ({wall:.1f} s, load {load_avg()})")
        results[f"{name}-{split}"] = row
    if args.build_only:
        return
    fl = float_rows(args)
    results["float"] = {k: {"nDCG@10": v[0], "R@10": v[1]} for k, v in fl.items()}
    results["load_end"] = {"load": load_avg()}
    # the table: one row per run, one column pair per set
    cols = [f"{n}-{s}" for n, s, _ in sets]
    head = " | ".join(f"{c}{' (tuning)' if c == 'scifact-train' else ''} nDCG@10 / R@10" for c in cols)
    print(f"\n| | {head} |")
    print("|---|" + "---|" * len(cols))
    if fl:
        cells = " | ".join(f"{fl[c][0]:.3f} / {fl[c][1]:.3f}" if c in fl else "-" for c in cols)
        print(f"| float all-MiniLM-L6-v2, cosine (bne eval) | {cells} |")
    for label, _ in RUNS:
        cells = " | ".join(f"{results[c][label]['nDCG@10']:.3f} / {results[c][label]['R@10']:.3f}" for c in cols)
        print(f"| bne search {'' if label.startswith('(') else '--mode '}{label} | {cells} |")
    print(f"\nload average {results['load_start']['load']} -> {results['load_end']['load']}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
