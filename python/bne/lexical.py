"""The lexical side of hybrid search, shared by every engine: query words (:func:`query_terms`),
collection statistics (:class:`Stats`, :func:`merge_stats`, :func:`idf`), merging ranked lists of
shards (:func:`merge_ranked`) and reciprocal rank fusion (:func:`rrf_fuse`, with the search defaults
``RRF_K``, ``DEPTH``, ``WEIGHTS``).

The index a docstore holds is :mod:`bne.lexical_postings` (FTS5's OR query scores every posting:
seconds at 1M documents, docs/HYBRID_RESEARCH.md). The FTS5 table here (:func:`create`,
:func:`insert`, :func:`bm25_search`: contentless, ``porter unicode61 remove_diacritics 2``, FTS5's
own ``bm25()``, k1 = 1.2, b = 0.75) is never written into a docstore: it is the reference that
lexical_postings is tested against, in the tests and the benchmarks.

Query text is data: :func:`query_terms` tokenises it here and double-quotes every term, so no FTS5
operator, column filter, prefix or NEAR can ever be parsed from it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sqlite3
import unicodedata
from collections.abc import Callable, Container, Iterable, Mapping, Sequence

import numpy as np

from .errors import DocStoreError

TABLE = "docs_fts"
TOKENIZER = "porter unicode61 remove_diacritics 2"
CREATE_SQL = f"CREATE VIRTUAL TABLE {TABLE} USING fts5(text, content='', detail=full, tokenize='{TOKENIZER}')"
# what FTS5 itself creates beside the virtual table (SQLite 3.40 .. 3.45), for the docstore's schema check
SHADOW_SQL = {
    ("table", f"{TABLE}_data"): f"CREATE TABLE '{TABLE}_data'(id INTEGER PRIMARY KEY, block BLOB)",
    ("table", f"{TABLE}_idx"): f"CREATE TABLE '{TABLE}_idx'(segid, term, pgno, PRIMARY KEY(segid, term)) WITHOUT ROWID",
    ("table", f"{TABLE}_docsize"): f"CREATE TABLE '{TABLE}_docsize'(id INTEGER PRIMARY KEY, sz BLOB)",
    ("table", f"{TABLE}_config"): f"CREATE TABLE '{TABLE}_config'(k PRIMARY KEY, v) WITHOUT ROWID",
}
EXPECTED_SCHEMA = {("table", TABLE): CREATE_SQL, **SHADOW_SQL}

K1, B = 1.2, 0.75  # FTS5's bm25() constants
MAX_QUERY_CHARS = 4096  # a query is a question, not a document: the rest of a 10 MB query is not read
MAX_TERM_CHARS = 64  # longer "words" are ids or garbage, and FTS5 would index them as one token anyway
# hybrid search's fusion defaults, the one home of them (docs/HYBRID_RESEARCH.md section 11): tuned on
# SciFact train with dense lists from heads that never saw the query (cross-fitted). The constant and
# the depth are flat there, so they keep the literature's 60 and 100; the lexical side's weight 1.5
# beats equal weights (nDCG@10 0.735 vs 0.724, paired p = 0.003).
RRF_K = 60.0
DEPTH = 100
WEIGHTS = (1.0, 1.5)
FUSIONS = ("rrf", "linear")
# linear fusion's weights (dense, lexical): equal, the best on the same cross-fitted SciFact train
LINEAR_WEIGHTS = (1.0, 1.0)
QUERY_REPEATS = True  # a word the query says twice counts twice (Lucene, and the BM25 baseline)
MAX_TERMS = 256  # bounds the FTS5 expression; a long query (a CISI paragraph) keeps all its words
_WORD = re.compile(r"[^\W_]+")  # unicode letters and digits, like unicode61's token characters
_LAST_WORD = re.compile(r"[^\W_]+\Z")


def query_terms(text: str, *, repeats: bool = False) -> list[str]:
    """The terms of a user query, each double-quoted for FTS5 (``"term"``), lowercased, in first-seen
    order without repeats; ``[]`` when nothing in it can be indexed (then search is dense only).
    ``repeats=True`` keeps every occurrence, so BM25 weighs a word by how often the query says it
    (as Lucene does with repeated clauses; docs/HYBRID_RESEARCH.md measures both).

    The text is never parsed as FTS5 syntax: only runs of letters and digits survive, and each is
    quoted, so ``AND``, ``NEAR``, ``*``, ``col:``, ``^``, quotes and parentheses are words or nothing."""
    if not isinstance(text, str):
        raise TypeError(f"query text must be str, not {type(text).__name__}")
    if len(text) > MAX_QUERY_CHARS:
        cut = text[: MAX_QUERY_CHARS + 1]
        text = _LAST_WORD.sub("", cut)[:MAX_QUERY_CHARS]  # a word cut in two is not a term
    text = unicodedata.normalize("NFKC", text).lower()
    out: list[str] = []
    seen: set[str] = set()
    for m in _WORD.finditer(text):
        w = m.group()
        key = _fold(w)  # "applé" and "apple" are one token to FTS5: counted twice, it would weigh double
        if len(w) > MAX_TERM_CHARS or (key in seen and not repeats):
            continue
        seen.add(key)
        out.append('"' + w.replace('"', '""') + '"')
        if len(out) == MAX_TERMS:
            break
    return out


def _fold(word: str) -> str:
    """The word without its diacritics, as ``remove_diacritics 2`` indexes Latin letters."""
    if word.isascii():
        return word
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def match_expr(terms: Sequence[str]) -> str:
    """The FTS5 MATCH expression of quoted terms: any of them (OR)."""
    return " OR ".join(terms)


# --- schema -------------------------------------------------------------------------------------


def has_index(conn: sqlite3.Connection) -> bool:
    """Whether this docstore holds the lexical index (older ones do not)."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (TABLE,)).fetchone()
    return row is not None


def create(conn: sqlite3.Connection) -> bool:
    """Creates the FTS5 table when missing (in the caller's transaction); True when it created it."""
    if has_index(conn):
        return False
    conn.execute(CREATE_SQL)
    return True


def insert(conn: sqlite3.Connection, ids: Iterable[int], texts: Iterable[str]) -> None:
    """Indexes ``texts`` (``bne.doc_text`` of each document) under the docstore row ``ids``; no commit."""
    conn.executemany(
        f"INSERT INTO {TABLE}(rowid, text) VALUES (?, ?)",
        ((int(i), str(t)) for i, t in zip(ids, texts, strict=True)),
    )


def delete(conn: sqlite3.Connection, ids: Iterable[int], texts: Iterable[str]) -> None:
    """Removes rows; each ``text`` must be exactly the text the row was indexed with (a contentless
    table forgets its text: FTS5 subtracts these tokens). Run it before the ``docs`` rows go; no commit."""
    conn.executemany(
        f"INSERT INTO {TABLE}({TABLE}, rowid, text) VALUES ('delete', ?, ?)",
        ((int(i), str(t)) for i, t in zip(ids, texts, strict=True)),
    )


def delete_all(conn: sqlite3.Connection) -> None:
    """Empties the index (before a rebuild); no commit."""
    conn.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('delete-all')")


def optimize(conn: sqlite3.Connection) -> None:
    """Merges FTS5's segments into one (after a bulk build or ``compact``): smaller and faster to query."""
    conn.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('optimize')")


def count(conn: sqlite3.Connection) -> int:
    """Rows in the lexical index (from FTS5's own totals record: no scan)."""
    return table_totals(conn)[0]


def max_rowid(conn: sqlite3.Connection) -> int:
    """The highest indexed row id, -1 when empty: where a resumed backfill of an older docstore goes on."""
    row = conn.execute(f"SELECT MAX(id) FROM {TABLE}_docsize").fetchone()
    return -1 if row[0] is None else int(row[0])


def _varints(blob: bytes) -> list[int]:
    """SQLite's varints (big-endian 7 bits a byte, a 9th byte of 8 bits), as FTS5 writes its totals."""
    out, i = [], 0
    while i < len(blob):
        v = 0
        for j in range(9):
            c = blob[i]
            i += 1
            if j == 8:
                v = (v << 8) | c
                break
            v = (v << 7) | (c & 0x7F)
            if not c & 0x80:
                break
        out.append(v)
    return out


def table_totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """(documents, tokens) of the whole FTS5 table, read from its averages record."""
    row = conn.execute(f"SELECT block FROM {TABLE}_data WHERE id = 1").fetchone()
    if row is None or not row[0]:
        return 0, 0
    v = _varints(bytes(row[0]))
    if len(v) < 2:
        raise DocStoreError(f"lexical index {TABLE}: damaged totals record")
    return v[0], v[1]


# --- statistics for shards ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stats:
    """BM25's collection statistics: documents, their total length in tokens, and, per quoted query
    term, how many documents contain it. A shard's are summed with :func:`merge_stats`."""

    n_docs: int
    total_len: int
    df: Mapping[str, int]

    @property
    def avgdl(self) -> float:
        return self.total_len / self.n_docs if self.n_docs else 0.0


def local_stats(conn: sqlite3.Connection, terms: Sequence[str]) -> Stats:
    """This table's statistics for ``terms`` (one count per term: what FTS5's bm25() counts)."""
    n, total = table_totals(conn)
    df = {
        t: int(conn.execute(f"SELECT count(*) FROM {TABLE} WHERE {TABLE} MATCH ?", (t,)).fetchone()[0]) for t in terms
    }
    return Stats(n, total, df)


def merge_stats(parts: Iterable[Stats]) -> Stats:
    """The statistics of the union of disjoint shards."""
    n = total = 0
    df: dict[str, int] = {}
    for p in parts:
        n += p.n_docs
        total += p.total_len
        for t, c in p.df.items():
            df[t] = df.get(t, 0) + c
    return Stats(n, total, df)


def idf(n_docs: int, df: int) -> float:
    """FTS5's idf: log((N - df + 0.5) / (df + 0.5)), floored at 1e-6 (terms in over half the docs)."""
    v = math.log((n_docs - df + 0.5) / (df + 0.5)) if n_docs else 0.0
    return v if v > 0 else 1e-6


# --- search ---------------------------------------------------------------------------------------

Allowed = Container[int] | Callable[[int], bool] | None


def _admit(allowed: Allowed) -> Callable[[int], bool]:
    if allowed is None:
        return lambda i: True
    if callable(allowed):
        return allowed
    return allowed.__contains__


def bm25_search(
    conn: sqlite3.Connection,
    terms: Sequence[str],
    limit: int,
    stats: Stats | None = None,
    allowed: Allowed = None,
) -> list[tuple[int, float]]:
    """The best ``limit`` documents for any of ``terms`` (from :func:`query_terms`) as (row id, BM25
    score), best first, ties by row id. ``allowed`` (a set of row ids, or a predicate) drops every
    other row, tombstones included. ``stats``: score with these collection-wide statistics (sharded
    search) instead of this table's own."""
    if limit < 1 or not terms:
        return []
    if any(not (len(t) >= 2 and t[0] == t[-1] == '"') for t in terms):
        raise ValueError("bm25_search takes terms from query_terms (each double-quoted)")
    admit = _admit(allowed)
    if stats is not None:
        return _scored(conn, terms, limit, stats, admit)
    sql = f"SELECT rowid, -bm25({TABLE}) AS s FROM {TABLE} WHERE {TABLE} MATCH ? ORDER BY s DESC, rowid"
    expr = match_expr(terms)
    fetch = limit if allowed is None else limit * 2
    while True:
        rows = conn.execute(sql + " LIMIT ?", (expr, fetch)).fetchall()
        out = [(int(i), float(s)) for i, s in rows if admit(int(i))]
        if len(out) >= limit or len(rows) < fetch:  # enough, or every match was seen
            return out[:limit]
        fetch *= 4


def _scored(
    conn: sqlite3.Connection, terms: Sequence[str], limit: int, stats: Stats, admit: Callable[[int], bool]
) -> list[tuple[int, float]]:
    """BM25 with outside statistics. FTS5 gives, per term, each matching row's score with this
    table's statistics, from which the term frequency is solved exactly (it is an integer), and
    ``_docsize`` gives the row's length; the score is then recomputed with ``stats``."""
    n_l, total_l = table_totals(conn)
    if n_l == 0 or stats.n_docs == 0:
        return []
    avg_l, avg_g = total_l / n_l, stats.avgdl
    sql = (
        f"SELECT f.rowid, -bm25({TABLE}), d.sz FROM {TABLE} f JOIN {TABLE}_docsize d ON d.id = f.rowid "
        f"WHERE {TABLE} MATCH ?"
    )
    ids_parts, score_parts = [], []
    for t in terms:
        df_g = stats.df.get(t, 0)
        if df_g == 0:
            continue
        rows = conn.execute(sql, (t,)).fetchall()
        if not rows:
            continue
        idf_l, idf_g = idf(n_l, len(rows)), idf(stats.n_docs, df_g)
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        s = np.fromiter((r[1] for r in rows), np.float64, len(rows))
        # one column: the blob is one varint, one byte below 128 tokens
        dl = np.fromiter((r[2][0] if len(r[2]) == 1 else _varints(r[2])[0] for r in rows), np.float64, len(rows))
        # s = idf_l * tf (k1 + 1) / (tf + k1 * L), L = 1 - b + b * dl / avgdl: solve for tf (an integer)
        tf = np.rint(s * K1 * (1 - B + B * dl / avg_l) / (idf_l * (K1 + 1) - s))
        ids_parts.append(ids)
        score_parts.append(idf_g * tf * (K1 + 1) / (tf + K1 * (1 - B + B * dl / avg_g)))
    if not ids_parts:
        return []
    uniq, inv = np.unique(np.concatenate(ids_parts), return_inverse=True)
    total = np.bincount(inv, weights=np.concatenate(score_parts))  # summed in term order, per document
    out: list[tuple[int, float]] = []
    for j in np.lexsort((uniq, -total)):  # best first, ties by id; filtered until ``limit`` are kept
        i = int(uniq[j])
        if admit(i):
            out.append((i, float(total[j])))
            if len(out) == limit:
                break
    return out


def merge_ranked(parts: Iterable[Sequence[tuple[int, float]]], limit: int) -> list[tuple[int, float]]:
    """One ranking from the shards' (id, score) lists scored with the same :class:`Stats`; ids are
    global (distinct across shards). Ties by id, as within one shard."""
    allrows = [r for p in parts for r in p]
    return sorted(allrows, key=lambda kv: (-kv[1], kv[0]))[:limit]


# --- fusion ---------------------------------------------------------------------------------------


def default_weights(fusion: str) -> tuple[float, float]:
    """The (dense, lexical) weights a fusion uses when none are given."""
    return LINEAR_WEIGHTS if fusion == "linear" else WEIGHTS


@dataclasses.dataclass(frozen=True)
class Fused:
    id: int
    score: float
    dense_rank: int | None  # 1-based rank in the dense list, None when it was not in its top ``depth``
    lexical_rank: int | None


def rrf_fuse(
    dense: Sequence[int],
    lexical: Sequence[int],
    k: float = RRF_K,
    weights: tuple[float, float] = WEIGHTS,
    depth: int | None = None,
    limit: int | None = None,
) -> list[Fused]:
    """Reciprocal rank fusion: each id scores ``sum(w / (k + rank))`` over the lists it is in (ranks
    from 1, each list cut to its first ``depth``). Best first; ties by the better dense rank, then the
    better lexical rank, then the id, so the order never depends on dict or set order."""
    if k < 0 or any(w < 0 for w in weights):
        raise ValueError("rrf_fuse: k and the weights must be >= 0")
    if depth is not None:
        dense, lexical = dense[:depth], lexical[:depth]
    rd, rl = _first_ranks(dense), _first_ranks(lexical)
    wd, wl = weights
    # the same sum, in the same order, as sum(w / (k + rank)) over the lists the id is in
    scores = {
        i: (wd / (k + a) if (a := rd.get(i)) is not None else 0.0)
        + (wl / (k + b) if (b := rl.get(i)) is not None else 0.0)
        for i in rd.keys() | rl.keys()
    }
    return _ranked(scores, rd, rl, limit)


def _first_ranks(ids: Iterable[int]) -> dict[int, int]:
    """id -> its 1-based rank in ``ids`` (a repeated id keeps its best rank)."""
    out: dict[int, int] = {}
    for r, i in enumerate(ids, 1):
        out.setdefault(int(i), r)
    return out


def _ranked(scores: dict[int, float], rd: dict[int, int], rl: dict[int, int], limit: int | None) -> list[Fused]:
    """Best first; ties by the better dense rank, then the better lexical rank, then the id. Sorted
    as plain tuples, and Fused objects made only for the ids returned (a query fuses up to 2 x depth
    ids and keeps k)."""
    big = 1 << 62
    rows = sorted((-sc, rd.get(i, big), rl.get(i, big), i) for i, sc in scores.items())
    return [
        Fused(i, -ns, a if a != big else None, b if b != big else None)
        for ns, a, b, i in (rows if limit is None else rows[:limit])
    ]


def linear_fuse(
    dense: Sequence[tuple[int, float]],
    lexical: Sequence[tuple[int, float]],
    weights: tuple[float, float] = LINEAR_WEIGHTS,
    depth: int | None = None,
    limit: int | None = None,
) -> list[Fused]:
    """Linear fusion of min-max normalised scores (Elasticsearch's linear retriever with the minmax
    normaliser, Weaviate's relative score fusion): each side's (id, score) list, best first and higher
    scores better, is cut to its first ``depth`` and mapped to [0, 1] by its own min and max (all 1
    when they are equal); an id scores ``sum(w * normalised)`` over the lists it is in. Unlike RRF it
    keeps how far apart the scores are, not only their order. Ties as :func:`rrf_fuse`."""
    if any(not w >= 0 for w in weights):
        raise ValueError("linear_fuse: the weights must be >= 0")
    if depth is not None:
        dense, lexical = dense[:depth], lexical[:depth]
    rd, rl = _first_ranks(i for i, _ in dense), _first_ranks(i for i, _ in lexical)
    nd, nl = _minmax(dense), _minmax(lexical)
    wd, wl = weights
    # the same sum, in the same order, as sum(w * normalised) over the lists the id is in
    scores = {
        i: (wd * nd(dense[a - 1][1]) if (a := rd.get(i)) is not None else 0.0)
        + (wl * nl(lexical[b - 1][1]) if (b := rl.get(i)) is not None else 0.0)
        for i in rd.keys() | rl.keys()
    }
    return _ranked(scores, rd, rl, limit)


def _minmax(rows: Sequence[tuple[int, float]]) -> Callable[[float], float]:
    """A score mapped to [0, 1] by the min and max of ``rows``' scores (1 when they are equal)."""
    vals = [float(v) for _, v in rows]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 0.0)
    return (lambda v: (float(v) - lo) / (hi - lo)) if hi > lo else (lambda v: 1.0)
