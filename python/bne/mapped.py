"""The file-backed index: :class:`MappedIndex` (``bne.open``), an index file mapped read-only and
searched in place, with its snapshots (what one call reads while ``refresh()`` follows a writer)
and, in append mode, the writer's add / remove / commit / compact.

It searches through the same code path as the in-memory :class:`bne.Index` (``index._SearchMixin``);
the file's layout is ``fileformat``'s, its writes are ``storage``'s.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, cast

import numpy as np

from . import _core, fileformat, storage
from .codes import check_bit_order, check_bits, check_codes
from .errors import IndexFormatError
from .index import _Part, _Rows, _SearchMixin


class _Snapshot(_SearchMixin):
    """One state of a MappedIndex: a commit's segments (plus a writer's pending codes), its
    tombstones and the caches built over them. Every read of the index (search, ids, lookups)
    goes through the snapshot current when it starts, so a refresh() in another thread, which
    installs a new snapshot with one assignment, never mixes two commits inside one call. The
    numpy views keep their mapping alive while a snapshot uses them.

    It holds its MappedIndex through a weak reference: a strong one would make a cycle, and a
    writer or reader dropped without close() would keep its descriptor (and the writer lock)
    until the cycle collector ran. Every call that reads a snapshot runs inside a method of its
    MappedIndex, which keeps the owner alive for that call."""

    def __init__(self, owner: MappedIndex, parts: list[_Part], tomb: np.ndarray, end: int, fd: int) -> None:
        self._owner_ref = weakref.ref(owner)
        self._p, self._tomb, self._end, self._fd = parts, tomb, end, fd
        self._ino = os.fstat(fd).st_ino  # which file: a descriptor number can be reused
        self.bits, self.code_bytes, self.path = owner._header.bits, owner._header.code_bytes, owner.path
        self._own_fd = -1  # set when a refresh moved the index to a new file: this closes the old one
        self._changed()

    def _parts(self) -> list[_Part]:
        return self._p

    def _tombstones(self) -> np.ndarray:
        return self._tomb

    def _check_mapping(self) -> None:
        owner = self._owner_ref()
        if owner is None:
            raise ValueError(f"{self.path}: index is closed")
        owner._check_open()
        st = os.fstat(owner._fd)
        if self._fd != owner._fd or self._ino != st.st_ino:  # a file replaced since: never truncated
            return
        size = st.st_size
        if size < self._end:
            raise IndexFormatError(
                f"{self.path}: the file shrank to {size} bytes while open (it held "
                f"{self._end}); another program truncated it; reopen it"
            )

    def __del__(self) -> None:
        if self._own_fd >= 0:
            os.close(self._own_fd)


class MappedIndex(_SearchMixin):
    """An index file mapped read-only into memory. :func:`bne.open` is the entry point and
    documents the parameters; they are defined here, once, and ``open`` forwards them.

    Searches read the codes straight from the mapping. In mode ``"a"`` the index also takes
    ``add`` / ``remove``; they are visible to this object's searches at once and reach the file
    at ``commit()``. Changes not committed are lost when the object is closed or the process dies.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        mode: str = "r",
        *,
        verify: bool = False,
        expect_bits: int | None = None,
        bits: int | None = None,
        metadata: dict | None = None,
        bit_order: str | None = None,
        repair: bool = False,
    ) -> None:
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' (read-only) or 'a' (append), got {mode!r}")
        if bit_order is not None:
            check_bit_order(bit_order)
        self.path = os.fspath(path)
        self.mode = mode
        self._fd = -1
        self._closed = False
        self._refresh_lock = threading.Lock()
        if mode == "a" and not os.path.lexists(self.path):
            if bits is None:
                raise FileNotFoundError(f"{self.path}: no such index; pass bits=... to create one")
            with contextlib.suppress(FileExistsError):  # another process created it first: append to theirs
                storage.save_atomic(
                    self.path,
                    storage.new_header(check_bits(bits), bit_order or "big", metadata),
                    [],
                    -1,
                    overwrite=False,
                )
        self._fd = storage.lock_writer(self.path) if mode == "a" else storage.open_index_file(self.path, False)
        try:
            self._load(warn=not verify)
            expect_bits = expect_bits if expect_bits is not None else bits
            if expect_bits is not None and expect_bits != self.bits:
                raise IndexFormatError(f"{self.path}: index holds {self.bits}-bit codes, expected {expect_bits}")
            if bit_order is not None and bit_order != self.bit_order:  # distances would be silently wrong
                raise IndexFormatError(
                    f"{self.path}: index holds codes in {self.bit_order!r} bit order, expected {bit_order!r}"
                )
            if mode == "a":
                self._repair(repair)
                storage.clean_temps(storage.real_target(self.path))
            if verify:
                self.verify()
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise

    # -- state ------------------------------------------------------------------------------
    def _load(self, warn: bool = True) -> None:
        size = os.fstat(self._fd).st_size
        self._header, self._commit, self._problems = fileformat.read_state(self.path, self._fd, size)
        self._mm = storage.map_file(self._fd, self._commit.end_offset)
        self._segments = []
        base = 0
        for seg in self._commit.segments:
            if seg.count:  # a crafted file may list many empty segments: they hold nothing to scan
                codes, ids = fileformat.segment_arrays(self._mm, self._header, seg)
                self._segments.append(_Part(base, seg.count, ids, codes=codes))
            base += seg.count
        # Codes added since the last commit, held once (searched and written from these rows).
        self._pending_codes = _Rows(self._header.code_bytes, np.uint8)
        self._pending_ids = _Rows(None, np.int64)
        self._tomb = self._commit.tombstones
        self._max_id = self._commit.max_id
        self._changed()
        if self._problems and self.mode == "r" and warn:
            what = fileformat.describe_problems(self._problems, self._commit, size)
            warnings.warn(
                f"{self.path}: {what}; opened commit {self._commit.seq}; `bne verify` reports it and "
                f"bne.open(path, mode='a') repairs it",
                RuntimeWarning,
                2,
            )

    def _repair(self, allow_loss: bool) -> None:
        """Writer only: forget a torn tail and rewrite bad commit slots, unless that could throw
        away a commit whose record was lost (then refuse, unless repair=True)."""
        size = os.fstat(self._fd).st_size
        if not allow_loss and fileformat.may_hide_a_commit(self._problems, self._commit, size):
            what = fileformat.describe_problems(self._problems, self._commit, size)
            raise IndexFormatError(
                f"{self.path}: {what}. Nothing was changed; to keep commit {self._commit.seq} and "
                f"drop those bytes, back the file up and open it with bne.open(path, 'a', repair=True)"
            )
        if storage.repair(self._fd, self._commit, self._problems):
            self._problems = []

    def refresh(self) -> bool:
        """Follows a writer: maps the commits made since this object opened (or last refreshed)
        and returns True, or returns False when there is none (a stat and two small reads).

        A long-lived reader (a service holding ``bne.open(path)``) calls it before a search, or
        every few seconds; without it the object keeps searching the commit it mapped. A file
        replaced by ``compact()`` or ``save()`` is reopened. Searches running in other threads
        finish on the state they started with; later ones see the new commits. In append mode
        the object is the writer and always current: False.
        """
        self._check_open()
        if self.mode == "a":
            return False
        with self._refresh_lock:
            st, cur = os.stat(self.path), os.fstat(self._fd)
            if (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino):
                if fileformat.latest_seq(self._fd) == self._commit.seq:
                    return False
                self._reload(self._fd)
                return True
            fd = storage.open_index_file(self.path, False)
            try:
                self._reload(fd)
            except BaseException:
                os.close(fd)
                raise
            return True

    def _reload(self, fd: int) -> None:
        """Maps the newest commit of `fd` (this file, or the file now at the path); on any
        error the object keeps its state."""
        old_fd, old_snap = self._fd, self._snap
        saved = dict(self.__dict__)
        try:
            self._fd = fd
            self._load()
            if self.bits != saved["_header"].bits:
                raise IndexFormatError(
                    f"{self.path}: replaced by an index of {self.bits}-bit codes (this one holds "
                    f"{saved['_header'].bits}); open it again"
                )
        except BaseException:
            self.__dict__.update(saved)
            raise
        if fd != old_fd:
            old_snap._own_fd = old_fd  # closed when the last search of the old file lets go

    def _check_mapping(self) -> None:
        self._snap._check_mapping()

    def _changed(self) -> None:
        parts = self._segments
        if len(self._pending_codes):
            pending = _Part(
                self._commit.count, len(self._pending_codes), self._pending_ids.view(), codes=self._pending_codes.view()
            )
            parts = [*self._segments, pending]
        self._snap = _Snapshot(self, parts, self._tomb, self._commit.end_offset, self._fd)

    def _parts(self) -> list[_Part]:
        return self._snap._parts()

    # Reads go through one snapshot (see _Snapshot): consistent while refresh() swaps it.
    @property
    def npositions(self) -> int:
        return self._snap.npositions

    def __len__(self) -> int:
        return len(self._snap)

    def removed_positions(self) -> np.ndarray:
        return self._snap.removed_positions()

    def ids(self) -> np.ndarray:
        return self._snap.ids()

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        return self._snap.ids_at(positions)

    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        return self._snap._lookup()

    def positions_of(self, ids: np.typing.ArrayLike) -> np.ndarray:
        return self._snap.positions_of(ids)

    def reconstruct(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._snap.reconstruct(ids)

    def search(
        self, queries: np.ndarray, k: int, *, threads: int | None = None, allow: object = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._snap.search(queries, k, threads=threads, allow=allow)

    def search_positions(
        self, queries: np.ndarray, k: int, *, threads: int | None = None, allow: object = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._snap.search_positions(queries, k, threads=threads, allow=allow)

    def range_search(
        self,
        queries: np.ndarray,
        radius: int,
        *,
        threads: int | None = None,
        allow: object = None,
        max_results: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._snap.range_search(queries, radius, threads=threads, allow=allow, max_results=max_results)

    search.__doc__ = _SearchMixin.search.__doc__
    search_positions.__doc__ = _SearchMixin.search_positions.__doc__
    range_search.__doc__ = _SearchMixin.range_search.__doc__

    def _tombstones(self) -> np.ndarray:
        return self._tomb

    def _check_open(self) -> None:
        if self._closed or self._fd < 0:
            raise ValueError(f"{self.path}: index is closed")

    def _check_writable(self, what: str) -> None:
        self._check_open()
        if self.mode != "a":
            raise PermissionError(f"{self.path}: opened read-only; {what} needs bne.open(path, mode='a')")

    # -- properties -------------------------------------------------------------------------
    bits = property(lambda self: self._header.bits)
    code_bytes = property(lambda self: self._header.code_bytes)
    bit_order = property(lambda self: self._header.bit_order)
    metadata = property(lambda self: dict(self._header.metadata))

    def info(self) -> dict[str, Any]:
        """Format version, bits, counts, segments, commit number, metadata, file size."""
        d = fileformat.describe(self._header, self._commit)
        d.update(
            path=self.path,
            file_bytes=os.fstat(self._fd).st_size if self._fd >= 0 else None,
            pending=self.npositions - self._commit.count,
            isa=_core.active_isa(),
        )
        return d

    def segments(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Zero-copy read-only (codes, ids) views of each committed segment inside the mapping."""
        out = []
        for p in self._segments:
            assert p.ids is not None  # a file segment always stores its ids
            out.append((p.codes, p.ids))
        return out

    def codes(self) -> np.ndarray:
        """All stored codes (removed ones included): the mapped array itself for a one-segment
        file (no copy), a concatenated copy otherwise."""
        self._check_mapping()
        parts = [p.codes for p in self._parts()]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.empty((0, self.code_bytes), np.uint8)

    def __repr__(self) -> str:
        return f"bne.MappedIndex({self.path!r}, mode={self.mode!r}, bits={self.bits}, ntotal={len(self)})"

    # -- writing ----------------------------------------------------------------------------
    def add(self, codes: np.ndarray, ids: object = None) -> None:
        """Adds codes (and int64 ids; default: the next integers after the largest id) to the
        pending batch; searchable at once by this object, durable after ``commit()``."""
        self._check_writable("add")
        c = check_codes(codes, "codes", self.code_bytes)
        new = self._new_ids(len(c), ids, self._max_id)
        if not len(c):
            return
        self._pending_codes.append(c)
        self._pending_ids.append(new)
        self._max_id = max(self._max_id, int(new.max()))
        self._changed()

    def remove(self, ids: np.typing.ArrayLike) -> int:
        """Marks the codes with these ids removed (tombstones written at ``commit()``); returns
        how many were live."""
        self._check_writable("remove")
        pos = self._positions_to_remove(ids)
        self._tomb = np.union1d(self._tomb, pos).astype(np.int64)
        self._changed()
        return len(pos)

    def commit(self) -> None:
        """Makes every add/remove so far durable (fsync). After a crash the file opens with every
        committed code and nothing of what was not committed."""
        self._check_writable("commit")
        if (
            not len(self._pending_codes)
            and np.array_equal(self._tomb, self._commit.tombstones)
            and self._max_id == self._commit.max_id
        ):
            return
        parts = [(self._pending_codes.view(), self._pending_ids.view())] if len(self._pending_codes) else []
        storage.write_commit(self._fd, self._header, self._commit, parts, self._tomb, self._max_id)
        self._load()

    def compact(self, path: str | os.PathLike | None = None) -> None:
        """Writes the live codes and ids (no tombstones, one segment) to a new file, atomically.
        Without ``path`` (append mode only) the new file replaces this one and this object
        switches to it; readers of the old file keep their mapping."""
        self._check_open()
        if path is None:
            self._check_writable("compact() in place")
            self.commit()
        self._check_mapping()
        keep = np.ones(self.npositions, bool)
        keep[self._tomb] = False
        codes, ids = self.codes()[keep], self.ids()[keep]
        header = storage.new_header(self.bits, self.bit_order, self._header.metadata)
        if path is not None:
            storage.save_atomic(path, header, [(codes, ids)], self._max_id)
            return
        self._fd = storage.replace_locked(self._fd, self.path, header, [(codes, ids)], self._max_id)
        self._load()

    # -- checking and closing -----------------------------------------------------------------
    def verify(self) -> None:
        """Recomputes every checksum (header, commit records, table, codes and ids of every
        segment); raises IndexFormatError naming the first damaged part."""
        self._check_open()
        size = os.fstat(self._fd).st_size
        _, commit, problems = fileformat.read_state(self.path, self._fd, size)
        if problems:
            raise IndexFormatError(f"{self.path}: {fileformat.describe_problems(problems, commit, size)}")
        self._check_mapping()
        fileformat.verify_segments(self.path, self._mm, self._header, self._commit)
        ids = self.ids()
        if len(ids) and (ids.min() < 0 or ids.max() > self._commit.max_id):
            raise IndexFormatError(
                f"{self.path}: stored ids lie outside 0..{self._commit.max_id} (the recorded largest id)"
            )
        self._lookup()  # repeated ids

    def close(self) -> None:
        """Releases the file (and the writer lock); uncommitted changes are discarded."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._closed = True

    def __enter__(self) -> MappedIndex:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        """Commits (append mode, on success) and closes."""
        try:
            if exc_type is None and self.mode == "a" and not self._closed:
                self.commit()
        finally:
            self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1


P = ParamSpec("P")


def _parameters_of(cls: Callable[P, MappedIndex]) -> Callable[[Callable[..., MappedIndex]], Callable[P, MappedIndex]]:
    """Gives the decorated forwarder the parameters of ``cls`` (for mypy, help() and IDEs), so
    that they are written once, in ``MappedIndex.__init__``."""

    def apply(fn: Callable[..., MappedIndex]) -> Callable[P, MappedIndex]:
        sig = inspect.signature(cls).replace(return_annotation=cls.__name__)
        fn.__signature__ = sig  # type: ignore[attr-defined]
        return cast(Callable[P, MappedIndex], fn)

    return apply


@_parameters_of(MappedIndex)
def open(*args: Any, **kwargs: Any) -> MappedIndex:
    """Opens an index file written by ``Index.save`` or by a writer, as a :class:`MappedIndex`
    (its parameters, which ``help(bne.open)`` shows, are defined once, there).

    ``mode="r"``: read-only mapping; opening reads a few pages whatever the file size.
    ``mode="a"``: append (one writer at a time, a file lock); creates the file when ``bits`` is
    given and it does not exist. ``verify=True`` checks every checksum first. ``expect_bits``
    raises IndexFormatError when the file holds codes of another width; ``bit_order`` ('big' or
    'little') likewise when the file records the other order (None: whatever the file has; a
    new file gets 'big' unless given). A writer repairs what a
    crash leaves (a torn tail, a torn commit slot) but refuses a file where that could drop a
    commit whose record was lost (a zeroed slot with data after the last valid commit);
    ``repair=True`` accepts that loss explicitly.
    """
    return MappedIndex(*args, **kwargs)
