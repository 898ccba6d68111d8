"""What each ``bne`` subcommand does once its arguments are parsed: call the layer below
(:class:`bne.Collection`, :mod:`bne.models`, :mod:`bne.distributed`) and print the result. The
rules (which model may append to an index, what a collection holds) live in those layers; this
module only turns their answers into lines. Text from files is printed through
:func:`bne.console.safe`."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from typing import Any

from . import _core, lexical
from .console import ProgressBar, describe_mode, hit_numbers, json_text, safe, snippet
from .errors import UserError

EXIT_USAGE, EXIT_FAIL, EXIT_INTERRUPTED = 2, 1, 130


# -- build --------------------------------------------------------------------------------------


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
    from .collection import Collection, build_sharded, check_new_path, open_to_append
    from .corpus import read_corpus

    out = args.output
    if args.input is None and (args.ray or not args.append):
        raise UserError("give the input to encode (only --append may leave it out: then the lexical index is added)")
    if args.shards is not None and not args.ray:
        print("bne: note: --shards applies to --ray builds only; ignored", file=sys.stderr)
    if args.ray:
        args.shards = 4 if args.shards is None else args.shards
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
        repeated = f", {result['repeated']} skipped: their id came earlier in the input" if result["repeated"] else ""
        print(
            f"{safe(out)}: {result['documents']} documents in {args.shards} shards ({len(result['skipped'])} already "
            f'written, skipped{repeated}); search with: bne search {safe(out)} "query"'
        )
        return 0
    if not out:
        raise UserError("-o is empty: give the index file to write")
    if args.input is None:
        return _lexical_only(out, args.quiet)
    appending = args.append and os.path.lexists(out) and not os.path.isdir(out)
    if appending:
        coll = open_to_append(out, args.model, args.bits, device=args.device, threads=args.threads)
    else:
        check_new_path(out)
        coll = Collection.create(out, model=args.model, bits=args.bits, device=args.device, threads=args.threads)
    if args.threads:
        _core.set_num_threads(args.threads)
    got: list[int] = []
    handlers = _stop_on_signals(got)
    if appending:  # an older collection gets its lexical index first (resumable), then the new documents
        try:
            stopped = _add_lexical(coll, out, args.quiet, got)
        except BaseException:
            coll.close()
            _restore(handlers)
            raise
        if stopped is not None:
            coll.close()
            _restore(handlers)
            return stopped
    bar = ProgressBar(
        args.quiet, model=f"model {safe(coll.model.name)} ({coll.bits} bits)" if coll.model else "the model"
    )
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
        todo = r.total - r.present - r.repeated
        by = f" by {signal.Signals(got[0]).name}" if got else ""
        print(
            f"bne: interrupted{by}; {r.added} of {todo if todo > r.added else 'the'} new documents committed to "
            f"{safe(out)}" + (" (nothing written)" if info is None else " (run again with --append to continue)"),
            file=sys.stderr,
        )
        return 128 + got[0] if got else EXIT_INTERRUPTED
    assert info is not None
    repeated = f", {r.repeated} skipped: their id came earlier in the input" if r.repeated else ""
    print(
        f"{safe(out)}: {info['live']} codes of {info['bits']} bits "
        f"({r.added} added, {r.present} already present{repeated})"
    )
    return 0


def _add_lexical(coll, out: str, quiet: bool, got: list[int]) -> int | None:
    """Adds the lexical index to an older collection's docstore (nothing when it has one or has no
    docstore), with a progress line per committed step. None when it is complete; the exit code
    when Ctrl-C / SIGTERM / SIGHUP stopped it (its committed steps stay)."""
    state = coll.info().get("lexical")
    if state is None or state["state"] == "ready":
        return None
    seen = [state["indexed"], state["rows"]]

    def report(done: int, total: int) -> None:
        seen[:] = [done, total]
        if not quiet:
            print(f"bne: adding the lexical index: {done} of {total} documents", file=sys.stderr, flush=True)

    from .upkeep import writable_or_say

    writable_or_say(coll.docstore_path)  # before any progress line: the error is the one line
    if not quiet:
        report(*seen)
    try:
        complete = coll.add_lexical_index(report)
    except KeyboardInterrupt:  # a signal before add_lexical_index could take it
        if not got:
            raise
        complete = False
    if complete:
        return None
    by = f" by {signal.Signals(got[0]).name}" if got else ""
    print(
        f"bne: interrupted{by} while adding the lexical index to {safe(out)}: {seen[0]} of {seen[1]} documents "
        f"indexed (run again to continue)",
        file=sys.stderr,
    )
    return 128 + got[0] if got else EXIT_INTERRUPTED


def _lexical_only(out: str, quiet: bool) -> int:
    """``bne build --append -o INDEX`` without input: adds the lexical index of an older index."""
    from .collection import Collection
    from .shards import is_sharded

    if is_sharded(out) or os.path.isdir(out):
        raise UserError(f"{out} is a folder: a folder of shards gets its lexical indexes from bne build --ray")
    if not os.path.lexists(out):
        raise UserError(f"{out} not found: --append without input adds the lexical index of an existing index")
    got: list[int] = []
    handlers = _stop_on_signals(got)
    try:
        with Collection.open(out, mode="a") as coll:
            if coll.info().get("documents") is None:
                raise UserError(f"{out} has no docstore ({coll.docstore_path}): no documents to index")
            stopped = _add_lexical(coll, out, quiet, got)
            state = coll.info()["lexical"]
    finally:
        _restore(handlers)
    if stopped is not None:
        return stopped
    print(f"{safe(out)}: the lexical index is ready ({state['documents']} documents)")
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
    given = _fusion_options_given(args)
    args.rrf_k = lexical.RRF_K if args.rrf_k is None else args.rrf_k
    args.depth = lexical.DEPTH if args.depth is None else args.depth
    args.fusion = args.fusion or "rrf"
    with Collection.open(
        args.index, model=args.model, device=args.device, threads=args.threads, ray_address=args.ray_address
    ) as coll:
        res = coll.search(
            queries,
            args.k,
            mode=args.mode,
            rescore=args.rescore,
            rrf_k=args.rrf_k,
            depth=args.depth,
            weights=args.weights,
            fusion=args.fusion,
        )
    if res.warning:
        print(f"bne: warning: {safe(res.warning)}; printing ids only", file=sys.stderr)
    if res.note:
        print(f"bne: note: {safe(res.note)}", file=sys.stderr)
    for note in _option_notes(given, args, res.mode, res.codes):
        print(f"bne: note: {note}", file=sys.stderr)
    results: list[dict[str, Any]] = []
    for (q, qid), row, mode in zip(asked, res.hits, res.modes, strict=True):
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
            hit.update(
                distance=h.distance, bm25=h.bm25, dense_rank=h.dense_rank, lexical_rank=h.lexical_rank, score=h.score
            )
            hits.append(hit)
        head: dict[str, Any] = {"query": q} if qid is None else {"query": q, "query_id": qid}
        results.append({**head, "mode": mode, "hits": hits})
    timing = {
        "encode_ms": res.encode_ms,
        "search_ms": res.search_ms,
        "queries": len(queries),
        "codes": res.codes,
        "isa": _core.active_isa(),
    }
    if args.json:
        print(json_text({"results": results, "mode": res.mode, "timing": timing}))
    else:
        weights = args.weights or lexical.default_weights(args.fusion)
        depth = max(args.depth, args.k)  # each side's list holds at least k
        print(f"mode: {describe_mode(res.mode, args.fusion, args.rrf_k, depth, weights)}")
        for r in results:
            print(f"query: {safe(r['query'])}" + (f"  [{safe(r['query_id'])}]" if "query_id" in r else ""))
            if r["mode"] != res.mode:
                print(f"  (no word to search for: {r['mode']} ranking)")
            for h in r["hits"]:
                title = f"[{safe(h['title'])}] " if h["title"] else ""
                print(
                    f"  {h['rank']:3d}. {hit_numbers(h, r['mode'], args.rescore, args.fusion)}  "
                    f"{safe(h.get('source', h['doc_id'])):>12}  {title}{safe(h['snippet'])}"
                )
        print(
            f"encode {timing['encode_ms']:.1f} ms, search {timing['search_ms']:.1f} ms "
            f"({len(queries)} queries over {res.codes} codes, {timing['isa']})",
            file=sys.stderr,
        )
    return 0


def _fusion_options_given(args) -> list[str]:
    return [
        opt
        for opt, v in (
            ("--rrf-k", args.rrf_k),
            ("--depth", args.depth),
            ("--weights", args.weights),
            ("--fusion", args.fusion),
        )
        if v is not None
    ]


def _option_notes(given: list[str], args, mode: str, codes: int) -> list[str]:
    """A note for each option the user gave that this search could not use, or used at a larger
    value: a silent no-op or change reads as if the option had been applied as given."""
    notes = []
    if mode != "hybrid" and given:
        verb = "applies" if len(given) == 1 else "apply"
        notes.append(f"{', '.join(given)} {verb} to hybrid mode only; ignored in {mode} mode")
    elif mode == "hybrid" and "--rrf-k" in given and args.fusion == "linear":
        notes.append("--rrf-k applies to --fusion rrf only; ignored with --fusion linear")
    if mode == "lexical" and args.rescore is not None:
        notes.append("--rescore re-ranks the dense side; ignored in lexical mode")
    # options that were raised to what the search needs: the header and the ranks show the real ones
    if mode == "hybrid" and "--depth" in given and args.depth < args.k:
        notes.append(f"--depth {args.depth} is below -k {args.k}: each side's list holds {args.k}")
    side = min(max(args.depth, args.k) if mode == "hybrid" else args.k, codes)  # a list holds at most every code
    if mode != "lexical" and args.rescore is not None and args.rescore < side:
        notes.append(f"--rescore {args.rescore} is below the {side} dense candidates: all {side} are re-ranked")
    return notes


# -- info / verify ------------------------------------------------------------------------------


def cmd_info(args) -> int:
    from .collection import Collection
    from .docstore import path_for

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
        value = info.get(key)
        if key == "documents" and value is None:  # not "None": say what it means
            there = os.path.lexists(path_for(args.index))
            value = "- (" + ("docstore unreadable: see the warning" if there else "no docstore beside it")
            value += "; search prints ids only)"
        print(f"{key:15s} {safe(value)}")
    if "lexical" in info:
        print(f"{'lexical':15s} {lexical_line(info.pop('lexical'), args.index)}")
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


def lexical_line(state: dict[str, Any], index: str) -> str:
    """The lexical index's state in words, for info and verify."""
    if state["state"] == "ready":
        return f"ready ({state['documents']} documents)"
    fix = f"bne build --append -o {safe(index)}"
    if state["state"] == "partial":
        return f"being added: {state['indexed']} of {state['rows']} documents (continue with: {fix})"
    return f"none (an older docstore; add it with: {fix})"


def _read_ids(path: str) -> list[str]:
    """Document ids, one per line (blank lines skipped), from a file or '-' (stdin)."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise UserError(f"--ids {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--ids {path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def cmd_remove(args) -> int:
    from .collection import Collection

    index_arg(args.index)
    ids = list(dict.fromkeys([*(args.doc_ids or []), *(_read_ids(args.ids) if args.ids else [])]))
    if not ids and not args.compact:
        raise UserError("give the ids of the documents to remove (or --ids FILE), or --compact")
    with Collection.open(args.index, mode="a") as coll:
        removed = coll.remove(ids) if ids else 0
        lost = coll.last_missing if ids else []
        if args.compact:
            coll.compact()
        live = len(coll)
    named = ", ".join(safe(e) for e in lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
    missing = f", {len(lost)} not found ({named})" if lost else ""
    done = "; compacted" if args.compact else (" (bne remove --compact shrinks the files)" if removed else "")
    print(f"{safe(args.index)}: removed {removed} documents{missing}; {live} remain{done}")
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
    from .docstore import path_for
    from .shards import docstore_key

    notes: list[str] = []
    paths = distributed.shard_index(args.index, args.shards, args.output, notes=notes)
    if len(paths) < args.shards:  # capped at the live codes: no empty shards
        print(f"bne: note: {len(paths)} shards, not {args.shards}: each shard holds one code or more", file=sys.stderr)
    for n in notes:  # no lexical files: the folder searches dense only
        print(f"bne: note: {safe(n)}; the shards search dense only", file=sys.stderr)
    lex = "" if notes else ", their lexical index files"
    store = path_for(docstore_key(args.output))
    docs = f"; documents in {os.path.basename(store)}" if os.path.exists(store) else ""
    print(f"{safe(args.output)}: {len(paths)} shards{lex} and {distributed.MANIFEST}{docs}")
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
    lex = checked.get("lexical")
    if lex is not None:
        docs += "; lexical index " + (
            f"matches the docstore ({lex['documents']} documents)"
            if lex["state"] == "ready"
            else lexical_line(lex, args.index)
        )
        if lex["stale"]:  # rows of removed documents: a remove or compact stopped between its commits
            docs += f"; {lex['stale']} rows of removed documents (dropped by the next --append, remove or compact)"
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
