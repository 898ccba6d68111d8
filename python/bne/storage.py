"""The bne index file: layout, validation, atomic save and crash-safe appends.

Layout (little-endian; docs/FORMAT.md is the full description):

    [0, 4096)        file header: magic, version, bits, code bytes, bit order, metric, id width,
                     section flags, JSON metadata; CRC-32 in its last 4 bytes
    [4096, 8192)     commit slot A  \\ two commit records, written alternately (LMDB-style); the
    [8192, 12288)    commit slot B  / valid one with the highest sequence number is the state
    [12288, ...)     segments, one per commit that added codes: codes (page-aligned, read by the
                     kernels straight from the mapping), then int64 ids; then the commit's table
                     (segment records with CRC-32 of codes and ids, then tombstone positions)

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
import json
import mmap
import os
import stat
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .errors import IndexFormatError, IndexLockedError

StrPath = str | os.PathLike  # a file path as callers give it

MAGIC = b"\x89BNEIDX\n"
COMMIT_MAGIC = b"BNECOMIT"
MAJOR, MINOR = 2, 0  # what this bne writes; it reads majors 1 and 2
READABLE_MAJORS = (1, 2)
PAGE = 4096
SLOT_OFFSETS = (PAGE, 2 * PAGE)
DATA_START = 3 * PAGE
BIT_ORDERS = {"big": 0, "little": 1}
BIT_ORDER_NAMES = {v: k for k, v in BIT_ORDERS.items()}
FLAG_IDS, FLAG_TOMBSTONES = 1, 2
METRIC_HAMMING = 0
ENDIAN_LITTLE = 1

# magic, major, minor, header_bytes, bits, code_bytes, bit_order, metric, id_bytes, endian,
# page, flags, created_unix, metadata_len
HEADER = struct.Struct("<8sHHIIIBBBBIQQI")
HEADER_CRC_AT = PAGE - 4
MAX_METADATA = HEADER_CRC_AT - HEADER.size
# magic, seq, count, n_tombstones, n_segments, table_offset, table_bytes, end_offset, max_id, table_crc
COMMIT = struct.Struct("<8sQQQQQQQqI")
COMMIT_CRC_AT = COMMIT.size
# Version 1 segment record: codes_offset, count, ids_offset, codes_crc, ids_crc
SEGMENT_V1 = struct.Struct("<QQQII")
# Version 2 adds a capacity: the segment's regions are reserved for `capacity` codes and ids, so
# later commits extend the tail segment in place instead of adding one segment per commit.
# codes_offset, count, capacity, ids_offset, codes_crc, ids_crc
SEGMENT = struct.Struct("<QQQQII")
assert (
    HEADER.size == 52 and COMMIT.size == 76 and SEGMENT_V1.size == 32 and SEGMENT.size == 40
)  # pinned by golden tests

# A new tail segment reserves room for a quarter of the codes so far, within these bounds (bytes
# of codes): few segments for any commit size, and at most ~1/4 of the file reserved and unused
# (a sparse hole on Linux file systems until it fills).
SEGMENT_MIN_BYTES = 256 << 10
SEGMENT_MAX_BYTES = 16 << 20


def segment_struct(major: int) -> struct.Struct:
    return SEGMENT_V1 if major == 1 else SEGMENT


def crc32(data: Any) -> int:  # any object with the buffer protocol
    return zlib.crc32(data) & 0xFFFFFFFF


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


@dataclasses.dataclass(frozen=True)
class Header:
    bits: int
    bit_order: str = "big"
    metadata: dict = dataclasses.field(default_factory=dict)
    created: int = 0
    minor: int = MINOR
    major: int = MAJOR

    @property
    def code_bytes(self) -> int:
        return self.bits // 8

    def encode(self) -> bytes:
        if self.bit_order not in BIT_ORDERS:
            raise ValueError(
                f"bit_order must be 'big' (numpy/sentence-transformers) or 'little' (FAISS), got {self.bit_order!r}"
            )
        try:
            meta = json.dumps(self.metadata, sort_keys=True).encode()
        except RecursionError:
            raise ValueError("metadata is nested too deeply to store as JSON") from None
        except TypeError as e:
            raise TypeError(f"metadata must be JSON-serialisable: {e}") from None
        if len(meta) > MAX_METADATA:
            raise ValueError(f"metadata must encode to at most {MAX_METADATA} bytes of JSON, got {len(meta)}")
        fixed = HEADER.pack(
            MAGIC,
            self.major,
            self.minor,
            PAGE,
            self.bits,
            self.code_bytes,
            BIT_ORDERS[self.bit_order],
            METRIC_HAMMING,
            8,
            ENDIAN_LITTLE,
            PAGE,
            FLAG_IDS | FLAG_TOMBSTONES,
            self.created,
            len(meta),
        )
        page = bytearray(PAGE)
        page[: HEADER.size] = fixed
        page[HEADER.size : HEADER.size + len(meta)] = meta
        page[HEADER_CRC_AT:] = struct.pack("<I", crc32(page[:HEADER_CRC_AT]))
        return bytes(page)


@dataclasses.dataclass(frozen=True)
class Segment:
    codes_offset: int
    count: int
    ids_offset: int
    codes_crc: int
    ids_crc: int
    capacity: int  # codes the regions are reserved for (== count in version 1 files)

    def end(self) -> int:
        """First byte after the segment's reserved ids region."""
        return self.ids_offset + 8 * self.capacity


@dataclasses.dataclass
class Commit:
    seq: int
    count: int
    segments: list[Segment]
    tombstones: np.ndarray  # sorted unique int64 positions
    table_offset: int
    table_bytes: int
    end_offset: int
    max_id: int
    slot: int

    def encode(self, table_crc: int) -> bytes:
        rec = COMMIT.pack(
            COMMIT_MAGIC,
            self.seq,
            self.count,
            len(self.tombstones),
            len(self.segments),
            self.table_offset,
            self.table_bytes,
            self.end_offset,
            self.max_id,
            table_crc,
        )
        return rec + struct.pack("<I", crc32(rec))


def encode_table(segments: list[Segment], tombstones: np.ndarray, major: int) -> bytes:
    if major == 1:
        recs = b"".join(
            SEGMENT_V1.pack(s.codes_offset, s.count, s.ids_offset, s.codes_crc, s.ids_crc) for s in segments
        )
    else:
        recs = b"".join(
            SEGMENT.pack(s.codes_offset, s.count, s.capacity, s.ids_offset, s.codes_crc, s.ids_crc) for s in segments
        )
    return recs + np.asarray(tombstones, dtype="<i8").tobytes()


# ---------------------------------------------------------------------------------------------
# Reading and validation: every size and offset is checked against the file before it is used,
# in Python integers (no overflow), and nothing larger than the file is ever allocated.


def _fail(path: StrPath, msg: str) -> IndexFormatError:
    return IndexFormatError(f"{os.fspath(path)}: {msg}")


def parse_header(path: StrPath, page: bytes, file_size: int) -> Header:
    if file_size == 0:
        raise _fail(path, "file is empty (0 bytes); not a bne index")
    if len(page) < len(MAGIC) or page[: len(MAGIC)] != MAGIC:
        raise _fail(path, f"wrong magic {bytes(page[:8])!r}: not a bne index file (expected {MAGIC!r})")
    if len(page) < HEADER.size + 4:
        raise _fail(path, f"file truncated inside the header ({file_size} bytes, the header alone takes {PAGE})")
    (
        _,
        major,
        minor,
        header_bytes,
        bits,
        code_bytes,
        bit_order,
        metric,
        id_bytes,
        endian,
        page_size,
        flags,
        created,
        meta_len,
    ) = HEADER.unpack_from(page)
    if major not in READABLE_MAJORS:
        raise _fail(path, f"unknown major version {major}.{minor} (this bne reads versions 1.x and 2.x; upgrade bne)")
    if len(page) < PAGE:
        raise _fail(path, f"file truncated inside the header ({file_size} bytes, the header alone takes {PAGE})")
    stored = struct.unpack_from("<I", page, HEADER_CRC_AT)[0]
    if stored != crc32(page[:HEADER_CRC_AT]):
        raise _fail(path, "header checksum mismatch: the header is corrupt")
    if endian != ENDIAN_LITTLE:
        raise _fail(path, f"unsupported byte order marker {endian} (files are little-endian)")
    if header_bytes != PAGE or page_size != PAGE:
        raise _fail(path, f"header size {header_bytes} / page size {page_size} disagree with version {major}.{minor}")
    if bits == 0 or bits % 64:
        raise _fail(path, f"bits must be a positive multiple of 64, header says {bits}")
    if code_bytes != bits // 8:
        raise _fail(path, f"bits ({bits}) and bytes per code ({code_bytes}) disagree")
    if bit_order not in BIT_ORDER_NAMES or metric != METRIC_HAMMING or id_bytes != 8:
        raise _fail(path, f"unsupported bit order {bit_order} / metric {metric} / id width {id_bytes}")
    if flags & ~(FLAG_IDS | FLAG_TOMBSTONES) and minor == 0:
        raise _fail(path, f"unknown section flags {flags:#x}")
    if meta_len > MAX_METADATA:
        raise _fail(path, f"metadata length {meta_len} exceeds the header page")
    try:
        metadata = json.loads(bytes(page[HEADER.size : HEADER.size + meta_len]) or b"{}")
    except ValueError as e:
        raise _fail(path, f"metadata is not valid JSON ({e})") from None
    except RecursionError:
        raise _fail(path, "metadata JSON is nested too deeply") from None
    if not isinstance(metadata, dict):
        raise _fail(path, "metadata is not a JSON object")
    return Header(
        bits=bits, bit_order=BIT_ORDER_NAMES[bit_order], metadata=metadata, created=created, minor=minor, major=major
    )


def _parse_slot(buf: bytes) -> tuple[int, bytes] | None:
    """(seq, record) for a slot whose record checksum holds, else None."""
    rec = buf[: COMMIT.size + 4]
    if len(rec) < COMMIT.size + 4 or rec[:8] != COMMIT_MAGIC:
        return None
    if struct.unpack_from("<I", rec, COMMIT_CRC_AT)[0] != crc32(rec[:COMMIT_CRC_AT]):
        return None
    return COMMIT.unpack_from(rec)[1], rec


@dataclasses.dataclass(frozen=True)
class SlotProblem:
    """A commit slot that is neither valid nor legitimately empty.

    kind "damaged": bytes that are not a valid record (a torn record write during a crash
    leaves this; the commit it was writing never completed). kind "zeroed": an all-zero slot in
    a file that has had two or more commits, where both slots were written: a zeroed sector
    or page can hide the record of the newest commit, so this is never taken as a clean state.
    """

    slot: int
    kind: str

    @property
    def name(self) -> str:
        return "AB"[self.slot]


def read_state(path: StrPath, fd: int, file_size: int) -> tuple[Header, Commit, list[SlotProblem]]:
    """Header, the newest valid commit, and the slots that are damaged or wrongly zero."""
    header = parse_header(path, os.pread(fd, PAGE, 0), file_size)
    if file_size < DATA_START:
        raise _fail(path, f"file truncated: {file_size} bytes, the header and commit slots take {DATA_START}")
    valid, zero, damaged = [], [], []
    for slot, off in enumerate(SLOT_OFFSETS):
        buf = os.pread(fd, COMMIT.size + 4, off)
        parsed = _parse_slot(buf)
        if parsed:
            valid.append((parsed[0], slot, parsed[1]))
        elif any(buf):
            damaged.append(SlotProblem(slot, "damaged"))
        else:
            zero.append(slot)
    if not valid:
        raise _fail(path, "no valid commit record (both commit slots are damaged)")
    seq, slot, rec = max(valid)
    # A writer may have committed between the caller's fstat and the slot reads above: the
    # file only grows past a committed end, so the size taken now covers the record just read.
    file_size = max(file_size, os.fstat(fd).st_size)
    commit = _parse_commit(path, fd, header, rec, slot, file_size)
    # Only the first commit leaves a slot that was never written.
    problems = damaged + [SlotProblem(z, "zeroed") for z in zero if seq >= 2]
    return header, commit, problems


def latest_seq(fd: int) -> int | None:
    """The sequence number of the newest valid commit record (None: no valid one): two small
    reads, what a reader's refresh() compares with the commit it has mapped."""
    seqs = [p[0] for p in (_parse_slot(os.pread(fd, COMMIT.size + 4, off)) for off in SLOT_OFFSETS) if p]
    return max(seqs) if seqs else None


def describe_problems(problems: list[SlotProblem], commit: Commit, file_size: int) -> str:
    """One sentence naming every bad slot and what it may mean for the data."""
    parts = []
    for p in problems:
        if p.kind == "zeroed":
            parts.append(f"commit slot {p.name} is all zero although the file has had {commit.seq} commits")
        else:
            parts.append(f"commit slot {p.name} is damaged")
    tail = file_size - commit.end_offset
    what = (
        f"; {tail} bytes follow commit {commit.seq}, which may belong to a newer commit whose record was lost"
        if tail > 0 and any(p.kind == "zeroed" for p in problems)
        else ""
    )
    return "; ".join(parts) + what


def may_hide_a_commit(problems: list[SlotProblem], commit: Commit, file_size: int) -> bool:
    """True when repairing would throw away bytes that may be a committed (acknowledged) commit:
    a zeroed slot cannot come from a torn record write, so the bytes after the last valid commit
    may be a newer commit's data."""
    return file_size > commit.end_offset and any(p.kind == "zeroed" for p in problems)


def _parse_commit(path: StrPath, fd: int, header: Header, rec: bytes, slot: int, file_size: int) -> Commit:
    (_, seq, count, ntomb, nseg, table_offset, table_bytes, end_offset, max_id, table_crc) = COMMIT.unpack_from(rec)
    if end_offset > file_size:
        raise _fail(path, f"file truncated: the last commit ends at byte {end_offset}, the file has {file_size}")
    if not DATA_START <= table_offset <= end_offset or table_offset + table_bytes != end_offset:
        raise _fail(
            path, f"commit table at {table_offset}+{table_bytes} lies outside the committed data (end {end_offset})"
        )
    seg_rec = segment_struct(header.major)
    if nseg * seg_rec.size + ntomb * 8 != table_bytes:
        raise _fail(path, f"commit table size {table_bytes} disagrees with {nseg} segments and {ntomb} tombstones")
    if ntomb > count:
        raise _fail(path, f"{ntomb} tombstones for {count} codes")
    table = os.pread(fd, table_bytes, table_offset)
    if len(table) != table_bytes or crc32(table) != table_crc:
        raise _fail(path, "commit table checksum mismatch: the segment table is corrupt")
    cb = header.code_bytes
    segments, total, prev_end = [], 0, DATA_START
    for i in range(nseg):
        if header.major == 1:
            codes_offset, n, ids_offset, codes_crc, ids_crc = SEGMENT_V1.unpack_from(table, i * seg_rec.size)
            cap = n
        else:
            codes_offset, n, cap, ids_offset, codes_crc, ids_crc = SEGMENT.unpack_from(table, i * seg_rec.size)
        s = Segment(codes_offset, n, ids_offset, codes_crc, ids_crc, cap)
        if n > cap:
            raise _fail(path, f"segment {i}: {n} codes in room for {cap}")
        if s.end() > table_offset:
            raise _fail(path, f"segment {i}: {cap} codes at {codes_offset} run past the commit table at {table_offset}")
        if codes_offset % PAGE or codes_offset < prev_end or ids_offset != codes_offset + cap * cb:
            raise _fail(path, f"segment {i}: codes at {codes_offset} are misaligned or overlap earlier data")
        segments.append(s)
        total += n
        prev_end = s.end()
    if total != count:
        raise _fail(path, f"segments hold {total} codes but the commit record says {count}")
    tomb = np.frombuffer(table, dtype="<i8", count=ntomb, offset=nseg * seg_rec.size).astype(np.int64)
    # Comparisons, not np.diff: a difference of int64 positions can wrap (e.g. -2**63).
    if ntomb and (tomb[0] < 0 or tomb[-1] >= count or bool((tomb[1:] <= tomb[:-1]).any())):
        raise _fail(path, "tombstones are not sorted positions inside the index")
    if max_id < -1:
        raise _fail(path, f"invalid max id {max_id}")
    return Commit(seq, count, segments, tomb, table_offset, table_bytes, end_offset, max_id, slot)


# ---------------------------------------------------------------------------------------------
# Writing. All writes go through `io` (the os module by default) so tests can inject faults.


class _OsIO:
    open = staticmethod(os.open)
    pwrite = staticmethod(os.pwrite)
    fsync = staticmethod(os.fsync)
    replace = staticmethod(os.replace)
    ftruncate = staticmethod(os.ftruncate)
    close = staticmethod(os.close)


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


def fsync_dir(path: StrPath) -> None:
    dfd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        io.fsync(dfd)
    finally:
        os.close(dfd)


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
        offset = _align(cursor, PAGE)  # page-aligned codes: kernels read them in place
        _pwrite_all(fd, codes, offset)
        _pwrite_all(fd, ids, offset + cap * cb)
        seg = Segment(offset, len(codes), offset + cap * cb, crc32(codes), crc32(ids), cap)
        segments.append(seg)
        count += len(codes)
        cursor = seg.end()
    table_offset = _align(cursor, 8)
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
            raise _fail(path, "not a regular file (a FIFO, device or socket cannot hold an index)")
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
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or time.time() - st.st_mtime < TEMP_MAX_AGE:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(tmp)
            removed += 1
        except OSError:
            pass  # locked: its writer is alive
        finally:
            os.close(fd)
    return removed


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
    fsync_dir(path)


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
    if bit_order not in BIT_ORDERS:
        raise ValueError(
            f"bit_order must be 'big' (numpy/sentence-transformers) or 'little' (FAISS), got {bit_order!r}"
        )
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


def segment_arrays(mm: mmap.mmap, header: Header, seg: Segment) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy, read-only views of a segment's codes and ids inside the mapping."""
    codes = np.frombuffer(mm, dtype=np.uint8, count=seg.count * header.code_bytes, offset=seg.codes_offset)
    ids = np.frombuffer(mm, dtype="<i8", count=seg.count, offset=seg.ids_offset)
    return codes.reshape(seg.count, header.code_bytes), ids


def verify_segments(path: StrPath, mm: mmap.mmap, header: Header, commit: Commit) -> None:
    """Recomputes every section checksum; IndexFormatError naming the first damaged section."""
    for i, seg in enumerate(commit.segments):
        codes, ids = segment_arrays(mm, header, seg)
        if crc32(codes) != seg.codes_crc:
            raise _fail(path, f"segment {i}: codes checksum mismatch ({seg.count} codes at byte {seg.codes_offset})")
        if crc32(ids) != seg.ids_crc:
            raise _fail(path, f"segment {i}: ids checksum mismatch")


def describe(header: Header, commit: Commit) -> dict[str, Any]:
    return {
        "format_version": f"{header.major}.{header.minor}",
        "bits": header.bits,
        "bit_order": header.bit_order,
        "codes": commit.count,
        "tombstones": len(commit.tombstones),
        "live": commit.count - len(commit.tombstones),
        "segments": len(commit.segments),
        "commit": commit.seq,
        "max_id": commit.max_id,
        "metadata": header.metadata,
    }
