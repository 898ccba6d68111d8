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
import textwrap
import threading

import numpy as np
import pytest

import bne
from bne import index as index_mod


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
