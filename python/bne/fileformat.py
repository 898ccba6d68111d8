"""The bne index file format: its layout, the records' encoding, and the validation of every
record read back. Pure codec: it reads with ``os.pread`` and never writes (``storage`` writes).

Layout (little-endian; docs/FORMAT.md is the full description):

    [0, 4096)        file header: magic, version, bits, code bytes, bit order, metric, id width,
                     section flags, JSON metadata; CRC-32 in its last 4 bytes
    [4096, 8192)     commit slot A  \\ two commit records, written alternately (LMDB-style); the
    [8192, 12288)    commit slot B  / valid one with the highest sequence number is the state
    [12288, ...)     segments, one per commit that added codes: codes (page-aligned, read by the
                     kernels straight from the mapping), then int64 ids; then the commit's table
                     (segment records with CRC-32 of codes and ids, then tombstone positions)

Bytes past the committed end (a torn tail) are ignored by readers.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import struct
import zlib
from typing import Any

import numpy as np

from .codes import check_bit_order
from .errors import IndexFormatError
from .fileio import StrPath

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


def segment_struct(major: int) -> struct.Struct:
    return SEGMENT_V1 if major == 1 else SEGMENT


def crc32(data: Any) -> int:  # any object with the buffer protocol
    return zlib.crc32(data) & 0xFFFFFFFF


def align_up(x: int, a: int) -> int:
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
        check_bit_order(self.bit_order)
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


def invalid(path: StrPath, msg: str) -> IndexFormatError:
    """The error for a bad file: IndexFormatError naming the file."""
    return IndexFormatError(f"{os.fspath(path)}: {msg}")


def parse_header(path: StrPath, page: bytes, file_size: int) -> Header:
    if file_size == 0:
        raise invalid(path, "file is empty (0 bytes); not a bne index")
    if len(page) < len(MAGIC) or page[: len(MAGIC)] != MAGIC:
        raise invalid(path, f"wrong magic {bytes(page[:8])!r}: not a bne index file (expected {MAGIC!r})")
    if len(page) < HEADER.size + 4:
        raise invalid(path, f"file truncated inside the header ({file_size} bytes, the header alone takes {PAGE})")
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
        raise invalid(path, f"unknown major version {major}.{minor} (this bne reads versions 1.x and 2.x; upgrade bne)")
    if len(page) < PAGE:
        raise invalid(path, f"file truncated inside the header ({file_size} bytes, the header alone takes {PAGE})")
    stored = struct.unpack_from("<I", page, HEADER_CRC_AT)[0]
    if stored != crc32(page[:HEADER_CRC_AT]):
        raise invalid(path, "header checksum mismatch: the header is corrupt")
    if endian != ENDIAN_LITTLE:
        raise invalid(path, f"unsupported byte order marker {endian} (files are little-endian)")
    if header_bytes != PAGE or page_size != PAGE:
        raise invalid(path, f"header size {header_bytes} / page size {page_size} disagree with version {major}.{minor}")
    if bits == 0 or bits % 64:
        raise invalid(path, f"bits must be a positive multiple of 64, header says {bits}")
    if code_bytes != bits // 8:
        raise invalid(path, f"bits ({bits}) and bytes per code ({code_bytes}) disagree")
    if bit_order not in BIT_ORDER_NAMES or metric != METRIC_HAMMING or id_bytes != 8:
        raise invalid(path, f"unsupported bit order {bit_order} / metric {metric} / id width {id_bytes}")
    if flags & ~(FLAG_IDS | FLAG_TOMBSTONES) and minor == 0:
        raise invalid(path, f"unknown section flags {flags:#x}")
    if meta_len > MAX_METADATA:
        raise invalid(path, f"metadata length {meta_len} exceeds the header page")
    try:
        metadata = json.loads(bytes(page[HEADER.size : HEADER.size + meta_len]) or b"{}")
    except ValueError as e:
        raise invalid(path, f"metadata is not valid JSON ({e})") from None
    except RecursionError:
        raise invalid(path, "metadata JSON is nested too deeply") from None
    if not isinstance(metadata, dict):
        raise invalid(path, "metadata is not a JSON object")
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
        raise invalid(path, f"file truncated: {file_size} bytes, the header and commit slots take {DATA_START}")
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
        raise invalid(path, "no valid commit record (both commit slots are damaged)")
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
        raise invalid(path, f"file truncated: the last commit ends at byte {end_offset}, the file has {file_size}")
    if not DATA_START <= table_offset <= end_offset or table_offset + table_bytes != end_offset:
        raise invalid(
            path, f"commit table at {table_offset}+{table_bytes} lies outside the committed data (end {end_offset})"
        )
    seg_rec = segment_struct(header.major)
    if nseg * seg_rec.size + ntomb * 8 != table_bytes:
        raise invalid(path, f"commit table size {table_bytes} disagrees with {nseg} segments and {ntomb} tombstones")
    if ntomb > count:
        raise invalid(path, f"{ntomb} tombstones for {count} codes")
    table = os.pread(fd, table_bytes, table_offset)
    if len(table) != table_bytes or crc32(table) != table_crc:
        raise invalid(path, "commit table checksum mismatch: the segment table is corrupt")
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
            raise invalid(path, f"segment {i}: {n} codes in room for {cap}")
        if s.end() > table_offset:
            raise invalid(
                path, f"segment {i}: {cap} codes at {codes_offset} run past the commit table at {table_offset}"
            )
        if codes_offset % PAGE or codes_offset < prev_end or ids_offset != codes_offset + cap * cb:
            raise invalid(path, f"segment {i}: codes at {codes_offset} are misaligned or overlap earlier data")
        segments.append(s)
        total += n
        prev_end = s.end()
    if total != count:
        raise invalid(path, f"segments hold {total} codes but the commit record says {count}")
    tomb = np.frombuffer(table, dtype="<i8", count=ntomb, offset=nseg * seg_rec.size).astype(np.int64)
    # Comparisons, not np.diff: a difference of int64 positions can wrap (e.g. -2**63).
    if ntomb and (tomb[0] < 0 or tomb[-1] >= count or bool((tomb[1:] <= tomb[:-1]).any())):
        raise invalid(path, "tombstones are not sorted positions inside the index")
    if max_id < -1:
        raise invalid(path, f"invalid max id {max_id}")
    return Commit(seq, count, segments, tomb, table_offset, table_bytes, end_offset, max_id, slot)


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
            raise invalid(path, f"segment {i}: codes checksum mismatch ({seg.count} codes at byte {seg.codes_offset})")
        if crc32(ids) != seg.ids_crc:
            raise invalid(path, f"segment {i}: ids checksum mismatch")


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
