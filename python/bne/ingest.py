"""The threaded add pipeline of a :class:`bne.Collection`: a reader thread ahead of the encoder,
the encoder on the caller's thread, and a committer thread that commits each batch to the
docstore first, then to the index (so every committed index id has its document). Also the
file identities that let a failed new build remove only its own files."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import storage
from .corpus import Doc, doc_text
from .docstore import DocStore
from .encoder.backend import INT8_MIN_DOCS

#: Rows encoded per call while building: the progress bar moves this often, and the encoder
#: still sorts this many texts by length to pad little.
ENCODE_CHUNK = 512
#: Documents the reader may hold ahead of the encoder: enough to tell the model whether
#: INT8_MIN_DOCS come and to keep it fed, while memory follows the work, not the input's size.
READ_AHEAD = INT8_MIN_DOCS + 2 * ENCODE_CHUNK
#: The same bounds in characters of text, for corpora of long documents (a 1 MB text per line):
#: the reader's queue, an encoded chunk and a commit batch each stop growing past these, whatever
#: their document counts (a batch's lexical index costs about 12 bytes per character to build).
READ_AHEAD_CHARS = 128 * 2**20
CHUNK_CHARS = 32 * 2**20
COMMIT_CHARS = 64 * 2**20


def doc_chars(d: Doc) -> int:
    return len(d.text) + len(d.title)


@dataclass
class AddResult:
    added: int = 0  # documents committed by this call
    present: int = 0  # documents skipped: already in the collection
    repeated: int = 0  # documents skipped: their id came earlier in this input (the first is kept)
    dropped: int = 0  # rows an interrupted earlier add left in the docstore, removed
    total: int = 0  # documents in the input (read so far, if it was not read to its end)
    interrupted: bool = False
    seconds: float = 0.0


@dataclass
class Progress:
    """Passed to ``add(progress=...)`` after each encoded chunk and each commit."""

    encoded: int
    committed: int
    total: int | None  # documents to encode, once the reader has seen the whole input
    started: float = field(default_factory=time.perf_counter)


def run_pipeline(
    reader: Reader,
    encoder: Any,
    committer: Committer,
    seen: set[str],
    legacy: Callable[[list[Doc]], set[str]],
    result: AddResult,
    batch_size: int,
    commit_every: int,
    progress: Callable[[Progress], None] | None,
) -> None:
    """Reads, encodes and hands batches of ``commit_every`` new documents to ``committer``;
    ``seen``/``legacy`` tell the documents already present (counted in ``result.present``); a
    document whose id came earlier in this input is skipped too (``result.repeated``)."""
    started = time.perf_counter()
    encoded = 0
    pending: list[Doc] = []
    codes: list[np.ndarray] = []
    mine: set[str] = set()  # the ids of this input so far

    def report() -> None:
        if progress is not None:
            total = None if reader.total is None else reader.total - result.present - result.repeated
            progress(Progress(encoded, committer.committed, total, started))

    report()  # the model is loaded: the caller can say "encoding" before the first chunk is done
    pending_chars = 0
    for chunk in reader.chunks(ENCODE_CHUNK):
        result.total += len(chunk)
        todo = [d for d in chunk if d.ext_id not in seen]
        if len(todo) < len(chunk) or seen:
            old = legacy(todo)
            todo = [d for d in todo if d.ext_id not in old]
        result.present += len(chunk) - len(todo)
        # one document per id, as across --append: a later line with the same id is skipped (its
        # text would otherwise be a second document under the id, and remove would drop both)
        kept = []
        for d in todo:
            if d.ext_id not in mine:
                mine.add(d.ext_id)
                kept.append(d)
        result.repeated += len(todo) - len(kept)
        todo = kept
        while todo:
            take: list[Doc] = []
            room = COMMIT_CHARS - pending_chars
            for d in todo[: commit_every - len(pending)]:  # at least one, then up to the character bound
                if take and doc_chars(d) > room:
                    break
                take.append(d)
                room -= doc_chars(d)
            todo = todo[len(take) :]
            codes.append(
                encoder.encode([doc_text(d.title, d.text) for d in take], batch_size=batch_size, show_progress=False)
            )
            pending += take
            pending_chars = COMMIT_CHARS - room
            encoded += len(take)
            report()
            if len(pending) == commit_every or room <= 0 or (todo and doc_chars(todo[0]) > room):
                committer.put(pending, np.concatenate(codes))
                pending, codes, pending_chars = [], [], 0
                report()
    if pending:
        committer.put(pending, np.concatenate(codes))
    committer.finish()  # every batch committed before the last report
    report()


def legacy_present(store: DocStore, todo: list[Doc]) -> set[str]:
    """ext_ids of .txt documents that a docstore of an older bne holds under their line number
    (same line number, same text), so appending or resuming over such a store adds nothing twice."""
    import json

    if store.version >= 1:
        return set()
    line_of = {d.ext_id: str(json.loads(d.meta)["line"]) for d in todo if d.ext_id.startswith("txt:") and d.meta}
    stored = store.texts_of(sorted(set(line_of.values())))
    return {d.ext_id for d in todo if d.ext_id in line_of and stored.get(line_of[d.ext_id]) == d.text}


class Reader:
    """Reads the input on its own thread, ahead of the encoder (the documents are small next to
    the time it takes to encode them), at most ``ahead`` documents ahead: memory follows the
    work, not the size of the input. The total is known once the reader reaches the end."""

    def __init__(self, docs: Iterable[Doc], ahead: int = READ_AHEAD, ahead_chars: int | None = None) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=ahead)
        self._chars = 0  # characters of text queued (bounded by ahead_chars as well as by count)
        self._ahead_chars = READ_AHEAD_CHARS if ahead_chars is None else ahead_chars
        self._chars_lock = threading.Lock()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.total: int | None = None
        self._thread = threading.Thread(target=self._read, args=(docs,), name="bne-read", daemon=True)
        self._thread.start()

    def _read(self, docs: Iterable[Doc]) -> None:
        n = 0
        try:
            for d in docs:
                while self._chars > self._ahead_chars and not self._q.empty() and not self._stop.is_set():
                    time.sleep(0.01)  # long documents: wait for the encoder to take some
                with self._chars_lock:
                    self._chars += doc_chars(d)
                if not self._put(d):
                    return
                n += 1
            self.total = n
            self._put(_END)
        except BaseException as e:  # handed to the consumer, raised there
            self.error = e
            self._put(_Failed(e))

    def _put(self, item: object) -> bool:
        """Waits for room in the queue; False once the consumer has stopped (Ctrl-C, an error):
        the reader must not stay blocked on a queue no one reads."""
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def count_up_to(self, n: int) -> int | None:
        """The number of documents, once the reader has seen them all or ``n`` of them (None: at
        least ``n``). Reading is fast next to encoding; this waits only for the first ``n``."""
        while True:
            total, queued = self.total, self._q.qsize()
            if total is not None:
                return total
            if queued >= min(n, self._q.maxsize or n) or self._chars > self._ahead_chars:
                return None  # a full queue (in count or characters): the reader waits for the encoder
            if self.error is not None:  # a bad input fails before the model is loaded
                raise self.error
            time.sleep(0.005)

    def chunks(self, size: int, max_chars: int | None = None) -> Iterator[list[Doc]]:
        max_chars = CHUNK_CHARS if max_chars is None else max_chars
        chunk: list[Doc] = []
        chars = 0
        while True:
            item = self._q.get()
            if item is _END:
                break
            if isinstance(item, _Failed):
                raise item.error
            chunk.append(item)
            chars += doc_chars(item)
            with self._chars_lock:
                self._chars -= doc_chars(item)
            if (
                len(chunk) == size
                or chars >= max_chars
                or (self._q.empty() and chunk and self.total is None and len(chunk) >= 64)
            ):
                yield chunk
                chunk, chars = [], 0
        if chunk:
            yield chunk

    def stop(self) -> None:
        self._stop.set()


_END = object()


@dataclass
class _Failed:
    error: BaseException


class Committer:
    """Commits batches on its own thread, in order: texts to the docstore, then codes to the index.
    One batch waits while another commits, so the encoder never waits on fsync. ``coll`` is the
    :class:`bne.Collection` being added to (its ``index``, ``path`` and ``_start_index``)."""

    def __init__(self, coll: Any, store: DocStore | None) -> None:
        self.coll, self.store = coll, store
        self.committed = 0
        self._q: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._failed = False  # stays set once raised: a batch queued behind a failed one is never committed
        self._thread = threading.Thread(target=self._run, name="bne-commit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._failed:
                continue  # drain: nothing more is committed after a failure
            docs, codes = item
            try:
                if self.coll.index is None:
                    self.store = self.coll._start_index()
                assert self.store is not None
                index = self.coll.index
                next_id = index.info()["max_id"] + 1
                ids = np.arange(next_id, next_id + len(docs), dtype=np.int64)
                self.store.insert(ids, docs)
                index.add(codes, ids=ids)
                self.store.commit()  # the texts first: every committed index id then has its document
                with storage.naming(self.coll.path):  # ENOSPC/EIO of a write or fsync names the file
                    index.commit()
                self.committed += len(docs)
            except BaseException as e:
                self._error, self._failed = e, True
                self._discard()

    def _discard(self) -> None:
        """Forgets the failed batch's uncommitted rows, postings and codes: a later commit through
        the same objects must not carry them (codes whose texts were never committed)."""
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.db.rollback()
        if self.coll.index is not None:
            with contextlib.suppress(Exception):
                self.coll.index._load(warn=False)  # back to the file's last commit

    def put(self, docs: list[Doc], codes: np.ndarray) -> None:
        self._raise()
        self._q.put((docs, codes))

    def finish(self) -> None:
        """Waits for every batch handed over (idempotent), then raises the first commit error."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def remove_if_unused(path: str, ident: tuple[int, int], *, locked: bool) -> None:
    """Unlinks ``path`` if it is still the file ``ident`` and no other process writes it (we hold
    its writer lock, ``locked``, or can take it now)."""
    if locked:
        if file_identity(path) == ident:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return
    # still the file we created (by its descriptor and by its name), and no writer holds it
    storage.unlink_if_unlocked(path, lambda st: (st.st_dev, st.st_ino) == ident and file_identity(path) == ident)
