"""The SQLite document store written beside an index by ``bne build``: id -> text, title, metadata.

The index's int64 ids are the store's row ids; a document's own id is kept as ``ext_id``.

A docstore is a file a user may have been handed, so it is opened as data, never as code:

* ``info`` / ``search`` open it read-only (``mode=ro``): nothing is written, so a read-only
  folder or another user's index can be searched. Writers use a rollback journal, not WAL,
  because a WAL file cannot be read from a folder the reader may not write to.
* ``PRAGMA trusted_schema=OFF``, and every open checks the schema: exactly the ``docs`` table
  and its index as bne writes them. A trigger, view or any other object (SQL stored in the
  file that an INSERT or SELECT would run) is refused with :class:`DocStoreError`.
* SQLite errors (not a database, damaged, disk full) become :class:`DocStoreError` naming the file.

The lexical (BM25) index of the same texts lives in the same file (:mod:`bne.lexical_postings`)
and is written in the same transaction as the rows it indexes, so a commit holds both or neither.
A docstore of an older bne has none; :meth:`DocStore.add_lexical` builds it in resumable steps, and
until it is complete (``lexical_ready``) searches use the dense side only.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from . import lexical_segments
from .corpus import Doc, doc_text
from .errors import DocStoreDamagedError, DocStoreError

DOCS_SQL = "CREATE TABLE docs (id INTEGER PRIMARY KEY, ext_id TEXT NOT NULL, title TEXT, text TEXT NOT NULL, meta TEXT)"
INDEX_SQL = "CREATE INDEX docs_ext_id ON docs(ext_id)"
EXPECTED_SCHEMA = {
    ("table", "docs"): DOCS_SQL,
    ("index", "docs_ext_id"): INDEX_SQL,
    **lexical_segments.EXPECTED_SCHEMA,  # present in docstores written since the lexical index (issue 17)
}
# lexp_meta keys of the docstore's own (the rest are lexical_postings'): 'ready' = 1 once every docs row
# is indexed; while 0, 'backfilled' is the highest docs id indexed so far (rows are indexed in id order);
# 'docstore_tag' = the random tag of the index this docstore was made for (the same key in the index's
# metadata), written once at creation; docstores of older bne have none (see upkeep.check_tag)
TAG_KEY = "docstore_tag"
LEXICAL_CHUNK = 4096  # texts tokenised per lexical insert: bounds the memory of one big insert
LEXICAL_CHUNK_CHARS = 16 * 2**20  # and their characters (building postings takes ~12 bytes a character)
LEXICAL_STEP = 65536  # rows per committed step of adding the lexical index (resumes from the last)
# user_version 1: .txt documents are keyed by content (see corpus.py); 0: by line number (bne <= 0.x)
USER_VERSION = 1


class StoredDoc(NamedTuple):
    ext_id: str
    title: str
    text: str
    meta: str


def path_for(index_path: str | os.PathLike) -> str:
    return os.fspath(index_path) + ".docs.sqlite"


def _norm(sql: str | None) -> str:
    return " ".join((sql or "").split())


class DocStore:
    """``create=False`` (the default): read-only, the file must exist. ``create=True``: read-write,
    created when missing; ``file_mode`` gives a new file those permission bits (the index's).
    ``lexical=False``: a new file gets no lexical index (a folder of shards keeps one per shard).
    ``tag``: a new file records it (``lexp_meta.docstore_tag``, with the lexical index only): the
    tag its index's metadata holds, which binds the two files."""

    def __init__(
        self,
        index_path: str | os.PathLike,
        *,
        create: bool = False,
        file_mode: int | None = None,
        threaded: bool = False,
        lexical: bool = True,
        tag: int | None = None,
    ) -> None:
        self.path = path_for(index_path)
        self._threaded = threaded  # used from another thread than the one that opened it (one at a time)
        self.writable = create
        self._db: sqlite3.Connection | None = None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not create:
                raise FileNotFoundError(f"document store not found: {self.path}") from None
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):  # a FIFO would block sqlite's open forever
            raise DocStoreError(f"{self.path}: not a regular file")
        if st is None and file_mode is not None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode)
            os.fchmod(fd, file_mode)  # the umask does not apply: the docstore is as private as its index
            os.close(fd)
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + ("?mode=rwc" if create else "?mode=ro")
        try:
            self._connect(uri)
        except DocStoreError:
            if not create and os.path.exists(self.path + "-journal"):
                self._roll_back_cut_write()  # then the read-only open works
                self._connect(uri)
            elif create or not self._legacy_wal():
                raise
            else:
                # a WAL-mode store of an older bne in a folder we may not write (no -shm can be made):
                # nothing has a -wal file to replay, so reading the main file as immutable is exact
                self._connect(uri.replace("?mode=ro", "?immutable=1"))
        if create:
            with self._errors("set up", closing=True):
                # rollback journal, not WAL: readers in a folder they cannot write still work
                self.db.execute("PRAGMA journal_mode=DELETE")
                self.db.execute("PRAGMA synchronous=FULL")  # a commit here is durable, like the index's
                if not self._objects():
                    # one transaction: Python's sqlite3 runs CREATE outside one, and a crash between the
                    # tables and the lexp_meta rows would leave a lexical index that is neither absent
                    # nor readable
                    self.db.execute("BEGIN IMMEDIATE")
                    self.db.execute(DOCS_SQL)
                    self.db.execute(INDEX_SQL)
                    if lexical:
                        lexical_segments.create(self.db)
                        self.db.execute("INSERT INTO lexp_meta VALUES ('ready', 1)")
                        if tag is not None:  # a row, not a table: an older bne opens the file as before
                            self.db.execute("INSERT INTO lexp_meta VALUES (?, ?)", (TAG_KEY, int(tag)))
                    self.db.execute(f"PRAGMA user_version={USER_VERSION}")
                    self.db.commit()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:  # only while a failed open unwinds
            raise DocStoreError(f"document store {self.path} is not open")
        return self._db

    def _connect(self, uri: str) -> None:
        self._db = None
        with self._errors("open", closing=True):
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=not self._threaded)
            self.db.text_factory = lambda b: b.decode("utf-8", "replace")  # damaged text is shown, not fatal
            self.db.execute("PRAGMA trusted_schema=OFF")  # schema SQL may not call unsafe functions
            self.db.execute("PRAGMA cell_size_check=ON")  # stricter page checks for a damaged file
            self._check_schema()

    def _roll_back_cut_write(self) -> None:
        """A writer killed mid-transaction (kill -9, power loss) leaves a hot ``-journal``: the
        pages it changed, which a read-only connection may not restore. Opening the file for
        writing once makes SQLite restore them (the last commit, what the next writer would do
        anyway); without the right to write it, one line says so."""
        folder = os.path.dirname(os.path.abspath(self.path))
        if not (os.access(self.path, os.W_OK) and os.access(folder, os.W_OK)):
            raise DocStoreError(
                f"cannot open document store {self.path}: a write to it was cut short (its -journal file is "
                f"left) and this user may not roll that back; open it once as a user who may write it "
                f"(e.g. bne verify)"
            )
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=rw"
        with self._errors("recover"):
            db = sqlite3.connect(uri, uri=True)
            try:
                db.execute("PRAGMA trusted_schema=OFF")
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the first read rolls back
            finally:
                db.close()

    def _legacy_wal(self) -> bool:
        try:
            with open(self.path, "rb") as f:
                header = f.read(20)
        except OSError:
            return False
        return header[:16] == b"SQLite format 3\0" and header[18] == 2 and not os.path.exists(self.path + "-wal")

    @contextlib.contextmanager
    def _errors(self, what: str, *, closing: bool = False) -> Iterator[None]:
        try:
            yield
        except (sqlite3.DatabaseError, DocStoreError, UnicodeDecodeError) as e:
            if closing and self._db is not None:  # a failed open leaves no connection behind
                self._db.close()
            if isinstance(e, DocStoreError):
                raise
            # SQLite's message about a damaged schema can quote bytes that are not UTF-8
            msg = "damaged (an error message that is not UTF-8)" if isinstance(e, UnicodeDecodeError) else str(e)
            if "readonly" in msg or "read-only" in msg:
                msg += " (the file or its folder is not writable)"
            damaged = isinstance(e, UnicodeDecodeError) or any(
                m in msg for m in ("malformed", "not a database", "corrupt")
            )
            err = DocStoreDamagedError if damaged else DocStoreError
            raise err(f"cannot {what} document store {self.path}: {msg[:300]}") from None

    def _objects(self) -> list[tuple[str, str, str | None]]:
        return self.db.execute("SELECT type, name, sql FROM sqlite_master").fetchall()

    def _check_schema(self) -> None:
        for kind, name, sql in self._objects():
            if name.startswith(("sqlite_autoindex_", "sqlite_stat")):
                continue  # SQLite's own bookkeeping
            expected = EXPECTED_SCHEMA.get((kind, name))
            if expected is None or _norm(sql) != _norm(expected):
                raise DocStoreError(
                    f"{self.path} holds a {kind} {name!r} that bne did not write; refusing to use "
                    f"it (SQL stored in a document store could run on open)"
                )

    @property
    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self.db.close()

    def max_id(self) -> int:
        with self._errors("read"):
            row = self.db.execute("SELECT MAX(id) FROM docs").fetchone()
        return -1 if row[0] is None else int(row[0])

    def ext_ids(self) -> set[str]:
        with self._errors("read"):
            return {r[0] for r in self.db.execute("SELECT ext_id FROM docs")}

    def texts_of(self, ext_ids: Sequence[str]) -> dict[str, str]:
        """ext_id -> text for those of ``ext_ids`` that are stored."""
        out: dict[str, str] = {}
        with self._errors("read"):
            for start in range(0, len(ext_ids), 500):
                chunk = list(ext_ids[start : start + 500])
                q = f"SELECT ext_id, text FROM docs WHERE ext_id IN ({','.join('?' * len(chunk))})"
                out.update(self.db.execute(q, chunk).fetchall())
        return out

    # -- the lexical index ---------------------------------------------------------------------------

    def _meta(self, key: str) -> int | None:
        if not self.has_lexical:
            return None
        row = self.db.execute("SELECT v FROM lexp_meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    @property
    def tag(self) -> object:
        """The tag of the index this docstore was made for (an int as bne writes it), or None where
        it records none (an older bne, or no lexical index). One row read."""
        with self._errors("read"):
            if not self.has_lexical:
                return None
            row = self.db.execute("SELECT v FROM lexp_meta WHERE k = ?", (TAG_KEY,)).fetchone()
        return None if row is None else row[0]

    @property
    def has_lexical(self) -> bool:
        """The lexical tables exist (complete or being built)."""
        with self._errors("read"):
            q = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'lexp_meta'"
            return self.db.execute(q).fetchone() is not None

    @property
    def lexical_ready(self) -> bool:
        """Every row is in the lexical index (searches may use it)."""
        with self._errors("read"):
            return self._meta("ready") == 1

    def _lexical_upto(self) -> int | None:
        """Rows with ids up to this are in the lexical index (None: no row is, or there is none)."""
        if self._meta("ready") == 1:
            return 2**63 - 1
        return self._meta("backfilled")

    def _index_texts(self, rows: Sequence[tuple[int, str | None, str]]) -> None:
        chunk: list[tuple[int, str]] = []
        chars = 0
        for i, title, text in rows:
            chunk.append((i, doc_text(title or "", text)))
            chars += len(chunk[-1][1])
            if len(chunk) == LEXICAL_CHUNK or chars >= LEXICAL_CHUNK_CHARS:
                lexical_segments.insert(self.db, [c[0] for c in chunk], [c[1] for c in chunk])
                chunk, chars = [], 0
        if chunk:
            lexical_segments.insert(self.db, [c[0] for c in chunk], [c[1] for c in chunk])

    def add_lexical(self, step: int = LEXICAL_STEP) -> Iterator[tuple[int, int]]:
        """Builds the lexical index of an older docstore, ``step`` rows per commit, in id order;
        yields (rows indexed, rows in all) after each commit. Resumable: a killed run leaves the
        committed steps, and the next run goes on after the last of them."""
        with self._errors("write"):
            if not self.has_lexical:
                self.db.execute("BEGIN IMMEDIATE")  # the tables and their meta rows, or nothing (see __init__)
                lexical_segments.create(self.db)
                self.db.execute("INSERT INTO lexp_meta VALUES ('ready', 0), ('backfilled', -1)")
                self.db.commit()
            total = self.count()
            while self._meta("ready") != 1:
                upto = self._meta("backfilled")
                if upto is None:  # not a state bne leaves: refuse rather than index rows twice
                    raise DocStoreError(f"document store {self.path}: its lexical index has no progress mark")
                rows = self.db.execute(
                    "SELECT id, title, text FROM docs WHERE id > ? ORDER BY id LIMIT ?", (upto, step)
                ).fetchall()
                if rows:
                    self._index_texts(rows)
                    self.db.execute("UPDATE lexp_meta SET v = ? WHERE k = 'backfilled'", (rows[-1][0],))
                if len(rows) < step:
                    self.db.execute("UPDATE lexp_meta SET v = 1 WHERE k = 'ready'")
                self.db.commit()
                done = self.db.execute("SELECT COUNT(*) FROM docs WHERE id <= ?", (rows[-1][0] if rows else upto,))
                yield int(done.fetchone()[0]), total

    def insert(self, ids: Iterable[int], docs: Sequence[Doc]) -> None:
        """Adds rows (and their postings: all of them once the lexical index is complete) to the
        open transaction: :meth:`commit` makes both durable at once."""
        rows = [(int(i), d.ext_id, d.title, d.text, d.meta) for i, d in zip(ids, docs, strict=True)]
        with self._errors("write"):
            self.db.executemany("INSERT INTO docs (id, ext_id, title, text, meta) VALUES (?, ?, ?, ?, ?)", rows)
            # while an older store is being indexed, add_lexical gets the rows past its mark; a row at
            # or below the mark (an id dropped by delete_above and used again) is indexed here
            upto = self._lexical_upto()
            if upto is not None:
                self._index_texts([(r[0], r[2], r[3]) for r in rows if r[0] <= upto])

    def delete_above(self, max_id: int) -> int:
        """Drops rows past the index's last committed id (left by a crash between the two commits),
        with their postings, in one transaction."""
        with self._errors("write"):
            ids = [r[0] for r in self.db.execute("SELECT id FROM docs WHERE id > ? ORDER BY id", (int(max_id),))]
        return self.delete_ids(ids)

    def delete_ids(self, ids: Iterable[int]) -> int:
        """Drops these rows (ids not stored are ignored) and their postings, in one transaction;
        returns the rows dropped."""
        want = sorted({int(i) for i in ids})
        if not want:
            return 0
        dropped = 0
        with self._errors("write"):
            upto = self._lexical_upto()
            for start in range(0, len(want), LEXICAL_CHUNK):
                chunk = want[start : start + LEXICAL_CHUNK]
                rows = []
                for at in range(0, len(chunk), 500):
                    part = chunk[at : at + 500]
                    q = f"SELECT id, title, text FROM docs WHERE id IN ({','.join('?' * len(part))})"
                    rows += self.db.execute(q, part).fetchall()
                # a row the lexical index holds leaves it with its text (the postings store no text)
                indexed = [r for r in rows if upto is not None and r[0] <= upto]
                lexical_segments.delete(self.db, [r[0] for r in indexed], [doc_text(r[1] or "", r[2]) for r in indexed])
                for at in range(0, len(chunk), 500):
                    part = chunk[at : at + 500]
                    cur = self.db.execute(f"DELETE FROM docs WHERE id IN ({','.join('?' * len(part))})", part)
                    dropped += cur.rowcount
            self.db.commit()
        return dropped

    def ids(self) -> np.ndarray:
        """Every row id, ascending."""
        with self._errors("read"):
            return np.fromiter((r[0] for r in self.db.execute("SELECT id FROM docs ORDER BY id")), np.int64)

    def ids_of(self, ext_ids: Iterable[str]) -> list[int]:
        """Row ids of the rows with these document ids (ext_id)."""
        want = list(dict.fromkeys(str(e) for e in ext_ids))
        out: list[int] = []
        with self._errors("read"):
            for start in range(0, len(want), 500):
                chunk = want[start : start + 500]
                q = f"SELECT id FROM docs WHERE ext_id IN ({','.join('?' * len(chunk))})"
                out += [int(r[0]) for r in self.db.execute(q, chunk)]
        return sorted(out)

    def lexical_state(self) -> dict[str, int | str]:
        """``state``: 'none' (an older docstore), 'partial' (being added: ``indexed`` of ``rows``)
        or 'ready'; ``documents``: what the lexical index holds (its N)."""
        with self._errors("read"):
            if not self.has_lexical:
                return {"state": "none", "documents": 0, "indexed": 0, "rows": self.count()}
            n = self._meta("n_docs") or 0
            if self._meta("ready") == 1:
                return {"state": "ready", "documents": n, "indexed": self.count(), "rows": self.count()}
            upto = self._meta("backfilled")
            done = self.db.execute("SELECT COUNT(*) FROM docs WHERE id <= ?", (-1 if upto is None else upto,))
            return {"state": "partial", "documents": n, "indexed": int(done.fetchone()[0]), "rows": self.count()}

    def lexical_ids(self) -> np.ndarray:
        """The ids the lexical index holds (its segments' ids less the deleted ones), ascending."""
        with self._errors("read"):
            if not self.has_lexical:
                return np.zeros(0, np.int64)
            seg_of = lexical_segments._live(self.db)[0]
        return np.flatnonzero(seg_of >= 0).astype(np.int64)

    def check_lexical(self) -> str | None:
        """None when the lexical index holds exactly the rows it should (every row when ready, the
        rows up to the backfill mark while being added), with N equal to their count; else what
        differs, in one line."""
        if not self.has_lexical:
            return None
        with self._errors("check"):
            upto = self._lexical_upto()
            if upto is None:
                return "lexical index without its 'ready' mark"
            rows = self.ids()
            rows = rows[rows <= upto]
            lex = self.lexical_ids()
            n = self._meta("n_docs")
        if n != len(rows):
            return f"the lexical index counts {n} documents, the docstore has {len(rows)} to index"
        if len(lex) != len(rows) or not np.array_equal(lex, rows):
            extra, missing = np.setdiff1d(lex, rows), np.setdiff1d(rows, lex)
            return (
                f"the lexical index holds {len(extra)} ids the docstore lacks and lacks {len(missing)} of its rows"
                + (f" (e.g. id {int((extra if len(extra) else missing)[0])})" if len(extra) or len(missing) else "")
            )
        return None

    def compact_lexical(self) -> None:
        """Rewrites the lexical index as one segment without its deleted rows; then VACUUM gives the
        freed pages back to the file system. Each step is one transaction."""
        with self._errors("write"):
            if self.has_lexical:
                lexical_segments.compact(self.db)
                self.db.commit()
            self.db.execute("VACUUM")

    def commit(self) -> None:
        with self._errors("write"):
            self.db.commit()

    def get(self, ids: Iterable[int]) -> dict[int, StoredDoc]:
        ids = [int(i) for i in ids if i >= 0]
        out: dict[int, StoredDoc] = {}
        with self._errors("read"):
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                q = f"SELECT id, ext_id, title, text, meta FROM docs WHERE id IN ({','.join('?' * len(chunk))})"
                for i, ext, title, text, meta in self.db.execute(q, chunk):
                    out[i] = StoredDoc(str(ext), str(title or ""), str(text), str(meta or ""))
        return out

    def check_integrity(self) -> None:
        """SQLite's own check of every page and index (``PRAGMA quick_check``); raises on damage."""
        with self._errors("check"):
            rows = [r[0] for r in self.db.execute("PRAGMA quick_check")]
        if rows != ["ok"]:
            first = rows[0] if len(rows[0]) <= 200 else rows[0][:200] + "..."  # one readable line
            raise DocStoreDamagedError(
                f"document store {self.path} is damaged: {first}"
                + (f" (+{len(rows) - 1} more)" if len(rows) > 1 else "")
            )

    def count_above(self, max_id: int) -> int:
        """Rows past the index's last committed id: the texts of a batch whose codes were never
        committed (a crash or error between the two commits); the next append drops them."""
        with self._errors("read"):
            return int(self.db.execute("SELECT COUNT(*) FROM docs WHERE id > ?", (int(max_id),)).fetchone()[0])

    def count(self) -> int:
        with self._errors("read"):
            return int(self.db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])
