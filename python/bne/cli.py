"""The ``bne`` command: build, search, info, verify, bench, demo, train, eval.

A thin layer over the public API (bne.open / bne.Index / bne.encoder.Encoder). User mistakes
print one line on stderr and exit non-zero; ``--debug`` shows the traceback. Arguments are
checked before any file is created. Text that comes from files (documents, ids, metadata, paths,
error messages) is printed through :func:`safe`, so no control character reaches the terminal.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import signal
import sqlite3
import sys
import threading
import time
import warnings
from typing import Any

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


def bits_arg(text: str) -> int:
    """--bits: a multiple of 64 (what the index stores), at most bne's limit."""
    from .codes import MAX_BITS

    v = int_in(64, MAX_BITS)(text)
    if v % 64:
        raise argparse.ArgumentTypeError(f"must be a multiple of 64, got {v}")
    return v


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


def snippet(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- build --------------------------------------------------------------------------------------


#: A terminal is told the model is loading if that takes longer than this (a quick error stays one line).
LOADING_GRACE_S = 0.5


class ProgressBar:
    """Build progress on stderr. While the model loads (a first run also exports it, once) it says
    so; then documents encoded, of the total once the reader has seen the whole input, with
    documents/s, the ETA and how many are committed: a tqdm bar on a terminal, a plain line every
    ``interval`` seconds elsewhere (a log file gets lines, not silence until the end). Nothing is
    printed before an error that comes at once, so the error stays one line."""

    def __init__(self, quiet: bool, *, model: str = "the model", file=None, interval: float | None = None) -> None:
        from .progress import INTERVAL, is_terminal

        self.quiet, self.file, self.model = quiet, file, model
        self.interval = INTERVAL if interval is None else interval
        self.bar: Any = None
        self.ready = threading.Event()  # set by the first report: the model is loaded
        self.lock = threading.Lock()
        self.tty = is_terminal(sys.stderr if file is None else file)
        self.said_loading = False
        if not quiet:
            first = LOADING_GRACE_S if self.tty else self.interval
            threading.Thread(target=self._loading, args=(first, self.tty), daemon=True, name="bne-progress").start()

    def _loading(self, first: float, tty: bool) -> None:
        t0, wait = time.monotonic(), first
        while not self.ready.wait(wait):
            with self.lock:
                if self.ready.is_set():
                    return
                took = "" if tty else f", {int(time.monotonic() - t0)}s"
                print(f"bne: loading {self.model}{took}", file=self.file or sys.stderr, flush=True)
                self.said_loading = True
            if tty:  # once: the bar follows
                return
            wait = max(self.interval, 0.01)

    def __call__(self, p) -> None:
        if self.quiet:
            return
        first = self.bar is None  # the first report comes when the model is ready
        if first:
            from .progress import progress_bar

            with self.lock:
                self.ready.set()
            self.bar = progress_bar(p.total, "encoding", "doc", file=self.file, interval=self.interval)
        if p.total is not None and self.bar.total != p.total:
            self.bar.total = p.total
        self.bar.set_postfix_str(f"{p.committed} committed", refresh=False)
        self.bar.update(p.encoded - self.bar.n)
        if first and p.total != 0 and (self.tty or self.said_loading):  # "encoding" now, not after a batch
            self.bar.refresh()

    def close(self) -> None:
        with self.lock:
            self.ready.set()
        if self.bar is not None:
            self.bar.close()


def _stop_on_signals(got: list[int]) -> dict[int, Any]:
    """SIGTERM and SIGHUP stop a build as Ctrl-C does (the commit in flight completes, then a
    message); ``got`` receives the signal. Returns the old handlers, for :func:`_restore`."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signo: int, frame: object) -> None:
        if not got:  # a repeat while the last commit completes is ignored (kill -9 still works)
            got.append(signo)
            raise KeyboardInterrupt

    # a signal ignored by whoever started us (nohup ignores SIGHUP) stays ignored
    return {
        s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is not signal.SIG_IGN
    }


def _restore(handlers: dict[int, Any]) -> None:
    for s, h in handlers.items():
        signal.signal(s, h)


def cmd_build(args) -> int:
    from .collection import Collection, build_sharded, check_new_path, same_model
    from .corpus import read_corpus
    from .models import identify

    out = args.output
    if args.ray:
        result = build_sharded(
            out,
            read_corpus(args.input),
            shards=args.shards,
            model=args.model,
            bits=args.bits,
            batch_size=args.batch_size,
            threads=args.threads,
            ray_address=args.ray_address,
            source=args.input,
        )
        print(
            f"{safe(out)}: {result['documents']} documents in {args.shards} shards ({len(result['skipped'])} already "
            f'written, skipped); search with: bne search {safe(out)} "query"'
        )
        return 0
    if not out:
        raise UserError("-o is empty: give the index file to write")
    if args.append and os.path.lexists(out) and not os.path.isdir(out):
        coll = Collection.open(out, mode="a", device=args.device, threads=args.threads)
        try:
            asked = identify(args.model, args.bits or coll.bits)
        except BaseException:
            coll.close()
            raise
        if not same_model(coll.model, asked):
            coll.close()
            built = "an unrecorded model" if coll.model is None else f"model {coll.model.name!r}"
            raise UserError(
                f"{out} was built with {built} at {coll.bits} bits; asked for {asked.name!r} at {asked.bits} bits"
            )
    else:
        check_new_path(out)
        coll = Collection.create(out, model=args.model, bits=args.bits, device=args.device, threads=args.threads)
    if args.threads:
        _core.set_num_threads(args.threads)
    bar = ProgressBar(
        args.quiet, model=f"model {safe(coll.model.name)} ({coll.bits} bits)" if coll.model else "the model"
    )
    got: list[int] = []
    handlers = _stop_on_signals(got)
    try:
        with coll:
            r = coll.add(
                read_corpus(args.input),
                batch_size=args.batch_size,
                commit_every=args.commit_every,
                progress=bar,
                source=args.input,
            )
            info = coll.info() if coll.index is not None else None
    except Exception:
        bar.close()
        if coll.last_add.added:  # the error is printed next; say what is already safe
            print(
                f"bne: note: {coll.last_add.added} documents were committed to {safe(out)} before the error; "
                f"run again with --append to continue",
                file=sys.stderr,
            )
        raise
    except KeyboardInterrupt:  # a signal before add() could take it (e.g. while the model loads)
        if not got:
            raise
        print(
            f"bne: interrupted by {signal.Signals(got[0]).name}; {coll.last_add.added} new documents committed "
            f"to {safe(out)}",
            file=sys.stderr,
        )
        return 128 + got[0]
    finally:
        bar.close()
        _restore(handlers)
    if r.dropped:
        print(f"bne: dropped {r.dropped} document rows left by an interrupted build", file=sys.stderr)
    if r.interrupted:
        todo = r.total - r.present
        by = f" by {signal.Signals(got[0]).name}" if got else ""
        print(
            f"bne: interrupted{by}; {r.added} of {todo if todo > r.added else 'the'} new documents committed to "
            f"{safe(out)}" + (" (nothing written)" if info is None else " (run again with --append to continue)"),
            file=sys.stderr,
        )
        return 128 + got[0] if got else EXIT_INTERRUPTED
    assert info is not None
    print(f"{safe(out)}: {info['live']} codes of {info['bits']} bits ({r.added} added, {r.present} already present)")
    return 0


# -- search -------------------------------------------------------------------------------------


def read_queries(args) -> list[tuple[str, str | None]]:
    """(text, query id or None): the command line's queries, then --queries FILE: one query per
    line, or for .jsonl a JSON object per line with "text" (or "query") and "_id"/"id" (BEIR's
    queries.jsonl), or a JSON string."""
    from .corpus import CorpusError, read_query_file

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
        try:
            queries += read_query_file(args.queries)
        except CorpusError as e:
            raise UserError(f"--queries {e}") from None
    if not queries:
        raise UserError("no query: give one on the command line or --queries FILE (- for stdin)")
    return queries


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
    from .collection import Collection

    index_arg(args.index, folder_ok=True)
    asked = read_queries(args)
    queries = [q for q, _ in asked]
    with Collection.open(
        args.index, model=args.model, device=args.device, threads=args.threads, ray_address=args.ray_address
    ) as coll:
        res = coll.search(queries, args.k, rescore=args.rescore)
    if res.warning:
        print(f"bne: warning: {safe(res.warning)}; printing ids only", file=sys.stderr)
    results: list[dict[str, Any]] = []
    for (q, qid), row in zip(asked, res.hits, strict=True):
        hits = []
        for h in row:
            hit: dict[str, Any] = {
                "rank": h.rank,
                "id": h.id,
                "doc_id": h.doc_id,
                "title": h.title,
                "snippet": snippet(h.text),
            }
            src = source_of(h.meta)
            if src:
                hit["source"] = src
            if h.distance is not None:
                hit["distance"] = h.distance
            else:
                hit["score"] = h.score
            hits.append(hit)
        results.append({"query": q, "hits": hits} if qid is None else {"query": q, "query_id": qid, "hits": hits})
    timing = {
        "encode_ms": res.encode_ms,
        "search_ms": res.search_ms,
        "queries": len(queries),
        "codes": res.codes,
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
            f"({len(queries)} queries over {res.codes} codes, {timing['isa']})",
            file=sys.stderr,
        )
    return 0


# -- info / verify ------------------------------------------------------------------------------


def cmd_info(args) -> int:
    from .collection import Collection

    with Collection.open(index_arg(args.index)) as coll:
        info = coll.info()
    if "warning" in info:
        print(f"bne: warning: {safe(info.pop('warning'))}", file=sys.stderr)
    if args.json:
        print(json_text(info))
        return 0
    meta = dict(info.pop("metadata"))
    model = info.pop("model_identity")
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
    for key in ("model", "model_sha256", "model_kind"):
        meta.pop(key, None)
    desc = (
        "not recorded"
        if model is None
        else f"{model['name']} ({model['kind']}" + (f", sha256 {model['sha256'][:16]})" if model["sha256"] else ")")
    )
    name = meta.pop("model_name", "")  # what the encoder calls itself
    print(f"{'model':15s} {safe(desc)}" + (f" [{safe(name)}]" if name else ""))
    if meta:  # anything else save(metadata=...) stored, on one line
        print(f"{'metadata':15s} {safe(json.dumps(meta, ensure_ascii=False))}")
    return 0


def cmd_models(args) -> int:
    from . import models

    if args.action == "add":
        if not args.paths:
            raise UserError("bne models add: give the path of a model file or folder")
        for p in args.paths:
            if not os.path.exists(p):
                raise UserError(f"{p}: no such file or folder")
            try:
                ref = models.identify(p, remember=False)
            except models.ModelError as e:
                raise UserError(str(e)) from None
            shipped = os.path.dirname(os.path.abspath(p)) == os.path.abspath(models.HEADS_DIR)
            if not shipped and not models.register(ref, p):
                raise UserError(f"cannot record {p} in {models.registry_path()}")
            print(f"{safe(ref.name)}: {ref.kind}, {ref.bits} bits, sha256 {ref.short}, at {safe(os.path.abspath(p))}")
        return 0
    if args.paths:
        raise UserError("bne models list takes no paths (did you mean: bne models add PATH?)")
    rows = models.known_models()
    if args.json:
        print(json_text(rows))
        return 0
    for r in rows:
        where = safe(r["path"]) if r["path"] else "(not found: bne models add PATH)"
        print(f"{safe(r['name']):24s} {r['kind']:8s} {r['bits']:5d} bits  {r['sha256'][:12]}  {where}")
    return 0


def cmd_shard(args) -> int:
    from . import distributed

    paths = distributed.shard_index(args.index, args.shards, args.output)
    print(f"{safe(args.output)}: {len(paths)} shards and {distributed.MANIFEST}")
    return 0


def cmd_verify(args) -> int:
    from .collection import Collection

    with Collection.open(index_arg(args.index)) as coll:
        checked = coll.verify()
    n, extra = checked["documents"], checked.get("past_commit", 0)
    docs = "" if n is None else f"; docstore intact ({n} documents)"
    if n is not None and extra:  # the texts of a batch whose codes were never committed
        docs = (
            f"; docstore intact: {n} documents, {extra} past the last commit of the index "
            f"(dropped by the next --append)"
        )
    print(
        f"OK: {safe(args.index)}: {checked['codes']} codes in {checked['segments']} segment(s), "
        f"every checksum matches{docs}"
    )
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
    # allow_abbrev=False everywhere: a prefix is not an option (--mode must not be read as --model)
    p = argparse.ArgumentParser(
        prog="bne", description="Exact Hamming search over native binary text embeddings.", allow_abbrev=False
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"bne {_core.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    cmd = functools.partial(sub.add_parser, allow_abbrev=False)

    b = cmd("build", help="encode a corpus into an index file (+ a SQLite docstore beside it)")
    b.add_argument("input", help=".txt (a document per line), .jsonl (id, text, title), .tsv/.csv, or a BEIR folder")
    b.add_argument("-o", "--output", required=True, help="index file to write")
    b.add_argument(
        "--bits",
        type=bits_arg,
        default=None,
        help="code width (default: the model's, or with --append the index's; 'default' has 1024 and 2048)",
    )
    b.add_argument(
        "--model",
        default="default",
        help="'default' (all-MiniLM-L6-v2 + shipped head), a shipped or registered model name, or the path of "
        "a head .safetensors, a BinaryEmbedder folder/file or a seed .pt",
    )
    b.add_argument(
        "--batch-size",
        type=int_in(1, 1 << 20),
        default=64,
        help="texts per encoder call (default 64)",
    )
    b.add_argument("--commit-every", type=int_in(1), default=2048, help="documents per durable commit")
    b.add_argument("--threads", type=threads_arg, default=None, help="encoder and search threads (default: all)")
    b.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to encode: cuda (torch fp16), cpu, or auto (cuda when a GPU is visible)",
    )
    b.add_argument("--append", action="store_true", help="add to an existing index (skips documents already in it)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    b.add_argument(
        "--ray", action="store_true", help="encode on a Ray cluster into a folder of shards (-o is a folder)"
    )
    b.add_argument("--shards", type=int_in(1, 1 << 16), default=4, help="shards for --ray")
    b.add_argument("--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    b.set_defaults(fn=cmd_build)

    s = cmd("search", help="search an index with text queries")
    s.add_argument("index", help="index file (or a folder of shards from --ray / bne shard)")
    s.add_argument("query", nargs="*", help="query texts (each its own query; quote a query of several words)")
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
    s.add_argument("--json", action="store_true", help="print the hits and timings as JSON on stdout")
    s.add_argument("--threads", type=threads_arg, default=None, help="encoder and search threads (default: all)")
    s.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="cpu",
        help="where to encode the queries (default cpu: no GPU start-up for a few queries)",
    )
    s.add_argument("--ray-address", default=None, help="Ray cluster for a sharded index folder")
    s.set_defaults(fn=cmd_search)

    mo = cmd("models", help="list the models bne can find, or add one: bne models add PATH")
    mo.add_argument(
        "action", nargs="?", choices=("list", "add"), default="list", help="list (the default) or add PATH..."
    )
    mo.add_argument("paths", nargs="*", help="model files or folders to add (a moved model is found again)")
    mo.add_argument("--json", action="store_true", help="print the models as JSON")
    mo.set_defaults(fn=cmd_models)

    sh = cmd("shard", help="split index files into N shard files for a Ray cluster")
    sh.add_argument("index", nargs="+", help="index files to split (their codes and documents)")
    sh.add_argument("-o", "--output", required=True, help="folder for the shards and their manifest")
    sh.add_argument("--shards", type=int_in(1, 1 << 16), required=True, help="number of shard files to write")
    sh.set_defaults(fn=cmd_shard)

    i = cmd("info", help="describe an index file")
    i.add_argument("index", help="index file")
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    i.set_defaults(fn=cmd_info)

    v = cmd("verify", help="check every checksum of an index file (exit 1 on damage)")
    v.add_argument("index", help="index file")
    v.set_defaults(fn=cmd_verify)

    be = cmd("bench", help="the 'Why binary?' speed table: float32, INT8, FAISS binary, bne")
    be.add_argument("--sizes", type=sizes_arg, default="10k,100k,1M", help="comma-separated database sizes (10k, 1M)")
    be.add_argument("--queries", type=int_in(1, MAX_K), default=16, help="random queries per size (default 16)")
    be.add_argument("-k", type=int_in(1, MAX_K), default=10, help="neighbours per query (default 10)")
    be.add_argument(
        "--repeat", type=int_in(1), default=5, help="timed runs per method and size; the median is reported (default 5)"
    )
    be.add_argument("--threads", type=threads_arg, default=None, help="threads for every method (default: all)")
    be.add_argument("--out", default="bne-bench", help="prefix of the .json and .png files written")
    be.set_defaults(fn=cmd_bench)

    d = cmd("demo", help="offline: index the Python standard library's docstrings and search them")
    d.add_argument("--limit", type=int_in(1), default=3000, help="documents to index")
    d.add_argument("--keep", default=None, help="write the demo index here instead of a temporary folder")
    d.set_defaults(fn=cmd_demo)

    cmd("train", help="train a binary head (see bne train --help)", add_help=False)
    cmd("eval", help="evaluate a model on STS and BEIR data (see bne eval --help)", add_help=False)
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
