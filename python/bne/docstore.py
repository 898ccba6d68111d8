"""The SQLite document store written beside an index by ``bne build``: id -> text, title, metadata.

The index's int64 ids are the store's row ids; a document's own id is kept as ``ext_id``.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Iterable, Sequence

from .corpus import Doc

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (id INTEGER PRIMARY KEY, ext_id TEXT NOT NULL, title TEXT, text TEXT NOT NULL, meta TEXT);
CREATE INDEX IF NOT EXISTS docs_ext_id ON docs(ext_id);
"""


def path_for(index_path: str | os.PathLike) -> str:
    return os.fspath(index_path) + ".docs.sqlite"


class DocStore:
    def __init__(self, index_path: str | os.PathLike, *, create: bool = False) -> None:
        self.path = path_for(index_path)
        if not create and not os.path.exists(self.path):
            raise FileNotFoundError(f"document store not found: {self.path}")
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a commit here is durable, like the index's
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def max_id(self) -> int:
        row = self.db.execute("SELECT MAX(id) FROM docs").fetchone()
        return -1 if row[0] is None else int(row[0])

    def ext_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT ext_id FROM docs")}

    def insert(self, ids: Sequence[int], docs: Sequence[Doc]) -> None:
        self.db.executemany("INSERT INTO docs (id, ext_id, title, text, meta) VALUES (?, ?, ?, ?, ?)",
                            [(int(i), d.ext_id, d.title, d.text, d.meta) for i, d in zip(ids, docs)])

    def delete_above(self, max_id: int) -> int:
        """Drops rows past the index's last committed id (left by a crash between the two commits)."""
        cur = self.db.execute("DELETE FROM docs WHERE id > ?", (int(max_id),))
        self.db.commit()
        return cur.rowcount

    def commit(self) -> None:
        self.db.commit()

    def get(self, ids: Iterable[int]) -> dict[int, tuple[str, str, str]]:
        ids = [int(i) for i in ids if i >= 0]
        out: dict[int, tuple[str, str, str]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            q = f"SELECT id, ext_id, title, text FROM docs WHERE id IN ({','.join('?' * len(chunk))})"
            for i, ext, title, text in self.db.execute(q, chunk):
                out[i] = (ext, title or "", text)
        return out

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])
