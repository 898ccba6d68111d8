"""Issue 11 (storage and API side): nothing committed is silently lost, no input crashes, hangs or
allocates without bound. Each test reproduces one finding of the attack run on the old code."""

import fcntl
import os
import stat
import struct
import time
import warnings

import numpy as np
import pytest

import bne
from bne import fileformat, storage
from reference import random_codes
from runner import run_python


def new_index(tmp_path, n=20, bits=128, name="x.bne", commits=1, rng=None):
    rng = rng or np.random.default_rng(3)
    path = tmp_path / name
    with bne.open(path, mode="a", bits=bits) as w:
        for c in range(commits):
            w.add(random_codes(rng, n, bits))
            if c < commits - 1:
                w.commit()
    return path


def newest_slot(path):
    data = path.read_bytes()
    return max((struct.unpack_from("<Q", data, off + 8)[0], s) for s, off in enumerate(fileformat.SLOT_OFFSETS))[1]


def run_py(code, *args, timeout=60):
    return run_python(code, *args, timeout=timeout)


# -- item 2: compact() and a second writer --------------------------------------------------------


def test_writer_that_opened_the_old_inode_retries_on_the_new_file(tmp_path, monkeypatch, rng):
    path = new_index(tmp_path)
    old_fd = os.open(path, os.O_RDWR)  # a second writer opened the path just before the rename
    with bne.open(path, mode="a") as w:
        w.compact()  # renames the new file over the path, then releases the old inode's lock
    real_open = storage.open_index_file
    calls = []

    def first_gets_old_inode(p, writable):
        calls.append(p)
        return old_fd if len(calls) == 1 else real_open(p, writable)

    monkeypatch.setattr(storage, "open_index_file", first_gets_old_inode)
    with bne.open(path, mode="a") as w2:
        w2.add(random_codes(rng, 5, 128))
    monkeypatch.undo()
    assert len(calls) == 2  # locked the old inode, saw the rename, retried on the new one
    assert len(bne.open(path, verify=True)) == 25


# The stress version (a compact loop in another process against this one's commits) is
# tests/test_index_file_attacks.py::test_no_commit_lost_to_a_compact_loop.


def test_save_over_an_index_a_writer_holds_is_refused(tmp_path, rng):
    path = new_index(tmp_path)
    with bne.open(path, mode="a") as w:
        w.add(random_codes(rng, 2, 128))
        other = bne.Index(128)
        other.add(random_codes(rng, 3, 128))
        with pytest.raises(bne.IndexLockedError, match="another writer"):
            other.save(path)
    assert len(bne.open(path)) == 22  # the writer's commit is in the file


# -- item 3: a zeroed newest commit record ------------------------------------------------------


def test_zeroed_newest_slot_is_not_a_silent_rollback(tmp_path):
    path = new_index(tmp_path, n=5, commits=3)
    slot = newest_slot(path)
    data = bytearray(path.read_bytes())
    off = fileformat.SLOT_OFFSETS[slot]
    data[off : off + fileformat.PAGE] = bytes(fileformat.PAGE)  # a zeroed page, as some filesystems leave
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=r"all zero although the file has had 3 commits.*bytes follow commit 3"):
        idx = bne.open(path)
    assert len(idx) == 10  # the previous commit, with a warning
    with pytest.raises(bne.IndexFormatError, match="all zero"):
        idx.verify()
    with pytest.raises(bne.IndexFormatError, match=r"Nothing was changed.*repair=True"):
        bne.open(path, mode="a")
    assert path.read_bytes() == bytes(data)  # the writer truncated nothing
    with bne.open(path, mode="a", repair=True) as w:  # explicit: accept the loss
        assert len(w) == 10
    bne.open(path, verify=True)


def test_zero_second_slot_is_fine_after_one_commit(tmp_path):
    path = new_index(tmp_path, commits=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bne.open(path, verify=True)


def test_damaged_older_slot_is_reported_and_repaired(tmp_path):
    path = new_index(tmp_path, n=4, commits=3)
    older = 1 - newest_slot(path)
    storage_off = fileformat.SLOT_OFFSETS[older]
    data = bytearray(path.read_bytes())
    data[storage_off + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(bne.IndexFormatError, match="damaged"):
        bne.open(path, verify=True)
    bne.open(path, mode="a").close()  # nothing after the last commit: the writer rewrites the slot
    assert len(bne.open(path, verify=True)) == 12


# -- item 4: tombstones that pass a wrapping sortedness check -------------------------------------


def test_crafted_tombstone_wrapping_diff_is_refused(tmp_path):
    path = new_index(tmp_path, n=10)
    with bne.open(path, mode="a") as w:
        w.remove([2, 5])
    slot = newest_slot(path)
    data = bytearray(path.read_bytes())
    rec = list(fileformat.COMMIT.unpack_from(data, fileformat.SLOT_OFFSETS[slot]))
    table_offset, table_bytes = rec[5], rec[6]
    struct.pack_into("<q", data, table_offset + table_bytes - 8, -(2**63))  # tombstones [2, -2**63]
    rec[9] = fileformat.crc32(bytes(data[table_offset : table_offset + table_bytes]))
    struct.pack_into("<" + fileformat.COMMIT.format[1:], data, fileformat.SLOT_OFFSETS[slot], *rec)
    struct.pack_into(
        "<I",
        data,
        fileformat.SLOT_OFFSETS[slot] + fileformat.COMMIT.size,
        fileformat.crc32(
            bytes(data[fileformat.SLOT_OFFSETS[slot] : fileformat.SLOT_OFFSETS[slot] + fileformat.COMMIT.size])
        ),
    )
    path.write_bytes(bytes(data))
    with pytest.raises(bne.IndexFormatError, match="tombstones are not sorted positions"):
        bne.open(path)


# -- item 5: the id domain ------------------------------------------------------------------------


@pytest.mark.parametrize("ids", [np.array([2**63], np.uint64), np.array([-1]), np.array([-(2**63)]), [2**64 + 5]])
def test_ids_outside_the_domain_are_refused(ids):
    index = bne.Index(64)
    with pytest.raises(ValueError, match=r"0\.\.2\*\*63-1"):
        index.add(np.zeros((1, 8), np.uint8), ids=ids)
    assert len(index) == 0


def test_largest_id_works_and_lookups_never_wrap(tmp_path):
    index = bne.Index(64)
    index.add(np.zeros((2, 8), np.uint8), ids=np.array([0, 2**63 - 1], np.uint64))
    D, I = index.search(np.zeros((1, 8), np.uint8), 3)
    assert I.tolist() == [[0, 2**63 - 1, -1]]
    assert index.positions_of(np.array([2**63, 2**64 - 1], np.uint64)).tolist() == [-1, -1]
    assert index.remove(np.array([2**63], np.uint64)) == 0 and len(index) == 2


def test_negative_stored_ids_are_caught(tmp_path):
    path = new_index(tmp_path, n=3)
    with open(path, "rb") as f:
        seg = fileformat.read_state(path, f.fileno(), os.fstat(f.fileno()).st_size)[1].segments[0]
    data = bytearray(path.read_bytes())
    struct.pack_into("<q", data, seg.ids_offset, -1)  # first stored id becomes -1 (crc now wrong too)
    path.write_bytes(bytes(data))
    with pytest.raises(bne.IndexFormatError):
        bne.open(path, verify=True)
    with pytest.raises(bne.IndexFormatError, match="negative or repeated"):
        bne.open(path).positions_of([0])


# -- item 6: a huge k ---------------------------------------------------------------------------


def test_huge_k_is_refused_before_allocating(tmp_path):
    code = """
    import resource, numpy as np, bne
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # 2 GiB: the old code needed 7.45
    index = bne.Index(1024)
    index.add(np.zeros((100, 128), np.uint8))
    try:
        index.search(np.zeros((1, 128), np.uint8), 10**9)
    except ValueError as e:
        print("ValueError:", e)
    try:
        bne.knn(np.zeros((100, 128), np.uint8), np.zeros((2, 128), np.uint8), 2**31)
    except ValueError as e:
        print("ValueError:", e)
    D, I = index.search(np.zeros((1, 128), np.uint8), 1000)  # modest padding still works
    print(I.shape, int((I >= 0).sum()))
    """
    out = run_py(code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "k=1000000000 asks for" in lines[0] and "index holds 100 codes" in lines[0]
    assert "k=2147483648" in lines[1]
    assert lines[2] == "(1, 1000) 100"


# -- item 7: FIFOs and files truncated under a reader ----------------------------------------------


def test_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.bne"
    os.mkfifo(fifo)
    out = run_py(
        """
    import sys, bne
    for mode in ("r", "a"):
        try:
            bne.open(sys.argv[1], mode=mode)
        except bne.IndexFormatError as e:
            print(e)
    """,
        fifo,
        timeout=20,
    )
    assert out.stdout.count("not a regular file") == 2, out.stdout + out.stderr


def test_file_truncated_under_a_reader_raises_instead_of_sigbus(tmp_path):
    path = new_index(tmp_path, n=2000, bits=1024)
    out = run_py(
        """
    import os, sys, numpy as np, bne
    idx = bne.open(sys.argv[1])
    q = np.zeros((1, 128), np.uint8)
    idx.search(q, 3)
    os.truncate(sys.argv[1], 12288)  # another program truncates the file in place
    for call in (lambda: idx.search(q, 3), lambda: idx.range_search(q, 10), idx.verify):
        try:
            call()
        except bne.IndexFormatError as e:
            print(e)
    """,
        path,
    )
    assert out.returncode == 0, out.stderr  # SIGBUS would be -7
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and all("12288" in line for line in lines), out.stdout
    assert "shrank to 12288 bytes while open" in lines[0]


# -- item 8: deeply nested metadata ------------------------------------------------------------


def test_deeply_nested_metadata_is_refused(tmp_path):
    path = new_index(tmp_path, n=2)
    data = bytearray(path.read_bytes())
    meta = b'{"a":' + b"[" * 1900 + b"]" * 1900 + b"}"
    struct.pack_into("<I", data, fileformat.HEADER.size - 4, len(meta))
    data[fileformat.HEADER.size : fileformat.HEADER.size + len(meta)] = meta
    struct.pack_into("<I", data, fileformat.HEADER_CRC_AT, fileformat.crc32(bytes(data[: fileformat.HEADER_CRC_AT])))
    path.write_bytes(bytes(data))
    with pytest.raises(bne.IndexFormatError, match="nested too deeply"):
        bne.open(path)
    nested: list = []
    for _ in range(5000):
        nested = [nested]
    index = bne.Index(64)
    with pytest.raises(ValueError, match="nested too deeply"):
        index.save(tmp_path / "n.bne", metadata={"x": nested})
    assert not (tmp_path / "n.bne").exists()


# -- items 9 and 10: API arguments and error messages --------------------------------------------


def test_bad_save_and_open_arguments_are_refused_before_any_file(tmp_path):
    index = bne.Index(64)
    index.add(np.zeros((1, 8), np.uint8))
    with pytest.raises(ValueError, match="bit_order must be 'big'.*got 'middle'"):
        index.save(tmp_path / "a.bne", bit_order="middle")
    with pytest.raises(ValueError, match=r"bits must be at most 1048576"):
        bne.Index(2**32)
    with pytest.raises(ValueError, match=r"bits must be at most"):
        bne.open(tmp_path / "b.bne", mode="a", bits=2**32)
    with pytest.raises(ValueError, match="bit_order must be"):
        bne.open(tmp_path / "c.bne", mode="a", bits=64, bit_order="middle")
    assert sorted(os.listdir(tmp_path)) == []  # nothing created by a refused call


def test_errors_name_the_users_file_not_a_temp_file(tmp_path):
    index = bne.Index(64)
    index.add(np.zeros((1, 8), np.uint8))
    folder = tmp_path / "api"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as e:
        index.save(folder)
    assert str(folder) in str(e.value) and ".tmp" not in str(e.value)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        bne.open(folder)
    assert os.listdir(tmp_path) == ["api"] and os.listdir(folder) == []


# -- item 16: file modes and symlinks ----------------------------------------------------------


def test_new_files_follow_the_umask_and_rewrites_keep_the_mode(tmp_path):
    out = run_py(
        """
    import os, sys, numpy as np, bne
    os.umask(0o027)
    index = bne.Index(64)
    index.add(np.zeros((3, 8), np.uint8))
    index.save(sys.argv[1] + "/saved.bne")
    with bne.open(sys.argv[1] + "/appended.bne", mode="a", bits=64) as w:
        w.add(np.zeros((1, 8), np.uint8))
    """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "saved.bne").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "appended.bne").st_mode) == 0o640
    os.chmod(tmp_path / "saved.bne", 0o604)
    with bne.open(tmp_path / "saved.bne", mode="a") as w:
        w.remove([0])
        w.compact()
    assert stat.S_IMODE(os.stat(tmp_path / "saved.bne").st_mode) == 0o604


def test_compact_through_a_symlink_keeps_the_link(tmp_path):
    real = new_index(tmp_path, n=6, name="real.bne")
    link = tmp_path / "link.bne"
    link.symlink_to(real.name)
    with bne.open(link, mode="a") as w:
        w.remove([0, 1])
        w.compact()
    assert link.is_symlink() and os.readlink(link) == "real.bne"
    assert len(bne.open(real, verify=True)) == 4
    idx = bne.Index(128)
    idx.add(random_codes(np.random.default_rng(0), 2, 128))
    idx.save(link)
    assert link.is_symlink() and len(bne.open(real)) == 2


# -- item 17: temp files of killed rewrites ------------------------------------------------------


def test_leftover_temp_files_are_cleaned_by_the_next_writer(tmp_path):
    path = new_index(tmp_path, n=3)
    dead = tmp_path / f".bne-{path.name}-dead1234.tmp"
    dead.write_bytes(b"x" * 5000)
    old = time.time() - 3600
    os.utime(dead, (old, old))
    alive = tmp_path / f".bne-{path.name}-alive567.tmp"
    alive.write_bytes(b"y")
    os.utime(alive, (old, old))
    fd = os.open(alive, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer that is still working holds its temp file's lock
    fresh = tmp_path / f".bne-{path.name}-fresh890.tmp"
    fresh.write_bytes(b"z")  # just created: its writer may not hold the lock yet
    other = tmp_path / ".bne-other.bne-old.tmp"
    other.write_bytes(b"w")
    os.utime(other, (old, old))
    try:
        bne.open(path, mode="a").close()
    finally:
        os.close(fd)
    assert not dead.exists() and alive.exists() and fresh.exists() and other.exists()


KILLED_COMPACT = """
import os, sys, numpy as np, bne
from bne import storage
path = sys.argv[1]
real = storage.create
def create_then_die(fd, *a, **k):
    real(fd, *a, **k)
    os.kill(os.getpid(), 9)  # killed mid-rewrite: the temp file is complete but not published
storage.create = create_then_die
with bne.open(path, mode="a") as w:
    w.compact()
"""


def test_compact_killed_mid_rewrite_keeps_the_index_and_its_temp_is_cleaned(tmp_path):
    path = new_index(tmp_path, n=50, bits=1024)
    before = path.read_bytes()
    out = run_py(KILLED_COMPACT, path)
    assert out.returncode == -9
    temps = list(tmp_path.glob(".bne-*.tmp"))
    assert len(temps) == 1 and path.read_bytes() == before
    old = time.time() - 3600
    os.utime(temps[0], (old, old))
    with bne.open(path, mode="a") as w:
        assert len(w) == 50
    assert not list(tmp_path.glob(".bne-*.tmp"))


# -- issue 9 item 3: no hidden copies ---------------------------------------------------------


def test_reconstruct_costs_what_it_returns(tmp_path, rng):
    """reconstruct(3 ids) on 200,000 codes (25.6 MB) allocates kilobytes, in RAM and mapped
    (the old RAM index copied the whole database per call: what --rescore paid per batch)."""
    import tracemalloc

    codes = random_codes(rng, 200_000, 1024)
    index = bne.Index(1024)
    index.add(codes)
    index.save(tmp_path / "r.bne")
    want = codes[[5, 17, 199_999]]
    for idx in (index, bne.open(tmp_path / "r.bne")):
        idx.positions_of([0])  # the id lookup is built once per change, then reused
        tracemalloc.start()
        got = idx.reconstruct([5, 17, 199_999])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_array_equal(got, want)
        assert peak < 256 << 10, peak


def test_writer_holds_pending_codes_once(tmp_path, rng):
    """Pending codes live in one buffer that search reads and commit writes (no second copy)."""
    import tracemalloc

    batch = random_codes(rng, 1000, 1024)
    with bne.open(tmp_path / "p.bne", mode="a", bits=1024) as w:
        tracemalloc.start()
        for _ in range(100):
            w.add(batch)
        current = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert len(w) == 100_000
        assert current < 1.5 * 100_000 * (128 + 8), current  # codes + ids, with growth slack
        D, I = w.search(batch[:2], 1)
        assert (D[:, 0] == 0).all()
    assert len(bne.open(tmp_path / "p.bne", verify=True)) == 100_000
