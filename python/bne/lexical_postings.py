"""Prototype (issue 17): exact BM25 top-k over our own postings in SQLite, scored with numpy.

FTS5 ranks an OR query by calling ``bm25()`` on every matching row (seconds at 1M documents,
docs/HYBRID_RESEARCH.md section 7); this keeps the postings as numpy-ready blobs instead and scores a
query's terms with a few vectorised passes. What FTS5 gave is kept:

* **same transaction**: :func:`insert` / :func:`delete` only execute statements on the caller's
  connection; the caller commits them with the docstore rows.
* **same tokens**: texts are tokenised by FTS5 itself (a temporary in-memory ``fts5`` table with
  ``bne.lexical.TOKENIZER`` and its ``fts5vocab`` instance view), so terms, stems and document
  lengths are exactly what ``bne.lexical`` indexes, and the scores are FTS5's ``bm25()`` (k1 = 1.2,
  b = 0.75, its idf).
* **segments**: each insert call writes one segment, rows ``(seg, term) -> (df, ids, tfs)`` appended
  at the end of a ``(seg, term)`` b-tree, so a commit never rewrites old blobs (ids: uint16 gaps
  where they fit, else int32; tfs: uint8 where they fit, else uint16). Segments of one level are
  merged F at a time (tiered, as Lucene): 1M documents in 2,048-document commits make 13 segments,
  and every posting is rewritten about log_F(N / batch) times.
* **deletes**: given the row's text (as a contentless FTS5 table needs), the row's tokens are
  subtracted from the statistics (exact df, N, total length) and the (id, seg) pair is marked dead,
  so its postings are skipped; :func:`compact` purges them. An id may be inserted again after delete.
* **shards**: :func:`local_stats` / ``bne.lexical.merge_stats`` / ``stats=`` as in ``bne.lexical``.
* **speed**: :meth:`Searcher.search` prunes with MaxScore (exact): the common terms, whose postings
  are most of the work, are looked up only for documents that can still reach the top k.

Quoted query terms (``bne.lexical.query_terms``) are each one FTS5 phrase; every phrase adds its
term's score, as FTS5's OR query does (two words with one stem count twice there too). A word that
FTS5 would split into several tokens (none from ``query_terms`` in practice) is scored as its
tokens OR-ed, not as a phrase.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Iterable, Sequence

import numpy as np

from . import lexical
from .lexical import Allowed, Stats, idf

F = 8  # segments of one level merged at a time
PRUNE_MIN_POSTINGS = 2048  # MaxScore checks only before terms with more postings than this (left to score)
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS lexp_seg(seg INTEGER PRIMARY KEY, level INTEGER NOT NULL, ids BLOB NOT NULL,"
    " lens BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS lexp_post(seg INTEGER NOT NULL, term TEXT NOT NULL, df INTEGER NOT NULL,"
    " docs BLOB NOT NULL, tfs BLOB NOT NULL, PRIMARY KEY(seg, term)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS lexp_dead(id INTEGER NOT NULL, seg INTEGER NOT NULL, PRIMARY KEY(id, seg))"
    " WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS lexp_deldf(term TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS lexp_meta(k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID",
)

# what sqlite_master holds after create(), for the docstore's schema check
EXPECTED_SCHEMA = {("table", sql.split()[5].split("(")[0]): sql.replace(" IF NOT EXISTS", "") for sql in SCHEMA}


def create(conn: sqlite3.Connection) -> None:
    """Creates the tables when missing (in the caller's transaction)."""
    for sql in SCHEMA:
        conn.execute(sql)
    conn.execute("INSERT OR IGNORE INTO lexp_meta VALUES ('n_docs', 0), ('total_len', 0)")


def _tokenizer(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.lexp_tok USING fts5(text, content='', detail=full, "
        f"tokenize='{lexical.TOKENIZER}')"
    )
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.lexp_tokv USING fts5vocab(temp, lexp_tok, instance)")


def tokenize(conn: sqlite3.Connection, ids: Sequence[int], texts: Iterable[str]) -> list[tuple[str, int, int]]:
    """(term, id, tf) sorted by term then id: FTS5's own tokens of each text (ids must be distinct)."""
    _tokenizer(conn)
    conn.executemany("INSERT INTO temp.lexp_tok(rowid, text) VALUES (?, ?)", zip(ids, texts, strict=True))
    rows = conn.execute("SELECT term, doc, count(*) FROM temp.lexp_tokv GROUP BY term, doc").fetchall()
    conn.execute("INSERT INTO temp.lexp_tok(lexp_tok) VALUES ('delete-all')")
    return rows


def _postings_of(
    conn: sqlite3.Connection, ids: Sequence[int], texts: Iterable[str]
) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], np.ndarray]:
    """The texts' postings by term ((term, ids ascending, tfs), terms sorted) and each text's length
    in tokens, in ``ids`` order, all from FTS5's tokenizer. One row per term comes back (its
    token ids as text), which costs far less than a row per (term, document) grouped in SQL."""
    _tokenizer(conn)
    conn.executemany("INSERT INTO temp.lexp_tok(rowid, text) VALUES (?, ?)", zip(ids, texts, strict=True))
    rows = conn.execute("SELECT term, count(*), group_concat(doc, ' ') FROM temp.lexp_tokv GROUP BY term").fetchall()
    conn.execute("INSERT INTO temp.lexp_tok(lexp_tok) VALUES ('delete-all')")
    id_arr = np.asarray(ids, np.int64)
    if not rows:
        return [], np.zeros(len(id_arr), np.int64)
    counts = np.fromiter((r[1] for r in rows), np.int64, len(rows))
    tok_doc = np.array(" ".join(r[2] for r in rows).split(), np.int64)  # one entry per token
    tok_term = np.repeat(np.arange(len(rows)), counts)
    key = tok_term << 32 | tok_doc
    if len(key) > 1 and (np.diff(key) < 0).any():  # fts5vocab yields (term, doc) order; never rely on it
        o = np.argsort(key, kind="stable")
        tok_doc, tok_term, key = tok_doc[o], tok_term[o], key[o]
    starts = np.flatnonzero(np.concatenate(([True], np.diff(key) != 0)))  # one run per (term, doc)
    docs, tfs = tok_doc[starts], np.diff(np.append(starts, len(key)))
    bounds = np.searchsorted(tok_term[starts], np.arange(len(rows) + 1))
    out = [(rows[k][0], docs[bounds[k] : bounds[k + 1]], tfs[bounds[k] : bounds[k + 1]]) for k in range(len(rows))]
    order = np.argsort(id_arr)
    lens = np.bincount(order[np.searchsorted(id_arr, tok_doc, sorter=order)], minlength=len(id_arr))
    return out, lens


def _meta(conn: sqlite3.Connection, dn: int, dlen: int) -> None:
    _bump(conn)
    conn.execute("UPDATE lexp_meta SET v = v + ? WHERE k = 'n_docs'", (dn,))
    conn.execute("UPDATE lexp_meta SET v = v + ? WHERE k = 'total_len'", (dlen,))


def _pack(d: np.ndarray, tf: np.ndarray) -> tuple[bytes, bytes]:
    """A posting list's blobs (ids ascending). ids: the first as int32, then uint16 gaps when every gap
    fits (the common terms, whose lists are long and dense), else int32; tfs: uint8 when all fit,
    else uint16 (capped). The blob lengths against df tell the formats apart."""
    if len(d) > 1 and int(d[-1]) - int(d[0]) < 65536 * (len(d) - 1) and (gaps := np.diff(d)).max() < 65536:
        docs = d[:1].astype(np.int32).tobytes() + gaps.astype(np.uint16).tobytes()
    else:
        docs = d.astype(np.int32).tobytes()
    tf = np.minimum(tf, 65535)
    return docs, (tf.astype(np.uint8) if tf.max() < 256 else tf.astype(np.uint16)).tobytes()


def _unpack(df: int, docs: bytes, tfs: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(int32 ids, uint8 or uint16 tfs) of a posting list written by :func:`_pack`."""
    if len(docs) == 4 * df:
        d = np.frombuffer(docs, np.int32)
    else:
        d = np.empty(df, np.int32)
        d[0] = np.frombuffer(docs, np.int32, 1)[0]
        np.cumsum(np.frombuffer(docs, np.uint16, offset=4), dtype=np.int32, out=d[1:])
        d[1:] += d[0]
    return d, np.frombuffer(tfs, np.uint8 if len(tfs) == df else np.uint16)


def insert(conn: sqlite3.Connection, ids: Sequence[int], texts: Iterable[str], merge: bool = True) -> None:
    """Indexes ``texts`` under row ``ids`` as one new segment, then merges full levels; no commit."""
    ids = [int(i) for i in ids]
    if not ids:
        return
    if min(ids) < 0 or max(ids) >= 2**31 or len(set(ids)) != len(ids):
        raise ValueError("lexical_postings.insert: ids must be distinct and in [0, 2**31)")
    terms, lens = _postings_of(conn, ids, texts)
    seg = int(conn.execute("SELECT coalesce(max(seg), -1) + 1 FROM lexp_seg").fetchone()[0])
    id_arr = np.asarray(ids, np.int64)
    out = [(seg, term, len(d), *_pack(d, tf)) for term, d, tf in terms]
    conn.executemany("INSERT INTO lexp_post VALUES (?, ?, ?, ?, ?)", out)
    conn.execute(
        "INSERT INTO lexp_seg VALUES (?, 0, ?, ?)",
        (seg, id_arr.astype(np.int32).tobytes(), lens.astype(np.int32).tobytes()),
    )
    _meta(conn, len(ids), int(lens.sum()))
    if merge:
        merge_levels(conn)


def _bump(conn: sqlite3.Connection) -> None:
    """Every write bumps a version, so a Searcher (of any connection) reloads its arrays."""
    conn.execute("INSERT INTO lexp_meta VALUES ('version', 1) ON CONFLICT(k) DO UPDATE SET v = v + 1")


def _live(conn: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray]:
    """(seg of each live id or -1, length of each id), arrays indexed by id."""
    segs = conn.execute("SELECT seg, ids, lens FROM lexp_seg").fetchall()
    dead: dict[int, list[int]] = {}
    for i, s in conn.execute("SELECT id, seg FROM lexp_dead"):
        dead.setdefault(int(s), []).append(int(i))
    size = 1 + max((int(np.frombuffer(b, np.int32).max()) for _, b, _ in segs if b), default=-1)
    seg_of = np.full(size, -1, np.int64)
    dl = np.zeros(size, np.float64)
    for s, b, lb in segs:
        ids = np.frombuffer(b, np.int32)
        lens = np.frombuffer(lb, np.int32)
        if s in dead:
            keep = ~np.isin(ids, dead[s])
            ids, lens = ids[keep], lens[keep]
        seg_of[ids] = s
        dl[ids] = lens
    return seg_of, dl


def delete(conn: sqlite3.Connection, ids: Sequence[int], texts: Iterable[str]) -> None:
    """Removes live rows; each text must be the one the row was indexed with (its tokens are
    subtracted from df, N and the total length). Unknown ids are an error; no commit."""
    ids = [int(i) for i in ids]
    if not ids:
        return
    seg_of, dl = _live(conn)
    arr = np.asarray(ids, np.int64)
    if arr.min() < 0 or arr.max() >= len(seg_of) or (seg_of[arr] < 0).any() or len(set(ids)) != len(ids):
        raise ValueError("lexical_postings.delete: an id is not in the index")
    terms, lens = _postings_of(conn, ids, texts)
    dfs = [(term, len(d)) for term, d, _ in terms]
    if (lens != dl[arr]).any():
        raise ValueError("lexical_postings.delete: a text is not the one its row was indexed with")
    conn.executemany("INSERT INTO lexp_dead VALUES (?, ?)", [(i, int(seg_of[i])) for i in ids])
    conn.executemany("INSERT INTO lexp_deldf VALUES (?, ?) ON CONFLICT(term) DO UPDATE SET n = n + excluded.n", dfs)
    _meta(conn, -len(ids), -int(lens.sum()))


def _merge(conn: sqlite3.Connection, segs: list[int], level: int) -> None:
    """Merges ``segs`` into one new segment without their deleted rows (whose tokens leave the df
    correction with them, so the statistics stay exact)."""
    new = int(conn.execute("SELECT coalesce(max(seg), -1) + 1 FROM lexp_seg").fetchone()[0])
    seg_of = _live(conn)[0]
    ph = ",".join("?" * len(segs))
    cursors = [
        conn.execute("SELECT term, seg, df, docs, tfs FROM lexp_post WHERE seg = ? ORDER BY term", (s,)).fetchall()
        for s in segs
    ]
    out = []
    purged: list[tuple[int, str]] = []
    cur_term = ""
    parts: list[tuple[np.ndarray, np.ndarray, int]] = []

    def flush() -> None:
        d = np.concatenate([p[0] for p in parts])
        t = np.concatenate([p[1].astype(np.uint16) for p in parts])
        s = np.concatenate([np.full(len(p[0]), p[2], np.int64) for p in parts])
        keep = seg_of[d] == s
        if not keep.all():
            purged.append((int((~keep).sum()), cur_term))
            d, t = d[keep], t[keep]
        if len(d) > 1 and (np.diff(d) <= 0).any():  # an id inserted again after a delete: keep ids ascending
            o = np.argsort(d, kind="stable")
            d, t = d[o], t[o]
        if len(d):
            out.append((new, cur_term, len(d), *_pack(d, t)))

    for term, s, df, d, t in heapq.merge(*cursors, key=lambda r: r[0]):
        if term != cur_term or not parts:
            if parts:
                flush()
            cur_term, parts = term, []
        parts.append((*_unpack(df, d, t), s))
    if parts:
        flush()
    rows = conn.execute(f"SELECT seg, ids, lens FROM lexp_seg WHERE seg IN ({ph}) ORDER BY seg", segs).fetchall()
    ids = np.concatenate([np.frombuffer(r[1], np.int32) for r in rows])
    lens = np.concatenate([np.frombuffer(r[2], np.int32) for r in rows])
    sg = np.concatenate([np.full(len(r[1]) // 4, r[0], np.int64) for r in rows])
    keep = seg_of[ids] == sg
    ids, lens = ids[keep], lens[keep]
    conn.execute(f"DELETE FROM lexp_dead WHERE seg IN ({ph})", segs)
    conn.executemany("UPDATE lexp_deldf SET n = n - ? WHERE term = ?", purged)
    conn.execute("DELETE FROM lexp_deldf WHERE n = 0")
    conn.execute(f"DELETE FROM lexp_post WHERE seg IN ({ph})", segs)
    conn.execute(f"DELETE FROM lexp_seg WHERE seg IN ({ph})", segs)
    conn.executemany("INSERT INTO lexp_post VALUES (?, ?, ?, ?, ?)", out)
    conn.execute("INSERT INTO lexp_seg VALUES (?, ?, ?, ?)", (new, level, ids.tobytes(), lens.tobytes()))
    _bump(conn)


def merge_levels(conn: sqlite3.Connection) -> None:
    """Merges the oldest F segments of any level that holds F or more (repeatedly); no commit."""
    while True:
        full = conn.execute(
            "SELECT level FROM lexp_seg GROUP BY level HAVING count(*) >= ? ORDER BY level LIMIT 1", (F,)
        ).fetchone()
        if full is None:
            return
        segs = [
            r[0] for r in conn.execute("SELECT seg FROM lexp_seg WHERE level = ? ORDER BY seg LIMIT ?", (full[0], F))
        ]
        _merge(conn, segs, int(full[0]) + 1)


def compact(conn: sqlite3.Connection) -> None:
    """Everything into one segment without the deleted rows (then df needs no correction); no commit."""
    segs = [r[0] for r in conn.execute("SELECT seg FROM lexp_seg ORDER BY seg")]
    if segs:
        top = int(conn.execute("SELECT max(level) FROM lexp_seg").fetchone()[0])
        _merge(conn, segs, top)


# --- query ----------------------------------------------------------------------------------------


def query_tokens(conn: sqlite3.Connection, terms: Sequence[str]) -> list[list[str]]:
    """Each quoted query term's index tokens (stemmed by FTS5's tokenizer)."""
    if any(not (len(t) >= 2 and t[0] == t[-1] == '"') for t in terms):
        raise ValueError("lexical_postings: terms come from bne.lexical.query_terms (each double-quoted)")
    out: list[list[str]] = [[] for _ in terms]
    if terms:
        for term, i, _ in tokenize(conn, range(len(terms)), [t[1:-1].replace('""', '"') for t in terms]):
            out[i].append(term)
    return out


class Searcher:
    """BM25 over one connection's postings; the per-id arrays are reloaded when the database changed
    (another connection's commit or this connection's own writes)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._key: int | None = None
        self._knorm: tuple[float, np.ndarray] | None = None
        self.pruned_terms = 0
        self.skipped_bound = 0.0
        self.prune_min_postings = PRUNE_MIN_POSTINGS
        self.last_essential: list[str] = []

    def _refresh(self) -> None:
        row = self.conn.execute("SELECT v FROM lexp_meta WHERE k = 'version'").fetchone()
        key = int(row[0]) if row else 0
        if key == self._key:
            return
        self.seg_of, self.dl = _live(self.conn)
        self._knorm = None
        self.has_dead = self.conn.execute("SELECT 1 FROM lexp_dead LIMIT 1").fetchone() is not None
        n, total = self._totals()
        self.n_docs, self.total_len = n, total
        self.segs = [r[0] for r in self.conn.execute("SELECT seg FROM lexp_seg ORDER BY seg")]
        self._key = key

    def _totals(self) -> tuple[int, int]:
        m = dict(self.conn.execute("SELECT k, v FROM lexp_meta").fetchall())
        return int(m.get("n_docs", 0)), int(m.get("total_len", 0))

    def _postings(self, token: str) -> list[tuple[int, int, bytes, bytes]]:
        if not self.segs:
            return []
        segs = ",".join(map(str, self.segs))  # integers read from our own table
        sql = f"SELECT seg, df, docs, tfs FROM lexp_post WHERE term = ? AND seg IN ({segs})"
        return self.conn.execute(sql, (token,)).fetchall()

    def _df(self, token: str, rows: list[tuple[int, int, bytes, bytes]]) -> int:
        r = self.conn.execute("SELECT n FROM lexp_deldf WHERE term = ?", (token,)).fetchone()
        return sum(x[1] for x in rows) - (int(r[0]) if r else 0)

    def local_stats(self, terms: Sequence[str]) -> Stats:
        """This index's statistics for ``terms`` (quoted), as ``bne.lexical.local_stats``."""
        self._refresh()
        toks = query_tokens(self.conn, terms)
        df = {}
        for t, ts in zip(terms, toks, strict=True):
            df[t] = self._df(ts[0], self._postings(ts[0])) if len(ts) == 1 else 0
        return Stats(self.n_docs, self.total_len, df)

    def search(
        self,
        terms: Sequence[str],
        limit: int,
        stats: Stats | None = None,
        allowed: Allowed = None,
        prune: bool = True,
        skip_floor: bool = False,
    ) -> list[tuple[int, float]]:
        """The best ``limit`` (id, BM25) for any of ``terms``, best first, ties by id: the ranking of
        ``bne.lexical.bm25_search`` with the same arguments.

        ``skip_floor`` (near-exact): terms in half the documents or more, whose idf FTS5 floors at
        1e-6, are not read at all. Each adds less than 1e-6 * (k1 + 1) to a score, so every returned
        score is low by less than ``skipped_bound`` and the ranking differs from the exact one only
        between documents whose exact scores are closer than that (or that match only such terms).

        ``prune`` (exact either way): MaxScore. Terms are scored fully from the highest idf down until
        the sum of the remaining terms' bounds (idf * (k1 + 1): a term's tf part is below k1 + 1) is
        below the k-th best partial score; the remaining (common) terms are then looked up only
        for the documents that can still reach the top k."""
        if limit < 1 or not terms:
            return []
        self._refresh()
        if self.n_docs == 0 or len(self.dl) == 0:
            return []
        n_g, avg = (self.n_docs, self.total_len / self.n_docs) if stats is None else (stats.n_docs, stats.avgdl)
        if n_g == 0 or avg == 0:
            return []
        plan = []  # (bound, postings rows) per query token
        self.skipped_bound = 0.0
        for t, toks in zip(terms, query_tokens(self.conn, terms), strict=True):
            for tok in toks:
                rows = self._postings(tok)
                if not rows:
                    continue
                df = self._df(tok, rows) if stats is None else stats.df.get(t, 0)
                if df > 0 and skip_floor and idf(n_g, df) <= 1e-6:
                    self.skipped_bound += 1e-6 * (lexical.K1 + 1)
                elif df > 0:
                    plan.append((idf(n_g, df) * (lexical.K1 + 1), rows, t))
        if not plan:
            return []
        plan.sort(key=lambda p: -p[0])  # rarest first
        rest = np.cumsum([p[0] for p in plan][::-1])[::-1]  # rest[j]: bound of terms j..end
        if self._knorm is None or self._knorm[0] != avg:  # per id, for this average length
            self._knorm = (avg, lexical.K1 * (1 - lexical.B + lexical.B * self.dl / avg))
        knorm: np.ndarray = self._knorm[1]
        acc = np.zeros(len(self.dl), np.float64)
        want = limit if allowed is None else 2 * limit
        sizes = [sum(r[1] for r in p[1]) for p in plan]
        left = np.cumsum(sizes[::-1])[::-1]  # postings of terms j..end
        cut = len(plan)
        slack = 1 + 1e-9  # rounding of sums in another order
        for j, (w, rows, _) in enumerate(plan):
            # checking costs a pass over the accumulator: only worth it before many postings
            if prune and j > 0 and left[j] >= self.prune_min_postings:
                theta = _kth_lower_bound(acc, want)  # the want-th best partial score is at least this
                if rest[j] * slack < theta:  # no document unmatched so far can reach the top `want`
                    cut, cand = j, np.flatnonzero(acc >= theta - rest[j] * slack)
                    break
            for seg, df, db, tb in rows:
                d, tf = self._live_postings(seg, df, db, tb)
                acc[d] += w * tf / (tf + knorm[d])  # a term's postings hold each id once: += is exact
        # for tests and benchmarks: terms scored for candidates only, and the quoted terms scored fully
        self.pruned_terms, self.last_essential = len(plan) - cut, [p[2] for p in plan[:cut]]
        if cut == len(plan):
            return _top(acc, limit, allowed)
        for j in range(cut, len(plan)):  # the common terms, for the candidates only, rarest first
            if len(cand) > want:  # what the terms j..end can still add decides who stays a candidate
                sc = acc[cand]
                kth = np.partition(sc, len(sc) - want)[len(sc) - want]
                cand = cand[sc >= kth - rest[j] * slack]
            is_cand = None
            w, rows, _ = plan[j]
            for seg, df, db, tb in rows:
                d, tfs = _unpack(df, db, tb)  # ids ascending within a segment, each once
                if not len(d):
                    continue
                if 16 * len(cand) < len(d):  # few candidates: binary search them in the list
                    pos = np.minimum(np.searchsorted(d, cand), len(d) - 1)
                    hit = d[pos] == cand
                    c, f = cand[hit], tfs[pos[hit]].astype(np.float64)
                else:  # many: one pass over the list
                    if is_cand is None:
                        is_cand = np.zeros(len(acc), bool)
                        is_cand[cand] = True
                    hit = is_cand[d]
                    c, f = d[hit], tfs[hit].astype(np.float64)
                if self.has_dead:
                    live = self.seg_of[c] == seg
                    c, f = c[live], f[live]
                acc[c] += w * f / (f + knorm[c])
        out = _top(acc, limit, allowed, cand)
        if len(out) < limit and allowed is not None:  # the filter dropped too many candidates
            return self.search(terms, limit, stats, allowed, prune=False, skip_floor=skip_floor)
        return out

    def _live_postings(self, seg: int, df: int, db: bytes, tb: bytes) -> tuple[np.ndarray, np.ndarray]:
        """A segment's postings (ids ascending) without its deleted rows."""
        d, t = _unpack(df, db, tb)
        tf = t.astype(np.float64)
        if self.has_dead:
            keep = self.seg_of[d] == seg
            d, tf = d[keep], tf[keep]
        return d, tf


def _kth_lower_bound(acc: np.ndarray, k: int) -> float:
    """A lower bound of the k-th largest value, from block maxima (one pass): k blocks have an
    element at least as large as their k-th largest maximum. 0 when there are fewer than k blocks."""
    bs = max(1, len(acc) // (8 * k))
    nb = len(acc) // bs
    if nb < k:
        return 0.0
    m = acc[: nb * bs].reshape(nb, bs).max(axis=1)
    return float(np.partition(m, nb - k)[nb - k])


def _top(acc: np.ndarray, limit: int, allowed: Allowed, cand: np.ndarray | None = None) -> list[tuple[int, float]]:
    """The best ``limit`` admitted (id, score) of ``acc`` (> 0), or of ``cand``'s entries only."""
    admit = lexical._admit(allowed)
    want = limit if allowed is None else 2 * limit
    while True:
        theta = 0.0 if cand is not None else _kth_lower_bound(acc, want)
        if cand is not None:
            ids = cand[acc[cand] > 0]
        else:
            ids = np.flatnonzero(acc >= theta) if theta > 0 else np.flatnonzero(acc)
        sc = acc[ids]
        if len(ids) > want:  # the exact want-th score among them, ties kept
            kth = np.partition(sc, len(sc) - want)[len(sc) - want]
            ids, sc = ids[sc >= kth], sc[sc >= kth]
        order = np.lexsort((ids, -sc))
        out = [(int(ids[o]), float(sc[o])) for o in order if admit(int(ids[o]))]
        if len(out) >= limit or theta == 0:  # enough, or every match was seen
            return out[:limit]
        want *= 4


def local_stats(conn: sqlite3.Connection, terms: Sequence[str]) -> Stats:
    return Searcher(conn).local_stats(terms)


def bm25_search(
    conn: sqlite3.Connection,
    terms: Sequence[str],
    limit: int,
    stats: Stats | None = None,
    allowed: Allowed = None,
    prune: bool = True,
) -> list[tuple[int, float]]:
    """One-off search (a :class:`Searcher` kept across queries avoids reloading the id arrays)."""
    return Searcher(conn).search(terms, limit, stats, allowed, prune)
