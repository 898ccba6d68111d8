"""The ``bne`` command: build, search, info, verify, bench, demo, train, eval.

A thin layer over the public API (bne.open / bne.Index / bne.encoder.Encoder). User mistakes
print one line on stderr and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from . import _core

EXIT_USAGE, EXIT_FAIL, EXIT_INTERRUPTED = 2, 1, 130


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit code 2."""


# -- helpers ------------------------------------------------------------------------------------


def load_encoder(model: str, bits: int, threads: int | None, device: str = "cpu", purpose: str = "query"):
    """ONNX Runtime on the CPU (no torch import once the model is in the cache), torch on a GPU or as
    the fallback; see bne.encoder.runtime.load."""
    if model != "default" and not os.path.exists(model):
        raise UserError(f"model not found: {model} (use 'default' or the path of a head .safetensors file)")
    try:
        from .encoder.runtime import load

        enc = load(model, bits, device=device, threads=threads, purpose=purpose)
    except ImportError as e:  # onnxruntime / torch / transformers missing
        raise UserError(f"the encoder needs the 'encoder' extra (pip install 'bne[encoder]'): {e}") from None
    if enc.bits != bits:
        raise UserError(f"model {model} makes {enc.bits}-bit codes, but --bits is {bits}")
    return enc


def model_key(model: str) -> str:
    return "default" if model == "default" else os.path.abspath(model)


def doc_text(doc) -> str:
    return f"{doc.title}. {doc.text}" if doc.title else doc.text


def snippet(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- build --------------------------------------------------------------------------------------


def cmd_build(args) -> int:
    from tqdm import tqdm

    from . import index as bindex
    from .corpus import read_corpus
    from .docstore import DocStore, path_for

    out = args.output
    docs = list(read_corpus(args.input))
    if not docs:
        raise UserError(f"empty corpus: no documents in {args.input}")
    if args.ray:
        return build_on_ray(args, docs)
    exists = os.path.exists(out)
    if exists and not args.append:
        raise UserError(f"{out} already exists: pass --append to add to it, or remove it first")
    key = model_key(args.model)
    if exists:
        idx = bindex.open(out, mode="a")
        built_with = idx.metadata.get("model"), idx.bits
        if built_with != (key, args.bits):
            raise UserError(f"{out} was built with model {built_with[0]!r} at {built_with[1]} bits; "
                            f"asked for {key!r} at {args.bits} bits")
        store = DocStore(out, create=True)
        dropped = store.delete_above(idx.info()["max_id"])  # rows of a batch whose index commit never happened
        seen = store.ext_ids()
        todo = [d for d in docs if d.ext_id not in seen]
        if dropped:
            print(f"bne: dropped {dropped} document rows left by an interrupted build", file=sys.stderr)
    else:
        enc_probe = args.model  # validate the model before creating any file
        if enc_probe != "default" and not os.path.exists(enc_probe):
            raise UserError(f"model not found: {enc_probe} (use 'default' or the path of a head .safetensors file)")
        if os.path.exists(path_for(out)):
            raise UserError(f"{path_for(out)} already exists without its index; remove it first")
        todo = docs
        idx = None
    encoder = load_encoder(args.model, args.bits, args.threads, device=args.device, purpose="bulk")
    if idx is None:
        idx = bindex.open(out, mode="a", bits=args.bits,
                          metadata={"model": key, "model_name": encoder.info.get("name", ""), "bits": args.bits,
                                    "max_length": encoder.max_length, "created_by": f"bne {_core.__version__}"})
        store = DocStore(out, create=True)
    if args.threads:
        _core.set_num_threads(args.threads)
    next_id = idx.info()["max_id"] + 1
    done = 0
    bar = tqdm(total=len(todo), unit="doc", desc="encoding", disable=args.quiet or None, dynamic_ncols=True)
    try:
        for start in range(0, len(todo), args.commit_every):
            batch = todo[start : start + args.commit_every]
            codes = encoder.encode([doc_text(d) for d in batch], batch_size=args.batch_size, show_progress=False)
            ids = np.arange(next_id, next_id + len(batch), dtype=np.int64)
            store.insert(ids, batch)
            idx.add(codes, ids=ids)
            store.commit()  # the texts first: every committed index id then has its document
            idx.commit()
            next_id += len(batch)
            done += len(batch)
            bar.update(len(batch))
    except KeyboardInterrupt:
        bar.close()
        print(f"bne: interrupted; {done} of {len(todo)} new documents committed to {out} "
              f"(run again with --append to continue)", file=sys.stderr)
        idx.close()
        return EXIT_INTERRUPTED
    bar.close()
    info = idx.info()
    idx.close()
    store.close()
    print(f"{out}: {info['live']} codes of {info['bits']} bits ({done} added, {len(docs) - len(todo)} already present)")
    return 0


def start_ray(address: str | None):
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'bne[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, logging_level="ERROR",
                 configure_logging=False, include_dashboard=False if not address else None)
    return ray


def build_on_ray(args, docs) -> int:
    """One shard file per Ray Data task in the output folder, a manifest, and one docstore."""
    from . import distributed
    from .docstore import DocStore

    out = args.output
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"{out} exists and is not a folder (--ray writes a folder of shards)")
    manifest = os.path.join(out, distributed.MANIFEST)
    if os.path.exists(manifest) and not args.append:
        _, m = distributed.read_manifest(out)
        if m.get("metadata", {}).get("model") != model_key(args.model) or m.get("bits") != args.bits:
            raise UserError(f"{out} holds shards of another model or bit count; remove it first")
    start_ray(args.ray_address)
    os.makedirs(out, exist_ok=True)
    store_key = os.path.join(out, "corpus")
    store = DocStore(store_key, create=True)
    if store.count() != len(docs):  # (re)write the docstore: ids are the documents' positions
        store.delete_above(-1)
        store.insert(range(len(docs)), docs)
        store.commit()
    store.close()
    result = distributed.build_sharded([doc_text(d) for d in docs], out, n_shards=args.shards, bits=args.bits,
                                       model=model_key(args.model), batch_size=args.batch_size, threads=args.threads)
    print(f"{out}: {len(docs)} documents in {args.shards} shards ({len(result['skipped'])} already written, "
          f"skipped); search with: bne search {out} \"query\"")
    return 0


def search_sharded(args, queries):
    from . import distributed

    start_ray(args.ray_address)
    paths, manifest = distributed.read_manifest(args.index)
    model = model_key(args.model) if args.model else manifest.get("metadata", {}).get("model", "default")
    encoder = load_encoder(model, manifest["bits"], args.threads, device=args.device)
    sharded = distributed.ShardedIndex(paths)
    t0 = time.perf_counter()
    codes = encoder.encode(queries, show_progress=False)
    t1 = time.perf_counter()
    D, I = sharded.search(codes, args.k)
    t2 = time.perf_counter()
    store = os.path.join(args.index if os.path.isdir(args.index) else os.path.dirname(args.index), "corpus")
    return D, I, None, t0, t1, t2, len(sharded), store


# -- search -------------------------------------------------------------------------------------


def read_queries(args) -> list[str]:
    queries = list(args.query or [])
    if args.queries:
        f = sys.stdin if args.queries == "-" else open(args.queries, encoding="utf-8")
        with f:
            queries += [line.strip() for line in f if line.strip()]
    if not queries:
        raise UserError("no query: give one on the command line or --queries FILE (- for stdin)")
    return queries


def search_file(args, queries):
    from . import index as bindex

    idx = bindex.open(args.index)
    model = idx.metadata.get("model")
    if args.model:
        model = model_key(args.model)
        if idx.metadata.get("model") not in (None, model):
            raise UserError(f"{args.index} was built with model {idx.metadata.get('model')!r}, not {model!r}")
    if model is None:
        raise UserError(f"{args.index} does not record the model that built it; pass --model")
    encoder = load_encoder(model, idx.bits, args.threads, device=args.device)
    t0 = time.perf_counter()
    codes, logits = encoder.encode(queries, return_logits=True, show_progress=False)
    t1 = time.perf_counter()
    scores = None
    if args.rescore:
        from .encoder import rescore_candidates

        _, cand = idx.search(codes, max(args.rescore, args.k), threads=args.threads)
        scores, ids = rescore_candidates(logits, idx.reconstruct(cand), cand, args.k)
        dist = None
    else:
        dist, ids = idx.search(codes, args.k, threads=args.threads)
    t2 = time.perf_counter()
    return dist, ids, scores, t0, t1, t2, len(idx), args.index


def cmd_search(args) -> int:
    from .docstore import DocStore

    queries = read_queries(args)
    if os.path.isdir(args.index) or args.index.endswith(".json"):
        dist, ids, scores, t0, t1, t2, ncodes, store_key = search_sharded(args, queries)
    else:
        dist, ids, scores, t0, t1, t2, ncodes, store_key = search_file(args, queries)
    try:
        store = DocStore(store_key)
        docs = store.get(np.unique(ids))
    except FileNotFoundError:
        docs = {}
    results = []
    for qi, q in enumerate(queries):
        hits = []
        for rank, i in enumerate(ids[qi]):
            if i < 0:
                continue
            ext, title, text = docs.get(int(i), (str(i), "", ""))
            hit = {"rank": rank + 1, "id": int(i), "doc_id": ext, "title": title, "snippet": snippet(text)}
            if dist is not None:
                hit["distance"] = int(dist[qi, rank])
            else:
                hit["score"] = float(scores[qi, rank])
            hits.append(hit)
        results.append({"query": q, "hits": hits})
    timing = {"encode_ms": (t1 - t0) * 1e3, "search_ms": (t2 - t1) * 1e3, "queries": len(queries),
              "codes": ncodes, "isa": _core.active_isa()}
    if args.json:
        print(json.dumps({"results": results, "timing": timing}, ensure_ascii=False, indent=1))
    else:
        for r in results:
            print(f"query: {r['query']}")
            for h in r["hits"]:
                score = f"d={h['distance']:4d}" if "distance" in h else f"s={h['score']:8.2f}"
                title = f"[{h['title']}] " if h["title"] else ""
                print(f"  {h['rank']:3d}. {score}  {h['doc_id']:>12}  {title}{h['snippet']}")
        print(f"encode {timing['encode_ms']:.1f} ms, search {timing['search_ms']:.1f} ms "
              f"({len(queries)} queries over {ncodes} codes, {timing['isa']})", file=sys.stderr)
    return 0


# -- info / verify ------------------------------------------------------------------------------


def cmd_info(args) -> int:
    from . import index as bindex
    from .docstore import DocStore

    idx = bindex.open(args.index)
    info = idx.info()
    try:
        info["documents"] = DocStore(args.index).count()
    except FileNotFoundError:
        info["documents"] = None
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    meta = info.pop("metadata")
    for key in ("path", "format_version", "bits", "bit_order", "codes", "live", "tombstones", "segments", "commit",
                "max_id", "file_bytes", "documents", "isa"):
        print(f"{key:15s} {info.get(key)}")
    print(f"{'model':15s} {meta.get('model')} ({meta.get('model_name', '')})")
    return 0


def cmd_shard(args) -> int:
    from . import distributed

    paths = distributed.shard_index(args.index, args.shards, args.output)
    print(f"{args.output}: {len(paths)} shards and {distributed.MANIFEST}")
    return 0


def cmd_verify(args) -> int:
    from . import index as bindex

    idx = bindex.open(args.index)
    idx.verify()
    info = idx.info()
    print(f"OK: {args.index}: {info['codes']} codes in {info['segments']} segment(s), every checksum matches")
    return 0


# -- bench / demo / train / eval ------------------------------------------------------------------


def cmd_bench(args) -> int:
    from .bench import run_bench

    return run_bench(args)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_train(argv: list[str]) -> int:
    from .encoder import train

    return train.main(argv) or 0


def cmd_eval(argv: list[str]) -> int:
    from .encoder import evaluate

    return evaluate.main(argv) or 0


# -- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bne", description="Exact Hamming search over native binary text embeddings.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"bne {_core.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="encode a corpus into an index file (+ a SQLite docstore beside it)")
    b.add_argument("input", help=".txt (a document per line), .jsonl (id, text, title), .tsv/.csv, or a BEIR folder")
    b.add_argument("-o", "--output", required=True, help="index file to write")
    b.add_argument("--bits", type=int, choices=(1024, 2048), default=1024)
    b.add_argument("--model", default="default", help="'default' (all-MiniLM-L6-v2 + shipped head) or a head file")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--commit-every", type=int, default=2048, help="documents per durable commit")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to encode: cuda (torch fp16), cpu, or auto (cuda when a GPU is visible)")
    b.add_argument("--append", action="store_true", help="add to an existing index (skips documents already in it)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.add_argument("--ray", action="store_true", help="encode on a Ray cluster into a folder of shards (-o is a folder)")
    b.add_argument("--shards", type=int, default=4, help="shards for --ray")
    b.add_argument("--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    b.set_defaults(fn=cmd_build)

    s = sub.add_parser("search", help="search an index with text queries")
    s.add_argument("index")
    s.add_argument("query", nargs="*")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--queries", help="file with one query per line ('-' for stdin)")
    s.add_argument("--rescore", type=int, nargs="?", const=100, default=None,
                   help="re-rank the top M (default 100) Hamming candidates with float query logits")
    s.add_argument("--model", default=None, help="override the model recorded in the index")
    s.add_argument("--json", action="store_true")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="where to encode the queries (default cpu: no GPU start-up for a few queries)")
    s.add_argument("--ray-address", default=None, help="Ray cluster for a sharded index folder")
    s.set_defaults(fn=cmd_search)

    sh = sub.add_parser("shard", help="split index files into N shard files for a Ray cluster")
    sh.add_argument("index", nargs="+")
    sh.add_argument("-o", "--output", required=True, help="folder for the shards and their manifest")
    sh.add_argument("--shards", type=int, required=True)
    sh.set_defaults(fn=cmd_shard)

    i = sub.add_parser("info", help="describe an index file")
    i.add_argument("index")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_info)

    v = sub.add_parser("verify", help="check every checksum of an index file (exit 1 on damage)")
    v.add_argument("index")
    v.set_defaults(fn=cmd_verify)

    be = sub.add_parser("bench", help="the 'Why binary?' speed table: float32, INT8, FAISS binary, bne")
    be.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated database sizes")
    be.add_argument("--queries", type=int, default=16)
    be.add_argument("-k", type=int, default=10)
    be.add_argument("--repeat", type=int, default=5)
    be.add_argument("--threads", type=int, default=None)
    be.add_argument("--out", default="bne-bench", help="prefix of the .json and .png files written")
    be.set_defaults(fn=cmd_bench)

    d = sub.add_parser("demo", help="offline: index the Python standard library's docstrings and search them")
    d.add_argument("--limit", type=int, default=3000, help="documents to index")
    d.add_argument("--keep", default=None, help="write the demo index here instead of a temporary folder")
    d.set_defaults(fn=cmd_demo)

    sub.add_parser("train", help="train a binary head (see bne train --help)", add_help=False)
    sub.add_parser("eval", help="evaluate a model on STS and BEIR data (see bne eval --help)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    rest = [a for a in argv if a != "--debug"]
    try:
        if rest and rest[0] in ("train", "eval"):  # their own argument parsers
            return (cmd_train if rest[0] == "train" else cmd_eval)(rest[1:])
        args = build_parser().parse_args(rest)
        return args.fn(args)
    except KeyboardInterrupt:
        print("bne: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, ValueError, OSError, KeyError) as e:
        if debug:
            raise
        code = EXIT_FAIL if isinstance(e, _core.IndexFormatError) else EXIT_USAGE
        msg = str(e) if not isinstance(e, KeyError) else f"missing {e}"
        print(f"bne: error: {msg}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
