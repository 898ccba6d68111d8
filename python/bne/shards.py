"""Folders of shards, without Ray: shard files, their names and the manifest that lists them.

* :func:`shard_index` splits one index file (or several, in order) into N shard files of
  contiguous positions, so shard i covers global positions ``[base_i, base_i + n_i)``, and copies
  the sources' documents into the folder's docstore (codes and documents keep their ids).
* :func:`read_manifest` / :func:`write_manifest`: the folder's ``manifest.json``.
* :func:`is_sharded`, :func:`docstore_key`: a folder of shards and where its docstore lives.
* :func:`write_lexical` / :func:`open_lexical` / :func:`lexical_done`: each shard's lexical (BM25)
  postings file, ``<shard file>.lex.sqlite`` (:func:`lexical_path`), holding the shard's documents
  (as id - base, ``lexp_meta.id_base``; read back as global ids). The folder's docstore keeps
  the texts only; a search scores every shard with collection-wide statistics
  (:meth:`bne.distributed.ShardedIndex.lexical_search`).

Serving and building shards on Ray is :mod:`bne.distributed`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sqlite3
import stat
import urllib.parse
from collections.abc import Iterable, Sequence

import numpy as np

from . import docstore, lexical_segments, mapped, storage
from .corpus import doc_text
from .errors import CollectionError, DocStoreError
from .fileio import replacing, write_atomic
from .models import ModelRef

MANIFEST = "manifest.json"


def shard_path(folder: str | os.PathLike, i: int, prefix: str = "shard") -> str:
    """The file of shard ``i`` in ``folder``: ``<prefix>-00007.bne``."""
    return os.path.join(os.fspath(folder), f"{prefix}-{int(i):05d}.bne")


def is_sharded(path: str | os.PathLike) -> bool:
    """A folder of shards (or its manifest) rather than one index file."""
    p = os.fspath(path)
    return os.path.isdir(p) or p.endswith(".json")


def docstore_key(path: str | os.PathLike) -> str:
    """What :func:`docstore.path_for` is applied to: the index file, or ``<folder>/corpus``."""
    p = os.fspath(path)
    if not is_sharded(p):
        return p
    folder = p if os.path.isdir(p) else os.path.dirname(p)
    return os.path.join(folder, "corpus")


def _live_chunks(paths: Sequence[str], chunk: int = 1 << 20):
    """(source number, codes, ids) of every live code of the source files, in position order, in chunks."""
    for n, path in enumerate(paths):
        src = mapped.open(path)
        tomb = src.removed_positions()
        base = 0
        for codes, ids in src.segments():
            keep = np.ones(len(codes), bool)
            lo, hi = np.searchsorted(tomb, [base, base + len(codes)])
            keep[tomb[lo:hi] - base] = False
            for s in range(0, len(codes), chunk):
                k = keep[s : s + chunk]
                yield n, np.asarray(codes[s : s + chunk])[k], np.asarray(ids[s : s + chunk])[k]
            base += len(codes)
        src.close()


def _source_stores(paths: Sequence[str], notes: list[str]) -> list[docstore.DocStore] | None:
    """The docstores beside ``paths`` (read-only), or None (with a note) when one is missing or
    unreadable: the shards then get no lexical files and the folder no docstore (ids only)."""
    stores: list[docstore.DocStore] = []
    for p in paths:
        try:
            stores.append(docstore.DocStore(p))
        except (FileNotFoundError, DocStoreError) as e:
            for st in stores:
                st.close()
            notes.append(f"no lexical index files: cannot read the texts beside {p} ({e})")
            return None
    return stores


def _stored_rows(store: docstore.DocStore, ids: np.ndarray, chunk: int):
    """(ids, their rows) in chunks, read from ``store``; a missing row raises DocStoreError."""
    for s in range(0, len(ids), chunk):
        part = [int(i) for i in ids[s : s + chunk]]
        rows = store.get(part)
        if len(rows) != len(part):
            missing = next(i for i in part if i not in rows)
            raise DocStoreError(f"{store.path} has no text for id {missing}")
        yield part, [rows[i] for i in part]


def _live_ids(path: str) -> np.ndarray:
    """The ids of the live codes of an index file."""
    with mapped.open(path) as idx:
        return np.delete(idx.ids(), idx.removed_positions())


def _check_sources(paths: Sequence[str]) -> None:
    """Refuses (CollectionError, one line) the same file given twice and ids that two sources share:
    the shards keep each code's id, so either would make one id name two codes."""
    seen: dict[tuple[int, int], str] = {}
    for p in paths:
        st = os.stat(p)
        if (st.st_dev, st.st_ino) in seen:
            raise CollectionError(f"{p} is given twice (as {seen[st.st_dev, st.st_ino]}); give each index file once")
        seen[st.st_dev, st.st_ino] = p
    if len(paths) < 2:
        return
    live = [_live_ids(p) for p in paths]
    owner = np.concatenate([np.full(len(ids), n, np.int64) for n, ids in enumerate(live)])
    ids = np.concatenate(live)
    order = np.argsort(ids, kind="stable")
    same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(same):
        a, b = order[same[0]], order[same[0] + 1]
        raise CollectionError(
            f"id {int(ids[a])} is in both {paths[int(owner[a])]} and {paths[int(owner[b])]} "
            f"({len(same)} shared ids): the shards keep each code's id, so split collections with distinct ids"
        )


def _ext_ids(store: docstore.DocStore, ids: np.ndarray):
    """The document id (ext_id) of each of ``ids``, in chunks; a missing row raises DocStoreError."""
    for s in range(0, len(ids), 500):
        part = [int(i) for i in ids[s : s + 500]]
        q = f"SELECT id, ext_id FROM docs WHERE id IN ({','.join('?' * len(part))})"
        got = dict(store.db.execute(q, part).fetchall())
        if len(got) != len(part):
            missing = next(i for i in part if i not in got)
            raise DocStoreError(f"{store.path} has no text for id {missing}")
        yield [str(got[i]) for i in part]


def _check_ext_ids(paths: Sequence[str], stores: Sequence[docstore.DocStore]) -> None:
    """Every live code has its document, and no document id (ext_id) is in two sources: search
    would show one doc_id for two documents."""
    where: dict[str, int] = {}
    for n, (p, st) in enumerate(zip(paths, stores, strict=True)):
        for exts in _ext_ids(st, _live_ids(p)):
            if len(stores) < 2:
                continue  # one source: only that each live id has its row
            for e in exts:
                first = where.setdefault(e, n)
                if first != n:
                    raise CollectionError(
                        f"document id {e!r} is in both {paths[first]} and {p}: search would show one "
                        f"doc_id for two documents"
                    )


def shard_index(
    sources: str | Sequence[str],
    n_shards: int,
    out_dir: str | os.PathLike,
    *,
    prefix: str = "shard",
    lexical: bool = True,
    notes: list[str] | None = None,
) -> list[str]:
    """Splits the live codes of ``sources`` (in order) into ``n_shards`` files of near-equal
    size in ``out_dir`` and writes a manifest; returns the shard paths. Codes keep their ids.

    Before anything is written, every source's checksums are verified (a damaged one raises
    IndexFormatError) and a file given twice, or an id (or document id) in two sources, raises
    CollectionError. ``n_shards`` is capped at the number of live codes (at least 1): no empty shards.

    When every source has a docstore, the folder gets one (``<out_dir>/corpus.docs.sqlite``,
    :func:`docstore_key`) holding each document under its id, and (``lexical``) each shard its
    lexical postings file (:func:`write_lexical`) when every id fits (below 2**31); otherwise
    why is appended to ``notes``."""
    paths = [os.fspath(sources)] if isinstance(sources, (str, os.PathLike)) else [os.fspath(p) for p in sources]
    notes = [] if notes is None else notes
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    heads = [mapped.open(p) for p in paths]
    try:
        for h in heads:  # a damaged source is refused, not copied into shards with fresh checksums
            h.verify()
        bits = {h.bits for h in heads}
        total = sum(len(h) for h in heads)
        meta = dict(heads[0].metadata)
        top_id = max((int(np.max(h.ids())) for h in heads if h.npositions), default=-1)
    finally:
        for h in heads:
            h.close()
    if len(bits) != 1:
        raise ValueError(f"sources hold codes of different widths: {sorted(bits)}")
    _check_sources(paths)
    meta.pop("docstore_tag", None)  # binds the source to its docstore, not the shards
    n_shards = max(1, min(n_shards, total))
    stores = _source_stores(paths, notes)
    lex = lexical
    try:
        if stores is not None:
            _check_ext_ids(paths, stores)
        if stores is not None and lexical and top_id >= 2**31:  # (the ids of one shard then do not fit either)
            notes.append(f"no lexical index files: ids up to {top_id} do not fit the lexical index (below 2**31)")
            lex = False
        return _write_shards(paths, stores, n_shards, total, out_dir, prefix, bits.pop(), meta, lex)
    finally:
        for st in stores or []:
            st.close()


def _write_shards(
    paths: Sequence[str],
    stores: list[docstore.DocStore] | None,
    n_shards: int,
    total: int,
    out_dir: str | os.PathLike,
    prefix: str,
    bits_v: int,
    meta: dict,
    lex: bool,
) -> list[str]:
    """The writing part of :func:`shard_index` (its sources checked)."""
    os.makedirs(out_dir, exist_ok=True)
    final_store = docstore.path_for(docstore_key(out_dir))
    with contextlib.suppress(FileNotFoundError):  # never leave the documents of an earlier split
        os.unlink(final_store)
    folder_store = None
    if stores is not None:  # written under a temporary name, renamed when complete
        tmp_key = os.path.join(os.fspath(out_dir), f".corpus.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(docstore.path_for(tmp_key))
        folder_store = docstore.DocStore(tmp_key, create=True, lexical=False)
    bounds = [total * i // n_shards for i in range(n_shards + 1)]
    out: list[str] = []
    buf_c: list[np.ndarray] = []
    buf_i: list[np.ndarray] = []
    buf_s: list[np.ndarray] = []
    filled = 0

    def copied(ids: np.ndarray, src: np.ndarray):
        """(ids, texts) of a shard from the sources' docstores, each row also copied to the folder's."""
        assert stores is not None and folder_store is not None
        # a shard's ids come from one source or a few (in order): read each run from its docstore
        runs = np.flatnonzero(np.diff(src, prepend=-1, append=-1) != 0)
        for a, b in zip(runs[:-1], runs[1:], strict=True):
            for part, rows in _stored_rows(stores[int(src[a])], ids[a:b], docstore.LEXICAL_CHUNK):
                folder_store.db.executemany(
                    "INSERT INTO docs (id, ext_id, title, text, meta) VALUES (?, ?, ?, ?, ?)",
                    [(i, r.ext_id, r.title, r.text, r.meta) for i, r in zip(part, rows, strict=True)],
                )
                yield part, [doc_text(r.title, r.text) for r in rows]

    def flush(i: int) -> None:
        codes = np.concatenate(buf_c) if buf_c else np.zeros((0, bits_v // 8), np.uint8)
        ids = np.concatenate(buf_i) if buf_i else np.zeros(0, np.int64)
        src = np.concatenate(buf_s) if buf_s else np.zeros(0, np.int64)
        path = shard_path(out_dir, i, prefix)
        with contextlib.suppress(FileNotFoundError):  # never leave one of an earlier split beside new codes
            os.unlink(lexical_path(path))
        header = storage.new_header(bits_v, metadata={**meta, "shard": i, "shards": n_shards, "base": bounds[i]})
        storage.save_atomic(path, header, [(codes, ids)], int(ids.max()) if len(ids) else -1)
        if folder_store is not None:
            base = int(ids.min()) if len(ids) else 0
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if lex:
                write_lexical(lexical_path(path), copied(ids, src), mode=mode, base=base)
            else:
                for _ in copied(ids, src):
                    pass
        out.append(path)

    shard = 0
    try:
        for n, codes, ids in _live_chunks(paths):
            while len(codes):
                room = bounds[shard + 1] - filled
                take = min(room, len(codes))
                buf_c.append(codes[:take])
                buf_i.append(ids[:take])
                buf_s.append(np.full(take, n, np.int64))
                codes, ids, filled = codes[take:], ids[take:], filled + take
                if filled == bounds[shard + 1]:
                    flush(shard)
                    buf_c, buf_i, buf_s, shard = [], [], [], shard + 1
        while shard < n_shards:  # an empty shard only when there are no codes at all
            flush(shard)
            buf_c, buf_i, buf_s, shard = [], [], [], shard + 1
        if folder_store is not None:
            folder_store.commit()
            folder_store.close()
            os.chmod(folder_store.path, stat.S_IMODE(os.stat(out[0]).st_mode))  # as private as the shards
            os.replace(folder_store.path, final_store)
            folder_store = None
    finally:
        if folder_store is not None:  # failed: no half-written docstore is left
            folder_store.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder_store.path)
    write_manifest(out_dir, out, bits_v, meta)
    return out


def write_manifest(out_dir, shard_paths: Sequence[str], bits: int, metadata: dict) -> str:
    """Writes ``out_dir``'s manifest (shard paths relative to it), atomically and durably."""
    path = os.path.join(os.fspath(out_dir), MANIFEST)
    rel = [os.path.relpath(p, os.fspath(out_dir)) for p in shard_paths]
    write_atomic(path, json.dumps({"bits": bits, "shards": rel, "metadata": metadata}, indent=1))
    return path


def read_manifest(path: str | os.PathLike) -> tuple[list[str], dict]:
    """(shard paths, manifest) of a manifest file or the folder holding one. Shard paths must be
    relative and stay inside the manifest's folder (no absolute paths, no ``..``): a manifest
    from elsewhere cannot make a reader open other files. A bad manifest raises ``ValueError``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (ValueError, RecursionError) as e:  # JSON syntax, not UTF-8, absurd nesting
        raise ValueError(f"{path}: not a bne shard manifest ({type(e).__name__}: {e})") from None
    if (
        not isinstance(m, dict)
        or not isinstance(m.get("shards"), list)
        or not m["shards"]
        or type(m.get("bits")) is not int
        or not isinstance(m.get("metadata", {}), dict)
    ):
        raise ValueError(f'{path}: not a bne shard manifest (needs "bits", a list of "shards" and a "metadata" object)')
    folder = os.path.dirname(os.path.abspath(path))
    out = []
    for p in m["shards"]:
        if not isinstance(p, str) or not p or "\0" in p:
            raise ValueError(f"{path}: shard entry {p!r} is not a file name")
        norm = os.path.normpath(p)
        if os.path.isabs(p) or norm in (".", "..") or norm.startswith(".." + os.sep):
            raise ValueError(
                f"{path}: shard path {p!r} leaves the manifest's folder; shard paths must be relative "
                f"to it, without '..'"
            )
        out.append(os.path.join(folder, norm))
    return out, m


def shard_done(path: str, expected: int, model: ModelRef) -> bool:
    """A shard file present with the right model, bits and count: written completely before
    (saves are atomic), so a resumed build skips it."""
    if not os.path.exists(path):
        return False
    try:
        idx = mapped.open(path)
    except (ValueError, OSError):
        return False
    meta = idx.metadata
    ok = (
        idx.bits == model.bits
        and (meta.get("model"), meta.get("model_sha256", "")) == (model.name, model.sha256)
        and len(idx) == expected
    )
    idx.close()
    return ok


# -- lexical postings files ---------------------------------------------------------------------

LEXICAL_SUFFIX = ".lex.sqlite"


def lexical_path(shard: str | os.PathLike) -> str:
    """The lexical postings file of a shard file: ``<shard file>.lex.sqlite``."""
    return os.fspath(shard) + LEXICAL_SUFFIX


def _clean_lexical_temps(path: str) -> None:
    """Removes what a killed :func:`write_lexical` left (its temporary file and journal), unless
    the process that wrote them is still running."""
    folder, name = os.path.split(path)
    for tmp in glob.glob(os.path.join(glob.escape(folder or "."), "." + glob.escape(name) + ".*.tmp*")):
        pid = os.path.basename(tmp)[len(name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or not tmp.endswith((".tmp", ".tmp-journal")):
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive: another writer's file
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_lexical(
    path: str | os.PathLike,
    chunks: Iterable[tuple[Sequence[int], Sequence[str]]],
    *,
    mode: int | None = None,
    base: int = 0,
) -> int:
    """Writes a complete lexical postings file at ``path`` from (ids, texts) chunks (ids distinct, in
    [base, base + 2**31); texts as :func:`bne.corpus.doc_text` makes them); returns the documents
    written. The file holds ``id - base`` and records ``base`` (``lexp_meta.id_base``): its scorer
    keeps arrays over the ids it holds, so a shard far into a big collection pays for its own ids
    only, not for every id before it.

    As durable as a docstore (rollback journal, ``synchronous=FULL``) and atomic: it is written under
    a temporary name, marked complete (``lexp_meta.ready = 1``) in its only commit, then renamed
    over ``path``; a killed writer leaves no file that looks complete. ``mode``: permission bits."""
    path = os.fspath(path)
    _clean_lexical_temps(path)
    n = 0
    with replacing(path) as tmp:
        conn = sqlite3.connect(tmp)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA synchronous=FULL")
            lexical_segments.create(conn)
            for ids, texts in chunks:
                lexical_segments.insert(conn, [int(i) - base for i in ids], texts)
                n += len(ids)
            conn.execute("INSERT INTO lexp_meta VALUES ('ready', 1), ('id_base', ?)", (int(base),))
            conn.commit()
        finally:
            conn.close()
        if mode is not None:
            os.chmod(tmp, mode)
    return n


def open_lexical(path: str | os.PathLike) -> sqlite3.Connection:
    """A read-only connection to a complete lexical postings file, opened as data: ``mode=ro``,
    ``trusted_schema=OFF``, and exactly the tables of :data:`lexical_segments.EXPECTED_SCHEMA`
    (a trigger, view or any other object is refused). A missing file raises FileNotFoundError;
    any other problem DocStoreError, in one line naming the file."""
    path = os.fspath(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block sqlite's open forever
        raise DocStoreError(f"lexical index {path}: not a regular file")
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        conn.text_factory = lambda b: b.decode("utf-8", "replace")
        conn.execute("PRAGMA trusted_schema=OFF")
        conn.execute("PRAGMA cell_size_check=ON")
        found = {}
        for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master"):
            if str(name).startswith(("sqlite_autoindex_", "sqlite_stat")):
                continue
            expected = lexical_segments.EXPECTED_SCHEMA.get((kind, name))
            if expected is None or " ".join((sql or "").split()) != " ".join(expected.split()):
                raise DocStoreError(
                    f"lexical index {path} holds a {kind} {name!r} that bne did not write; refusing to use it"
                )
            found[kind, name] = True
        if len(found) != len(lexical_segments.EXPECTED_SCHEMA):
            raise DocStoreError(f"lexical index {path} is not a bne lexical index (tables missing)")
        row = conn.execute("SELECT v FROM lexp_meta WHERE k = 'ready'").fetchone()
        if row is None or row[0] != 1:
            raise DocStoreError(f"lexical index {path} is incomplete; build the folder again")
    except (sqlite3.DatabaseError, DocStoreError, UnicodeDecodeError) as e:
        if conn is not None:
            conn.close()
        if isinstance(e, DocStoreError):
            raise
        msg = "damaged" if isinstance(e, UnicodeDecodeError) else " ".join(str(e).split())
        raise DocStoreError(f"cannot open lexical index {path}: {msg}") from None
    return conn


def lexical_base(conn: sqlite3.Connection) -> int:
    """What :func:`write_lexical` subtracted from every id of the file (add it to its results)."""
    row = conn.execute("SELECT v FROM lexp_meta WHERE k = 'id_base'").fetchone()
    return int(row[0]) if row else 0


def lexical_ids(conn: sqlite3.Connection) -> np.ndarray:
    """Every (global) id a lexical postings file written by :func:`write_lexical` holds, ascending."""
    parts = [np.frombuffer(b, np.int32) for (b,) in conn.execute("SELECT ids FROM lexp_seg")]
    ids = np.sort(np.concatenate(parts).astype(np.int64)) if parts else np.zeros(0, np.int64)
    return ids + lexical_base(conn)


def lexical_info(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(documents, lowest id, highest id) of a lexical postings file; ids (-1, -1) when empty."""
    n = conn.execute("SELECT v FROM lexp_meta WHERE k = 'n_docs'").fetchone()
    ids = lexical_ids(conn)
    return (int(n[0]) if n else 0), (int(ids[0]) if len(ids) else -1), (int(ids[-1]) if len(ids) else -1)


def lexical_done(path: str | os.PathLike, expected: int) -> bool:
    """A complete lexical file of ``expected`` documents is at ``path`` (a resumed build keeps it)."""
    try:
        conn = open_lexical(path)
    except (OSError, DocStoreError):
        return False
    try:
        return lexical_info(conn)[0] == expected
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()
