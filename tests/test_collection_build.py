"""Issue 18, items 2, 5(a) and 6: two builds of one new index, the reader's memory, and the
messages of a full disk, of `bne verify` and of SIGTERM / SIGHUP.

The model is the fast deterministic fake of test_collection (codes from a hash of the text); the
CLI tests run `bne` in a subprocess with that fake patched in, so they test bne's own work."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import bne
from bne import collection as bcoll
from bne import docstore, ingest, lexical_segments, storage
from bne.corpus import Doc
from bne.docstore import DocStore, path_for
from bne.errors import CollectionError
from runner import run_main
from test_collection import FakeEncoder, consistent, docs_of


@pytest.fixture
def fake(monkeypatch):
    enc = FakeEncoder()
    monkeypatch.setattr(bcoll, "load", lambda *a, **k: enc)
    return enc


def identity(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


# -- item 2: one build never removes another's files ---------------------------------------------


def test_a_build_that_loses_the_race_changes_nothing_of_the_winners(tmp_path, fake):
    """B passes the "already exists" check before A's first commit and reaches its own first
    commit while A is mid-build (A holds the writer lock): B fails, and removes nothing of A's."""
    path = tmp_path / "c.bne"
    a, b = bcoll.Collection.create(path), bcoll.Collection.create(path)  # both pass the check
    seen: dict[str, object] = {}

    def in_the_middle_of_a(call: int) -> None:
        if call == 4 and "error" not in seen:  # A has committed batches 1-2 (or 1-3) by now
            fake.on_call = None
            seen["before"] = identity(path), identity(path_for(path))
            with pytest.raises(CollectionError) as e:
                b.add(docs_of(5, start=1000), commit_every=5)
            seen["error"] = str(e.value)
            seen["after"] = identity(path), identity(path_for(path))  # raises if B removed them

    fake.on_call = in_the_middle_of_a
    r = a.add(docs_of(60), commit_every=10)
    a.close()
    b.close()
    assert r.added == 60 and not r.interrupted
    assert "already exists" in seen["error"] and "another process" in seen["error"]
    assert seen["before"] == seen["after"]  # the loser's view: still the winner's files
    assert consistent(path) == (60, 60)
    store = DocStore(path)
    assert sorted(store.ext_ids()) == sorted(d.ext_id for d in docs_of(60))  # nothing of B's
    store.close()


def test_a_build_created_first_by_another_makes_the_second_fail_cleanly(tmp_path, fake, monkeypatch):
    """Another build creates the index between this one's check and its first commit: this one
    neither appends to that index nor removes it."""
    path = tmp_path / "c.bne"
    a = bcoll.Collection.create(path)
    real = bcoll.Collection._start_index

    def other_build_first(self):
        if self is a:
            monkeypatch.setattr(bcoll.Collection, "_start_index", real)
            with bcoll.Collection.create(path) as b:
                b.add(docs_of(25, start=500), commit_every=10)
            a.other = identity(path), identity(path_for(path))
        return real(self)

    monkeypatch.setattr(bcoll.Collection, "_start_index", other_build_first)
    with pytest.raises(CollectionError, match="already exists: another process created it"):
        a.add(docs_of(30), commit_every=10)
    a.close()
    assert (identity(path), identity(path_for(path))) == a.other
    assert consistent(path) == (25, 25)
    store = DocStore(path)
    assert sorted(store.ext_ids()) == sorted(d.ext_id for d in docs_of(25, start=500))
    store.close()
    assert sorted(os.listdir(tmp_path)) == ["c.bne", "c.bne.docs.sqlite"]  # no temp file left


def test_a_failed_new_build_still_removes_its_own_files(tmp_path, fake, monkeypatch):
    """The cleanup of a new build that fails before its first commit completes still works."""
    path = tmp_path / "c.bne"

    def failing(self):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(bne.MappedIndex, "commit", failing)
    with pytest.raises(OSError, match="cannot write the index: Input/output error: .*c.bne"):
        bcoll.Collection.create(path).add(docs_of(5))
    assert os.listdir(tmp_path) == []


def test_a_new_index_is_removed_only_if_it_is_still_ours_and_unlocked(tmp_path):
    """The cleanup of a build that holds no lock on its new index (ingest.remove_if_unused): the file
    goes only while it is the one this build created and no other process holds its writer lock;
    a FIFO put in its place is neither waited on nor removed."""
    import fcntl

    path = str(tmp_path / "c.bne")

    def made() -> tuple[int, int]:
        with open(path, "wb") as f:
            f.write(b"x")
        return ingest.file_identity(path)

    ident = made()
    ingest.remove_if_unused(path, ident, locked=False)
    assert not os.path.exists(path)  # ours, unlocked: removed

    ident = made()
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another writer has it open
    try:
        ingest.remove_if_unused(path, ident, locked=False)
        assert os.path.exists(path)
    finally:
        os.close(fd)

    held = os.open(path, os.O_RDONLY)  # keeps our inode in use, so the new file cannot reuse it
    try:
        with open(path + ".other", "wb") as f:
            f.write(b"y")
        os.replace(path + ".other", path)  # another build's file at the same path: not ours
        ingest.remove_if_unused(path, ident, locked=False)
        assert os.path.exists(path) and ingest.file_identity(path) != ident
    finally:
        os.close(held)

    os.remove(path)
    os.mkfifo(path)  # opened without a writer: must not block
    ingest.remove_if_unused(path, (-1, -1), locked=False)
    assert os.path.exists(path)  # not the identity asked for: kept


# A `bne` whose model is the fake (codes from a hash of the text), slow enough to be raced or
# signalled: BNE_FAKE_FIRST seconds before the first batch, BNE_FAKE_DELAY before each other one.
FAKE_BNE = """
import hashlib, os, sys, time
import numpy as np
from bne import cli, collection

class Fake:
    bits, max_length, info = 1024, 128, {"name": "fake"}
    calls = 0
    def encode(self, texts, batch_size=64, show_progress=None, return_logits=False):
        Fake.calls += 1
        time.sleep(float(os.environ["BNE_FAKE_FIRST" if Fake.calls == 1 else "BNE_FAKE_DELAY"]))
        return np.array([np.frombuffer(hashlib.shake_128(t.encode()).digest(128), np.uint8) for t in texts])

collection.load = lambda *a, **k: Fake()
if os.environ.get("BNE_FAKE_FULL"):  # the disk fills during the second index commit
    from bne import mapped, storage
    real_commit, real_pwrite, state = mapped.MappedIndex.commit, storage.io.pwrite, {"n": 0, "full": False}
    def commit(self):
        state["n"] += 1
        state["full"] = state["n"] == 2
        try:
            return real_commit(self)
        finally:
            state["full"] = False
    def pwrite(fd, data, offset):
        if state["full"]:
            raise OSError(28, os.strerror(28))
        return real_pwrite(fd, data, offset)
    mapped.MappedIndex.commit, storage.io.pwrite = commit, pwrite
sys.exit(cli.main(sys.argv[1:]))
"""


def fake_bne(tmp_path, *args, first=0.0, delay=0.0, full=False, **kw) -> subprocess.Popen:
    script = tmp_path / "fake_bne.py"
    if not script.exists():  # rewriting it while another fake bne starts would hand that one an empty file
        script.write_text(FAKE_BNE)
    env = dict(os.environ, HF_HUB_OFFLINE="1", BNE_FAKE_FIRST=str(first), BNE_FAKE_DELAY=str(delay))
    if full:
        env["BNE_FAKE_FULL"] = "1"
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.parametrize("trials", [pytest.param(2, id="2"), pytest.param(20, id="20", marks=pytest.mark.slow)])
def test_two_cli_builds_of_one_new_index(tmp_path, trials):
    """Two `bne build -o idx.bne` started together: one builds the whole index, the other says
    in one line that it exists and leaves it alone."""
    lines = [f"line {i} about {('cats', 'rates', 'bread')[i % 3]}" for i in range(200)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    for t in range(trials):
        out = f"idx{t}.bne"
        # both pass the check while the model "loads"; their first commits then race
        ps = [
            fake_bne(tmp_path, "build", "in.txt", "-o", out, "-q", "--commit-every", "10", first=0.3, delay=0.01)
            for _ in range(2)
        ]
        res = [(p.wait(timeout=120), *p.communicate()) for p in ps]
        codes = sorted(r[0] for r in res)
        assert codes == [0, 2], res
        ok = next(r for r in res if r[0] == 0)
        lost = next(r for r in res if r[0] == 2)
        assert "200 codes" in ok[1], ok
        err = [line for line in lost[2].splitlines() if line.strip()]
        assert len(err) == 1 and "already exists" in err[0] and "Traceback" not in lost[2], lost
        assert consistent(tmp_path / out) == (200, 200)


# -- item 5(a): the reader holds a bounded amount of the input -----------------------------------


def test_the_reader_stays_a_bounded_distance_ahead_of_the_encoder(tmp_path, fake):
    n = 60_000
    produced = [0]
    encoded = [0]
    lead = []

    def docs():
        for d in docs_of(n):
            produced[0] += 1
            yield d

    def on_call(call: int) -> None:
        if call == 1:
            time.sleep(0.5)  # an unbounded reader has read all 60k by now
        lead.append(produced[0] - encoded[0])
        encoded[0] += len(fake.calls[-1])

    fake.on_call = on_call
    with bcoll.Collection.create(tmp_path / "c.bne") as c:
        r = c.add(docs(), commit_every=4096)
    assert r.added == n and encoded[0] == n
    # the queue, the one document waiting to enter it, and the chunk being encoded
    assert max(lead) <= ingest.READ_AHEAD + 1 + ingest.ENCODE_CHUNK, max(lead)


def test_long_documents_are_read_encoded_and_committed_in_bounded_characters(tmp_path, fake, monkeypatch):
    """Documents of 20k characters: the reader's lead, each encoded chunk, each commit and each
    lexical insert stop at their character bounds (a count bound alone would hold thousands of
    long documents at once), and the collection equals one built without the bounds."""
    size, n = 20_000, 120
    monkeypatch.setattr(ingest, "READ_AHEAD_CHARS", 5 * size)
    monkeypatch.setattr(ingest, "CHUNK_CHARS", 3 * size)
    monkeypatch.setattr(ingest, "COMMIT_CHARS", 8 * size)
    monkeypatch.setattr(docstore, "LEXICAL_CHUNK_CHARS", 2 * size)
    inserts: list[int] = []
    real_insert = lexical_segments.insert
    monkeypatch.setattr(
        lexical_segments,
        "insert",
        lambda conn, ids, texts, **kw: inserts.append(len(ids)) or real_insert(conn, ids, texts, **kw),
    )
    produced, encoded, lead, chunks = [0], [0], [], []
    long_docs = [Doc(f"d{i}", f"doc {i} " + f"word{i % 13} " * (size // 6)) for i in range(n)]

    def docs():
        for d in long_docs:
            produced[0] += 1
            yield d

    def on_call(call: int) -> None:
        if call == 1:
            time.sleep(0.3)  # a reader bounded by count alone would have read all 120 by now
        lead.append(produced[0] - encoded[0])
        chunks.append(len(fake.calls[-1]))
        encoded[0] += len(fake.calls[-1])

    fake.on_call = on_call
    batches: list[int] = []
    real_put = ingest.Committer.put
    monkeypatch.setattr(
        ingest.Committer, "put", lambda self, d, codes: batches.append(len(d)) or real_put(self, d, codes)
    )
    with bcoll.Collection.create(tmp_path / "c.bne") as c:
        r = c.add(docs(), commit_every=1000)
    assert r.added == n and consistent(tmp_path / "c.bne") == (n, n)
    per = len(long_docs[0].text)
    assert max(lead) <= 5 * size // per + 2 + 3, lead  # the queue, the one waiting to enter it, the chunk
    assert max(chunks) <= 3 * size // per + 1, chunks
    assert sum(batches) == n and max(batches) <= 8 * size // per + 1, batches
    assert max(inserts) <= 2 * size // per + 1 and sum(inserts) == n, inserts
    for name in ("READ_AHEAD_CHARS", "CHUNK_CHARS", "COMMIT_CHARS"):
        monkeypatch.setattr(ingest, name, 2**40)
    monkeypatch.setattr(docstore, "LEXICAL_CHUNK_CHARS", 2**40)
    with bcoll.Collection.create(tmp_path / "one.bne") as c:
        c.add(long_docs, commit_every=1000)
    q = ["word3 doc 16", "word7", "doc 100"]
    with bcoll.Collection.open(tmp_path / "c.bne") as a, bcoll.Collection.open(tmp_path / "one.bne") as b:
        for mode in ("hybrid", "lexical"):
            got = [[(h.doc_id, h.bm25, h.score) for h in row] for row in a.search(q, 5, mode=mode).hits]
            assert got == [[(h.doc_id, h.bm25, h.score) for h in row] for row in b.search(q, 5, mode=mode).hits]


def test_ctrl_c_stops_a_reader_that_waits_for_room(tmp_path, fake):
    n = 100_000
    produced = [0]

    def docs():
        for d in docs_of(n):
            produced[0] += 1
            yield d

    def interrupt(call: int) -> None:
        if call == 3:
            time.sleep(0.2)  # the reader fills the queue and waits
            raise KeyboardInterrupt

    fake.on_call = interrupt
    with bcoll.Collection.create(tmp_path / "c.bne") as c:
        r = c.add(docs(), commit_every=512)
    assert r.interrupted and r.added == 1024
    deadline = time.time() + 10
    while any(t.name == "bne-read" for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "bne-read" for t in threading.enumerate())  # not blocked on a full queue
    assert produced[0] <= 3 * ingest.ENCODE_CHUNK + ingest.READ_AHEAD + 1
    assert consistent(tmp_path / "c.bne") == (1024, 1024)


# -- item 6: messages ---------------------------------------------------------------------------


def test_disk_full_in_an_index_commit_names_the_file_and_keeps_the_commits(tmp_path, fake, monkeypatch):
    """ENOSPC from a real write of the second commit: the error names the index; commit 1 and
    its documents stay; verify reports the texts of the failed batch as past the last commit."""
    path = tmp_path / "c.bne"
    real_commit, real_pwrite = bne.MappedIndex.commit, storage.io.pwrite
    commits, full = [], threading.Event()

    def commit(self):
        commits.append(1)
        if len(commits) == 2:
            full.set()
        try:
            return real_commit(self)
        finally:
            full.clear()

    def pwrite(fd, data, offset):
        if full.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(bne.MappedIndex, "commit", commit)
    monkeypatch.setattr(storage.io, "pwrite", pwrite)
    c = bcoll.Collection.create(path)
    with pytest.raises(OSError) as e:
        c.add(docs_of(30), commit_every=10)
    c.close()
    assert e.value.filename == str(path) and e.value.errno == errno.ENOSPC
    assert str(e.value).endswith(f"cannot write the index: No space left on device: '{path}'")
    monkeypatch.undo()
    with bne.open(path) as idx:
        assert len(idx) == 10  # commit 1
    store = DocStore(path)
    assert store.count() == 20 and store.count_above(9) == 10  # batch 2's texts, not its codes
    store.close()
    with bcoll.Collection.open(path) as coll:
        checked = coll.verify()
    assert (checked["codes"], checked["documents"], checked["past_commit"]) == (10, 20, 10)
    code, out, err = run_main("verify", path)
    assert code == 0, err
    assert "10 codes" in out and "20 documents, 10 past the last commit of the index" in out, out
    assert "dropped by the next --append" in out


def test_cli_names_the_index_on_a_full_disk(tmp_path):
    """`bne build` on a disk that fills at the second commit: one error line naming the index."""
    (tmp_path / "in.txt").write_text("".join(f"line {i}\n" for i in range(50)))
    p = fake_bne(tmp_path, "build", "in.txt", "-o", "f.bne", "-q", "--commit-every", "10", full=True)
    out, err = p.communicate(timeout=120)
    errors = [line for line in err.splitlines() if line.startswith("bne: error:")]
    assert p.returncode == 2 and "Traceback" not in err, err
    assert errors == ["bne: error: f.bne: cannot write the index: No space left on device"], err
    assert "10 documents were committed to f.bne before the error" in err
    with bne.open(tmp_path / "f.bne") as idx:
        assert len(idx) == 10
    code, out, err = run_main("verify", tmp_path / "f.bne")
    assert code == 0, err
    assert "10 codes" in out and "20 documents, 10 past the last commit of the index" in out, out


def test_verify_of_a_clean_index_keeps_its_message(tmp_path, fake):
    path = tmp_path / "c.bne"
    with bcoll.Collection.create(path) as c:
        c.add(docs_of(12), commit_every=5)
    code, out, err = run_main("verify", path)
    assert code == 0, err
    assert "12 codes" in out and "docstore intact (12 documents)" in out and "past the last commit" not in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_a_build_like_ctrl_c(tmp_path, sig):
    lines = [f"line {i} about {('cats', 'rates', 'bread')[i % 3]}" for i in range(2000)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    # the build's own SIGHUP is the default one even where this test runs under nohup (which a
    # build keeps ignoring: test_a_build_under_nohup_ignores_sighup)
    p = fake_bne(
        tmp_path, "build", "in.txt", "-o", "s.bne", "-q", "--commit-every", "20", delay=0.02,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )  # fmt: skip
    idx = tmp_path / "s.bne"
    deadline = time.time() + 60
    while p.poll() is None and time.time() < deadline:
        try:
            with bne.open(idx) as i:
                if len(i) >= 100:
                    break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    assert p.poll() is None, "the build ended before it could be signalled"
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, (p.returncode, err)
    name = signal.Signals(sig).name
    msg = [line for line in err.splitlines() if line.strip()]
    assert len(msg) == 1 and msg[0].startswith(f"bne: interrupted by {name}; "), err
    n, m = consistent(idx)
    assert n == m and 100 <= n < 2000 and n % 20 == 0
    assert f"; {n} of 2000 new documents committed to s.bne (run again with --append to continue)" in msg[0]


def test_a_build_under_nohup_ignores_sighup(tmp_path):
    """SIGHUP ignored by the parent (nohup) stays ignored: the build runs to its end."""
    (tmp_path / "in.txt").write_text("".join(f"line {i}\n" for i in range(400)))

    def nohup():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    p = fake_bne(tmp_path, "build", "in.txt", "-o", "h.bne", "-q", "--commit-every", "20", delay=0.05, preexec_fn=nohup)
    idx = tmp_path / "h.bne"
    deadline = time.time() + 60
    while p.poll() is None and not idx.exists() and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGHUP)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and "400 codes" in out, err
    assert consistent(idx) == (400, 400)
