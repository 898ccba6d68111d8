"""One search call, three modes (issue 17): ``dense`` (the query's code, Hamming distance, then
``rescore`` when asked), ``lexical`` (BM25 over the docstore's own postings,
:mod:`bne.lexical_postings`) and ``hybrid`` (reciprocal rank fusion of the two lists,
:func:`bne.lexical.rrf_fuse`). :meth:`bne.Collection.search` calls :func:`search`; this module owns
the query path, :class:`Lexical` the collection's lexical side.

* Query text is data: :func:`bne.lexical.query_terms` keeps runs of letters and digits, quoted, so
  nothing in a query is SQL or FTS5 syntax. A query without an indexable term gets the dense ranking
  in hybrid mode and no hits (with a note) in lexical mode.
* Removed documents and an allow-list filter both sides: the lexical side gets a mask by id built
  from the index's live ids (cached per index snapshot, so ``Collection.refresh`` moves it on).
* The lexical side runs on a worker thread while the query is encoded and the codes are searched,
  so on two cores a hybrid search costs about the slower side, not the sum.
* The docstore is read through one read-only connection kept for the collection's lifetime; each
  batch of queries is one read transaction (a consistent view; a writer waits for it at most as long
  as the batch's lexical search), ended before the call returns.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import lexical, lexical_postings
from .docstore import DocStore, StoredDoc, path_for
from .encoder.base import CodeEncoder, search_codes
from .errors import CollectionError, DocStoreError
from .index import integer_array, lookup_ids

MODES = ("hybrid", "dense", "lexical")
Ranked = list[list[tuple[int, float]]]  # per query: (id, BM25 score), best first
MAX_DEPTH = 100_000
# how to add the lexical index to a collection that has none (lexstore's `bne build --append` backfills it)
FIX = "`bne build --append -o {path}` adds it"
FIX_SHARDED = "rebuild it with `bne build --ray` to add it"


@dataclass
class Hit:
    """One search result: the index's id, the stored document (empty fields when the docstore is
    missing), the Hamming distance of its code to the query's, its BM25 score (None when it was not
    in the lexical list), its rank in each side's list (1-based, None when not in it) and
    ``score``: the fused RRF score (hybrid), the rescored similarity (dense with ``rescore``,
    else None) or the BM25 score (lexical)."""

    rank: int
    id: int
    doc_id: str
    title: str
    text: str
    meta: str
    distance: int | None = None
    score: float | None = None
    bm25: float | None = None
    dense_rank: int | None = None
    lexical_rank: int | None = None


@dataclass
class SearchResult:
    hits: list[list[Hit]]
    encode_ms: float
    search_ms: float
    codes: int  # codes searched
    warning: str | None = None  # the docstore could not be read: ids only
    mode: str = "dense"  # the mode the call ran in
    note: str | None = None  # why the default mode fell back to dense (no lexical index), once per call
    modes: list[str] = field(default_factory=list)  # per query: "dense" for a hybrid query without a word


# -- arguments ------------------------------------------------------------------------------------


def check_options(
    mode: str | None,
    rrf_k: float,
    depth: int,
    weights: Sequence[float] | None,
    fusion: str = "rrf",
    rescore: int | None = None,
) -> tuple[float, float]:
    """Raises ValueError naming a bad option; returns the weights as two floats (None: the fusion's
    defaults, ``bne.lexical.WEIGHTS`` or ``LINEAR_WEIGHTS``)."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)} (or None: hybrid where ready), got {mode!r}")
    if fusion not in lexical.FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(lexical.FUSIONS)}, got {fusion!r}")
    if weights is None:
        weights = lexical.default_weights(fusion)
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, (int, float)) or not math.isfinite(rrf_k) or rrf_k < 0:
        raise ValueError(f"rrf_k must be a finite number >= 0, got {rrf_k!r}")
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be a whole number in 1..{MAX_DEPTH}, got {depth!r}")
    if rescore is not None and (isinstance(rescore, bool) or not isinstance(rescore, (int, np.integer)) or rescore < 1):
        # 0 or a negative number would otherwise mean "no rescore" or "a few" in silence
        raise ValueError(f"rescore must be None or a whole number >= 1 (candidates to re-rank), got {rescore!r}")
    try:
        w = tuple(float(x) for x in weights)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be two numbers (dense, lexical), got {weights!r}") from None
    if len(w) != 2 or not all(math.isfinite(x) and x >= 0 for x in w) or w == (0.0, 0.0):
        raise ValueError(f"weights must be two finite numbers >= 0, not both 0 (dense, lexical), got {weights!r}")
    return w[0], w[1]


def allow_ids(allow: object) -> np.ndarray | None:
    """An allow-list (a list, set, range, generator or 1-D array of ids; not a mask: both sides
    index by id) as sorted unique int64 ids. Ids outside 0..2**63-1 match no document, as in
    ``Index.search(allow=...)``."""
    if allow is None:
        return None
    try:
        a = integer_array(allow, "allow")
    except TypeError:
        raise TypeError("allow must be integer ids: a list, set, range or 1-D int array (not a bool mask)") from None
    if a.ndim > 1:
        raise TypeError(f"allow must be a 1-D list or array of integer ids, got shape {a.shape}")
    ids = lookup_ids(a)
    return np.unique(ids[ids >= 0])


# -- the lexical side -----------------------------------------------------------------------------


class Lexical:
    """A collection's lexical side: one read-only docstore connection and its
    :class:`lexical_postings.Searcher` (opened on first use, reopened when the file was replaced),
    a worker thread for searching beside the dense side, and the mask of live ids. Thread-safe."""

    def __init__(self, key: str) -> None:
        self.key = key  # docstore.path_for(key) is the file
        self._lock = threading.RLock()
        self._store: DocStore | None = None
        self._ident: tuple[int, int] | None = None
        self._searcher: lexical_postings.Searcher | None = None
        self._mask: tuple[weakref.ref[Any], np.ndarray] | None = None

    @property
    def path(self) -> str:
        return path_for(self.key)

    def _open(self) -> DocStore:
        if self._store is None:
            store = DocStore(self.key, threaded=True)  # FileNotFoundError / DocStoreError: not cached
            st = os.stat(self.path)
            self._store, self._ident = store, (st.st_dev, st.st_ino)
            self._searcher = lexical_postings.Searcher(store.db)
        return self._store

    def status(self) -> tuple[str | None, bool]:
        """(None when the lexical index is ready, else why not, in one line; whether building the
        lexical index is the fix, as opposed to a missing or unreadable docstore)."""
        with self._lock:
            try:
                store = self._open()
                if store.lexical_ready:
                    return None, False
                if store.has_lexical:
                    return f"{self.path}: its lexical index is incomplete", True
                return f"{self.path} has no lexical index", True
            except (FileNotFoundError, DocStoreError) as e:
                return str(e), False

    def refresh(self) -> None:
        """Reopens the docstore on the next use when the file at its path was replaced."""
        with self._lock:
            if self._store is None:
                return
            try:
                st = os.stat(self.path)
                same = (st.st_dev, st.st_ino) == self._ident
            except OSError:
                same = False
            if not same:
                self._close_store()

    def live_mask(self, index: Any) -> np.ndarray:
        """True at each id the index can return (tombstones excluded), cached per index snapshot."""
        snap = getattr(index, "_snap", index)  # a MappedIndex reads through its current snapshot
        with self._lock:
            if self._mask is not None and self._mask[0]() is snap:
                return self._mask[1]
        ids = snap.ids()
        removed = snap.removed_positions()
        if len(removed):
            keep = np.ones(len(ids), bool)
            keep[removed] = False
            ids = ids[keep]
        # the lexical side returns docstore row ids: the mask need not reach past the last row (an
        # index written through the API may hold huge ids; the mask must not be that large)
        with self._lock:
            top = self._open().max_id()
        ids = ids[(ids >= 0) & (ids <= top)]
        mask = np.zeros(int(ids.max()) + 1 if len(ids) else 0, bool)
        mask[ids] = True
        mask.flags.writeable = False
        with self._lock:
            self._mask = (weakref.ref(snap), mask)
        return mask

    def search(self, terms: list[list[str]], limit: int, allowed: np.ndarray | None) -> Ranked:
        with self._lock:
            self._open()
            assert self._store is not None and self._searcher is not None
            db = self._store.db
            try:
                # one read transaction: every query sees one commit, and the shared lock is let go
                # before returning (the Searcher's temporary tokenizer table would otherwise start
                # a transaction that holds it, and writers would wait on this reader forever)
                if db.in_transaction:
                    db.rollback()
                db.execute("BEGIN")
                out = self._searcher.search_many(terms, limit, allowed=allowed)  # the mask applies while scoring
            except sqlite3.DatabaseError as e:  # a damaged file: one line naming it
                raise DocStoreError(f"cannot read the lexical index of {self.path}: {e}") from None
            finally:
                with contextlib.suppress(Exception):
                    db.rollback()
        return out

    def _close_store(self) -> None:
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
        self._store = self._searcher = self._ident = None

    def close(self) -> None:
        with self._lock:
            self._close_store()
            self._mask = None


# -- one search call ------------------------------------------------------------------------------


def resolve_mode(coll: Any, mode: str | None) -> tuple[str, str | None]:
    """(the mode to run, the note when the default fell back to dense). Explicit hybrid / lexical
    without a ready lexical index: CollectionError naming the fix."""
    if mode == "dense":
        return mode, None
    if coll.sharded:
        ready = getattr(coll.index, "lexical_ready", False)
        why, fix = (None, "") if ready else (f"{coll.path} has no lexical index", "; " + FIX_SHARDED)
    else:
        why, fixable = coll.lexical.status()
        fix = "; " + FIX.format(path=coll.path) if fixable else ""
    if why is None:
        return mode or "hybrid", None
    if mode is not None:
        raise CollectionError(f"{mode} search: {why}{fix}")
    if not (coll.sharded or os.path.exists(coll.lexical.path)):
        return "dense", None  # no docstore at all: the search's own warning says so
    return "dense", f"{why}: dense ranking only{fix}"


def search(
    coll: Any,
    texts: Sequence[str],
    k: int,
    *,
    mode: str | None,
    rescore: int | None,
    threads: int | None,
    allow: object,
    rrf_k: float,
    depth: int,
    weights: Sequence[float] | None,
    documents: Callable[[np.ndarray], tuple[dict[int, StoredDoc], str | None]],
    fusion: str = "rrf",
) -> SearchResult:
    """:meth:`bne.Collection.search` (which documents the arguments); ``documents`` fetches the
    hits' stored documents."""
    w = check_options(mode, rrf_k, depth, weights, fusion, rescore)
    if isinstance(texts, str):  # as the encoder's own check, in the caller's words
        raise TypeError("search takes a list of query texts; wrap a single text as [text]")
    texts = CodeEncoder._check_texts(texts)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    # one snapshot for the whole call (dense search, live mask, distances of lexical-only hits): a
    # refresh() in another thread meanwhile must not mix two commits in one result
    index = coll.index if coll.sharded else getattr(coll.index, "_snap", coll.index)
    allowed_ids = allow_ids(allow)
    if allowed_ids is not None and coll.sharded:
        raise CollectionError(f"{coll.path}: allow is not supported on a folder of shards")
    run, note = resolve_mode(coll, mode)
    n = max(len(index), 1)  # more hits than codes would only be padding
    k = min(int(k), n)
    side = k if run != "hybrid" else min(max(int(depth), k), n)  # each side's list: at least k
    if rescore is not None and coll.sharded and run != "lexical":  # shards answer in Hamming distance
        note = "; ".join(x for x in (note, "rescore is not available on a folder of shards: Hamming ranking") if x)
    rescore = rescore if rescore and not coll.sharded else None
    t0 = time.perf_counter()

    # the lexical side of one collection runs after the dense side, not beside it: on a few cores
    # the query encoder's threads and BM25's slowed each other (1M documents, 2 cores: hybrid 1.66x
    # dense beside, 1.49x after, at nq = 100; equal at nq = 1); a folder of shards works remotely
    lex_future: Any = None
    terms: list[list[str]] = []
    if run in ("hybrid", "lexical"):
        terms = [lexical.query_terms(t, repeats=True) for t in texts]
        if any(terms):
            if coll.sharded:
                lex_future = _sharded(index, terms, side)
            else:
                mask = coll.lexical.live_mask(index)
                if allowed_ids is not None:
                    mask = mask & _id_mask(allowed_ids, len(mask))
                lex_future = _Deferred(lambda: coll.lexical.search(terms, side, mask))

    codes = None
    dense_ids: list[np.ndarray] = [np.empty(0, np.int64)] * len(texts)
    dense_val: list[np.ndarray] = [np.empty(0)] * len(texts)
    t1 = t0
    try:
        if run != "lexical" and texts:
            codes, logits = coll.encoder("query").encode(texts, return_logits=True, show_progress=False)
            t1 = time.perf_counter()
            if allowed_ids is not None and not len(allowed_ids):
                pass  # nothing is allowed: no hits
            else:
                kw: dict[str, Any] = {} if coll.sharded else {"threads": threads}
                if allowed_ids is not None:
                    kw["allow"] = allowed_ids
                D, ids = search_codes(index, codes, logits, side, rescore=rescore, **kw)
                keep = [ids[q] >= 0 for q in range(len(texts))]
                dense_ids = [ids[q][keep[q]] for q in range(len(texts))]
                dense_val = [D[q][keep[q]] for q in range(len(texts))]
        lex = lex_future.result() if lex_future is not None else [[] for _ in texts]
    except BaseException:
        if lex_future is not None:
            lex_future.cancel()
        raise
    t2 = time.perf_counter()

    if run == "lexical" and not any(terms) and texts:
        note = "no query has a word to search for: no hits (lexical mode)"
    rows: list[list[tuple[int, int | None, float | None, float | None, int | None, int | None]]] = []
    modes = []
    for q in range(len(texts)):
        di, dv = dense_ids[q], dense_val[q]
        lx = lex[q] if q < len(lex) else []
        if run == "dense" or (run == "hybrid" and not terms[q]):
            modes.append("dense")
            rows.append(
                [
                    (int(i), None if rescore else int(v), float(v) if rescore else None, None, r + 1, None)
                    for r, (i, v) in enumerate(zip(di[:k], dv[:k], strict=True))
                ]
            )
        elif run == "lexical":
            modes.append("lexical")
            rows.append([(i, None, s, s, None, r + 1) for r, (i, s) in enumerate(lx[:k])])
        else:
            modes.append("hybrid")
            dist = {} if rescore else {int(i): int(v) for i, v in zip(di, dv, strict=True)}
            bm25 = dict(lx)
            if fusion == "linear":  # higher is better on both sides: minus the distance, or the rescore
                dense_scored = list(zip(di.tolist(), (dv if rescore else -dv).tolist(), strict=True))
                fused = lexical.linear_fuse(dense_scored, lx, weights=w, limit=k)
            else:
                fused = lexical.rrf_fuse(di.tolist(), [i for i, _ in lx], k=rrf_k, weights=w, limit=k)
            rows.append([(f.id, dist.get(f.id), f.score, bm25.get(f.id), f.dense_rank, f.lexical_rank) for f in fused])
    if codes is not None and not coll.sharded:
        _fill_distances(index, codes, rows)
    found = np.array(sorted({r[0] for row in rows for r in row}), np.int64)
    docs, warning = documents(found)
    gone = {int(i) for i in found} - docs.keys() if warning is None else set()
    if gone:  # removed by a commit newer than this reader's snapshot (or never stored): no text, no own id
        rows = [[r for r in row if r[0] not in gone] for row in rows]
        left_out = (
            f"{len(gone)} hit(s) left out: not in the docstore (removed by a commit newer than this "
            "reader's: refresh() to search it; or codes added without their documents)"
        )
        note = "; ".join(x for x in (note, left_out) if x)
    hits = []
    for row in rows:
        out = []
        for rank, (i, dist_, score, bm, dr, lr) in enumerate(row, 1):
            d = docs.get(i) or StoredDoc(str(i), "", "", "")
            out.append(Hit(rank, i, d.ext_id, d.title, d.text, d.meta, dist_, score, bm, dr, lr))
        hits.append(out)
    return SearchResult(hits, (t1 - t0) * 1e3, (t2 - t1) * 1e3, len(index), warning, run, note, modes)


def _id_mask(ids: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, bool)
    out[ids[(ids >= 0) & (ids < n)]] = True
    return out


def _fill_distances(index: Any, codes: np.ndarray, rows: list[list[tuple]]) -> None:
    """The Hamming distance of each hit whose distance is unknown (lexical-only, or rescored)."""
    for q, row in enumerate(rows):
        missing = [j for j, r in enumerate(row) if r[1] is None]
        if not missing:
            continue
        ids = np.array([row[j][0] for j in missing], np.int64)
        cand = index.reconstruct(ids)
        d = np.bitwise_count(np.bitwise_xor(cand, codes[q][None, :])).sum(axis=1, dtype=np.int64)
        for j, dj in zip(missing, d, strict=True):
            row[j] = (row[j][0], int(dj), *row[j][2:])


class _Deferred:
    """A local lexical search run when its result is asked for (after the dense side)."""

    def __init__(self, work: Callable[[], Ranked]) -> None:
        self.work = work

    def result(self) -> Ranked:
        return self.work()

    def cancel(self) -> None:
        pass


def _sharded(index: Any, terms: list[list[str]], limit: int) -> concurrent.futures.Future[Ranked]:
    """The shards' lexical search (collection-wide statistics), beside the dense side."""
    fut: concurrent.futures.Future[Ranked] = concurrent.futures.Future()

    def work() -> None:
        try:
            fut.set_result(index.lexical_search(terms, limit, None))
        except BaseException as e:  # handed to the caller's thread
            fut.set_exception(e)

    threading.Thread(target=work, name="bne-lexical-shards", daemon=True).start()
    return fut
