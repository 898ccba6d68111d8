"""Issue 18 item 8: a long-lived reader follows a writer with refresh(). After each commit of a
writer that appends, removes and compacts, reader.refresh() maps it and searches equal numpy
brute force over the writer's view; a reader that does not refresh keeps its snapshot; a
refresh with nothing new returns False without reloading."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import bne

BITS = 128


def rand(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, BITS // 8), dtype=np.uint8)


def brute(codes, ids, removed, q, k):
    """Top-k ids by (distance, position) over the live positions, -1 padded."""
    live = np.setdiff1d(np.arange(len(codes)), removed)
    d = bne.hamming(q, codes[live]) if len(live) else np.zeros((len(q), 0), np.int32)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    out = np.full((len(q), k), -1, np.int64)
    out[:, : order.shape[1]] = ids[live][order]
    return np.take_along_axis(d, order, 1), out


def view(index):
    return index.codes(), index.ids(), index.removed_positions()


def check(reader, state, q, k=7):
    D, I = reader.search(q, k)
    bd, bi = brute(*state, q, k)
    assert np.array_equal(I, bi)
    assert np.array_equal(D[:, : bd.shape[1]], bd)
    assert len(reader) == len(state[1]) - len(state[2])


def test_reader_follows_append_remove_compact(tmp_path):
    path = tmp_path / "live.bne"
    q = rand(5, 99)
    w = bne.open(path, "a", bits=BITS)
    w.add(rand(50, 0))
    w.commit()
    r, stale = bne.open(path), bne.open(path)
    first = view(w)
    check(r, first, q)
    snap = r._snap
    assert r.refresh() is False and r._snap is snap  # nothing new: nothing reloaded

    w.add(rand(30, 1), ids=np.arange(1000, 1030))  # append
    w.commit()
    assert r.refresh() is True
    check(r, view(w), q)
    assert len(r) == 80 and r.refresh() is False

    w.remove(np.r_[0:10, 1000:1005])  # remove
    w.commit()
    assert r.refresh() is True
    check(r, view(w), q)
    assert len(r) == 65 and (r.positions_of([0, 1000, 1005]) == [-1, -1, 55]).all()

    w.compact()  # replaces the file: the reader reopens it
    assert len(w.segments()) == 1 and len(w.removed_positions()) == 0
    assert r.refresh() is True
    check(r, view(w), q)
    assert r.info()["segments"] == 1 and r.refresh() is False

    w.add(rand(20, 2))  # appends to the compacted file
    w.commit()
    assert r.refresh() is True
    check(r, view(w), q)
    assert len(r) == 85

    # never refreshed: still the first commit, consistently
    check(stale, first, q)
    assert len(stale) == 50 and stale.refresh() is True
    check(stale, view(w), q)
    w.close()
    r.close()
    stale.close()


def test_refresh_of_a_writer_and_of_a_closed_index(tmp_path):
    path = tmp_path / "w.bne"
    with bne.open(path, "a", bits=BITS) as w:
        w.add(rand(3, 0))
        assert w.refresh() is False  # the writer's view is always its newest
    r = bne.open(path)
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.refresh()


def test_refresh_refuses_a_file_replaced_by_another_width(tmp_path):
    path = tmp_path / "x.bne"
    idx = bne.Index(BITS)
    idx.add(rand(10, 0))
    idx.save(path)
    r = bne.open(path)
    other = bne.Index(256)
    other.add(np.zeros((4, 32), np.uint8))
    other.save(path)
    with pytest.raises(bne.IndexFormatError, match="replaced by an index of 256-bit codes"):
        r.refresh()
    assert len(r) == 10 and r.search(rand(1, 5), 3)[1].shape == (1, 3)  # kept its state


def test_searches_during_refresh_see_one_commit(tmp_path):
    """A search thread runs while the main thread commits and refreshes: each answer equals
    brute force over one of the committed states, never a mix."""
    path = tmp_path / "c.bne"
    q = rand(3, 7)
    w = bne.open(path, "a", bits=BITS)
    w.add(rand(2000, 0))
    w.commit()
    r = bne.open(path)
    states = [brute(*view(w), q, 5)[1]]
    stop = threading.Event()
    seen: list[np.ndarray] = []
    errors: list[BaseException] = []

    def searcher():
        while not stop.is_set():
            try:
                seen.append(r.search(q, 5)[1])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    t = threading.Thread(target=searcher)
    t.start()
    try:
        for step in range(12):
            if step % 4 == 3:
                w.compact()
            elif step % 2:
                w.remove(w.ids()[step * 50 : step * 50 + 40])
                w.commit()
            else:
                w.add(rand(300, step + 10))
                w.commit()
            states.append(brute(*view(w), q, 5)[1])
            assert r.refresh() is True
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert seen
    for got in seen:
        assert any(np.array_equal(got, s) for s in states)
    assert np.array_equal(r.search(q, 5)[1], states[-1])
    w.close()


def test_collection_refresh_follows_the_index(tmp_path):
    """Collection.refresh follows the index; the docstore is read per search."""
    from bne.collection import Collection

    path = tmp_path / "c.bne"
    with bne.open(path, "a", bits=BITS) as w:
        w.add(rand(4, 0))
    c = Collection(path, None, writable=False, index=bne.open(path))
    assert c.refresh() is False and len(c) == 4
    with bne.open(path, "a") as w:
        w.add(rand(6, 1))
    assert c.refresh() is True and len(c) == 10 and c.refresh() is False
    writer = Collection(path, None, writable=True, index=bne.open(path, "a"))
    assert writer.refresh() is False
    writer.close()
    c.close()


WRITER = r"""
import sys, numpy as np, bne
path, seed, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
w = bne.open(path, "a", bits=128)
for step in range(steps):
    op = rng.integers(0, 10)
    if op < 6 or len(w) < 50:
        w.add(rng.integers(0, 256, (int(rng.integers(1, 400)), 16), dtype=np.uint8))
        w.commit()
    elif op < 9:
        live = np.setdiff1d(w.ids(), w.ids_at(w.removed_positions()))
        w.remove(rng.choice(live, int(rng.integers(1, 30)), replace=False))
        w.commit()
    else:
        w.compact()
    np.savez(f"{path}.state{step}.npz", codes=w.codes(), ids=w.ids(), removed=w.removed_positions())
    print(step, flush=True)
    sys.stdin.readline()  # the reader checks this commit before the next one
w.close()
"""


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_refresh_matches_a_random_writer_process(tmp_path, seed):
    """A writer process appends, removes and compacts at random; after each of its commits the
    reader (this process) refreshes and matches brute force over the writer's view, and a
    reader that never refreshes keeps matching the first state."""
    path = str(tmp_path / "r.bne")
    with bne.open(path, "a", bits=BITS) as w:
        w.add(rand(100, seed))
    stale = bne.open(path)
    first = view(stale)
    r = bne.open(path)
    q = rand(8, seed + 100)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, path, str(seed), "300"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin and proc.stdout
    try:
        for step in range(300):
            assert proc.stdout.readline().strip() == str(step)
            st = np.load(f"{path}.state{step}.npz")
            assert r.refresh() is True
            assert r.refresh() is False
            check(r, (st["codes"], st["ids"], st["removed"]), q, k=11)
            check(stale, first, q, k=11)
            os.remove(f"{path}.state{step}.npz")
            proc.stdin.write("\n")
            proc.stdin.flush()
    finally:
        proc.stdin.close()
        code = proc.wait(timeout=60)
        proc.stdout.close()
    assert code == 0
