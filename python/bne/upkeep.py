"""Keeping a collection's three stores in step: the index's codes, the docstore's rows and the
lexical (BM25) postings beside those rows (issue 17). What :class:`bne.Collection`'s ``add``,
``add_lexical_index``, ``remove``, ``compact``, ``info`` and ``verify`` do beyond the index.

The order of the commits is what keeps them consistent after a crash at any point:

* **add**: rows and their postings in one docstore transaction, then the codes (:mod:`bne.ingest`).
  A crash between leaves rows past the index's last id: the next add drops them.
* **remove**: the codes' tombstones first, then the rows and their postings in one docstore
  transaction. A crash between leaves rows whose ids are not live: searches filter by the live
  ids already, and the next add / remove / compact drops them (:func:`drop_stale`).
* **compact**: the stale rows, then the index file, then the stale rows again (none, unless a
  crash came between), then the postings as one segment and a VACUUM of the docstore.
* **adding the lexical index to an older docstore**: resumable steps in id order
  (:meth:`bne.docstore.DocStore.add_lexical`); rows added meanwhile are indexed by the steps too.

An index and its docstore are bound by a random tag written into both when a new collection is
created (``docstore_tag``: the index's metadata, the docstore's ``lexp_meta``), so a docstore of
another collection put beside an index is refused at open (:func:`check_tag_at`, two small reads)
and by ``verify``, which also checks that every live code has its row (:func:`verify_coverage`).
Collections of an older bne have no tag on either side and are checked by coverage only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from .docstore import LEXICAL_STEP, TAG_KEY, DocStore, path_for
from .errors import CollectionError, DocStoreError, DocStoreMismatchError

LexicalProgress = Callable[[int, int], None]  # (rows indexed, rows in all), after each committed step


def live_ids(index: Any) -> np.ndarray:
    """The index's live ids, ascending."""
    ids = np.delete(index.ids(), index.removed_positions())
    return np.sort(ids)


def drop_stale(store: DocStore, index: Any) -> int:
    """Drops the rows (and postings) whose ids are not live in the index: past its last commit (a
    crash between the two commits of an add) or removed from it (a crash between the two commits
    of a remove). Returns how many. Cheap when there are none: every live id has its row, so equal
    counts mean equal sets."""
    dropped = store.delete_above(index.info()["max_id"])
    if store.count() == len(index):
        return dropped
    rows = store.ids()
    return dropped + store.delete_ids(rows[~np.isin(rows, live_ids(index))])


def writable_or_say(store_path: str) -> None:
    """Raises CollectionError, in one line, when the docstore file or its folder is not writable
    (SQLite's rollback journal is created beside the file): nothing is written then."""
    folder = os.path.dirname(os.path.abspath(store_path))
    if not os.access(store_path, os.W_OK):
        why = "the file is read-only"
    elif not os.access(folder, os.W_OK):
        why = "its folder is not writable"
    else:
        return
    raise CollectionError(f"cannot add the lexical index to {store_path}: {why} (nothing was changed)")


@contextlib.contextmanager
def writer(coll: Any, what: str) -> Iterator[DocStore]:
    """The docstore of a writable collection with one, opened for writing, closed after."""
    if not coll.writable:
        raise CollectionError(f"{coll.path} is open read-only")
    if coll.sharded or coll.index is None:
        raise CollectionError(f"{coll.path}: cannot {what} a folder of shards or an empty collection")
    if not os.path.exists(coll.docstore_path):
        raise CollectionError(f"cannot {what} {coll.path}: its docstore {coll.docstore_path} is missing")
    store = coll._writer_store()
    try:
        yield store
    finally:
        store.close()


def add_lexical_index(coll: Any, progress: LexicalProgress | None, step: int) -> bool:
    """:meth:`bne.Collection.add_lexical_index`."""
    if coll.writable and not coll.sharded and os.path.exists(coll.docstore_path):
        ro = DocStore(coll.path)  # read-only: a ready docstore is never opened for writing
        try:
            if ro.lexical_ready:
                return True
        finally:
            ro.close()
        writable_or_say(coll.docstore_path)
    with writer(coll, "add the lexical index to") as store:
        drop_stale(store, coll.index)
        return add_lexical(store, progress, step)


def add_lexical(store: DocStore, progress: LexicalProgress | None = None, step: int = LEXICAL_STEP) -> bool:
    """Adds the missing part of the lexical index, ``step`` rows per commit. False when Ctrl-C
    (KeyboardInterrupt) stopped it: the committed steps stay, and the next call goes on after them."""
    if store.lexical_ready:
        return True
    writable_or_say(store.path)
    try:
        for done, total in store.add_lexical(step):
            if progress is not None:
                progress(done, total)
    except KeyboardInterrupt:
        store.db.rollback()  # the step in flight is dropped; the ones before it are committed
        return False
    return True


def remove(store: DocStore, index: Any, ext_ids: Iterable[str]) -> tuple[int, list[str]]:
    """Removes the documents with these ids: (codes removed, the ids not found, in the order given)."""
    drop_stale(store, index)  # an earlier crash's rows first: their ext_ids are not in the collection
    wanted = list(dict.fromkeys(str(e) for e in ext_ids))
    ids = store.ids_of(wanted)
    found = {d.ext_id for d in store.get(ids).values()}
    removed = index.remove(np.asarray(ids, np.int64)) if ids else 0
    index.commit()  # the tombstones first: a crash before the rows go leaves rows no search returns
    store.delete_ids(ids)
    return removed, [e for e in wanted if e not in found]


def compact(store: DocStore, index: Any) -> None:
    drop_stale(store, index)
    index.compact()
    drop_stale(store, index)  # none, unless a crash came between the index's compaction and here
    store.compact_lexical()


def lexical_info(store: DocStore) -> dict[str, Any]:
    """The lexical index's state for ``info``: 'none', 'partial' (being added) or 'ready'."""
    return store.lexical_state()


def verify_lexical(store: DocStore, index: Any) -> dict[str, Any]:
    """The lexical index against the docstore (ids and N); raises DocStoreError in one line on a
    mismatch. Also counts the rows whose ids are not live in the index ('stale')."""
    problem = store.check_lexical()
    if problem is not None:
        raise DocStoreError(f"document store {store.path}: {problem} (rebuild the index to repair it)")
    rows = store.ids()
    stale = rows[rows <= index.info()["max_id"]]
    out = store.lexical_state()
    out["stale"] = int((~np.isin(stale, live_ids(index))).sum())
    return out


# -- the index and its docstore: one collection ----------------------------------------------------


def index_tag(metadata: dict, index_path: str) -> int | None:
    """The docstore tag an index's metadata records (None: an index of an older bne)."""
    tag = metadata.get(TAG_KEY)
    if tag is None:
        return None
    if not isinstance(tag, int) or isinstance(tag, bool) or not 0 <= tag < 2**63:
        raise DocStoreMismatchError(f"{index_path}: its {TAG_KEY} metadata is not a 63-bit integer (damaged)")
    return tag


def check_tag(store: DocStore, metadata: dict, index_path: str) -> None:
    """Raises DocStoreMismatchError when ``store`` was not made for this index. Mismatches: both
    record a tag and they differ; the index records one and the docstore none (an older docstore, or
    another collection's, beside a new index); the docstore records one and the index none (the
    docstore of a newer collection beside an older index). Neither records one: an older collection,
    which verify checks by coverage only."""
    mine, theirs = index_tag(metadata, index_path), store.tag
    if mine == theirs:
        return
    if mine is None:
        why = "the docstore records a tag, the index none"
    elif theirs is None:
        why = "the index records a tag, the docstore none"
    else:
        why = "their tags differ"
    raise DocStoreMismatchError(
        f"{store.path} belongs to another index than {index_path} ({why}): restore its own docstore, or rebuild"
    )


def check_tag_at(index_path: str, metadata: dict) -> None:
    """:func:`check_tag` for the docstore beside ``index_path``, at open: one SQLite open and one
    row. A missing or unreadable docstore passes here: search, info and verify report those."""
    if not os.path.exists(path_for(index_path)):
        return
    try:
        store = DocStore(index_path)
    except (FileNotFoundError, DocStoreError):
        return
    try:
        check_tag(store, metadata, index_path)
    except DocStoreError:  # unreadable lexp_meta: verify names it
        pass
    finally:
        store.close()


def verify_coverage(store: DocStore, index: Any, index_path: str) -> None:
    """Every live id of the index has its row (rows past the last commit and rows of removed ids
    are counted elsewhere); raises DocStoreMismatchError in one line otherwise. Sorted ids and one
    searchsorted: O(N log N), about a second at 1M."""
    live, rows = live_ids(index), store.ids()
    pos = np.searchsorted(rows, live)
    have = pos < len(rows)
    have[have] = rows[pos[have]] == live[have]
    missing = live[~have]
    if len(missing):
        raise DocStoreMismatchError(
            f"document store {store.path}: {len(missing)} of {len(live)} live codes of {index_path} have no "
            f"text ({_id_runs(missing)}): it does not belong to this index, or rows were lost"
        )


def _id_runs(ids: np.ndarray, shown: int = 3) -> str:
    """'ids 1368..1999, 2005, ...': the first runs of consecutive ids (``ids`` ascending)."""
    cut = np.flatnonzero(np.diff(ids) != 1) + 1
    starts, ends = np.r_[0, cut], np.r_[cut, len(ids)] - 1
    parts = [
        f"{int(ids[a])}" if a == b else f"{int(ids[a])}..{int(ids[b])}"
        for a, b in zip(starts[:shown], ends[:shown], strict=True)
    ]
    return ("id " if len(ids) == 1 else "ids ") + ", ".join(parts) + (", ..." if len(starts) > shown else "")
