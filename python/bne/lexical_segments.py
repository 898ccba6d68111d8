"""The lexical index's storage (issue 17; docs/HYBRID_RESEARCH.md sections 7-8): segments of postings
in the docstore's SQLite file, written in the caller's transaction, tiered merges, deletes and the blob
format. :mod:`bne.lexical_postings` (which re-exports these functions) searches them.

Each insert call writes one segment, rows ``(seg, term) -> (df, ids, tfs)`` appended at the end of
the b-tree (ids: uint16 gaps where they fit, else int32; tfs: uint8 where they fit, else uint16);
segments of one level are merged F at a time (tiered, as Lucene). A segment never changes once
written (a merge writes a new one and deletes the old): the searcher's cache relies on it.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Iterable, Sequence

import numpy as np

from . import lexical

F = 8  # segments of one level merged at a time
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
        raise ValueError("lexical_segments.insert: ids must be distinct and in [0, 2**31)")
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
    """Every write sets a new version, so a Searcher (of any connection) reloads its arrays and cache.
    Random rather than + 1: a write rolled back and another one committed must not meet the
    version the Searcher cached for the first."""
    conn.execute("INSERT INTO lexp_meta VALUES ('version', random()) ON CONFLICT(k) DO UPDATE SET v = random()")


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
        raise ValueError("lexical_segments.delete: an id is not in the index")
    terms, lens = _postings_of(conn, ids, texts)
    dfs = [(term, len(d)) for term, d, _ in terms]
    if (lens != dl[arr]).any():
        raise ValueError("lexical_segments.delete: a text is not the one its row was indexed with")
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
