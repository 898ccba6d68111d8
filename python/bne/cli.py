"""The ``bne`` command: build, search, info, verify, bench, demo, train, eval.

A thin layer over the public API (bne.open / bne.Index / bne.encoder.Encoder). User mistakes
print one line on stderr and exit non-zero; ``--debug`` shows the traceback. Arguments are
checked before any file is created. Text that comes from files (documents, ids, metadata, paths,
error messages) is printed through :func:`safe`, so no control character reaches the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sqlite3
import stat
import sys
import time
import warnings
from typing import Any

import numpy as np

from . import _core
from .errors import IndexFormatError

EXIT_USAGE, EXIT_FAIL, EXIT_INTERRUPTED = 2, 1, 130


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit code 2."""


# -- terminal safety ------------------------------------------------------------------------------

# C0 (newline and tab included: every field is printed on one line), DEL, C1 (U+009B is an 8-bit
# CSI to some terminals), and the line separators and bidirectional overrides that can make text
# look like something else ("Trojan Source"); lone surrogates (bytes of a non-UTF-8 argument or
# JSON "\\ud800") cannot be printed at all
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")  # json.dumps escapes C0


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def safe(value) -> str:
    """``value`` as one line of text with every control character shown as an escape (``\\x1b``)."""
    return _UNSAFE.sub(_escape, str(value))


def json_text(obj) -> str:
    """``json.dumps`` (readable non-ASCII text) with the characters it leaves raw escaped too."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False, indent=1))


# -- argument types (checked by argparse, before anything is read or created) ------------------


MAX_K = 100_000  # hits per query the command prints; the API has its own limit
RESCORE_DEFAULT = 100


def int_in(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"must be {'>= ' + str(lo) if hi is None else f'between {lo} and {hi}'}, got {v}"
            )
        return v

    return parse


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_arg(text: str) -> int:
    """--threads: 1 or more; more than the CPUs here is clamped (with a note) in :func:`main`."""
    return int_in(1)(text)


def parse_sizes(text: str) -> list[int]:
    """--sizes for bench: comma-separated counts, with k / M / G suffixes (10k, 1M) or 1e6."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmg]?)\s*", part.replace("_", ""), re.I)
        if not m:
            raise argparse.ArgumentTypeError(f"bad size {part!r}: use numbers like 10000, 10k or 1M, comma-separated")
        n = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
        if not 1 <= n <= 1e12 or n != int(n):
            raise argparse.ArgumentTypeError(f"bad size {part!r}: a database size is a whole number >= 1")
        out.append(int(n))
    return sorted(set(out))


def sizes_arg(text: str) -> str:
    return ",".join(map(str, parse_sizes(text)))  # bench.py reads plain comma-separated counts


def rescore_argv(argv: list[str]) -> list[str]:
    """``--rescore`` takes its number only when one follows; otherwise the next word is the
    query, not a bad number (``bne search x.bne --rescore "a cat"``)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--":
            break
        if a == "--rescore" and not (i + 1 < len(out) and re.fullmatch(r"[+-]?\d+", out[i + 1])):
            out[i] = f"--rescore={RESCORE_DEFAULT}"
    return out


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
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # not a head file: safetensors, JSON, shapes, devices
        raise UserError(f"cannot load model {model}: {type(e).__name__}: {e}") from None
    if enc.bits != bits:
        raise UserError(f"model {model} makes {enc.bits}-bit codes, but --bits is {bits}")
    return enc


def model_key(model: str) -> str:
    return "default" if model == "default" else os.path.abspath(model)


def doc_text(doc) -> str:
    from .corpus import doc_text as text_of  # one function for build and eval

    return text_of(doc.title, doc.text)


def snippet(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- build --------------------------------------------------------------------------------------


def check_output(out: str, append: bool) -> bool:
    """Checks -o before anything is read or created; returns whether the index exists."""
    from .docstore import path_for

    if not out:
        raise UserError("-o is empty: give the index file to write")
    if os.path.isdir(out):
        raise UserError(
            f"-o {out} is a folder: give the index file to write, e.g. {os.path.join(out, 'index.bne')} "
            f"(a folder of shards needs --ray)"
        )
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UserError(f"cannot create {out}: folder {os.path.dirname(out) or folder} does not exist")
    exists = os.path.lexists(out)
    if exists and not append:
        raise UserError(f"{out} already exists: pass --append to add to it, or remove it first")
    if not exists and os.path.lexists(path_for(out)):
        raise UserError(f"{path_for(out)} already exists without its index; remove it first")
    if not exists and not os.access(folder, os.W_OK):
        raise UserError(f"cannot create {out}: folder {os.path.dirname(out) or folder} is not writable")
    return exists


def legacy_present(store, todo: list) -> set[str]:
    """ext_ids of .txt documents that a docstore of an older bne holds under their line number
    (same line number, same text), so appending or resuming over such a store adds nothing twice."""
    if store.version >= 1:
        return set()
    line_of = {d.ext_id: str(json.loads(d.meta)["line"]) for d in todo if d.ext_id.startswith("txt:") and d.meta}
    stored = store.texts_of(sorted(set(line_of.values())))
    return {d.ext_id for d in todo if d.ext_id in line_of and stored.get(line_of[d.ext_id]) == d.text}


def remove_new_files(out: str) -> None:
    from .docstore import path_for

    for p in (out, path_for(out), path_for(out) + "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)


def cmd_build(args) -> int:
    from tqdm import tqdm

    from . import index as bindex
    from .corpus import read_corpus
    from .docstore import DocStore

    out = args.output
    if args.ray:
        docs = list(read_corpus(args.input))
        if not docs:
            raise UserError(f"empty corpus: no documents in {args.input}")
        return build_on_ray(args, docs)
    exists = check_output(out, args.append)
    if args.model != "default" and not os.path.exists(args.model):  # before any file is created
        raise UserError(f"model not found: {args.model} (use 'default' or the path of a head .safetensors file)")
    docs = list(read_corpus(args.input))
    if not docs:
        raise UserError(f"empty corpus: no documents in {args.input}")
    key = model_key(args.model)
    idx: bindex.MappedIndex | None = None
    store: DocStore | None = None
    if exists:
        idx = bindex.open(out, mode="a")
        built_with = idx.metadata.get("model"), idx.bits
        if built_with != (key, args.bits):
            idx.close()
            raise UserError(
                f"{out} was built with model {built_with[0]!r} at {built_with[1]} bits; "
                f"asked for {key!r} at {args.bits} bits"
            )
        try:
            store = DocStore(out, create=True, file_mode=stat.S_IMODE(os.stat(out).st_mode))
            dropped = store.delete_above(idx.info()["max_id"])  # rows of a batch whose index commit never happened
            seen = store.ext_ids()
            todo = [d for d in docs if d.ext_id not in seen]
            old = legacy_present(store, todo)
            todo = [d for d in todo if d.ext_id not in old]
        except BaseException:
            idx.close()  # release the writer lock now, not at exit
            raise
        if dropped:
            print(f"bne: dropped {dropped} document rows left by an interrupted build", file=sys.stderr)
    else:
        todo = docs
    encoder = load_encoder(args.model, args.bits, args.threads, device=args.device, purpose="bulk")
    if args.threads:
        _core.set_num_threads(args.threads)
    done = 0
    try:
        if idx is None:
            try:
                idx = bindex.open(
                    out,
                    mode="a",
                    bits=args.bits,
                    metadata={
                        "model": key,
                        "model_name": encoder.info.get("name", ""),
                        "bits": args.bits,
                        "max_length": encoder.max_length,
                        "created_by": f"bne {_core.__version__}",
                    },
                )
            except OSError as e:  # name the user's file, not the temporary one it was written through
                raise UserError(f"cannot create {out}: {e.strerror or e}") from None
            # the docstore gets the index's permission bits: it holds the same corpus
            store = DocStore(out, create=True, file_mode=stat.S_IMODE(os.stat(out).st_mode))
        assert store is not None  # opened together with idx, above or here
        next_id = idx.info()["max_id"] + 1
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
        finally:
            bar.close()
    except BaseException as e:
        for f in (idx, store):
            if f is not None:
                with contextlib.suppress(Exception):  # already failing; the first error is the one to report
                    f.close()
        fresh = not exists and done == 0
        if fresh:  # nothing was committed: leave no empty index or docstore behind
            remove_new_files(out)
        if isinstance(e, KeyboardInterrupt):
            print(
                f"bne: interrupted; {done} of {len(todo)} new documents committed to {safe(out)}"
                + (" (nothing written)" if fresh else " (run again with --append to continue)"),
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        raise
    info = idx.info()
    idx.close()
    store.close()
    print(
        f"{safe(out)}: {info['live']} codes of {info['bits']} bits ({done} added, "
        f"{len(docs) - len(todo)} already present)"
    )
    return 0


def start_ray(address: str | None):
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'bne[ray]'") from None
    if not ray.is_initialized():
        ray.init(
            address=address or os.environ.get("RAY_ADDRESS") or None,
            logging_level=logging.ERROR,
            configure_logging=False,
            include_dashboard=False if not address else None,
        )
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
    result = distributed.build_sharded(
        [doc_text(d) for d in docs],
        out,
        n_shards=args.shards,
        bits=args.bits,
        model=model_key(args.model),
        batch_size=args.batch_size,
        threads=args.threads,
    )
    if result["shards"]:  # the docstore gets the shards' permission bits, as beside an index file
        os.chmod(store.path, stat.S_IMODE(os.stat(result["shards"][0]).st_mode))
    print(
        f"{safe(out)}: {len(docs)} documents in {args.shards} shards ({len(result['skipped'])} already written, "
        f'skipped); search with: bne search {safe(out)} "query"'
    )
    return 0


def open_manifest(path: str):
    """The shards of a folder or manifest given to ``search``, checked before Ray starts."""
    from . import distributed

    manifest = os.path.join(path, distributed.MANIFEST) if os.path.isdir(path) else path
    if not os.path.isfile(manifest):
        hint = ""
        if os.path.isdir(path) and any(
            os.path.isfile(os.path.join(path, n)) for n in ("corpus.jsonl", "corpus.jsonl.gz")
        ):
            hint = f"; it looks like a BEIR dataset: build an index first (bne build {path} -o index.bne)"
        raise UserError(
            f"{path} is a folder without {distributed.MANIFEST}: search takes an index file or a folder of shards{hint}"
        )
    return distributed.read_manifest(path)


def search_sharded(args, queries):
    from . import distributed

    paths, manifest = open_manifest(args.index)
    start_ray(args.ray_address)
    model = model_key(args.model) if args.model else manifest.get("metadata", {}).get("model", "default")
    encoder = load_encoder(model, manifest["bits"], args.threads, device=args.device)
    sharded = distributed.ShardedIndex(paths)
    t0 = time.perf_counter()
    codes = encoder.encode(queries, show_progress=False)
    t1 = time.perf_counter()
    D, I = sharded.search(codes, min(args.k, max(len(sharded), 1)))
    t2 = time.perf_counter()
    store = os.path.join(args.index if os.path.isdir(args.index) else os.path.dirname(args.index), "corpus")
    return D, I, None, t0, t1, t2, len(sharded), store


# -- search -------------------------------------------------------------------------------------


def read_queries(args) -> list[tuple[str, str | None]]:
    """(text, query id or None): the command line's queries, then --queries FILE: one query per
    line, or for .jsonl a JSON object per line with "text" (or "query") and "_id"/"id" (BEIR's
    queries.jsonl), or a JSON string."""
    from .corpus import CorpusError, _lines, json_error_detail

    queries: list[tuple[str, str | None]] = []
    for q in args.query or []:
        try:
            q.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as lone surrogates
            raise UserError(f"query {safe(q)!s} is not UTF-8 text") from None
        queries.append((q, None))
    if args.queries == "-":
        lines = (
            sys.stdin.buffer
            if hasattr(sys.stdin, "buffer")
            else (t.encode("utf-8", "surrogateescape") for t in sys.stdin)
        )
        for lineno, raw in enumerate(lines, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(
                    f"<stdin>:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                ) from None
            if line.strip():
                queries.append((line.strip(), None))
    elif args.queries:
        path = args.queries
        if os.path.isdir(path) or not os.path.exists(path):
            raise UserError(f"--queries {path}: {'a folder' if os.path.isdir(path) else 'no such file'}")
        jsonl = path.lower().endswith((".jsonl", ".jsonl.gz", ".json"))
        from pathlib import Path

        try:
            for lineno, line in _lines(Path(path)):
                if not line.strip():
                    continue
                if not jsonl:
                    queries.append((line.strip(), None))
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:  # also a plain ValueError: an integer with more than 4300 digits
                    raise UserError(f"{path}:{lineno}: not valid JSON ({json_error_detail(e)})") from None
                except RecursionError:
                    raise UserError(f"{path}:{lineno}: JSON nested too deeply") from None
                if isinstance(obj, str):
                    queries.append((obj, None))
                    continue
                text = obj.get("text", obj.get("query")) if isinstance(obj, dict) else None
                if not isinstance(text, str):
                    raise UserError(f'{path}:{lineno}: expected a JSON object with a "text" string (or a JSON string)')
                qid = obj.get("_id", obj.get("id"))
                queries.append((text, None if qid is None else str(qid)))
        except CorpusError as e:
            raise UserError(str(e)) from None
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
    n = max(len(idx), 1)  # more hits than codes would only be padding
    k = min(args.k, n)
    if args.rescore:
        from .encoder import rescore_candidates

        _, cand = idx.search(codes, min(max(args.rescore, k), n), threads=args.threads)
        scores, ids = rescore_candidates(logits, idx.reconstruct(cand), cand, k)
        dist = None
    else:
        dist, ids = idx.search(codes, k, threads=args.threads)
    t2 = time.perf_counter()
    return dist, ids, scores, t0, t1, t2, len(idx), args.index


def source_of(meta: str) -> str | None:
    """``file:line`` of a .txt document (its ext_id is a content hash), else None."""
    if not meta.startswith("{"):
        return None
    try:
        m = json.loads(meta)
    except ValueError:
        return None
    return f"{m['file']}:{m['line']}" if isinstance(m, dict) and "file" in m and "line" in m else None


def index_arg(path: str, folder_ok: bool = False) -> str:
    if not path:
        raise UserError("the index path is empty")
    if os.path.isdir(path) and not folder_ok:
        raise UserError(f"{path} is a folder, not an index file")
    return path


def cmd_search(args) -> int:
    from .docstore import DocStore, DocStoreError, StoredDoc

    index_arg(args.index, folder_ok=True)
    asked = read_queries(args)
    queries = [q for q, _ in asked]
    if os.path.isdir(args.index) or args.index.endswith(".json"):
        dist, ids, scores, t0, t1, t2, ncodes, store_key = search_sharded(args, queries)
    else:
        dist, ids, scores, t0, t1, t2, ncodes, store_key = search_file(args, queries)
    try:
        store = DocStore(store_key)
        docs = store.get(np.unique(ids))
        store.close()
    except (FileNotFoundError, DocStoreError) as e:  # the index alone still answers: ids, no texts
        print(f"bne: warning: {safe(e)}; printing ids only", file=sys.stderr)
        docs = {}
    results: list[dict[str, Any]] = []
    for qi, (q, qid) in enumerate(asked):
        hits = []
        for rank, i in enumerate(ids[qi]):
            if i < 0:
                continue
            doc = docs.get(int(i)) or StoredDoc(str(i), "", "", "")
            hit = {
                "rank": rank + 1,
                "id": int(i),
                "doc_id": doc.ext_id,
                "title": doc.title,
                "snippet": snippet(doc.text),
            }
            src = source_of(doc.meta)
            if src:
                hit["source"] = src
            if dist is not None:
                hit["distance"] = int(dist[qi, rank])
            else:
                hit["score"] = float(scores[qi, rank])
            hits.append(hit)
        results.append({"query": q, "hits": hits} if qid is None else {"query": q, "query_id": qid, "hits": hits})
    timing = {
        "encode_ms": (t1 - t0) * 1e3,
        "search_ms": (t2 - t1) * 1e3,
        "queries": len(queries),
        "codes": ncodes,
        "isa": _core.active_isa(),
    }
    if args.json:
        print(json_text({"results": results, "timing": timing}))
    else:
        for r in results:
            print(f"query: {safe(r['query'])}" + (f"  [{safe(r['query_id'])}]" if "query_id" in r else ""))
            for h in r["hits"]:
                score = f"d={h['distance']:4d}" if "distance" in h else f"s={h['score']:8.2f}"
                title = f"[{safe(h['title'])}] " if h["title"] else ""
                print(
                    f"  {h['rank']:3d}. {score}  {safe(h.get('source', h['doc_id'])):>12}  {title}{safe(h['snippet'])}"
                )
        print(
            f"encode {timing['encode_ms']:.1f} ms, search {timing['search_ms']:.1f} ms "
            f"({len(queries)} queries over {ncodes} codes, {timing['isa']})",
            file=sys.stderr,
        )
    return 0


# -- info / verify ------------------------------------------------------------------------------


def cmd_info(args) -> int:
    from . import index as bindex
    from .docstore import DocStore, DocStoreError

    idx = bindex.open(index_arg(args.index))
    info = idx.info()
    try:
        store = DocStore(args.index)
        info["documents"] = store.count()
        store.close()
    except FileNotFoundError:
        info["documents"] = None
    except DocStoreError as e:
        print(f"bne: warning: {safe(e)}", file=sys.stderr)
        info["documents"] = None
    if args.json:
        print(json_text(info))
        return 0
    meta = dict(info.pop("metadata"))
    for key in (
        "path",
        "format_version",
        "bits",
        "bit_order",
        "codes",
        "live",
        "tombstones",
        "segments",
        "commit",
        "max_id",
        "file_bytes",
        "documents",
        "isa",
    ):
        print(f"{key:15s} {safe(info.get(key))}")
    print(f"{'model':15s} {safe(meta.pop('model', None))} ({safe(meta.pop('model_name', ''))})")
    if meta:  # anything else save(metadata=...) stored, on one line
        print(f"{'metadata':15s} {safe(json.dumps(meta, ensure_ascii=False))}")
    return 0


def cmd_shard(args) -> int:
    from . import distributed

    paths = distributed.shard_index(args.index, args.shards, args.output)
    print(f"{safe(args.output)}: {len(paths)} shards and {distributed.MANIFEST}")
    return 0


def cmd_verify(args) -> int:
    from . import index as bindex

    idx = bindex.open(index_arg(args.index))
    idx.verify()
    info = idx.info()
    print(f"OK: {safe(args.index)}: {info['codes']} codes in {info['segments']} segment(s), every checksum matches")
    return 0


# -- bench / demo / train / eval ------------------------------------------------------------------


def cmd_bench(args) -> int:
    from .bench import run_bench

    return run_bench(args)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_train(argv: list[str]) -> int:
    from .training import train

    return train.main(argv) or 0


def cmd_eval(argv: list[str]) -> int:
    from .training import evaluate

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
    b.add_argument("--batch-size", type=int_in(1, 1 << 20), default=64)
    b.add_argument("--commit-every", type=int_in(1), default=2048, help="documents per durable commit")
    b.add_argument("--threads", type=threads_arg, default=None, help="encoder and search threads (default: all)")
    b.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to encode: cuda (torch fp16), cpu, or auto (cuda when a GPU is visible)",
    )
    b.add_argument("--append", action="store_true", help="add to an existing index (skips documents already in it)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.add_argument(
        "--ray", action="store_true", help="encode on a Ray cluster into a folder of shards (-o is a folder)"
    )
    b.add_argument("--shards", type=int_in(1, 1 << 16), default=4, help="shards for --ray")
    b.add_argument("--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    b.set_defaults(fn=cmd_build)

    s = sub.add_parser("search", help="search an index with text queries")
    s.add_argument("index")
    s.add_argument("query", nargs="*")
    s.add_argument("-k", type=int_in(1, MAX_K), default=10, help=f"hits per query (at most {MAX_K})")
    s.add_argument(
        "--queries",
        help="file with one query per line, or .jsonl with a \"text\" per line (BEIR queries.jsonl); '-' for stdin",
    )
    s.add_argument(
        "--rescore",
        type=int_in(1, MAX_K),
        default=None,
        metavar="M",
        help=f"re-rank the top M (default {RESCORE_DEFAULT}) Hamming candidates with float query logits; "
        "a word after --rescore is the query, not M",
    )
    s.add_argument("--model", default=None, help="override the model recorded in the index")
    s.add_argument("--json", action="store_true")
    s.add_argument("--threads", type=threads_arg, default=None)
    s.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="cpu",
        help="where to encode the queries (default cpu: no GPU start-up for a few queries)",
    )
    s.add_argument("--ray-address", default=None, help="Ray cluster for a sharded index folder")
    s.set_defaults(fn=cmd_search)

    sh = sub.add_parser("shard", help="split index files into N shard files for a Ray cluster")
    sh.add_argument("index", nargs="+")
    sh.add_argument("-o", "--output", required=True, help="folder for the shards and their manifest")
    sh.add_argument("--shards", type=int_in(1, 1 << 16), required=True)
    sh.set_defaults(fn=cmd_shard)

    i = sub.add_parser("info", help="describe an index file")
    i.add_argument("index")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_info)

    v = sub.add_parser("verify", help="check every checksum of an index file (exit 1 on damage)")
    v.add_argument("index")
    v.set_defaults(fn=cmd_verify)

    be = sub.add_parser("bench", help="the 'Why binary?' speed table: float32, INT8, FAISS binary, bne")
    be.add_argument("--sizes", type=sizes_arg, default="10k,100k,1M", help="comma-separated database sizes (10k, 1M)")
    be.add_argument("--queries", type=int_in(1, MAX_K), default=16)
    be.add_argument("-k", type=int_in(1, MAX_K), default=10)
    be.add_argument("--repeat", type=int_in(1), default=5)
    be.add_argument("--threads", type=threads_arg, default=None)
    be.add_argument("--out", default="bne-bench", help="prefix of the .json and .png files written")
    be.set_defaults(fn=cmd_bench)

    d = sub.add_parser("demo", help="offline: index the Python standard library's docstrings and search them")
    d.add_argument("--limit", type=int_in(1), default=3000, help="documents to index")
    d.add_argument("--keep", default=None, help="write the demo index here instead of a temporary folder")
    d.set_defaults(fn=cmd_demo)

    sub.add_parser("train", help="train a binary head (see bne train --help)", add_help=False)
    sub.add_parser("eval", help="evaluate a model on STS and BEIR data (see bne eval --help)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    rest = [a for a in argv if a != "--debug"]
    old_showwarning = warnings.showwarning
    if not debug:  # warnings as one escaped line, not file:line plus source
        warnings.showwarning = lambda message, category, *a, **k: print(
            f"bne: warning: {safe(message)}", file=sys.stderr
        )
    try:
        if rest and rest[0] in ("train", "eval"):  # their own argument parsers
            return (cmd_train if rest[0] == "train" else cmd_eval)(rest[1:])
        if rest and rest[0] == "search":
            rest = rescore_argv(rest)
        parser = build_parser()
        args, extra = parser.parse_known_args(rest)
        if extra:  # argparse ends the query list at the first option: `search x.bne -k 2 "query"`
            if args.command != "search" or any(e.startswith("-") and e != "-" for e in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.query = list(args.query or []) + extra
        if getattr(args, "threads", None) and args.threads > cpu_count():
            print(
                f"bne: note: --threads {args.threads} is more than the {cpu_count()} CPUs here; using {cpu_count()}",
                file=sys.stderr,
            )
            args.threads = cpu_count()
        return args.fn(args)
    except KeyboardInterrupt:
        print("bne: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, ValueError, OSError, KeyError, sqlite3.Error) as e:
        if debug:
            raise
        code = EXIT_FAIL if isinstance(e, IndexFormatError) else EXIT_USAGE
        if isinstance(e, KeyError):
            msg = f"missing {e}"
        elif isinstance(e, OSError) and e.strerror and e.filename is not None:  # e.g. disk full, permission denied
            msg = f"{e.filename}: {e.strerror}" + (f" -> {e.filename2}" if e.filename2 else "")
        else:
            msg = str(e) or type(e).__name__
        print(f"bne: error: {safe(msg)}", file=sys.stderr)
        return code
    except Exception as e:  # a bug, not a user mistake: still one line, the traceback with --debug
        if debug:
            raise
        print(f"bne: error: {safe(type(e).__name__)}: {safe(e)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAIL
    finally:
        warnings.showwarning = old_showwarning


if __name__ == "__main__":
    sys.exit(main())
