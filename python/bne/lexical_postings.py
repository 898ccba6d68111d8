"""Exact BM25 top-k over our own postings in SQLite (issue 17; docs/HYBRID_RESEARCH.md sections 7-8).

FTS5 calls ``bm25()`` on every matching row of an OR query (seconds at 1M documents); this keeps the
postings as compact blobs and scores them in C++ (``bne._core.bm25_search``, MaxScore, exact). Kept
from FTS5: **one transaction** (``bne.lexical_segments.insert`` / ``delete`` only execute on the caller's
connection); **its tokens** (texts are tokenised by a temporary in-memory FTS5 table with
``bne.lexical.TOKENIZER``, so terms, stems, lengths and the scores are ``bne.lexical``'s: k1 = 1.2,
b = 0.75, FTS5's idf); **deletes** (given the row's text, its tokens leave df, N and the total length
exactly; the (id, seg) pair is marked dead and ``compact`` purges it; an id may come back);
**shards** (:func:`local_stats` / ``bne.lexical.merge_stats`` / ``stats=``).

Each insert call writes one segment, rows ``(seg, term) -> (df, ids, tfs)`` appended at the end of
the b-tree (ids: uint16 gaps where they fit, else int32; tfs: uint8 where they fit, else uint16);
segments of one level are merged F at a time (tiered, as Lucene). Each quoted query term
(``bne.lexical.query_terms``) adds its score, as FTS5's OR query does; a word FTS5 would split into
several tokens is scored as those tokens OR-ed. The write side (segments, merges, deletes, the
blob format) is :mod:`bne.lexical_segments`; this module reads and scores.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from . import _core, lexical
from .lexical import Allowed, Stats, idf
from .lexical_segments import _live, tokenize

PRUNE_MIN_POSTINGS = 2048  # MaxScore checks only before terms with more postings than this (left to score)
CACHE_MB = 256  # a Searcher's postings cache (raw blobs of the terms last queried); BNE_LEXICAL_CACHE_MB overrides
# --- query ----------------------------------------------------------------------------------------


def query_tokens(conn: sqlite3.Connection, terms: Sequence[str]) -> list[list[str]]:
    """Each quoted query term's index tokens (stemmed by FTS5's tokenizer)."""
    _check_terms(terms)
    out: list[list[str]] = [[] for _ in terms]
    if terms:
        was = conn.in_transaction
        for term, i, _ in tokenize(conn, range(len(terms)), [t[1:-1].replace('""', '"') for t in terms]):
            out[i].append(term)
        if not was and conn.in_transaction:  # the temp table's implicit BEGIN: left open, it would pin
            conn.commit()  # the snapshot and (rollback journal) hold a lock that blocks writers
    return out


def _check_terms(terms: Sequence[str]) -> None:
    if any(not (isinstance(t, str) and len(t) >= 2 and t[0] == t[-1] == '"') for t in terms):
        raise ValueError("lexical_postings: terms come from bne.lexical.query_terms (each double-quoted)")


Rows = list[tuple[int, int, bytes, bytes]]  # (seg, df, docs, tfs) of one token, one row per segment
Plan = list[tuple[float, Rows, str]]  # (bound = weight, rows, quoted term) per query token, largest bound first
# a cached token: (live df, rows, the (segment, nonce) pairs its rows were read for, bytes counted)
Entry = tuple[int, Rows, frozenset[tuple[int, int]], int]

FEW_ALLOWED = 256  # an allow-list of at most this many ids reads only its segments (= bm25.cpp's kFewAllowed)

_KNORM_KEYS = itertools.count(1)  # names each knorm array made in this process (C++ workers keep a copy by key)


def _cache_bytes() -> int:
    raw = os.environ.get("BNE_LEXICAL_CACHE_MB", "")
    try:
        return int(float(raw) * 2**20) if raw.strip() else CACHE_MB * 2**20
    except ValueError:
        raise ValueError(f"BNE_LEXICAL_CACHE_MB must be a number of megabytes, got {raw[:40]!r}") from None


def _knorm(dl: np.ndarray, avg: float) -> np.ndarray:
    """k1 (1 - b + b dl / avg) per id, in place in one new array (no temporaries: it is redone after
    every write); the same operations in the same order as the formula, so the same bits."""
    k = np.multiply(dl, lexical.B)
    k /= avg
    k += 1 - lexical.B
    k *= lexical.K1
    return k


def _size(rows: Rows) -> int:
    return 200 + sum(len(x[2]) + len(x[3]) + 150 for x in rows)  # with the objects' own overhead


class Searcher:
    """BM25 over one connection's postings. The per-id arrays and the postings cache follow the
    database (another connection's commit or this connection's own writes: every write sets
    ``lexp_meta.version`` anew) without starting over: a segment never changes once written, so a
    cached token keeps its rows of the segments that still exist and reads only those of the new
    ones (and its deleted-df) when next used; appends extend the id arrays (a delete or a merge
    reloads them). Segments read while this connection may hold uncommitted writes (a
    transaction with changes since it was last seen idle) are not trusted past that state: a
    rolled-back segment's number is used again by the next write.

    Thread safe: every SQLite read and cache update holds a lock; the scoring itself runs in C++
    (``bne._core.bm25_search``) without the GIL and without the lock, on arrays that a reload
    replaces rather than changes. ``cache_mb`` (default ``CACHE_MB``, or ``BNE_LEXICAL_CACHE_MB``)
    bounds the raw posting blobs kept between queries (least recently used out first, a second
    chance for those that were hit): the common terms, whose blobs are most of a query's SQLite
    reads, stay in memory. Query words are tokenised on a private in-memory connection, so a
    search never writes to ``conn`` (not even its temp schema)."""

    def __init__(self, conn: sqlite3.Connection, cache_mb: float | None = None) -> None:
        self.conn = conn
        self.cache_bytes = _cache_bytes() if cache_mb is None else int(cache_mb * 2**20)
        self._lock = threading.RLock()
        self._tok = sqlite3.connect(":memory:", check_same_thread=False)  # used under the lock
        self._key: int | None = None
        self._knorm: tuple[float, np.ndarray, int] | None = None  # (avgdl, knorm, its key)
        self._cache: OrderedDict[str, Entry] = OrderedDict()
        self._cache_used = 0
        self._hits: dict[str, int] = {}  # cache hits of a cached token (0-3): its second chances
        self._tokens: dict[str, list[str]] = {}  # quoted term -> tokens (the tokenizer never changes)
        self._nonces = itertools.count(1)
        self._segmap: dict[int, int] = {}  # segment -> the nonce it was first read under
        self._state: frozenset[tuple[int, int]] = frozenset()
        self._tentative: set[int] = set()  # nonces of segments read in a state that may be rolled back
        # conn.total_changes when conn was last seen with no transaction open (None: not yet)
        self._quiet: int | None = None if conn.in_transaction else conn.total_changes
        self._sure = False  # the state being read is committed (set by _snapshot)
        self._dead_n = -1  # lexp_dead rows when the id arrays were built
        self._arrays_sure = False
        # live segment and length of each id (-1 / 0: none); views of buffers with room to grow
        self._seg_live = self._seg_buf = np.zeros(0, np.int64)
        self.dl = self._dl_buf = np.zeros(0, np.float64)
        self.seg_of: np.ndarray | None = None  # int32 seg_of for the scorer; None: all postings live
        self.n_docs = self.total_len = 0
        self.segs: list[int] = []
        self.pruned_terms = 0
        self.skipped_bound = 0.0
        self.prune_min_postings = PRUNE_MIN_POSTINGS
        self.last_essential: list[str] = []

    # -- state read from SQLite (callers hold the lock) --

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """The version, the id arrays and the postings read in one read transaction (unless the
        caller has one open), so a commit of another connection between them cannot mix two states."""
        own = not self.conn.in_transaction
        if own:
            self._quiet = self.conn.total_changes  # nothing uncommitted: what conn wrote is durable
            self.conn.execute("BEGIN")
        # in the caller's transaction the state is committed unless conn changed rows since it was idle
        self._sure = own or self._quiet == self.conn.total_changes
        try:
            yield
        finally:
            if own and self.conn.in_transaction:
                self.conn.commit()

    def _refresh(self) -> None:
        row = self.conn.execute("SELECT v FROM lexp_meta WHERE k = 'version'").fetchone()
        key = int(row[0]) if row else 0
        if key == self._key:
            return
        segs = [r[0] for r in self.conn.execute("SELECT seg FROM lexp_seg ORDER BY seg")]
        old = self._segmap
        new = {}
        for sg in segs:
            u = old.get(sg)
            new[sg] = next(self._nonces) if u is None or u in self._tentative else u
        added = [sg for sg in segs if new[sg] != old.get(sg)]
        removed = any(new.get(sg) != u for sg, u in old.items())
        self._tentative = set() if self._sure else {new[sg] for sg in added}
        dead_n = int(self.conn.execute("SELECT count(*) FROM lexp_dead").fetchone()[0])
        # appends only (no segment gone, no new delete mark, both states committed): the new segments'
        # ids are added to copies of the arrays; anything else reads them all again
        if self._arrays_sure and self._sure and not removed and dead_n == self._dead_n:
            seg_live, self.dl = self._grow(added)
        else:
            seg_live, self.dl = self._seg_buf, self._dl_buf = _live(self.conn)
        self._seg_live, self._dead_n, self._arrays_sure = seg_live, dead_n, self._sure
        self._knorm = None
        self.seg_of = seg_live.astype(np.int32) if dead_n else None
        m = dict(self.conn.execute("SELECT k, v FROM lexp_meta").fetchall())
        self.n_docs, self.total_len = int(m.get("n_docs", 0)), int(m.get("total_len", 0))
        self.segs = segs
        self._segmap, self._state = new, frozenset(new.items())
        self._key = key

    def _grow(self, added: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """:func:`_live`'s arrays after the segments ``added`` (no delete marks among them). They grow
        in place, in buffers with room: only ids past the old end change (appends), and these two
        arrays are read under the lock only (the scorer gets knorm and seg_of, new arrays)."""
        if not added:
            return self._seg_live, self.dl
        ph = ",".join(map(str, added))  # integers read from our own table
        rows = self.conn.execute(f"SELECT seg, ids, lens FROM lexp_seg WHERE seg IN ({ph}) ORDER BY seg").fetchall()
        top = max((int(np.frombuffer(b, np.int32).max()) for _, b, _ in rows if b), default=-1)
        n0 = len(self.dl)
        size = max(n0, top + 1)
        if size > len(self._dl_buf):
            cap = size + size // 8
            sb, db = np.empty(cap, np.int64), np.empty(cap, np.float64)
            sb[:n0], db[:n0] = self._seg_live, self.dl
            self._seg_buf, self._dl_buf = sb, db
        seg_of, dl = self._seg_buf[:size], self._dl_buf[:size]
        seg_of[n0:], dl[n0:] = -1, 0
        for sg, b, lb in rows:
            ids = np.frombuffer(b, np.int32)
            up = seg_of[ids] < sg  # the newest live segment of an id wins, as in _live
            seg_of[ids[up]] = sg
            dl[ids[up]] = np.frombuffer(lb, np.int32)[up]
        return seg_of, dl

    def _postings(self, token: str, segs: Iterable[int] | None = None) -> Rows:
        segs = self.segs if segs is None else segs
        ph = ",".join(map(str, segs))  # integers read from our own table
        if not ph:
            return []
        sql = f"SELECT seg, df, docs, tfs FROM lexp_post WHERE term = ? AND seg IN ({ph})"
        return self.conn.execute(sql, (token,)).fetchall()

    def _df(self, token: str, rows: Rows) -> int:
        if not rows:
            return 0
        r = self.conn.execute("SELECT n FROM lexp_deldf WHERE term = ?", (token,)).fetchone()
        return sum(x[1] for x in rows) - (int(r[0]) if r else 0)

    def _lists(self, token: str) -> tuple[int, Rows]:
        """(live df, rows) of a token, from the cache (brought up to date) or SQLite."""
        hit = self._cache.get(token)
        if hit is not None and hit[2] is not self._state:
            self._update([token])
            hit = self._cache.get(token)  # None if it no longer fits
        if hit is not None:
            self._cache.move_to_end(token)
            self._hits[token] = min(3, self._hits.get(token, 0) + 1)
            return hit[0], hit[1]
        rows = self._postings(token)
        df = self._df(token, rows)
        self._keep(token, df, rows, 0)
        return df, rows

    def _update(self, tokens: Iterable[str]) -> None:
        """Brings the cached entries of ``tokens`` to the current segments: the rows of the segments
        still there stay, those of the new ones are read, df is read again (a delete changes it);
        two SQL queries for all of them."""
        cur = self._state
        stale = {t: e for t in tokens if (e := self._cache.get(t)) is not None and e[2] is not cur}
        if not stale:
            return
        new: dict[str, set[int]] = {t: {sg for sg, _ in cur - e[2]} for t, e in stale.items()}
        got: dict[str, Rows] = {t: [] for t in stale}
        segs = sorted(set().union(*new.values()))
        for term, sg, df, d, tf in self._postings_many(list(stale), segs) if segs else []:
            if sg in new[term]:  # not a segment the entry already holds
                got[term].append((sg, df, d, tf))
        deleted = self._deleted(list(stale))
        for t, (_, rows, have, size) in stale.items():
            if self._cache.get(t) is not stale[t]:  # evicted meanwhile to make room for another
                continue
            keep = {sg for sg, _ in have & cur}
            rows = sorted([r for r in rows if r[0] in keep] + got[t], key=lambda r: r[0])
            df = sum(x[1] for x in rows) - deleted.get(t, 0) if rows else 0
            self._keep(t, df, rows, size)

    def _postings_many(self, tokens: list[str], segs: list[int]) -> list[tuple[str, int, int, bytes, bytes]]:
        """(term, seg, df, docs, tfs) of ``tokens`` in ``segs``."""
        out: list[tuple[str, int, int, bytes, bytes]] = []
        ph = ",".join(map(str, segs))  # integers read from our own table
        for k in range(0, len(tokens), 500):
            part = tokens[k : k + 500]
            sql = (
                f"SELECT term, seg, df, docs, tfs FROM lexp_post WHERE seg IN ({ph})"
                f" AND term IN ({','.join('?' * len(part))})"
            )
            out += self.conn.execute(sql, part).fetchall()
        return out

    def _deleted(self, tokens: list[str]) -> dict[str, int]:
        """Each token's postings in deleted rows still in the lists (``lexp_deldf``)."""
        out: dict[str, int] = {}
        for k in range(0, len(tokens), 500):
            part = tokens[k : k + 500]
            q = f"SELECT term, n FROM lexp_deldf WHERE term IN ({','.join('?' * len(part))})"
            out.update(self.conn.execute(q, part).fetchall())
        return out

    def _keep(self, token: str, df: int, rows: Rows, old_size: int) -> None:
        """Caches (or re-caches, replacing an entry of ``old_size`` bytes) a token's rows."""
        size = _size(rows)
        self._cache_used -= old_size
        if size > self.cache_bytes:
            if old_size:
                del self._cache[token]
                self._hits.pop(token, None)
            return
        self._cache[token] = (df, rows, self._state, size)
        self._cache_used += size
        while self._cache_used > self.cache_bytes:
            # least recently used out, but a second chance for one that was hit (CLOCK): queries
            # cycling through more terms than fit would evict every entry before its next use
            old_tok, old = self._cache.popitem(last=False)
            chances = self._hits.pop(old_tok, 0)
            if chances and old_tok != token:
                self._cache[old_tok] = old
                self._hits[old_tok] = chances - 1
                continue
            self._cache_used -= old[3]

    def _lists_in(self, token: str, need: set[int]) -> tuple[int, Rows, bool]:
        """(live df over all segments, rows of the segments ``need`` only, whether any segment has
        the token). With a cache, a token's rows are read whole once and kept (later queries,
        allow-list or not, find them); without, only ``need``'s blobs are read (every segment's
        df still is: the statistics stay the collection's)."""
        if self.cache_bytes > 0 or token in self._cache:
            df, rows = self._lists(token)
            return df, [r for r in rows if r[0] in need], bool(rows)
        ph = ",".join(map(str, self.segs))  # integers read from our own table
        if not ph:
            return 0, [], False
        inn = ",".join(map(str, sorted(need))) or "NULL"
        sql = (
            f"SELECT seg, df, CASE WHEN seg IN ({inn}) THEN docs END, CASE WHEN seg IN ({inn}) THEN tfs END"
            f" FROM lexp_post WHERE term = ? AND seg IN ({ph})"
        )
        got = self.conn.execute(sql, (token,)).fetchall()
        return self._df(token, got), [r for r in got if r[0] in need], bool(got)

    def _query_tokens(self, terms: Sequence[str]) -> list[list[str]]:
        _check_terms(terms)
        missing = list(dict.fromkeys(t for t in terms if t not in self._tokens))
        if missing:
            if len(self._tokens) > 100_000:  # bounded: a long-running server sees many words
                self._tokens.clear()
            self._tokens.update(zip(missing, query_tokens(self._tok, missing), strict=True))
        return [self._tokens[t] for t in terms]

    def _plan(
        self, terms: Sequence[str], stats: Stats | None, n_g: int, skip_floor: bool, need: set[int] | None = None
    ) -> tuple[Plan, float]:
        """The query's tokens with postings, by bound (largest first, stable), and the bound of the
        skipped floored-idf terms. ``need``: only these segments' rows (df stays the collection's)."""
        plan: Plan = []
        skipped = 0.0
        for t, toks in zip(terms, self._query_tokens(terms), strict=True):
            for tok in toks:
                if need is None:
                    df, rows = self._lists(tok)
                    anywhere = bool(rows)
                else:
                    df, rows, anywhere = self._lists_in(tok, need)
                if not anywhere:
                    continue
                if stats is not None:
                    df = stats.df.get(t, 0)
                if df > 0 and skip_floor and idf(n_g, df) <= 1e-6:
                    skipped += 1e-6 * (lexical.K1 + 1)
                elif df > 0:
                    plan.append((idf(n_g, df) * (lexical.K1 + 1), rows, t))
        plan.sort(key=lambda p: -p[0])  # rarest first
        return plan, skipped

    def _prepare(
        self, queries: Sequence[Sequence[str]], stats: Stats | None, skip_floor: bool
    ) -> tuple[list[Plan], tuple[np.ndarray, int], np.ndarray | None, float]:
        """Under the lock: each query's plan, and the arrays the scoring reads ((knorm, key), seg_of)."""
        plans, knorm, seg_of, skipped, _, _ = self._prepare_allowed(queries, stats, skip_floor, None)
        return plans, knorm, seg_of, skipped

    def _prepare_allowed(
        self, queries: Sequence[Sequence[str]], stats: Stats | None, skip_floor: bool, allowed: Allowed | np.ndarray
    ) -> tuple[
        list[Plan], tuple[np.ndarray, int], np.ndarray | None, float, np.ndarray | None, Callable[[int], bool] | None
    ]:
        """:meth:`_prepare`, and ``allowed`` as (mask, predicate) (:func:`_allowed`). A mask of at most
        ``FEW_ALLOWED`` ids reads only the rows of the segments that hold them."""
        with self._lock, self._snapshot():
            self._refresh()
            mask, admit = _allowed(allowed, len(self.dl))
            n_g, avg = (
                (self.n_docs, self.total_len / max(1, self.n_docs)) if stats is None else (stats.n_docs, stats.avgdl)
            )
            if self.n_docs == 0 or len(self.dl) == 0 or n_g == 0 or avg == 0:
                return [[] for _ in queries], (np.zeros(0), 0), None, 0.0, mask, admit
            if self._knorm is None or self._knorm[0] != avg:  # per id, for this average length
                self._knorm = (avg, _knorm(self.dl, avg), next(_KNORM_KEYS))
            need = None
            if mask is not None:
                m = mask[: len(self.dl)]
                if np.count_nonzero(m) <= FEW_ALLOWED:
                    segs = self._seg_live[np.flatnonzero(m)]
                    need = set(segs[segs >= 0].tolist())
            self._update(tok for toks in self._query_tokens([t for q in queries for t in q]) for tok in toks)
            plans, skipped = [], 0.0
            for terms in queries:
                p, skipped = self._plan(terms, stats, n_g, skip_floor, need)
                plans.append(p)
            return plans, self._knorm[1:], self.seg_of, skipped, mask, admit

    def local_stats(self, terms: Sequence[str]) -> Stats:
        """This index's statistics for ``terms`` (quoted), as ``bne.lexical.local_stats``."""
        with self._lock, self._snapshot():
            self._refresh()
            df = {}
            for t, ts in zip(terms, self._query_tokens(terms), strict=True):
                df[t] = self._lists(ts[0])[0] if len(ts) == 1 else 0
            return Stats(self.n_docs, self.total_len, df)

    # -- search --

    def search(
        self,
        terms: Sequence[str],
        limit: int,
        stats: Stats | None = None,
        allowed: Allowed | np.ndarray = None,
        prune: bool = True,
        skip_floor: bool = False,
    ) -> list[tuple[int, float]]:
        """The best ``limit`` (id, BM25) for any of ``terms``, best first, ties by id: the ranking of
        ``bne.lexical.bm25_search`` with the same arguments.

        ``allowed``: a numpy bool mask by id (ids past its end not allowed) or a set, applied while
        scoring (MaxScore's thresholds are the allowed documents': exact and fast however few), or
        any container / predicate, which filters the ranking read 4x deeper until ``limit`` are kept.
        ``prune`` (exact either way): MaxScore; the common terms are looked up only for the documents
        that can still reach the top. ``skip_floor`` (near-exact): terms whose idf FTS5 floors at
        1e-6 are not read; every score is then low by less than ``skipped_bound``."""
        return self._run([terms], limit, stats, allowed, prune, skip_floor, 1)[0]

    def search_many(
        self,
        queries: Sequence[Sequence[str]],
        limit: int,
        stats: Stats | None = None,
        allowed: Allowed | np.ndarray = None,
        threads: int | None = None,
    ) -> list[list[tuple[int, float]]]:
        """:meth:`search` of each query (same results), the postings read once up front and the
        scoring spread over ``threads`` threads (None: bne's default thread count)."""
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
        return self._run(queries, limit, stats, allowed, True, False, threads or 0)

    def _run(
        self,
        queries: Sequence[Sequence[str]],
        limit: int,
        stats: Stats | None,
        allowed: Allowed | np.ndarray,
        prune: bool,
        skip_floor: bool,
        threads: int,
    ) -> list[list[tuple[int, float]]]:
        if limit < 1:
            return [[] for _ in queries]
        plans, (knorm, key), seg_of, self.skipped_bound, mask, admit = self._prepare_allowed(
            queries, stats, skip_floor, allowed
        )
        todo = [k for k, p in enumerate(plans) if p]
        out: list[list[tuple[int, float]]] = [[] for _ in queries]
        want = limit
        while todo:
            res = _core.bm25_search(
                [[(w, rows) for w, rows, _ in plans[k]] for k in todo],
                knorm,
                seg_of,
                mask,
                want,
                prune,
                self.prune_min_postings,
                threads,
                key,
            )
            again = []
            for k, (ids, scores, cut) in zip(todo, res, strict=True):
                got = list(zip(ids.tolist(), scores.tolist(), strict=True))
                if admit is not None:
                    kept = [r for r in got if admit(r[0])]
                    if len(kept) < limit and len(got) == want:  # the filter dropped too many: read deeper
                        again.append(k)
                        continue
                    got = kept
                out[k] = got[:limit]
                # for tests and benchmarks: terms scored for candidates only, and the terms scored fully
                self.pruned_terms, self.last_essential = len(plans[k]) - cut, [p[2] for p in plans[k][:cut]]
            todo, want = again, want * 4
        return out


def _allowed(allowed: Allowed | np.ndarray, n: int) -> tuple[np.ndarray | None, Callable[[int], bool] | None]:
    """(bool mask by id for the C++ scorer, or None; predicate to filter its results with, or None)."""
    if allowed is None:
        return None, None
    if isinstance(allowed, np.ndarray):
        if allowed.dtype != np.bool_ or allowed.ndim != 1:
            raise ValueError(
                f"allowed: a numpy array must be a 1-D bool mask indexed by id, got dtype {allowed.dtype} "
                f"and shape {allowed.shape}"
            )
        return np.ascontiguousarray(allowed), None
    if isinstance(allowed, (set, frozenset)):
        try:
            ids = np.fromiter(allowed, np.int64, len(allowed))
        except (TypeError, ValueError, OverflowError):  # not all integers: filter with the set itself
            return None, allowed.__contains__
        mask = np.zeros(n, np.bool_)
        mask[ids[(ids >= 0) & (ids < n)]] = True
        return mask, None
    return None, lexical._admit(allowed)


def local_stats(conn: sqlite3.Connection, terms: Sequence[str]) -> Stats:
    return Searcher(conn, cache_mb=0).local_stats(terms)


def bm25_search(
    conn: sqlite3.Connection,
    terms: Sequence[str],
    limit: int,
    stats: Stats | None = None,
    allowed: Allowed | np.ndarray = None,
    prune: bool = True,
) -> list[tuple[int, float]]:
    """One-off search (a :class:`Searcher` kept across queries avoids reloading the id arrays and
    keeps the common terms' postings in memory)."""
    return Searcher(conn, cache_mb=0).search(terms, limit, stats, allowed, prune)
