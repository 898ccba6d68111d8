"""Issue 17, items 1 and 4: the lexical (BM25) index beside the docstore's rows stays consistent
with them and with the index through Ctrl-C, kill -9, a failed commit, --append, remove and
compact; older collections get it (resumably) through `bne build --append`; a read-only docstore
is never written; info and verify report it.

"Consistent" is checked on the files, as a user would: the index's live ids, the docstore's row
ids and the lexical index's ids (its segments' ids less the deleted ones) are one set, its N is
the docstore's count, and BM25 over it ranks exactly as a fresh lexical index of the same
documents. The model is test_collection's fast deterministic fake."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import bne
from bne import collection as bcoll
from bne import lexical, lexical_postings, lexical_segments, storage, upkeep
from bne.corpus import Doc
from bne.docstore import DocStore, path_for
from bne.errors import CollectionError, DocStoreError
from runner import run_main, run_python
from test_collection import FakeEncoder, add_with_a_failed_second_index_commit, docs_of
from test_collection_build import fake_bne

QUERIES = ["document number 7", "topic 3", "about topic", "T11 number", "number 42 about topic 5", "zebra"]


@pytest.fixture
def fake(monkeypatch):
    enc = FakeEncoder()
    monkeypatch.setattr(bcoll, "load", lambda *a, **k: enc)
    return enc


def ranked(store: DocStore) -> list[dict[str, float]]:
    """Per query: ext_id -> BM25 score of every matching document."""
    by_id = {i: d.ext_id for i, d in store.get(store.ids()).items()}
    out = []
    for q in QUERIES:
        hits = lexical_postings.bm25_search(store.db, lexical.query_terms(q, repeats=True), 10**6)
        out.append({by_id[i]: round(s, 9) for i, s in hits})
    return out


def fresh_ranking(tmp_path, docs: list[Doc]) -> list[dict[str, float]]:
    """The ranking of a lexical index built in one go over ``docs``."""
    folder = tmp_path / f"fresh{len(os.listdir(tmp_path))}"
    folder.mkdir()
    store = DocStore(folder / "f.bne", create=True)
    store.insert(range(len(docs)), docs)
    store.commit()
    try:
        return ranked(store)
    finally:
        store.close()


def three(path, *, past_commit: int = 0) -> tuple[int, int, int]:
    """(live codes, rows, lexical documents) after checking that the three id sets agree (rows past
    the index's last commit, ``past_commit`` of them, are in the docstore and lexical index only)."""
    with bne.open(path) as idx:
        live = upkeep.live_ids(idx)
        max_id = idx.info()["max_id"]
    store = DocStore(path)
    try:
        rows, lex = store.ids(), store.lexical_ids()
        assert store.lexical_ready
        assert np.array_equal(rows, lex), (rows, lex)
        assert store.lexical_state()["documents"] == len(rows)  # lexp_meta's N
        assert np.array_equal(rows[rows <= max_id], live)
        assert int((rows > max_id).sum()) == past_commit
        assert store.check_lexical() is None
        return len(live), len(rows), len(lex)
    finally:
        store.close()


def same_as_fresh(tmp_path, path, docs: list[Doc]) -> None:
    store = DocStore(path)
    try:
        assert ranked(store) == fresh_ranking(tmp_path, docs)
    finally:
        store.close()


def make_older(path) -> None:
    """The collection as an older bne wrote it: no lexical tables, and no docstore tag binding the
    index to its docstore (neither side has one)."""
    db = sqlite3.connect(path_for(path))
    for t in ("lexp_seg", "lexp_post", "lexp_dead", "lexp_deldf", "lexp_meta"):
        db.execute(f"DROP TABLE {t}")
    db.commit()
    db.close()
    drop_index_tag(path)


def drop_index_tag(path) -> None:
    """Rewrites the index file without the docstore tag in its metadata, as bne did before the tag
    (its codes and ids as they are; a file with removed codes is not handled)."""
    idx = bne.open(path)
    try:
        assert not len(idx.removed_positions())
        meta = idx.metadata
        meta.pop("docstore_tag", None)
        header = storage.new_header(idx.bits, idx.bit_order, meta)
        parts, max_id = [(np.array(idx.codes()), np.array(idx.ids()))], idx.info()["max_id"]
    finally:
        idx.close()
    storage.save_atomic(path, header, parts, max_id)


# -- the docstore's own lexical index ------------------------------------------------------------


def test_a_new_docstore_indexes_its_rows_in_the_same_transaction(tmp_path):
    store = DocStore(tmp_path / "a.bne", create=True)
    assert store.lexical_ready and store.lexical_state()["state"] == "ready"
    store.insert(range(5), docs_of(5))
    store.db.rollback()  # not committed: neither rows nor postings
    assert store.count() == 0 and len(store.lexical_ids()) == 0 and store.lexical_state()["documents"] == 0
    store.insert(range(5), docs_of(5))
    store.commit()
    assert store.delete_above(2) == 2  # rows 3, 4 and their postings
    assert list(store.lexical_ids()) == [0, 1, 2] and store.check_lexical() is None
    assert store.delete_ids([1, 99]) == 1
    assert list(store.lexical_ids()) == [0, 2] and store.lexical_state()["documents"] == 2
    store.close()


def test_a_docstore_without_the_lexical_index(tmp_path):
    store = DocStore(tmp_path / "a.bne", create=True, lexical=False)
    assert not store.has_lexical and store.lexical_state()["state"] == "none" and store.check_lexical() is None
    store.insert(range(4), docs_of(4))
    store.commit()
    assert store.delete_above(2) == 1 and store.count() == 3
    store.close()


def test_add_lexical_resumes_after_ctrl_c_and_kill(tmp_path):
    """Resumable in steps, also while rows are added and dropped meanwhile; then exact."""
    path = tmp_path / "a.bne"
    store = DocStore(path, create=True, lexical=False)
    docs = docs_of(50)
    store.insert(range(40), docs[:40])
    store.commit()
    steps = store.add_lexical(step=7)
    assert next(steps) == (7, 40) and next(steps) == (14, 40)
    steps.close()  # stopped between steps: the two committed steps stay
    store.close()
    store = DocStore(path, create=True)
    assert store.lexical_state() == {"state": "partial", "documents": 14, "indexed": 14, "rows": 40}
    assert store.check_lexical() is None
    store.insert(range(40, 50), docs[40:])  # rows added while it is being added: indexed by the steps
    store.commit()
    assert store.delete_above(45) == 4 and store.delete_ids([3]) == 1  # one indexed row, one not yet
    assert list(store.add_lexical(step=7))[-1] == (45, 45)
    assert store.lexical_ready and store.check_lexical() is None
    store.close()
    kept = [d for i, d in enumerate(docs[:46]) if i != 3]
    same_as_fresh(tmp_path, path, kept)


def test_ids_below_the_backfill_mark_used_again_are_indexed(tmp_path):
    """Rows past the index's last commit are dropped and their ids used again (the next batch):
    those at or below add_lexical's mark are indexed at once, the mark only moves forward."""
    path = tmp_path / "a.bne"
    store = DocStore(path, create=True, lexical=False)
    docs = docs_of(40)
    store.insert(range(30), docs[:30])
    store.commit()
    steps = store.add_lexical(step=10)
    assert next(steps) == (10, 30) and next(steps) == (20, 30)
    steps.close()
    assert store.delete_above(14) == 15
    store.insert(range(15, 40), docs_of(25, start=100))
    store.commit()
    assert store.check_lexical() is None and store.lexical_state()["indexed"] == 20
    assert list(store.add_lexical(step=10))[-1] == (40, 40) and store.check_lexical() is None
    store.close()
    same_as_fresh(tmp_path, path, docs[:15] + docs_of(25, start=100))


def test_creating_the_lexical_tables_is_one_transaction(tmp_path, monkeypatch):
    """A crash while the tables are created leaves no tables (not tables without their meta rows)."""
    path = tmp_path / "a.bne"
    store = DocStore(path, create=True, lexical=False)
    store.insert(range(3), docs_of(3))
    store.commit()
    real = lexical_segments.create

    def dies(conn):
        real(conn)
        raise KeyboardInterrupt

    monkeypatch.setattr(lexical_segments, "create", dies)
    with pytest.raises(KeyboardInterrupt):
        next(store.add_lexical())
    store.close()  # closing without a commit: what a kill does
    monkeypatch.setattr(lexical_segments, "create", real)
    store = DocStore(path, create=True)
    assert not store.has_lexical
    assert list(store.add_lexical()) == [(3, 3)] and store.check_lexical() is None
    store.close()


# -- crashes of a build ----------------------------------------------------------------------


def test_ctrl_c_then_append_keeps_the_three_stores_consistent(tmp_path, fake):
    path = tmp_path / "c.bne"
    docs = docs_of(100)
    fake.on_call = lambda call: (_ for _ in ()).throw(KeyboardInterrupt) if call == 5 else None
    with bne.Collection.create(path) as c:
        r = c.add(docs, commit_every=10)
    assert r.interrupted and r.added == 40
    assert three(path) == (40, 40, 40)
    same_as_fresh(tmp_path, path, docs[:40])
    fake.on_call = None
    with bne.Collection.open(path, mode="a") as c:
        assert c.add(docs, commit_every=10).added == 60
    assert three(path) == (100, 100, 100)
    same_as_fresh(tmp_path, path, docs)


def test_a_failed_index_commit_then_append(tmp_path, fake, monkeypatch):
    path = tmp_path / "c.bne"
    add_with_a_failed_second_index_commit(path, monkeypatch)
    # batch 2's rows and postings were committed together, its codes were not
    assert three(path, past_commit=10) == (10, 20, 20)
    with bne.Collection.open(path, mode="a") as c:
        r = c.add(docs_of(30), commit_every=10)
    assert (r.dropped, r.added) == (10, 20)
    assert three(path) == (30, 30, 30)
    same_as_fresh(tmp_path, path, docs_of(30))


def test_a_failed_docstore_commit_writes_neither_rows_nor_postings(tmp_path, fake, monkeypatch):
    path = tmp_path / "c.bne"
    real, calls = DocStore.commit, []

    def failing(self):
        calls.append(1)
        if len(calls) == 3:
            time.sleep(0.3)  # the next batch is queued meanwhile (it was once committed after the failure)
            self.db.rollback()  # what SQLite does when the commit cannot be written
            raise DocStoreError("cannot write document store: disk I/O error")
        return real(self)

    monkeypatch.setattr(DocStore, "commit", failing)
    c = bne.Collection.create(path)
    with pytest.raises(DocStoreError):
        c.add(docs_of(50), commit_every=10)  # batches queued behind the failed one are not committed
    assert three(path) == (20, 20, 20)
    monkeypatch.setattr(DocStore, "commit", real)
    assert c.add(docs_of(50), commit_every=10).added == 30  # the same object: nothing of batch 3 lingers
    c.close()
    assert three(path) == (50, 50, 50)
    same_as_fresh(tmp_path, path, docs_of(50))


def _wait_for_codes(path, n: int, p: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while p.poll() is None and time.time() < deadline:
        try:
            with bne.open(path) as i:
                if len(i) >= n:
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)


def test_kill_9_of_a_build_then_append(tmp_path):
    """A real `bne build` killed with SIGKILL mid-build: the three stores agree (the docstore may
    hold the batch whose codes were not committed, with its postings); --append completes it."""
    lines = [f"line {i} about {('cats', 'rates', 'bread')[i % 3]} {i % 11}" for i in range(600)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    p = fake_bne(tmp_path, "build", "in.txt", "-o", "k.bne", "-q", "--commit-every", "20", delay=0.02)
    idx = tmp_path / "k.bne"
    _wait_for_codes(idx, 100, p)
    p.kill()
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    with bne.open(idx) as i:
        n = len(i)
    assert 100 <= n < 600 and n % 20 == 0
    store = DocStore(idx)
    extra = store.count() - n
    store.close()
    assert extra in (0, 20)
    assert three(idx, past_commit=extra) == (n, n + extra, n + extra)
    q = fake_bne(tmp_path, "build", "in.txt", "-o", "k.bne", "-q", "--append")
    out, err = q.communicate(timeout=120)
    assert q.returncode == 0 and "600 codes" in out, err
    assert three(idx) == (600, 600, 600)
    docs = list(bne.read_corpus(str(tmp_path / "in.txt")))
    same_as_fresh(tmp_path, idx, docs)


# -- older collections -----------------------------------------------------------------------


def test_append_to_an_older_collection_adds_the_lexical_index_first(tmp_path, fake):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(60), commit_every=16)
    make_older(path)
    with bne.Collection.open(path) as c:
        assert c.info()["lexical"] == {"state": "none", "documents": 0, "indexed": 0, "rows": 60}
    seen: list[tuple[int, int]] = []

    def stop_at_3(done, total):
        seen.append((done, total))
        if len(seen) == 3:
            raise KeyboardInterrupt

    with bne.Collection.open(path, mode="a") as c:
        assert c.add_lexical_index(stop_at_3, step=8) is False  # Ctrl-C after the third step
        assert c.info()["lexical"]["state"] == "partial" and c.verify()["lexical"]["indexed"] == 24
    assert seen == [(8, 60), (16, 60), (24, 60)]
    with bne.Collection.open(path, mode="a") as c:
        progress: list[tuple[int, int]] = []
        r = c.add(docs_of(80), commit_every=16, lexical_progress=lambda d, t: progress.append((d, t)))
        assert (r.added, r.present) == (20, 60) and progress == [(60, 60)]
        assert c.info()["lexical"] == {"state": "ready", "documents": 80, "indexed": 80, "rows": 80}
    assert three(path) == (80, 80, 80)
    same_as_fresh(tmp_path, path, docs_of(80))


def test_ctrl_c_during_the_lexical_step_of_add_keeps_its_steps(tmp_path, fake, monkeypatch):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(30))
    make_older(path)
    monkeypatch.setattr(upkeep, "LEXICAL_STEP", 10)
    monkeypatch.setattr(bcoll.upkeep.add_lexical, "__defaults__", (None, 10))

    def stop(done, total):
        if done == 20:
            raise KeyboardInterrupt

    with bne.Collection.open(path, mode="a") as c:
        r = c.add(docs_of(40), lexical_progress=stop)
    assert r.interrupted and r.added == 0
    store = DocStore(path)
    assert store.lexical_state()["indexed"] == 20 and store.count() == 30
    store.close()


def test_cli_append_without_input_adds_the_lexical_index(tmp_path, fake):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(50))
    make_older(path)
    code, out, err = run_main("info", path)
    assert code == 0 and "lexical         none (an older docstore; add it with: bne build --append -o" in out, out
    code, out, err = run_main("build", "--append", "-o", path)
    assert code == 0, err
    assert err.splitlines() == [
        "bne: adding the lexical index: 0 of 50 documents",
        "bne: adding the lexical index: 50 of 50 documents",
    ]
    assert out.strip() == f"{path}: the lexical index is ready (50 documents)"
    assert three(path) == (50, 50, 50)
    code, out, err = run_main("build", "--append", "-o", path, "-q")  # nothing to do: nothing written
    assert code == 0 and err == "" and "ready (50 documents)" in out
    code, out, err = run_main("info", path)
    assert "lexical         ready (50 documents)" in out
    code, out, err = run_main("verify", path)
    assert code == 0 and "lexical index matches the docstore (50 documents)" in out, out
    code, out, err = run_main("info", path, "--json")
    assert '"state": "ready"' in out


@pytest.mark.parametrize(
    "args,msg",
    [
        (["build", "-o", "x.bne"], "give the input to encode"),
        (["build", "--append", "-o", "missing.bne"], "missing.bne not found"),
        (["build", "--append", "-o", "."], "is a folder"),
    ],
)
def test_cli_input_may_be_left_out_only_to_add_the_lexical_index(tmp_path, args, msg):
    code, out, err = run_main(*args, cwd=tmp_path)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and msg in lines[0] and lines[0].startswith("bne: error:"), err


def _as_a_user() -> list[str]:
    """The command prefix that makes permission bits apply: root ignores them, so as root bne runs in
    a new user namespace (`unshare -U`); skips where that cannot be made."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-U", "true"]).returncode != 0:
        pytest.skip("running as root without `unshare -U`")
    return ["unshare", "-U"]


def _collection_in_a_folder(tmp_path, n: int):
    """(the folder, the collection of ``n`` documents in it) whose permissions a test then narrows."""
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(n))
    return folder, path


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_docstore_is_never_written(tmp_path, fake, what):
    """Root ignores permission bits: as root, bne runs in a new user namespace (`unshare -U`)."""
    prefix = _as_a_user()
    folder, path = _collection_in_a_folder(tmp_path, 20)
    make_older(path)
    os.chmod(folder, 0o777)
    os.chmod(path, 0o666)
    os.chmod(path_for(path), 0o444 if what == "file" else 0o666)
    if what == "folder":
        os.chmod(folder, 0o555)
    before = {n: (os.stat(folder / n).st_mtime_ns, (folder / n).read_bytes()) for n in os.listdir(folder)}
    try:
        res = run_python(
            "import sys; from bne.cli import main; sys.exit(main(sys.argv[1:]))",
            "build",
            "--append",
            "-o",
            path,
            prefix=prefix,
        )
    finally:
        os.chmod(folder, 0o755)
    lines = res.stderr.splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    why = "the file is read-only" if what == "file" else "its folder is not writable"
    assert lines[0] == f"bne: error: cannot add the lexical index to {path_for(path)}: {why} (nothing was changed)"
    assert {n: (os.stat(folder / n).st_mtime_ns, (folder / n).read_bytes()) for n in os.listdir(folder)} == before


def test_kill_9_while_adding_the_lexical_index_keeps_its_steps(tmp_path, fake):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(400))
    make_older(path)
    script = """
        import sys, time, bne
        with bne.Collection.open(sys.argv[1], mode="a") as c:
            def slow(done, total):
                print(done, flush=True)
                time.sleep(0.05)
            c.add_lexical_index(slow, step=10)
    """
    import textwrap

    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    while int(p.stdout.readline() or 400) < 100:
        pass
    p.kill()
    p.communicate(timeout=60)
    store = DocStore(path)
    state = store.lexical_state()
    assert state["state"] == "partial" and 100 <= state["indexed"] < 400 and state["indexed"] % 10 == 0
    assert store.check_lexical() is None
    store.close()
    code, out, err = run_main("build", "--append", "-o", path, "-q")
    assert code == 0, err
    assert three(path) == (400, 400, 400)
    same_as_fresh(tmp_path, path, docs_of(400))


def test_a_collection_opened_read_only_is_not_written(tmp_path, fake):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(5))
    make_older(path)
    before = os.stat(path_for(path)).st_mtime_ns
    with bne.Collection.open(path) as c:
        for call in (c.add_lexical_index, lambda: c.remove(["d1"]), c.compact):
            with pytest.raises(CollectionError, match="open read-only"):
                call()
    assert os.stat(path_for(path)).st_mtime_ns == before


# -- remove and compact ------------------------------------------------------------------------


def test_remove_and_compact_keep_the_three_consistent(tmp_path, fake):
    path = tmp_path / "c.bne"
    docs = docs_of(120)
    with bne.Collection.create(path) as c:
        c.add(docs, commit_every=25)
    gone = {"d7", "d42", "d43", "d100"}
    with bne.Collection.open(path, mode="a") as c:
        assert c.remove([*gone, "not-there"]) == 4
        assert c.remove(["d7"]) == 0  # already removed
    kept = [d for d in docs if d.ext_id not in gone]
    assert three(path) == (116, 116, 116)
    store = DocStore(path)
    by_id = {i: d.ext_id for i, d in store.get(range(200)).items()}
    for q in ["document number 7", "number 42", "number 43", "number 100", "document"]:
        hits = lexical_postings.bm25_search(store.db, lexical.query_terms(q), 10**6)
        assert not {h for h, _ in hits} & {7, 42, 43, 100} and {by_id[h] for h, _ in hits}.isdisjoint(gone)
    store.close()
    same_as_fresh(tmp_path, path, kept)
    with bne.Collection.open(path, mode="a") as c:
        c.compact()
        assert c.info()["tombstones"] == 0
    assert three(path) == (116, 116, 116)
    store = DocStore(path)
    assert store.db.execute("SELECT count(*) FROM lexp_seg").fetchone()[0] == 1
    assert store.db.execute("SELECT count(*) FROM lexp_dead").fetchone()[0] == 0
    store.close()
    same_as_fresh(tmp_path, path, kept)
    with bne.Collection.open(path, mode="a") as c:  # a removed document can be added again
        assert c.add([docs[42]]).added == 1
    assert three(path) == (117, 117, 117)
    same_as_fresh(tmp_path, path, [*kept, docs[42]])


def test_a_remove_that_stops_between_its_commits_is_finished_by_the_next_append(tmp_path, fake, monkeypatch):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(40))

    real = DocStore.delete_ids

    def crash(self, ids):
        ids = list(ids)
        if ids:  # the rows of the removed documents: after the index's tombstones were committed
            raise KeyboardInterrupt
        return real(self, ids)

    monkeypatch.setattr(DocStore, "delete_ids", crash)
    with bne.Collection.open(path, mode="a") as c, pytest.raises(KeyboardInterrupt):
        c.remove(["d1", "d2"])
    monkeypatch.undo()
    monkeypatch.setattr(bcoll, "load", lambda *a, **k: FakeEncoder())
    with bne.Collection.open(path) as c:
        checked = c.verify()
        assert checked["lexical"]["stale"] == 2 and checked["documents"] == 40
    code, out, err = run_main("verify", path)
    assert code == 0 and "2 rows of removed documents (dropped by the next --append, remove or compact)" in out
    with bne.Collection.open(path, mode="a") as c:
        r = c.add(docs_of(41))  # the stale rows go first, so d1 and d2 are not "present": they come back
        assert (r.dropped, r.added) == (2, 3)
    assert three(path) == (41, 41, 41)
    same_as_fresh(tmp_path, path, docs_of(41))


# -- verify --------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["n_docs", "segment"])
def test_verify_reports_a_lexical_index_that_does_not_match(tmp_path, fake, damage):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(30), commit_every=10)
    db = sqlite3.connect(path_for(path))
    if damage == "n_docs":
        db.execute("UPDATE lexp_meta SET v = v + 1 WHERE k = 'n_docs'")
    else:
        db.execute("DELETE FROM lexp_seg WHERE seg = (SELECT min(seg) FROM lexp_seg)")
    db.commit()
    db.close()
    with bne.Collection.open(path) as c, pytest.raises(DocStoreError, match="lexical index"):
        c.verify()
    code, out, err = run_main("verify", path)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and "lexical index" in lines[0] and out == "", err


def test_info_of_a_partial_lexical_index(tmp_path, fake):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(30))
    make_older(path)
    store = DocStore(path, create=True)
    next(store.add_lexical(step=10))
    store.close()
    code, out, err = run_main("info", path)
    assert f"lexical         being added: 10 of 30 documents (continue with: bne build --append -o {path})" in out
    code, out, err = run_main("verify", path)
    assert code == 0 and "lexical index being added: 10 of 30 documents" in out, out
    assert stat.S_ISREG(os.stat(path_for(path)).st_mode)


def test_cli_remove_then_compact(tmp_path, fake):
    path = tmp_path / "c.bne"
    docs = docs_of(50)
    with bne.Collection.create(path) as c:
        c.add(docs, commit_every=16)
    (tmp_path / "ids.txt").write_text("d10\n\nd11\nnot-there\nno\x1b[2J\n")
    code, out, err = run_main("remove", path, "d3", "--ids", tmp_path / "ids.txt")
    assert code == 0, err
    assert out.strip() == (
        f"{path}: removed 3 documents, 2 not found (not-there, no\\x1b[2J); 47 remain "
        "(bne remove --compact shrinks the files)"
    )
    kept = [d for d in docs if d.ext_id not in ("d3", "d10", "d11")]
    assert three(path) == (47, 47, 47)
    same_as_fresh(tmp_path, path, kept)
    code, out, err = run_main("info", path)
    assert "tombstones      3" in out and "lexical         ready (47 documents)" in out, out
    code, out, err = run_main("remove", path, "--compact")
    assert code == 0 and out.strip() == f"{path}: removed 0 documents; 47 remain; compacted", (out, err)
    code, out, err = run_main("info", path)
    assert "tombstones      0" in out and "codes           47" in out, out
    assert three(path) == (47, 47, 47)
    same_as_fresh(tmp_path, path, kept)


@pytest.mark.parametrize(
    "args,msg",
    [
        ([], "give the ids of the documents to remove (or --ids FILE), or --compact"),
        (["--ids", "missing.txt"], "--ids missing.txt: No such file or directory"),
        (["--ids", "bad.txt"], "--ids bad.txt: not UTF-8 text (byte 0xff at offset 2)"),
    ],
)
def test_cli_remove_errors_are_one_line(tmp_path, fake, args, msg):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(5))
    (tmp_path / "bad.txt").write_bytes(b"d1\xff\n")
    code, out, err = run_main("remove", "c.bne", *args, cwd=tmp_path)
    assert code == 2 and err.splitlines() == [f"bne: error: {msg}"], err
    assert three(path) == (5, 5, 5)


def test_sigterm_while_the_cli_adds_the_lexical_index(tmp_path, fake):
    """`bne build --append -o INDEX` stopped by SIGTERM between steps: one line saying how far it
    got, exit 143, the steps so far kept; the next run finishes."""
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(400))
    make_older(path)
    script = """
        import sys, time
        from bne import cli, collection, docstore
        collection.Collection.add_lexical_index.__defaults__ = (None, 10)
        real = docstore.DocStore._index_texts
        def slow(self, rows):
            time.sleep(0.03)
            return real(self, rows)
        docstore.DocStore._index_texts = slow
        sys.exit(cli.main(sys.argv[1:]))
    """
    import textwrap

    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), "build", "--append", "-o", str(path)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stderr is not None
    lines = []
    while not lines or not lines[-1].startswith("bne: adding the lexical index: 100 of 400"):
        lines.append(p.stderr.readline().rstrip("\n"))
        assert lines[-1], lines
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, err
    last = err.splitlines()[-1]
    store = DocStore(path)
    n = store.lexical_state()["indexed"]
    assert store.lexical_state()["state"] == "partial" and 100 <= n < 400 and store.check_lexical() is None
    store.close()
    assert last == (
        f"bne: interrupted by SIGTERM while adding the lexical index to {path}: {n} of 400 documents "
        f"indexed (run again to continue)"
    ), err
    assert all(line.startswith("bne: adding the lexical index: ") for line in err.splitlines()[:-1]), err
    code, out, err = run_main("build", "--append", "-o", path, "-q")
    assert code == 0 and three(path) == (400, 400, 400)


def _cut_write(path) -> None:
    """A process killed with SIGKILL in the middle of a big docstore transaction (postings and
    rows, more than SQLite's page cache): its hot -journal file is left beside the docstore."""
    code = """
        import os, signal, sys
        from bne.docstore import DocStore
        from test_collection import docs_of
        store = DocStore(sys.argv[1], create=True)
        store.db.execute("PRAGMA cache_size=2")  # pages spill to the file: the journal is hot
        store.insert(range(1000, 3000), docs_of(2000, start=1000))
        os.kill(os.getpid(), signal.SIGKILL)
    """
    res = run_python(code, path, env={"PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])})
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert os.path.exists(path_for(path) + "-journal")


def test_a_write_cut_by_kill_9_is_rolled_back_by_the_next_reader(tmp_path, fake):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(30))
    _cut_write(path)
    code, out, err = run_main("info", path)  # read-only: it rolls the cut write back first
    assert code == 0 and "documents       30" in out and "lexical         ready (30 documents)" in out, err
    assert not os.path.exists(path_for(path) + "-journal")
    assert three(path) == (30, 30, 30)
    same_as_fresh(tmp_path, path, docs_of(30))


def test_a_cut_write_that_this_user_may_not_roll_back_is_one_line(tmp_path, fake):
    prefix = _as_a_user()
    folder, path = _collection_in_a_folder(tmp_path, 10)
    _cut_write(path)
    os.chmod(folder, 0o555)
    try:
        res = run_python(
            "import sys; from bne.cli import main; sys.exit(main(sys.argv[1:]))", "info", path, prefix=prefix
        )
    finally:
        os.chmod(folder, 0o755)
    assert os.path.exists(path_for(path) + "-journal")  # nothing was changed
    assert "a write to it was cut short (its -journal file is left)" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr


def test_cli_append_with_input_to_an_older_collection(tmp_path, fake):
    """`bne build INPUT --append` on an older collection: the lexical index first (its progress
    lines), then the new documents, all three stores in step."""
    lines = [f"line {i} about {('cats', 'rates', 'bread')[i % 3]}" for i in range(30)]
    (tmp_path / "in.txt").write_text("\n".join(lines[:20]) + "\n")
    code, out, err = run_main("build", "in.txt", "-o", "c.bne", "-q", cwd=tmp_path)
    assert code == 0, err
    path = tmp_path / "c.bne"
    make_older(path)
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    code, out, err = run_main("build", "in.txt", "-o", "c.bne", "--append", cwd=tmp_path)
    assert code == 0 and "30 codes of 1024 bits (10 added, 20 already present)" in out, err
    assert err.splitlines()[:2] == [
        "bne: adding the lexical index: 0 of 20 documents",
        "bne: adding the lexical index: 20 of 20 documents",
    ], err
    assert three(path) == (30, 30, 30)
    same_as_fresh(tmp_path, path, list(bne.read_corpus(str(tmp_path / "in.txt"))))
