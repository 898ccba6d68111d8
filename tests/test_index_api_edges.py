"""Edges of the low-level Index API a tester found: a writer or reader dropped without close()
releases its file at once (no reference cycle), reads of a truncated file raise instead of
SIGBUS, bne.open checks bit_order, allow= takes what remove() takes, the result limit comes
before any copy, and huge or odd arguments give one-line errors."""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pytest

import bne
from bne import IndexFormatError


def rand(n, nbytes=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, nbytes), dtype=np.uint8)


def nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def no_gc():
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# -- 1. no reference cycle: dropping the last reference releases the file ----------------------


def test_dropped_writer_releases_the_lock_at_once(tmp_path):
    path = str(tmp_path / "c.bne")
    i = bne.Index(64)
    i.add(np.zeros((10, 8), np.uint8))
    i.save(path)
    with no_gc():
        bne.open(path, mode="a").compact()  # README's line: the object is dropped at once
        w = bne.open(path, mode="a")
        w.add(np.ones((2, 8), np.uint8))
        w.commit()
        del w
        w2 = bne.open(path, mode="a")  # was IndexLockedError until a gc pass
        assert len(w2) == 12
        w2.close()


def test_dropped_readers_close_their_descriptors(tmp_path):
    path = str(tmp_path / "r.bne")
    i = bne.Index(128)
    i.add(rand(100))
    i.save(path)
    q = rand(3, seed=1)
    with no_gc():
        base = nfds()
        for _ in range(200):
            r = bne.open(path)
            r.search(q, 2)
            r.positions_of([5])
            del r
        assert nfds() == base


def test_running_search_keeps_its_snapshot_after_the_last_reference_goes(tmp_path):
    """A search running in a thread holds its index (and so its snapshot and mapping): dropping
    every other reference, and a refresh to a compacted file, leave its result exact."""
    path = str(tmp_path / "s.bne")
    db = rand(20000, seed=2)
    i = bne.Index(128)
    i.add(db)
    i.save(path)
    q = rand(200, seed=3)
    want = i.search(q, 5)
    with no_gc():
        base = nfds()
        r = bne.open(path)
        out = {}
        start = threading.Event()

        def run(index):
            start.wait()
            out["res"] = [index.search(q, 5) for _ in range(5)]

        t = threading.Thread(target=run, args=(r,))
        t.start()
        del r
        start.set()
        with bne.open(path, "a") as w:  # replaces the file the thread is searching
            w.remove(np.arange(0, 20000, 2))
            w.compact()
        t.join()
        for D, ids in out["res"]:
            assert np.array_equal(D, want[0]) and np.array_equal(ids, want[1])
        del t, run, w  # w: its mapping of the new file
        assert nfds() == base

    # A snapshot held across a refresh to a new file keeps the old file until it is dropped.
    with no_gc():
        r = bne.open(path)
        old = r._snap
        before = nfds()
        w = bne.open(path, "a")
        w.remove([1])
        w.compact()
        del w
        assert r.refresh() is True
        assert nfds() == before + 2  # the new file and its mapping; the old ones still held
        D, ids = old.search(q, 3)
        assert ids.shape == (200, 3) and (ids >= 0).all()
        del old
        assert nfds() == before
        r.close()


# -- 2. a file truncated under a reader: every read raises, none is SIGBUS ----------------------

TRUNCATED = """
import os, sys, numpy as np, bne
db = np.random.default_rng(1).integers(0, 256, (5000, 128), dtype=np.uint8)
i = bne.Index(1024)
i.add(db, ids=np.arange(5000) * 3)
i.remove([3])
i.save(sys.argv[1])
r = bne.open(sys.argv[1])
os.truncate(sys.argv[1], 50000)
try:
    out = eval(sys.argv[2])
except bne.IndexFormatError as e:
    print("IndexFormatError", "shrank" in str(e))
else:
    print("returned", type(out).__name__)
"""

# Calls that read codes or ids of the mapping must refuse; the others return without reading it.
READS = [
    "r.reconstruct(3 * 4999)",
    "r.reconstruct([0, 3 * 4999])",
    "r.ids_at([4999])",
    "r.ids_at(np.array([0]))",
    "r.positions_of([3 * 4999])",
    "r.ids()",
    "r.codes()",
    "r.verify()",
    "r.search(db[:2], 3)",
    "r.search(db[:2], 3, allow=[0, 3])",
    "r.range_search(db[:2], 10)",
    "r.compact(sys.argv[1] + '.copy')",
]
NO_READS = ["r.removed_positions()", "r.info()", "len(r)", "r.npositions", "r.refresh()"]


@pytest.mark.parametrize("call", READS + NO_READS)
def test_truncated_file_raises_instead_of_sigbus(tmp_path, call):
    p = subprocess.run(
        [sys.executable, "-c", TRUNCATED, str(tmp_path / "tr.bne"), call], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, (p.returncode, p.stderr[-500:])  # -7: killed by SIGBUS
    if call == "r.verify()":  # verify rereads the commit records: it names what is missing
        assert p.stdout.startswith("IndexFormatError"), p.stdout
    elif call in READS:
        assert p.stdout.strip() == "IndexFormatError True", p.stdout
    else:
        assert p.stdout.startswith(("returned", "IndexFormatError True")), p.stdout


# -- 3. bne.open checks bit_order against the file ------------------------------------------------


def test_open_checks_bit_order(tmp_path):
    big, little = str(tmp_path / "big.bne"), str(tmp_path / "little.bne")
    i = bne.Index(64)
    i.add(rand(5, 8))
    i.save(big)
    i.save(little, bit_order="little")
    assert bne.open(little).bit_order == "little"  # the default opens either order
    assert bne.open(big, bit_order="big").bit_order == "big"
    assert bne.open(little, "a", bit_order="little").bit_order == "little"
    for mode in ("r", "a"):
        with pytest.raises(IndexFormatError, match="'little' bit order, expected 'big'"):
            bne.open(little, mode, bit_order="big")
        with pytest.raises(IndexFormatError, match="'big' bit order, expected 'little'"):
            bne.open(big, mode, bit_order="little")
        with pytest.raises(ValueError, match="bit_order must be 'big'.*got 'foo'"):
            bne.open(big, mode, bit_order="foo")
    w = bne.open(little, "a")  # the refused opens released the writer lock
    w.close()
    new = str(tmp_path / "new.bne")
    with pytest.raises(ValueError, match="bit_order"):
        bne.open(new, "a", bits=64, bit_order="foo")
    assert not os.path.exists(new)  # refused before creating anything
    assert bne.open(new, "a", bits=64).bit_order == "big"
    assert bne.open(str(tmp_path / "new2.bne"), "a", bits=64, bit_order="little").bit_order == "little"


# -- 4. allow= takes any iterable of ids, as remove() does ----------------------------------------


def small_index():
    i = bne.Index(64)
    i.add(np.arange(80, dtype=np.uint8).reshape(10, 8), ids=np.arange(10) * 10)
    return i


@pytest.mark.parametrize(
    "allow, want",
    [
        ([], []),
        (np.array([], np.int64), []),
        ({20, 30}, [20, 30]),
        ((x for x in [40]), [40]),
        ({50: "a", 60: "b"}.keys(), [50, 60]),
        (frozenset([70]), [70]),
        (range(0, 30, 10), [0, 10, 20]),
        ([True] + [False] * 9, [0]),
        (np.arange(10) == 3, [30]),
        ([5, 2**63 - 1], []),  # absent ids
    ],
)
def test_allow_takes_what_remove_takes(allow, want):
    i = small_index()
    q = i.codes()[:2]
    D, ids = i.search(q, 4, allow=allow)
    assert sorted(set(ids[0].tolist()) - {-1}) == sorted(want)
    assert (ids[:, len(want) :] == -1).all() and (D[:, len(want) :] == bne.PAD_DISTANCE).all()


def test_allow_on_a_file_and_range_search(tmp_path):
    i = small_index()
    i.save(tmp_path / "a.bne")
    r = bne.open(tmp_path / "a.bne")
    q = i.codes()[:1]
    assert (r.search(q, 3, allow=[])[1] == -1).all()
    assert r.search(q, 3, allow={90, 10})[1].tolist() == [[10, 90, -1]]
    lims, D, ids = r.range_search(q, 64, allow=(x for x in [0, 20]))
    assert sorted(ids.tolist()) == [0, 20]
    lims, D, ids = r.range_search(q, 64, allow=[])
    assert lims.tolist() == [0, 0] and len(ids) == 0


@pytest.mark.parametrize("bad", [[2**64], [2**63, 0, 1], [2**63, -1], [[2**70]]])
def test_out_of_range_python_ints_are_a_range_error(bad):
    i = small_index()
    q = i.codes()[:1]
    with pytest.raises(ValueError, match=r"allow must be integers in 0\.\.2\*\*63-1, got \["):
        i.search(q, 2, allow=bad)
    with pytest.raises(ValueError, match=r"ids must be integers in 0\.\.2\*\*63-1"):
        i.remove(bad)
    flat = np.array(bad, dtype=object).ravel().tolist()
    with pytest.raises(ValueError, match=r"ids must be integers in 0\.\.2\*\*63-1, got \[\d+"):
        i.add(np.zeros((len(flat), 8), np.uint8), ids=flat)
    assert len(i) == 10


def test_allow_still_refuses_floats_and_bad_masks():
    i = small_index()
    q = i.codes()[:1]
    with pytest.raises(TypeError, match="allow must be a list/array of ids or a bool mask, got dtype float64"):
        i.search(q, 2, allow=[1.5])
    with pytest.raises(ValueError, match=r"bool mask must have shape \(10,\)"):
        i.search(q, 2, allow=np.zeros(3, bool))


# -- 5. the result limit is checked on the shape, before any copy ---------------------------------


def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("layout", ["broadcast", "fortran", "strided"])
def test_search_refuses_before_copying_the_queries(monkeypatch, tmp_path, layout):
    monkeypatch.setenv("BNE_MAX_RESULT_BYTES", str(10**6))
    db = rand(1000, 128, seed=4)
    n = 100_000  # 12.8 MB of queries; the results need 12 MB, over the 1 MB limit
    q = {
        "broadcast": np.broadcast_to(db[:1], (n, 128)),
        "fortran": np.asfortranarray(np.repeat(db, n // 1000, 0)),
        "strided": np.repeat(db, 2 * n // 1000, 0)[::2],
    }[layout]
    assert not q.flags.c_contiguous
    i = bne.Index(1024)
    i.add(db)
    i.save(tmp_path / "q.bne")
    r = bne.open(tmp_path / "q.bne")
    for call in (lambda: i.search(q, 10), lambda: r.search(q, 10), lambda: bne.knn(db, q, 10)):

        def run(call=call):
            with pytest.raises(bne.ResultTooLargeError, match=r"k=10 asks for results for 100000 queries"):
                call()

        assert peak_bytes(run) < 10**6  # a copy of the queries would be 12.8 MB


def test_non_contiguous_queries_still_searched_exactly(monkeypatch):
    db = rand(300, 16, seed=5)
    i = bne.Index(128)
    i.add(db)
    q = np.asfortranarray(db[:7])
    want = i.search(np.ascontiguousarray(q), 4)
    for got in (i.search(q, 4), i.search(db[:14:2], 4)):
        assert got[1].shape == (7, 4)
    assert np.array_equal(i.search(q, 4)[1], want[1])
    lims, D, ids = i.range_search(q, 0)
    assert ids.tolist() == list(range(7))
    assert np.array_equal(bne.hamming(q, db[::3]), bne.hamming(db[:7], np.ascontiguousarray(db[::3])))


def test_hamming_has_the_result_limit(monkeypatch):
    a = rand(20000, 16, seed=6)
    monkeypatch.setenv("BNE_MAX_RESULT_BYTES", str(10**6))

    def run():
        with pytest.raises(
            bne.ResultTooLargeError, match=r"bne\.hamming of 20000 x 20000 rows .*needs 1\.49 GiB, over"
        ):
            bne.hamming(a, a)

    assert peak_bytes(run) < 10**6
    b = np.broadcast_to(a[:1], (20000, 16))
    with pytest.raises(bne.ResultTooLargeError, match="20000 x 20000"):
        bne.hamming(b, b)
    assert bne.hamming(a[:100], a[:2000]).shape == (100, 2000)  # 800 KB: under the limit
    with pytest.raises(bne.ResultTooLargeError, match=r"100 x 3000 rows"):
        bne.hamming(a[:100], a[:3000])


# -- 6. one-line errors instead of overflows and pybind dumps -------------------------------------


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "incompatible function arguments" not in text
    return text


def test_default_ids_exhausted(tmp_path):
    c = rand(1, 8)
    i = bne.Index(64)
    i.add(c, ids=[2**63 - 1])
    w = bne.open(tmp_path / "x.bne", "a", bits=64)
    w.add(c, ids=[2**63 - 2])
    w.add(c)  # takes the last id, 2**63-1
    for index in (i, w):
        before = (len(index), index.ids().tolist())
        with pytest.raises(ValueError, match=r"default ids are exhausted: .* stop at 2\*\*63-1; pass ids=") as e:
            index.add(rand(3, 8))
        one_line(e)
        assert (len(index), index.ids().tolist()) == before  # nothing changed
        index.add(c, ids=[7])  # explicit ids still work
    assert w.ids().tolist() == [2**63 - 2, 2**63 - 1, 7]
    w.close()


@pytest.mark.parametrize("threads", [2**31, 2**63, 10**30])
def test_huge_threads_are_clamped(threads):
    i = small_index()
    q = i.codes()[:2]
    want = i.search(q, 3)
    assert np.array_equal(i.search(q, 3, threads=threads)[1], want[1])
    assert i.range_search(q, 8, threads=threads)[2].tolist() == i.range_search(q, 8)[2].tolist()
    assert np.array_equal(bne.knn(i.codes(), q, 3, threads=threads)[1], np.array(want[1]) // 10)
    assert bne.hamming(q, q, threads=threads).shape == (2, 2)
    before = bne.get_num_threads()
    try:
        bne.set_num_threads(0)
        cores = bne.get_num_threads()
        bne.set_num_threads(threads)
        assert bne.get_num_threads() == cores  # clamped to the cores
    finally:
        bne.set_num_threads(before)


def test_set_num_threads_checks_its_argument():
    for bad, err in ((1.5, TypeError), ("2", TypeError), (-1, ValueError), (True, TypeError)):
        with pytest.raises(err, match="threads must be") as e:
            bne.set_num_threads(bad)
        one_line(e)


def test_huge_radius_and_max_results():
    i = small_index()
    q = i.codes()[:2]
    every = i.range_search(q, 64)
    for radius in (65, 2**40, 2**63, 2**70):
        got = i.range_search(q, radius)
        assert all(np.array_equal(a, b) for a, b in zip(got, every, strict=True))
    for cap in (2**63 - 1, 2**63, 2**70):
        got = i.range_search(q, 64, max_results=cap)
        assert all(np.array_equal(a, b) for a, b in zip(got, every, strict=True))
    with pytest.raises(bne.ResultTooLargeError, match="more than 5 results"):
        i.range_search(q, 2**70, max_results=5)


def test_split_ranges_checks_its_inputs():
    lims, D, ids = small_index().range_search(rand(3, 8, seed=9), 40)
    assert [len(x) for x in bne.split_ranges(lims, ids)] == np.diff(lims).tolist()
    assert bne.split_ranges(np.array([0], np.uint64), np.arange(0)) == []
    for bad_lims, values in (
        (np.array([0, 5]), np.arange(3)),  # ends past the values
        ([3, 1], np.arange(3)),  # does not start at 0
        ([0, 2, 1, 3], np.arange(3)),  # decreases
        ([0, 1], np.arange(3)),  # ends before the values
        (np.array([0, 2, 1, 3], np.uint64), np.arange(3)),
    ):
        with pytest.raises(ValueError, match=r"lims must start at 0, never decrease and end at len\(values\) = 3") as e:
            bne.split_ranges(bad_lims, values)
        one_line(e)
    for bad_lims in ([], [[0, 3]], [0.0, 3.0], np.array(0)):
        with pytest.raises(ValueError, match="lims must be a 1-D integer array") as e:
            bne.split_ranges(bad_lims, np.arange(3))
        one_line(e)
