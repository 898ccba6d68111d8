"""The attack suite: damaged files, killed writers, readers racing a writer and compact().

Each attack runs briefly in the default suite and for as long as asked in the slow one:

    BNE_ATTACK_SECONDS=600 python -m pytest -m slow tests/test_index_file_attacks.py   # 10 minutes per attack
    python tests/fuzz/fuzz_open.py -max_total_time=3600                     # coverage-guided, 1 hour

An attack fails on any exception other than the documented ones (IndexFormatError for a bad
file, IndexLockedError for a busy writer), on a crash or hang of a child process, and on any
answer that differs from what was committed.
"""

import os
import pathlib
import random
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import bne
from bne import storage
from reference import random_codes

HERE = pathlib.Path(__file__).parent
SLOW_SECONDS = float(os.environ.get("BNE_ATTACK_SECONDS", "60"))
QUICK_SECONDS = 1.5


def duration(request) -> float:
    return SLOW_SECONDS if request.node.get_closest_marker("slow") else QUICK_SECONDS


def code_of(ids: np.ndarray, code_bytes: int) -> np.ndarray:
    """A code that encodes its id: readers can check every hit against it."""
    ids = np.asarray(ids, np.int64)
    out = np.zeros((len(ids), code_bytes), np.uint8)
    out[:, :8] = ids.astype("<i8").view(np.uint8).reshape(-1, 8)
    out[:, 8:] = (ids[:, None] * 7 + np.arange(code_bytes - 8)) % 251
    return out


def sample_files(tmp_path):
    """One file of each kind: format 1.0, a 2.0 save, and a 2.0 file built by many commits with
    reserved room, tombstones and several segments."""
    rng = np.random.default_rng(0)
    golden = tmp_path / "v1.bne"
    golden.write_bytes((HERE / "data" / "golden_v1.bne").read_bytes())
    saved = tmp_path / "saved.bne"
    index = bne.Index(256)
    index.add(random_codes(rng, 40, 256))
    index.save(saved, metadata={"model": "attack"})
    grown = tmp_path / "grown.bne"
    old = storage.SEGMENT_MIN_BYTES
    storage.SEGMENT_MIN_BYTES = 8 * 32  # small reserved room: several segments in a small file
    try:
        with bne.open(grown, mode="a", bits=256) as w:
            for i in range(12):
                w.add(random_codes(rng, 5, 256))
                if i % 4 == 3:
                    w.remove([i, i + 20])
                w.commit()
    finally:
        storage.SEGMENT_MIN_BYTES = old
    return [golden, saved, grown]


def mutation_attack(tmp_path, seconds):
    q = np.random.default_rng(1)
    r = random.Random(2)
    bad = tmp_path / "mutant.bne"
    tried = 0
    for path in sample_files(tmp_path):
        good = path.read_bytes()
        ref_idx = bne.open(path)
        queries = random_codes(q, 3, ref_idx.bits)
        ref = ref_idx.search(queries, 7)
        stop = time.time() + seconds / 3
        while time.time() < stop:
            data = bytearray(good)
            kind = r.random()
            if kind < 0.7:
                for _ in range(r.choice([1, 1, 2, 8, 32])):
                    data[r.randrange(len(data))] = r.randrange(256)
            elif kind < 0.85:
                data = data[: r.randrange(len(data))]
            else:
                at = r.randrange(0, len(data) - 8, 8)
                data[at : at + 8] = r.choice([b"\xff" * 8, bytes(8), (2**63).to_bytes(8, "little")])
            bad.write_bytes(bytes(data))
            tried += 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                try:
                    idx = bne.open(bad, verify=True)
                except bne.IndexFormatError:
                    continue
                got = idx.search(queries, 7)  # accepted by verify: the committed content, exactly
                np.testing.assert_array_equal(got[0], ref[0])
                np.testing.assert_array_equal(got[1], ref[1])
                try:  # a cheap open may accept a payload flip; it must still answer or refuse cleanly
                    bne.open(bad).search(queries, 7)
                    bne.open(bad).range_search(queries, 40)
                except bne.IndexFormatError:
                    pass
    return tried


@pytest.mark.parametrize("speed", [pytest.param("quick"), pytest.param("long", marks=pytest.mark.slow)])
def test_mutated_files_are_refused_or_exact(tmp_path, request, speed):
    assert mutation_attack(tmp_path, duration(request)) > 30


WRITER = """
import sys, time, numpy as np, bne
sys.path.insert(0, sys.argv[3])
from test_index_file_attacks import code_of
path, stop = sys.argv[1], time.time() + float(sys.argv[2])
next_id, step = int(bne.open(path).ids().max()) + 1, 0
while time.time() < stop:
    removed = -1
    with bne.open(path, mode="a") as w:
        n = 1 + step % 7
        w.add(code_of(np.arange(next_id, next_id + n), 32), ids=np.arange(next_id, next_id + n))
        next_id += n
        if step % 5 == 4:
            removed = next_id - 3
            w.remove([removed])
        if step % 23 == 22:
            w.compact()
    print(next_id, removed, flush=True)  # after the commit returned
    step += 1
"""


def race_attack(tmp_path, seconds):
    """A writer appends, removes and compacts; this process opens and searches as a reader over
    and over. Every open must succeed, every hit must be the code committed with that id, the
    newest id a reader sees never goes backwards, and the final file holds exactly what the
    writer committed."""
    path = tmp_path / "race.bne"
    with bne.open(path, mode="a", bits=256) as w:
        w.add(code_of([0], 32), ids=[0])
    log_path = tmp_path / "writer.log"  # a file, not a pipe: a long run must never block the writer
    with log_path.open("w") as log:
        writer = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WRITER), str(path), str(seconds), str(HERE)], stdout=log, text=True
        )
    newest, reads = 0, 0
    try:
        while writer.poll() is None:
            idx = bne.open(path)
            ids = idx.ids()
            live = ids[idx.positions_of(ids) >= 0]
            assert live.max() >= newest
            newest = int(live.max())
            D, I = idx.search(code_of(live[-3:], 32), 1)
            assert (D[:, 0] == 0).all() and (I[:, 0] == live[-3:]).all()
            reads += 1
    finally:
        writer.wait(timeout=120)
    out = log_path.read_text().split()
    assert writer.returncode == 0 and out
    expect = set(range(int(out[-2]))) - {int(x) for x in out[1::2]}
    final = bne.open(path, verify=True)
    ids = final.ids()
    assert set(ids[final.positions_of(ids) >= 0].tolist()) == expect
    return reads


@pytest.mark.parametrize("speed", [pytest.param("quick"), pytest.param("long", marks=pytest.mark.slow)])
def test_readers_racing_a_writer_and_compact(tmp_path, request, speed):
    assert race_attack(tmp_path, duration(request)) > 3


COMPACTOR = """
import sys, time, bne
path, stop = sys.argv[1], time.time() + float(sys.argv[2])
while time.time() < stop:
    try:
        with bne.open(path, mode="a") as w:
            w.compact()
    except bne.IndexLockedError:
        pass
"""


@pytest.mark.parametrize("speed", [pytest.param("quick"), pytest.param("long", marks=pytest.mark.slow)])
def test_no_commit_lost_to_a_compact_loop(tmp_path, request, speed):
    seconds = duration(request)
    path = tmp_path / "c.bne"
    with bne.open(path, mode="a", bits=256) as w:
        w.add(code_of([0], 32), ids=[0])
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(COMPACTOR), str(path), str(seconds + 1)])
    committed, stop = [0], time.time() + seconds
    try:
        while time.time() < stop:
            new = committed[-1] + 1
            try:
                with bne.open(path, mode="a") as w:
                    w.add(code_of([new], 32), ids=[new])
                committed.append(new)
            except bne.IndexLockedError:
                pass
    finally:
        proc.wait(timeout=60)
    assert sorted(bne.open(path, verify=True).ids().tolist()) == committed
