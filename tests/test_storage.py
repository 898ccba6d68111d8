"""Index files: format, validation, atomic save, appends, ids, tombstones, crash safety.
Numbers in comments refer to the tests of ../shared/RELIABILITY.md."""

import os
import pathlib
import random
import re
import struct
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import bne
from bne import fileformat, storage
from reference import knn, random_codes

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden_v1.bne"  # written by bne 0.1 (format 1.0)
GOLDEN_V2 = pathlib.Path(__file__).parent / "data" / "golden_v2.bne"


def saved(tmp_path, codes, ids=None, name="x.bne", **kw):
    index = bne.Index(codes.shape[1] * 8)
    index.add(codes, ids=ids)
    path = tmp_path / name
    index.save(path, **kw)
    return path


def small_file(tmp_path, n=20, bits=128, name="small.bne"):
    return saved(tmp_path, random_codes(np.random.default_rng(7), n, bits), name=name)


def rewrite(path, offset, data):
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def fix_slot_crc(path, slot):
    off = fileformat.SLOT_OFFSETS[slot]
    raw = bytearray(path.read_bytes()[off : off + fileformat.COMMIT.size])
    rewrite(path, off + fileformat.COMMIT.size, struct.pack("<I", fileformat.crc32(bytes(raw))))


def fix_header_crc(path):
    page = path.read_bytes()[: fileformat.HEADER_CRC_AT]
    rewrite(path, fileformat.HEADER_CRC_AT, struct.pack("<I", fileformat.crc32(page)))


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [64, 1024, 2048])
def test_save_open_search_equals_memory(tmp_path, rng, bits):
    codes = random_codes(rng, 3000, bits)
    q = random_codes(rng, 11, bits)
    mem = bne.Index(bits)
    mem.add(codes)
    path = tmp_path / "a.bne"
    mem.save(path)
    with bne.open(path) as idx:
        assert len(idx) == 3000 and idx.bits == bits
        for k in (1, 10, 5000):
            D, I = idx.search(q, k)
            rD, rI = mem.search(q, k)
            np.testing.assert_array_equal(D, rD)
            np.testing.assert_array_equal(I, rI)
        lims, D, I = idx.range_search(q, bits // 2 - 10)
        rl, rD, rI = mem.range_search(q, bits // 2 - 10)
        np.testing.assert_array_equal(lims, rl)
        np.testing.assert_array_equal(I, rI)
        np.testing.assert_array_equal(idx.codes(), codes)


def test_zero_copy_and_alignment(tmp_path, rng):  # 14
    path = saved(tmp_path, random_codes(rng, 500, 1024))
    idx = bne.open(path)
    codes, ids = idx.segments()[0]
    assert np.shares_memory(np.asarray(idx.codes()), codes)
    assert codes.ctypes.data % 4096 == 0  # page-aligned: AVX-512 loads straight from the mapping
    assert not codes.flags.writeable
    with pytest.raises(ValueError):
        codes[0, 0] = 1


def test_open_cost_and_rss_do_not_grow_with_size(tmp_path):  # 14, issue: open in ms, RSS < 10 MB
    script = textwrap.dedent(
        """
        import sys, time, numpy as np, bne
        path = sys.argv[1]
        codes = np.random.default_rng(0).integers(0, 256, (400_000, 128), dtype=np.uint8)
        index = bne.Index(1024); index.add(codes); index.save(path); del index, codes
        def rss():
            return int(open('/proc/self/statm').read().split()[1]) * 4096
        before = rss(); t = time.perf_counter()
        idx = bne.open(path)
        opened = time.perf_counter() - t
        print(rss() - before, opened, len(idx))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "big.bne")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    grown, seconds, n = out.stdout.split()
    assert int(n) == 400_000
    assert int(grown) < 10 * 2**20, f"RSS grew {int(grown) / 2**20:.1f} MiB on open of a 51 MB file"


def test_ids_tombstones_filters(tmp_path, rng):  # issue items 5 and 6
    codes = random_codes(rng, 1000, 256)
    ids = rng.choice(10**12, 1000, replace=False).astype(np.int64)
    q = codes[:5]
    path = saved(tmp_path, codes, ids=ids)
    with bne.open(path, mode="a") as idx:
        D, I = idx.search(q, 1)
        np.testing.assert_array_equal(I[:, 0], ids[:5])
        assert idx.remove(ids[:2]) == 2
        assert idx.remove(ids[:2]) == 0  # already removed
        assert idx.remove([-5]) == 0  # unknown ids are ignored
        D, I = idx.search(q, 1)
        assert ids[0] not in I and ids[1] not in I
        np.testing.assert_array_equal(I[2:, 0], ids[2:5])
    idx = bne.open(path)
    assert len(idx) == 998 and idx.info()["tombstones"] == 2
    live = np.ones(1000, bool)
    live[:2] = False
    D, I = idx.search(q, 10)
    rD, rI = knn(codes[live], q, 10)
    np.testing.assert_array_equal(D, rD)
    np.testing.assert_array_equal(I, ids[live][rI])
    # Allow-list by ids: exactly the allowed live codes take part.
    allow = ids[rng.choice(1000, 50, replace=False)]
    D, I = idx.search(q, 60, allow=allow)
    assert set(I[I >= 0]) == set(allow) - set(ids[:2])
    # compact() writes a new file without the tombstones; ids survive.
    idx.compact(tmp_path / "c.bne")
    c = bne.open(tmp_path / "c.bne", verify=True)
    assert c.info()["tombstones"] == 0 and len(c) == 998
    D2, I2 = c.search(q, 10)
    np.testing.assert_array_equal(D2, D := idx.search(q, 10)[0])
    np.testing.assert_array_equal(I2, idx.search(q, 10)[1])


def test_append_commit_reopen(tmp_path, rng):  # issue item 4
    path = tmp_path / "log.bne"
    batches = [random_codes(rng, n, 1024) for n in (5, 1, 300, 17)]
    with bne.open(path, mode="a", bits=1024, metadata={"model": "test"}) as w:
        for b in batches[:2]:
            w.add(b)
            w.commit()
        w.add(batches[2])  # visible to the writer before commit
        assert len(w) == 306
    with bne.open(path, mode="a") as w:
        w.add(batches[3], ids=np.arange(1000, 1017))
    idx = bne.open(path, verify=True)
    allc = np.concatenate(batches)
    assert (
        len(idx) == len(allc) and idx.info()["segments"] == 1 and idx.metadata == {"model": "test"}
    )  # extended in place
    np.testing.assert_array_equal(idx.codes(), allc)
    np.testing.assert_array_equal(idx.ids(), np.r_[np.arange(306), np.arange(1000, 1017)])
    q = random_codes(rng, 9, 1024)
    D, I = idx.search(q, 20)
    rD, rI = knn(allc, q, 20)
    np.testing.assert_array_equal(D, rD)
    np.testing.assert_array_equal(I, idx.ids()[rI])
    # compact in place: one segment, same results, writer keeps its lock on the new file.
    with bne.open(path, mode="a") as w:
        w.compact()
        assert w.info()["segments"] == 1
        with pytest.raises(bne.IndexLockedError):
            bne.open(path, mode="a")
    D2, I2 = bne.open(path).search(q, 20)
    np.testing.assert_array_equal(D2, D)
    np.testing.assert_array_equal(I2, I)


def test_uncommitted_changes_are_dropped(tmp_path, rng):
    path = small_file(tmp_path)
    w = bne.open(path, mode="a")
    w.add(random_codes(rng, 3, 128))
    w.remove([0])
    w.close()
    idx = bne.open(path)
    assert len(idx) == 20 and idx.info()["tombstones"] == 0


def test_one_writer_at_a_time(tmp_path):  # issue item 4
    path = small_file(tmp_path)
    w = bne.open(path, mode="a")
    with pytest.raises(bne.IndexLockedError, match="another writer"):
        bne.open(path, mode="a")
    bne.open(path).search(np.zeros((1, 16), np.uint8), 1)  # readers are never blocked
    w.close()
    bne.open(path, mode="a").close()


def test_read_only_index_refuses_mutation(tmp_path):  # 12
    path = small_file(tmp_path)
    os.chmod(path, 0o444)
    idx = bne.open(path)
    for call in (lambda: idx.add(np.zeros((1, 16), np.uint8)), lambda: idx.remove([1]), idx.commit, idx.compact):
        with pytest.raises(PermissionError, match="opened read-only"):
            call()
    assert len(idx) == 20


def test_readers_survive_appends_and_replacement(tmp_path, rng):  # 13, issue item 4
    codes = random_codes(rng, 2000, 1024)
    path = saved(tmp_path, codes)
    q = codes[:4]
    reader = bne.open(path)
    before = reader.search(q, 5)
    with bne.open(path, mode="a") as w:
        for _ in range(5):
            w.add(random_codes(rng, 1000, 1024))
            w.commit()
    np.testing.assert_array_equal(reader.search(q, 5)[1], before[1])
    saved(tmp_path, random_codes(rng, 10, 1024))  # replaced by rename under the reader
    np.testing.assert_array_equal(reader.search(q, 5)[1], before[1])
    assert len(bne.open(path)) == 10


def test_concurrent_searches_on_one_mapping(tmp_path, rng):  # 18
    codes = random_codes(rng, 20000, 1024)
    idx = bne.open(saved(tmp_path, codes))
    q = random_codes(rng, 8, 1024)
    ref = idx.search(q, 10)

    def worker(_):
        return [idx.search(q, 10, threads=1) for _ in range(5)]

    with ThreadPoolExecutor(4) as pool:  # a worker's exception is raised here
        for results in pool.map(worker, range(4)):
            for D, I in results:
                np.testing.assert_array_equal(D, ref[0])
                np.testing.assert_array_equal(I, ref[1])


# -- the format -----------------------------------------------------------------------------


def golden_bytes(tmp_path, monkeypatch):
    """Version 2.0: a save of 4 codes (exact size), an append that starts a segment with reserved
    room, and an append that fills that room in place and removes one code."""
    monkeypatch.setattr(storage, "SEGMENT_MIN_BYTES", 4096)  # small reserved room: a small fixture
    header = fileformat.Header(bits=128, bit_order="big", metadata={"model": "golden"}, created=0)
    path = tmp_path / "g.bne"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        codes = np.arange(4 * 16, dtype=np.uint8).reshape(4, 16)
        c = storage.create(fd, header, [(codes, np.array([10, 11, 12, 13]))], 13)
        c = storage.write_commit(fd, header, c, [(codes[:2] ^ 0xFF, np.array([20, 21]))], np.empty(0, np.int64), 21)
        storage.write_commit(fd, header, c, [(codes[2:] ^ 0x0F, np.array([22, 23]))], np.array([1]), 23)
    finally:
        os.close(fd)
    return path.read_bytes()


def test_golden_bytes(tmp_path, monkeypatch):  # 1, 20: the layout is pinned
    data = golden_bytes(tmp_path, monkeypatch)
    assert data == GOLDEN_V2.read_bytes(), "file layout changed: bump the format version and keep the old reader"
    assert data[:8] == b"\x89BNEIDX\n"
    magic, major, minor, hdr, bits, cb, order, metric, idw, endian, page, flags, created, mlen = (
        fileformat.HEADER.unpack_from(data)
    )
    assert (major, minor, hdr, bits, cb, order, metric, idw, endian, page) == (2, 0, 4096, 128, 16, 0, 0, 8, 1, 4096)
    assert data[fileformat.DATA_START : fileformat.DATA_START + 64] == bytes(range(64))  # codes at 12288
    assert np.frombuffer(data, "<i8", 4, fileformat.DATA_START + 64).tolist() == [10, 11, 12, 13]
    second = fileformat.DATA_START + fileformat.PAGE  # the appended segment: 256 codes of room, then 256 ids
    assert data[second : second + 64] == bytes(b ^ 0xFF for b in range(32)) + bytes(b ^ 0x0F for b in range(32, 64))
    assert np.frombuffer(data, "<i8", 4, second + 256 * 16).tolist() == [20, 21, 22, 23]
    idx = bne.open(GOLDEN_V2, verify=True)
    assert len(idx) == 7 and idx.info()["segments"] == 2 and idx.ids().tolist() == [10, 11, 12, 13, 20, 21, 22, 23]


def test_golden_files_still_open():  # 20: files of released versions stay readable
    for golden in (GOLDEN, GOLDEN_V2):
        idx = bne.open(golden, verify=True)
        assert idx.bits == 128 and idx.metadata == {"model": "golden"}
        D, I = idx.search(np.arange(16, dtype=np.uint8).reshape(1, 16), 1)
        assert I[0, 0] == 10 and D[0, 0] == 0
    assert bne.open(GOLDEN).ids().tolist() == [10, 11, 12, 13] and bne.open(GOLDEN).info()["format_version"] == "1.0"


def test_version_1_files_take_appends_and_stay_version_1(tmp_path, rng):
    path = tmp_path / "v1.bne"
    path.write_bytes(GOLDEN.read_bytes())
    for _ in range(3):
        with bne.open(path, mode="a") as w:
            w.add(random_codes(rng, 2, 128))
    idx = bne.open(path, verify=True)
    assert idx.info()["format_version"] == "1.0" and len(idx) == 10 and idx.info()["segments"] == 4
    assert path.read_bytes()[8:10] == struct.pack("<H", 1)  # an older bne still reads it
    with bne.open(path, mode="a") as w:
        w.compact()  # compact writes the current version
    idx = bne.open(path, verify=True)
    assert idx.info()["format_version"] == "2.0" and len(idx) == 10 and idx.ids()[:4].tolist() == [10, 11, 12, 13]


def test_version_gate(tmp_path):  # 1
    path = small_file(tmp_path)
    rewrite(path, 8, struct.pack("<H", 3))
    fix_header_crc(path)
    with pytest.raises(bne.IndexFormatError, match=r"unknown major version 3\.0"):
        bne.open(path)
    path = small_file(tmp_path, name="minor.bne")
    rewrite(path, 10, struct.pack("<H", 7))  # newer minor: still readable
    fix_header_crc(path)
    assert len(bne.open(path)) == 20


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", r"file is empty \(0 bytes\)"),
        (b"\x89BNE", "wrong magic"),
        (b"PK\x03\x04" + bytes(5000), "wrong magic"),
        (b"\x89BNEIDX\n" + bytes(30), "file truncated inside the header"),
    ],
)
def test_not_an_index(tmp_path, content, message):  # 1
    path = tmp_path / "bad.bne"
    path.write_bytes(content)
    with pytest.raises(bne.IndexFormatError, match=message) as e:
        bne.open(path)
    assert str(path) in str(e.value) and isinstance(e.value, ValueError)


def test_expect_bits(tmp_path):  # 2
    path = small_file(tmp_path, bits=1024)
    with pytest.raises(bne.IndexFormatError, match="index holds 1024-bit codes, expected 2048"):
        bne.open(path, expect_bits=2048)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("count", 10**6, "segments hold 20 codes but the commit record says 1000000"),
        ("count", 2**64 - 1, "segments hold 20 codes"),
        ("end_offset", 2**63, "file truncated: the last commit ends at byte"),
        ("table_offset", 2**64 - 8, "lies outside the committed data"),
        ("table_bytes", 2**40, "lies outside the committed data"),
        ("n_segments", 2**60, "disagrees with"),
        ("n_tombstones", 5, "disagrees with"),
    ],
)
def test_crafted_commit_records(tmp_path, field, value, message):  # 4: checks before any allocation
    path = small_file(tmp_path)
    names = [
        "magic",
        "seq",
        "count",
        "n_tombstones",
        "n_segments",
        "table_offset",
        "table_bytes",
        "end_offset",
        "max_id",
        "table_crc",
    ]
    data = path.read_bytes()
    slot = max((struct.unpack_from("<Q", data, off + 8)[0], s) for s, off in enumerate(fileformat.SLOT_OFFSETS))[1]
    off = fileformat.SLOT_OFFSETS[slot]
    rec = list(fileformat.COMMIT.unpack_from(data, off))
    rec[names.index(field)] = value
    rewrite(path, off, fileformat.COMMIT.pack(*rec))
    fix_slot_crc(path, slot)
    with pytest.raises(bne.IndexFormatError, match=re.escape(message)):
        bne.open(path)


@pytest.mark.parametrize(
    "bits,cb,message",
    [
        (0, 0, "positive multiple of 64, header says 0"),
        (100, 12, "header says 100"),
        (1024, 64, "bits (1024) and bytes per code (64) disagree"),
    ],
)
def test_crafted_headers(tmp_path, bits, cb, message):  # 2, 4
    path = small_file(tmp_path)
    rewrite(path, 16, struct.pack("<II", bits, cb))
    fix_header_crc(path)
    with pytest.raises(bne.IndexFormatError, match=re.escape(message)):
        bne.open(path)


def test_crafted_segment_past_end(tmp_path):  # 4
    path = small_file(tmp_path)
    data = path.read_bytes()
    slot = 0
    rec = fileformat.COMMIT.unpack_from(data, fileformat.SLOT_OFFSETS[slot])
    table_offset = rec[5]
    seg = list(fileformat.SEGMENT.unpack_from(data, table_offset))
    seg[1] = seg[2] = 2**40  # a count (and room) that runs far past the file
    table = bytearray(data[table_offset : rec[7]])
    table[: fileformat.SEGMENT.size] = fileformat.SEGMENT.pack(*seg)
    rewrite(path, table_offset, bytes(table))
    new = list(rec)
    new[9] = fileformat.crc32(bytes(table))
    rewrite(path, fileformat.SLOT_OFFSETS[slot], fileformat.COMMIT.pack(*new))
    fix_slot_crc(path, slot)
    with pytest.raises(bne.IndexFormatError, match="run past the commit table"):
        bne.open(path)


def test_every_header_bit_flip_is_detected(tmp_path):  # 3
    path = small_file(tmp_path)
    good = path.read_bytes()
    for byte in range(0, fileformat.PAGE, 7):
        for bit in (0, 5):
            data = bytearray(good)
            data[byte] ^= 1 << bit
            path.write_bytes(bytes(data))
            with pytest.raises(bne.IndexFormatError):
                bne.open(path)


def test_payload_flip_detected_by_verify(tmp_path, rng):  # 3
    path = small_file(tmp_path, n=200, bits=1024)
    for offset in (fileformat.DATA_START, fileformat.DATA_START + 200 * 128 - 1, fileformat.DATA_START + 200 * 128 + 3):
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x10
        bad = tmp_path / f"flip{offset}.bne"
        bad.write_bytes(bytes(data))
        bne.open(bad)  # a payload flip is invisible to a cheap open...
        with pytest.raises(bne.IndexFormatError, match="checksum mismatch"):
            bne.open(bad, verify=True)  # ...and caught by verify
        with pytest.raises(bne.IndexFormatError):
            bne.open(bad).verify()


def test_truncation_sweep(tmp_path):  # 5: every prefix length of a small file
    path = small_file(tmp_path, n=9, bits=64)
    good = path.read_bytes()
    q = np.zeros((1, 8), np.uint8)
    bad = tmp_path / "t.bne"
    for length in range(len(good)):
        bad.write_bytes(good[:length])
        with pytest.raises(bne.IndexFormatError):
            bne.open(bad).search(q, 3)
    bad.write_bytes(good)
    assert len(bne.open(bad)) == 9


def test_random_mutations_are_detected_or_harmless(tmp_path):  # 6
    path = small_file(tmp_path, n=50, bits=256)
    good = path.read_bytes()
    q = random_codes(np.random.default_rng(1), 3, 256)
    ref = bne.open(path).search(q, 7)
    r = random.Random(3)
    bad = tmp_path / "m.bne"
    for _ in range(400):
        data = bytearray(good)
        for _ in range(r.choice([1, 1, 2, 8])):
            data[r.randrange(len(data))] = r.randrange(256)
        bad.write_bytes(bytes(data))
        try:
            idx = bne.open(bad, verify=True)
        except bne.IndexFormatError:
            continue
        got = idx.search(q, 7)  # accepted: must then be exactly the original content
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


# -- durability -----------------------------------------------------------------------------


class Crash(Exception):
    pass


def failing_io(monkeypatch, fail_at, exc):
    """Makes the fail_at-th write-side syscall of storage.io raise `exc`."""
    calls = {"n": 0}

    def wrap(fn):
        def inner(*a, **k):
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise exc
            return fn(*a, **k)

        return inner

    for name in ("pwrite", "fsync", "replace", "fsync_dir"):
        monkeypatch.setattr(storage.io, name, wrap(getattr(storage._OsIO, name)))
    return calls


@pytest.mark.parametrize("exc", [OSError(5, "EIO (injected)"), OSError(28, "ENOSPC (injected)"), Crash()])
def test_failed_save_leaves_old_file(tmp_path, monkeypatch, rng, exc):  # 8, 11
    path = small_file(tmp_path)
    good = path.read_bytes()
    step = 1
    while True:
        calls = failing_io(monkeypatch, step, exc)
        index = bne.Index(128)
        index.add(random_codes(rng, 5, 128))
        try:
            index.save(path)
        except type(exc):
            # The old complete file, or (a failure after the rename: fsync of the folder) the new one.
            assert path.read_bytes() == good or len(bne.open(path, verify=True)) == 5
            assert not list(tmp_path.glob(".bne-*"))  # temp file cleaned up
            step += 1
            continue
        finally:
            monkeypatch.undo()
        break
    assert step > 4 and calls["n"] >= step - 1
    assert len(bne.open(path)) == 5


def test_failed_commit_keeps_previous_commit(tmp_path, monkeypatch, rng):  # 11, 21
    path = small_file(tmp_path)
    for step in range(1, 6):
        w = bne.open(path, mode="a")
        w.add(random_codes(rng, 4, 128))
        failing_io(monkeypatch, step, OSError(5, "EIO (injected)"))
        with pytest.raises(OSError, match="EIO"):
            w.commit()  # never retried, never reported as success
        monkeypatch.undo()
        w.close()
        assert len(bne.open(path, verify=True)) == 20


def test_power_loss_simulation(tmp_path, rng, monkeypatch):  # 9, 10, 21
    """A crash after f fsyncs of a commit: every write before the f-th fsync is durable; the writes
    after it are dropped, reordered or torn at random, and the file may grow garbage. The file
    must open at the previous commit or at the new one, never anything else."""
    import warnings

    path = small_file(tmp_path, n=30, bits=256)
    r = random.Random(11)
    for _ in range(80):
        base = path.read_bytes()
        old_n = len(bne.open(path))
        epochs = [[]]  # writes between fsyncs
        monkeypatch.setattr(
            storage.io,
            "pwrite",
            lambda fd, data, off, epochs=epochs: (epochs[-1].append((bytes(data), off)), os.pwrite(fd, data, off))[1],
        )
        monkeypatch.setattr(storage.io, "fsync", lambda fd, epochs=epochs: (os.fsync(fd), epochs.append([]))[0])
        w = bne.open(path, mode="a")
        new_codes = random_codes(rng, 3, 256)
        w.add(new_codes)
        w.commit()
        w.close()
        monkeypatch.undo()
        crash_after = r.randrange(len(epochs))  # fsyncs completed before the crash
        image = bytearray(base)

        def apply(data, off, cut=None, image=image):
            data = data if cut is None else data[:cut]
            if off + len(data) > len(image):
                image.extend(bytes(off + len(data) - len(image)))
            image[off : off + len(data)] = data

        for epoch in epochs[:crash_after]:
            for data, off in epoch:
                apply(data, off)
        lost = list(epochs[crash_after])
        r.shuffle(lost)
        for data, off in lost[: r.randrange(len(lost) + 1)]:
            apply(data, off, cut=r.randrange(len(data) + 1))  # reordered, torn
        if r.random() < 0.5:
            image.extend(os.urandom(r.randrange(1, 9000)))  # garbage-extended tail
        path.write_bytes(bytes(image))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a torn commit slot is reported
            idx = bne.open(path)
        assert len(idx) in (old_n, old_n + 3)
        if len(idx) == old_n + 3:
            np.testing.assert_array_equal(idx.codes()[-3:], new_codes)
        bne.open(path, mode="a").close()  # a writer repairs torn slots and tails
        assert len(bne.open(path, verify=True)) == len(idx)


KILL_WRITER = textwrap.dedent(
    """
    import sys, numpy as np, bne
    path = sys.argv[1]
    w = bne.open(path, mode="a", bits=256)
    start = len(w)
    for i in range(start, 10**9):
        w.add(np.full((1, 32), i % 251, np.uint8), ids=[i])
        if i % 3 == 0:
            w.commit()
            print(i + 1, flush=True)
    """
)


def kill_trials(tmp_path, trials):
    path = tmp_path / "kill.bne"
    committed = 0
    r = random.Random(5)
    for _ in range(trials):
        p = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        seen = 0
        for _ in range(r.randrange(1, 40)):
            line = p.stdout.readline()
            if not line:
                break
            seen = int(line)
        p.kill()  # SIGKILL at an arbitrary moment
        p.wait()
        p.stdout.close()
        committed = max(committed, seen)
        idx = bne.open(path, verify=True)
        n = len(idx)
        assert n >= committed, f"lost committed codes: {n} < {committed}"
        assert n % 3 == 1 or n == 0  # whole commits only: nothing of a torn tail
        ids = idx.ids()
        np.testing.assert_array_equal(ids, np.arange(n))
        np.testing.assert_array_equal(idx.codes()[:, 0], np.arange(n) % 251)
        committed = n


def test_kill9_writer_a_few_times(tmp_path):  # issue item 4 (default suite)
    kill_trials(tmp_path, 4)


@pytest.mark.slow
def test_kill9_writer_100_times(tmp_path):  # issue item 4 (opt-in: pytest -m slow)
    kill_trials(tmp_path, 100)


def test_create_never_clobbers(tmp_path, rng):
    """Creating an index publishes with link(): a file that appeared meanwhile is kept."""
    path = small_file(tmp_path)
    good = path.read_bytes()
    with pytest.raises(FileExistsError):
        storage.save_atomic(path, storage.new_header(128), [], -1, overwrite=False)
    assert path.read_bytes() == good and not list(tmp_path.glob(".bne-*"))
    with bne.open(path, mode="a", bits=128) as w:  # exists: appends, bits must agree with the file
        w.add(random_codes(rng, 2, 128))
    assert len(bne.open(path)) == 22


def test_append_with_other_bits_is_refused(tmp_path):
    path = small_file(tmp_path, bits=128)
    with pytest.raises(bne.IndexFormatError, match="index holds 128-bit codes, expected 1024"):
        bne.open(path, mode="a", bits=1024)


# -- few segments by construction (format 2.0) ------------------------------------------------------


def test_tiny_commits_extend_one_segment(tmp_path, rng, monkeypatch):
    """2,000 one-code commits: one segment, a file far below the 16 MiB bound (the old format
    wrote 253 MiB for 4,000), and the same results as the codes in RAM."""
    monkeypatch.setattr(storage.io, "fsync", lambda fd: None)  # layout, not durability, is tested here
    path = tmp_path / "tiny.bne"
    codes = random_codes(rng, 2000, 1024)
    with bne.open(path, mode="a", bits=1024) as w:
        for i in range(2000):
            w.add(codes[i : i + 1])
            w.commit()
    idx = bne.open(path, verify=True)
    assert len(idx) == 2000 and idx.info()["segments"] == 1 and idx.info()["commit"] == 2001
    assert path.stat().st_size < 2 << 20
    mem = bne.Index(1024)
    mem.add(codes)
    q = random_codes(rng, 7, 1024)
    for got, want in zip(idx.search(q, 10), mem.search(q, 10), strict=True):
        np.testing.assert_array_equal(got, want)


def test_large_builds_keep_few_segments(tmp_path, rng, monkeypatch):
    """Commits of a fixed size (bne build commits every 2048 documents) give O(log n) segments
    and reserve at most about a quarter of the file."""
    monkeypatch.setattr(storage.io, "fsync", lambda fd: None)
    monkeypatch.setattr(storage, "SEGMENT_MIN_BYTES", 8 * 64)  # scaled down: 8 codes of 64 bytes
    monkeypatch.setattr(storage, "SEGMENT_MAX_BYTES", 512 * 64)
    path = tmp_path / "big.bne"
    batch = random_codes(rng, 16, 512)
    n = 0
    with bne.open(path, mode="a", bits=512) as w:
        for _ in range(489):
            w.add(batch)
            w.commit()
            n += 16
    info = bne.open(path, verify=True).info()
    assert info["codes"] == n == 7824
    assert info["segments"] <= 40  # 489 in format 1.0
    assert info["file_bytes"] < 1.4 * n * (64 + 8) + 489 * 41 * 40  # data + reserve + old tables


def test_empty_segments_cost_nothing_to_search(tmp_path, rng):
    """A crafted file listing 100,000 empty segments opens and searches quickly."""
    path = tmp_path / "empty.bne"
    header = storage.new_header(128)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        c = storage.create(fd, header, [(random_codes(rng, 3, 128), np.arange(3))], 2)
        empty = fileformat.Segment(fileformat.DATA_START, 0, fileformat.DATA_START, 0, 0, 0)
        c.segments = [empty] * 100_000 + c.segments
        storage.write_commit(fd, header, c, [], np.empty(0, np.int64), 2)
    finally:
        os.close(fd)
    idx = bne.open(path, verify=True)
    assert idx.info()["segments"] == 100_001 and len(idx) == 3
    D, I = idx.search(random_codes(rng, 16, 128), 2)
    assert I.shape == (16, 2) and (I >= 0).all()
