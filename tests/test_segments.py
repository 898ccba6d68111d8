"""One native search over every segment of an index: equal to one array of the same codes, with
one filter bitmap, threads planned over the union, empty and tiny segments, and one call per
search from Python."""

import os
import resource
import threading
import time

import numpy as np
import pytest

import bne
from bne import _core
from reference import hamming, knn, random_codes


def split(codes, rng, pieces):
    """Random cut points, with empty segments among them."""
    cuts = np.sort(rng.integers(0, len(codes) + 1, pieces - 1))
    cuts = np.concatenate([[0], cuts, cuts[:3], [len(codes)]])  # repeated cuts: empty segments
    cuts.sort()
    return [codes[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def packed(mask):
    n = len(mask)
    out = np.zeros((n + 63) // 64 * 8, np.uint8)
    out[: (n + 7) // 8] = np.packbits(mask, bitorder="little")
    return out


@pytest.mark.parametrize("pieces", [1, 2, 7, 300])
@pytest.mark.parametrize("threads", [1, 2])
def test_segments_equal_one_array(pieces, threads, isa, rng):
    db = random_codes(rng, 3000, 320)
    db[::4] &= 0x03  # ties across segment borders
    q = random_codes(rng, 11, 320) & 0x03
    segs = split(db, rng, pieces)
    assert sum(len(s) for s in segs) == len(db) and any(len(s) == 0 for s in segs) == (pieces > 1)
    ref_d, ref_i = knn(db, q, 17)
    d, i = _core.search_segments(segs, q, 17, threads, None, isa)
    np.testing.assert_array_equal(d, ref_d)
    np.testing.assert_array_equal(i, ref_i)
    # One bitmap over all positions filters every segment.
    allow = rng.random(len(db)) < 0.2
    sub = np.flatnonzero(allow)
    rd, ri = knn(db[sub], q, 17)
    d, i = _core.search_segments(segs, q, 17, threads, packed(allow), isa)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(i, np.where(ri >= 0, sub[np.maximum(ri, 0)], -1))
    # Range search likewise.
    radius = int(np.percentile(hamming(q, db), 1))
    want = _core.range_search(db, q, radius, threads=1, isa="serial")
    got = _core.range_segments(segs, q, radius, threads, None, isa)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_segment_errors_are_clear(rng):
    q = random_codes(rng, 2, 128)
    with pytest.raises(ValueError, match=r"segments\[1\] must have 16 bytes per row"):
        _core.search_segments([random_codes(rng, 3, 128), random_codes(rng, 3, 256)], q, 1)
    with pytest.raises(TypeError, match=r"segments\[0\] must be a numpy uint8 array, got list"):
        _core.search_segments([[1, 2]], q, 1)
    with pytest.raises(TypeError, match=r"segments\[0\] must have dtype uint8"):
        _core.search_segments([np.zeros((2, 16), np.int64)], q, 1)
    with pytest.raises(ValueError, match="allow must be a uint8 bitmap of 8 bytes"):
        _core.search_segments([random_codes(rng, 3, 128)], q, 1, 0, np.zeros(3, np.uint8))
    # No segments at all: every slot is padding.
    d, i = _core.search_segments([], q, 3)
    assert (i == -1).all() and (d == bne.PAD_DISTANCE).all()


def test_100000_empty_segments_cost_nothing(rng):
    db = random_codes(rng, 2000, 1024)
    q = random_codes(rng, 16, 1024)
    empty = db[:0]
    segs = [empty] * 50_000 + [db[:1000]] + [empty] * 50_000 + [db[1000:]]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    d, i = _core.search_segments(segs, q, 10)
    elapsed = time.perf_counter() - t
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    ref_d, ref_i = knn(db, q, 10)
    np.testing.assert_array_equal(d, ref_d)
    np.testing.assert_array_equal(i, ref_i)
    assert elapsed < 2.0, elapsed  # was 18.8 s (one call and one merge per segment)
    assert grown_mib < 100, grown_mib  # was 6.9 GiB


def test_file_of_many_commits_searches_in_one_call(tmp_path, rng, monkeypatch):
    db = random_codes(rng, 4000, 256)
    db[::3] &= 0x07
    path = tmp_path / "many.bne"
    with bne.open(path, mode="a", bits=256) as w:
        for start in range(0, len(db), 97):  # 42 commits
            w.add(db[start : start + 97])
            w.commit()
        w.remove(np.arange(0, 4000, 7))
        w.add(random_codes(rng, 0, 256))
    idx = bne.open(path)
    q = random_codes(rng, 9, 256) & 0x07
    live = np.setdiff1d(np.arange(len(db)), np.arange(0, 4000, 7))
    calls = []
    real = _core.search_segments
    monkeypatch.setattr(_core, "search_segments", lambda *a, **k: calls.append(1) or real(*a, **k))
    for threads in (1, 2):
        D, I = idx.search(q, 12, threads=threads)
        rd, ri = knn(db[live], q, 12)
        np.testing.assert_array_equal(D, rd)
        np.testing.assert_array_equal(I, live[ri])
    assert len(calls) == 2  # one native call per search, whatever the number of segments
    allow = live[::5]
    D, I = idx.search(q, 6, allow=allow)
    rd, ri = knn(db[allow], q, 6)
    np.testing.assert_array_equal(D, rd)
    np.testing.assert_array_equal(I, allow[ri])
    lims, D, I = idx.range_search(q[:3], 20)
    full = hamming(q[:3], db)
    for row in range(3):
        want = live[full[row][live] <= 20]
        want = want[np.lexsort((want, full[row][want]))]
        np.testing.assert_array_equal(I[lims[row] : lims[row + 1]], want)


def test_pending_codes_of_a_writer_are_searched_without_copy(tmp_path, rng, monkeypatch):
    """A writer's pending codes are found at once, and the kernel gets a view of the writer's
    buffer, not a copy per search: two searches hand it the same memory, and the committed codes
    come straight from the mapped file (read-only views)."""
    seen = []
    real = _core.search_segments

    def spy(segments, *args):
        seen.append(list(segments))
        return real(segments, *args)

    monkeypatch.setattr(_core, "search_segments", spy)
    path = tmp_path / "w.bne"
    db = random_codes(rng, 500, 512)
    with bne.open(path, mode="a", bits=512) as w:
        w.add(db[:200])
        w.commit()
        w.add(db[200:])  # pending: searched from the writer's buffer
        D, I = w.search(db[[5, 300, 499]], 1)
        np.testing.assert_array_equal(I[:, 0], [5, 300, 499])
        assert (D[:, 0] == 0).all()
        w.search(db[[7]], 1)
    assert len(seen) == 2
    first, second = seen
    pending = [s for s in first if len(s) == 300]
    assert len(pending) == 1 and np.array_equal(pending[0], db[200:])
    assert pending[0].base is not None  # a view of a buffer, not an array of its own
    assert any(np.shares_memory(pending[0], s) for s in second)  # the same buffer both times
    committed = [s for s in first if len(s) == 200]
    assert len(committed) == 1 and np.array_equal(committed[0], db[:200])
    assert not committed[0].flags.writeable and not committed[0].flags.owndata  # the file's mapping


def test_one_query_over_many_segments_is_split_across_threads(rng):
    """A single query over 1M codes in 500 segments: threads split the union, results unchanged."""
    db = random_codes(rng, 1_000_000, 128)
    db[::9] &= 0x01
    segs = np.array_split(db, 500)
    q = random_codes(rng, 1, 128) & 0x01
    ref = _core.search_segments(segs, q, 20, 1)
    got = _core.search_segments(segs, q, 20, 2)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    one = _core.knn(db, q, 20, threads=1)
    np.testing.assert_array_equal(got[1], one[1])


def test_huge_thread_request_starts_no_more_than_the_cores(rng):
    db = random_codes(rng, 300_000, 1024)
    q = random_codes(rng, 64, 1024)
    index = bne.Index(1024)
    index.add(db)
    seen = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.append(len(os.listdir("/proc/self/task")))
            time.sleep(0.002)

    before = len(os.listdir("/proc/self/task"))
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        D, I = index.search(q, 5, threads=100_000)
    finally:
        done.set()
        watcher.join()
    ref = index.search(q, 5, threads=1)
    np.testing.assert_array_equal(D, ref[0])
    np.testing.assert_array_equal(I, ref[1])
    # The watcher is one extra thread; the search adds at most cores - 1 (the caller scans too).
    assert max(seen) <= before + 1 + len(os.sched_getaffinity(0)) - 1, (before, max(seen))


def test_k_beyond_the_index_pads(rng):
    db = random_codes(rng, 5, 1024)
    D, I = _core.search_segments([db[:2], db[2:]], db[:2], 100_000)
    assert D.shape == (2, 100_000)
    assert (I[:, 5:] == -1).all() and (D[:, 5:] == bne.PAD_DISTANCE).all()
    assert sorted(I[0, :5]) == [0, 1, 2, 3, 4]
