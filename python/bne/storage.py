"""Writing bne index files: the commit protocol, the one-writer lock, and atomic publication of
new files (save, compact). The layout and its validation live in ``fileformat``.

A commit writes its segment and table past the committed end, fsyncs, then writes the other
commit slot and fsyncs again. A crash at any point leaves the previous commit intact; bytes past
the committed end (a torn tail) are ignored by readers and cut off by the next writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import glob
import mmap
import os
import stat
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from . import fileio
from .codes import check_bit_order
from .errors import IndexLockedError
from .fileformat import (
    COMMIT,
    DATA_START,
    PAGE,
    SLOT_OFFSETS,
    Commit,
    Header,
    Segment,
    SlotProblem,
    align_up,
    crc32,
    encode_table,
    invalid,
)
from .fileio import StrPath

# A new tail segment reserves room for a quarter of the codes so far, within these bounds (bytes
# of codes): few segments for any commit size, and at most ~1/4 of the file reserved and unused
# (a sparse hole on Linux file systems until it fills).
SEGMENT_MIN_BYTES = 256 << 10
SEGMENT_MAX_BYTES = 16 << 20


# ---------------------------------------------------------------------------------------------
# Writing. All writes go through `io` (the os module by default) so tests can inject faults.


class _OsIO:
    open = staticmethod(os.open)
    pwrite = staticmethod(os.pwrite)
    fsync = staticmethod(os.fsync)
    replace = staticmethod(os.replace)
    ftruncate = staticmethod(os.ftruncate)
    close = staticmethod(os.close)
    fsync_dir = staticmethod(fileio.fsync_dir)


io = _OsIO()


def _pwrite_all(fd: int, data: Any, offset: int) -> None:  # any buffer
    view = memoryview(data).cast("B")
    while view.nbytes:
        n = io.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view, offset = view[n:], offset + n


@contextlib.contextmanager
def naming(path: StrPath, what: str = "cannot write the index") -> Iterator[None]:
    """An OSError raised inside (ENOSPC, EIO, EDQUOT from a write or fsync on a descriptor) is
    raised again naming `path`: ``x.bne: cannot write the index: No space left on device``, not a
    bare ``[Errno 28]``. Errors that already name a file pass unchanged."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None or isinstance(e, BlockingIOError):
            raise
        raise type(e)(e.errno, f"{what}: {e.strerror or e}", os.fspath(path)) from None


def _new_capacity(header: Header, n_new: int, count: int, reserve: bool) -> int:
    if not reserve or header.major == 1:  # version 1 has no reserved room; saves are exact
        return n_new
    cb = header.code_bytes
    lo, hi = -(-SEGMENT_MIN_BYTES // cb), max(1, SEGMENT_MAX_BYTES // cb)
    return max(n_new, min(max(count // 4, lo), hi))


def write_commit(
    fd: int,
    header: Header,
    prev: Commit | None,
    new_parts: list[tuple[np.ndarray, np.ndarray]],
    tombstones: np.ndarray,
    max_id: int,
    *,
    reserve: bool = True,
) -> Commit:
    """Writes the codes of `new_parts` ((codes, ids) pairs) and a commit; returns the new commit.

    New codes first fill the room reserved in the tail segment (bytes no committed reader looks
    at: they lie past its count), then go to a new page-aligned segment that reserves room for
    later commits (``reserve``; saves and version 1 files reserve none). Then the table past the
    committed end, fsync, then the commit record into the slot the current commit does not use,
    fsync. A crash before the second fsync leaves the previous commit as it was. A failed fsync
    raises and is never retried.
    """
    cb = header.code_bytes
    cursor = prev.end_offset if prev else DATA_START
    segments = list(prev.segments) if prev else []
    count = prev.count if prev else 0
    parts = [
        (np.ascontiguousarray(c, dtype=np.uint8), np.ascontiguousarray(i, dtype="<i8")) for c, i in new_parts if len(c)
    ]
    codes = (
        parts[0][0]
        if len(parts) == 1
        else np.concatenate([c for c, _ in parts])
        if parts
        else np.empty((0, cb), np.uint8)
    )
    ids = parts[0][1] if len(parts) == 1 else np.concatenate([i for _, i in parts]) if parts else np.empty(0, "<i8")
    if len(codes) and segments and segments[-1].capacity > segments[-1].count:
        tail = segments[-1]
        take = min(tail.capacity - tail.count, len(codes))
        c, i = codes[:take], ids[:take]
        _pwrite_all(fd, c, tail.codes_offset + tail.count * cb)
        _pwrite_all(fd, i, tail.ids_offset + tail.count * 8)
        # CRC-32 continues over appended bytes: O(new codes), not O(segment)
        segments[-1] = dataclasses.replace(
            tail,
            count=tail.count + take,
            codes_crc=zlib.crc32(c.data, tail.codes_crc),
            ids_crc=zlib.crc32(i.data, tail.ids_crc),
        )
        codes, ids, count = codes[take:], ids[take:], count + take
    if len(codes):
        cap = _new_capacity(header, len(codes), count, reserve)
        offset = align_up(cursor, PAGE)  # page-aligned codes: kernels read them in place
        _pwrite_all(fd, codes, offset)
        _pwrite_all(fd, ids, offset + cap * cb)
        seg = Segment(offset, len(codes), offset + cap * cb, crc32(codes), crc32(ids), cap)
        segments.append(seg)
        count += len(codes)
        cursor = seg.end()
    table_offset = align_up(cursor, 8)
    table = encode_table(segments, tombstones, header.major)
    _pwrite_all(fd, table, table_offset)
    io.fsync(fd)
    seq = (prev.seq if prev else 0) + 1
    slot = 1 - prev.slot if prev else 0
    commit = Commit(
        seq,
        count,
        segments,
        np.asarray(tombstones, np.int64),
        table_offset,
        len(table),
        table_offset + len(table),
        max_id,
        slot,
    )
    _pwrite_all(fd, commit.encode(crc32(table)), SLOT_OFFSETS[slot])
    io.fsync(fd)
    return commit


def create(fd: int, header: Header, parts: Sequence[tuple[np.ndarray, np.ndarray]] = (), max_id: int = -1) -> Commit:
    """Writes the header, empty commit slots and a first commit holding `parts` into an empty file."""
    _pwrite_all(fd, header.encode(), 0)
    _pwrite_all(fd, bytes(2 * PAGE), PAGE)
    return write_commit(fd, header, None, list(parts), np.empty(0, np.int64), max_id, reserve=False)


# ---------------------------------------------------------------------------------------------
# Files: opening, the writer lock, temporary files and atomic publication. Every index file bne
# creates or replaces goes through here.

TEMP_MAX_AGE = 60.0  # seconds: an unlocked temp file older than this is a dead writer's leftover


def open_index_file(path: StrPath, writable: bool) -> int:
    """A descriptor of the regular file at `path`. O_NONBLOCK so that a FIFO or a device given as
    an index never blocks in open(); anything but a regular file is refused by name."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a bne index file", os.fspath(path)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a bne index file", os.fspath(path))
        if not stat.S_ISREG(st.st_mode):
            raise invalid(path, "not a regular file (a FIFO, device or socket cannot hold an index)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_writer(path: StrPath) -> int:
    """Opens `path` read-write and takes the one-writer lock (flock, non-blocking).

    After the lock is held, the descriptor must still be the file at `path`: compact() and save()
    rename a new file over the path and only then release the old one, so a writer that opened
    the old inode just before would otherwise append to an unlinked file and lose every commit.
    """
    for _ in range(100):
        fd = open_index_file(path, writable=True)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise IndexLockedError(
                    f"{os.fspath(path)}: another writer has this index open in append mode"
                ) from None
            mine, now = os.fstat(fd), os.stat(path)
            if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # replaced meanwhile: lock the new file instead
    raise IndexLockedError(f"{os.fspath(path)}: the file keeps being replaced; try again")


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # fallback (not thread-safe, hence only when /proc is missing)
    os.umask(old)
    return old


def _temp_prefix(target: str) -> str:
    return f".bne-{os.path.basename(target)}-"


def new_temp(target: str) -> tuple[int, str]:
    """A locked temporary file beside `target` (same folder: rename is atomic), with the mode the
    published file must have: the existing file's mode, else 0666 minus the umask, as for any
    file a program creates. The lock tells clean_temps() that its writer is alive."""
    directory = os.path.dirname(target) or "."
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def clean_temps(target: str) -> int:
    """Removes temporary files that a killed save/compact of `target` left behind: unlocked and
    older than TEMP_MAX_AGE. Returns how many were removed."""
    removed = 0
    pattern = os.path.join(glob.escape(os.path.dirname(target) or "."), glob.escape(_temp_prefix(target)) + "*.tmp")
    for tmp in glob.glob(pattern):
        removed += unlink_if_unlocked(
            tmp, lambda st: stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime >= TEMP_MAX_AGE
        )
    return removed


def unlink_if_unlocked(path: str, may_remove: Callable[[os.stat_result], bool]) -> bool:
    """Unlinks ``path`` if ``may_remove`` says yes to the file it opens and no process holds that
    file's writer lock (taken here without waiting: a live writer keeps its file). Opened with
    O_NONBLOCK, so a FIFO in its place cannot block. True when it was removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not may_remove(os.fstat(fd)):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: locked, its writer is alive
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def real_target(path: StrPath) -> str:
    """The file a save or compact must replace: through symlinks, so a link stays a link."""
    return os.path.realpath(os.fspath(path))


def publish(tmp: str, path: StrPath, *, overwrite: bool = True) -> None:
    """Renames a complete, fsynced temporary file over `path` (or links it, failing with
    FileExistsError if `path` appeared, when overwrite is False) and fsyncs the folder. OSErrors
    name the user's path, not the temporary file."""
    path = os.fspath(path)
    try:
        if overwrite:
            io.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except OSError as e:
        if isinstance(e, FileExistsError) or e.errno is None:
            raise
        raise type(e)(e.errno, f"cannot write the index: {e.strerror}", path) from None
    io.fsync_dir(path)


def _check_target(path: str) -> None:
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name for the index", path)


def save_atomic(
    path: StrPath, header: Header, parts: list[tuple[np.ndarray, np.ndarray]], max_id: int, *, overwrite: bool = True
) -> tuple[int, int]:
    """Writes a complete file beside `path` (same folder), fsyncs it, renames it over `path` and
    fsyncs the folder: `path` always holds either its old complete content or the new one.
    ``overwrite=False`` publishes with link() instead, which fails with FileExistsError when
    `path` appeared meanwhile (two processes creating the same index: one wins, none is lost).
    Replacing an index that a writer holds open raises IndexLockedError (its commits would go
    to the replaced file). Returns the (st_dev, st_ino) of the file it published, so that a caller
    that created a new index can later tell its own file from one another process put there."""
    target = real_target(path)
    _check_target(target)
    header.encode()  # validate before creating anything
    clean_temps(target)
    guard = -1
    if overwrite and os.path.exists(target):
        guard = lock_writer(target)  # no writer may be appending to the file we replace
    try:
        fd, tmp = new_temp(target)
        try:
            try:
                with naming(path):
                    create(fd, header, parts, max_id)
                st = os.fstat(fd)
            finally:
                io.close(fd)
            publish(tmp, target, overwrite=overwrite)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    finally:
        if guard >= 0:
            os.close(guard)
    return st.st_dev, st.st_ino


def replace_locked(
    fd_old: int, path: StrPath, header: Header, parts: list[tuple[np.ndarray, np.ndarray]], max_id: int
) -> int:
    """compact() in place: writes a new file, locks it before it becomes visible, renames it over
    `path` (the file behind a symlink), fsyncs the folder, then releases the old descriptor
    `fd_old`. Returns the new locked descriptor. A writer waiting on the old file sees the
    rename after the old lock is gone (lock_writer checks the inode) and retries on the new one."""
    target = real_target(path)
    clean_temps(target)
    fd, tmp = new_temp(target)  # new_temp locks it
    try:
        with naming(path):
            create(fd, header, parts, max_id)
        publish(tmp, target)
    except BaseException:
        io.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd_old)
    return fd


def repair(fd: int, commit: Commit, problems: list[SlotProblem]) -> bool:
    """Writer only: cuts a torn tail (bytes past the committed end) and rewrites bad commit slots
    with a copy of the current record. Returns True if anything was written."""
    fixed = False
    if os.fstat(fd).st_size > commit.end_offset:
        io.ftruncate(fd, commit.end_offset)
        fixed = True
    if problems:
        rec = os.pread(fd, COMMIT.size + 4, SLOT_OFFSETS[commit.slot])
        for p in problems:
            _pwrite_all(fd, rec, SLOT_OFFSETS[p.slot])
        fixed = True
    if fixed:
        io.fsync(fd)
    return fixed


def new_header(bits: int, bit_order: str = "big", metadata: dict | None = None) -> Header:
    check_bit_order(bit_order)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    return Header(bits=bits, bit_order=bit_order, metadata=dict(metadata or {}), created=int(time.time()))


def map_file(fd: int, length: int) -> mmap.mmap:
    """A read-only shared mapping of the first `length` bytes (never written through).

    Python's mmap keeps a duplicate of the descriptor it maps. It maps a fresh descriptor of the
    same inode, so the mapping never holds the writer's flock (which lives on `fd`'s open file).
    """
    try:
        own = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    except OSError:
        own = os.dup(fd)
    try:
        return mmap.mmap(own, length, access=mmap.ACCESS_READ)
    finally:
        os.close(own)
