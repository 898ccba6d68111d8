"""bne.Collection: the index + docstore + model unit the CLI, the Ray build and the demo use.

Most tests swap the model for a fast deterministic fake (codes from a hash of the text), so
they test the collection's own work: the two-store transaction, the pipeline, Ctrl-C, errors.
"""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np
import pytest

import bne
from bne import collection as bcoll
from bne import ingest
from bne.corpus import Doc, doc_text
from bne.docstore import DocStore, path_for
from bne.errors import CollectionError
from runner import run_bne


class FakeEncoder:
    bits = 1024
    max_length = 128
    info = {"name": "fake"}

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.on_call = None  # hook(call number) run before encoding

    def encode(self, texts, batch_size=64, show_progress=None, return_logits=False):
        self.calls.append(list(texts))
        if self.on_call is not None:
            self.on_call(len(self.calls))
        bits = (
            np.stack([np.unpackbits(np.frombuffer(hashlib.shake_128(t.encode()).digest(128), np.uint8)) for t in texts])
            if texts
            else np.zeros((0, 1024), np.uint8)
        )
        codes = bne.pack(bits.astype(bool)) if len(texts) else np.zeros((0, 128), np.uint8)
        return (codes, np.where(bits, 1.0, -1.0).astype(np.float32)) if return_logits else codes


@pytest.fixture
def fake(monkeypatch):
    enc = FakeEncoder()
    monkeypatch.setattr(bcoll, "load", lambda *a, **k: enc)
    return enc


def docs_of(n: int, start: int = 0) -> list[Doc]:
    return [
        Doc(f"d{i}", f"document number {i} about topic {i % 7}", title=f"T{i}" if i % 2 else "")
        for i in range(start, start + n)
    ]


def consistent(path) -> tuple[int, int]:
    """(codes, documents), after checking every live index id has its document and no row is extra."""
    idx = bne.open(path)
    store = DocStore(path)
    ids = np.sort(idx.ids())
    stored = store.get(ids)
    assert set(stored) == {int(i) for i in ids}
    assert store.max_id() <= (int(ids[-1]) if len(ids) else -1) or store.max_id() == -1
    n, m = len(idx), store.count()
    idx.close()
    store.close()
    return n, m


def test_round_trip_search_info_verify(tmp_path, fake):
    path = tmp_path / "c.bne"
    c = bne.Collection.create(path)
    assert not path.exists()  # nothing is written before add()
    docs = docs_of(50)
    r = c.add(docs, commit_every=16)
    assert (r.added, r.present, r.total, r.interrupted) == (50, 0, 50, False)
    res = c.search([doc_text(docs[7].title, docs[7].text)], k=3)
    top = res.hits[0][0]
    assert (top.doc_id, top.text, top.title, top.distance, top.rank) == ("d7", docs[7].text, "T7", 0, 1)
    info = c.info()
    assert info["documents"] == 50 and info["live"] == 50 and info["model_identity"]["name"] == "default"
    assert c.verify()["documents"] == 50
    c.close()
    # the encoded text is corpus.doc_text: title, then text
    assert fake.calls[0][1] == "T1 document number 1 about topic 1" and fake.calls[0][0] == docs[0].text
    assert consistent(path) == (50, 50)


def test_append_skips_present_and_search_with_rescore(tmp_path, fake):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(20))
    with bne.Collection.open(path, mode="a") as c:
        r = c.add(docs_of(30))  # 20 known + 10 new
        assert (r.added, r.present) == (10, 20)
        res = c.search([docs_of(25)[24].text], k=2, rescore=10)
        assert res.hits[0][0].doc_id == "d24" and res.hits[0][0].score is not None
    assert consistent(path) == (30, 30)


def test_read_only_collection_refuses_add(tmp_path, fake):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(3))
    with bne.Collection.open(path) as c, pytest.raises(CollectionError, match="read-only"):
        c.add(docs_of(1, 3))


@pytest.mark.parametrize("make", ["folder", "exists", "no_parent", "orphan_docstore"])
def test_create_checks_the_path_before_writing(tmp_path, fake, make):
    path = tmp_path / "c.bne"
    if make == "folder":
        path.mkdir()
    elif make == "exists":
        path.write_bytes(b"x")
    elif make == "no_parent":
        path = tmp_path / "missing" / "c.bne"
    else:
        open(path_for(path), "w").close()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(CollectionError):
        bne.Collection.create(path)
    assert sorted(os.listdir(tmp_path)) == before


def test_empty_input_leaves_nothing(tmp_path, fake):
    path = tmp_path / "c.bne"
    with pytest.raises(CollectionError, match="empty corpus: no documents in my.txt"):
        bne.Collection.create(path).add([], source="my.txt")
    assert os.listdir(tmp_path) == []


def test_ctrl_c_keeps_committed_batches_and_resumes(tmp_path, fake):
    path = tmp_path / "c.bne"
    docs = docs_of(100)

    def interrupt(call: int) -> None:
        if call == 5:  # chunks of 10 (commit_every): batches 1-4 encoded before this
            raise KeyboardInterrupt

    fake.on_call = interrupt
    with bne.Collection.create(path) as c:
        r = c.add(docs, commit_every=10)
    assert r.interrupted and r.added == 40 and r.total == 100  # the whole input, though not all of it was encoded
    assert consistent(path) == (40, 40)
    fake.on_call = None
    with bne.Collection.open(path, mode="a") as c:
        r = c.add(docs, commit_every=10)
    assert (r.added, r.present) == (60, 40)
    assert consistent(path) == (100, 100)


def test_ctrl_c_before_any_commit_leaves_nothing(tmp_path, fake):
    def interrupt(call: int) -> None:
        raise KeyboardInterrupt

    fake.on_call = interrupt
    r = bne.Collection.create(tmp_path / "c.bne").add(docs_of(10))
    assert r.interrupted and r.added == 0 and os.listdir(tmp_path) == []


def test_reader_error_keeps_what_was_committed(tmp_path, fake):
    encoding = threading.Event()
    fake.on_call = lambda call: encoding.set() if call == 3 else None

    n = bcoll.INT8_MIN_DOCS + 100

    def docs():  # a bad byte far into a big file: found once encoding is under way
        yield from docs_of(n)
        encoding.wait(timeout=20)
        raise bne.errors.CorpusError(f"in.txt:{n + 1}: not UTF-8 text")

    path = tmp_path / "c.bne"
    c = bne.Collection.create(path)
    with pytest.raises(bne.errors.CorpusError, match=f"in.txt:{n + 1}"):
        c.add(docs(), commit_every=1000)
    # every full batch encoded before the error is committed; the rest of the input is not
    read = n // ingest.ENCODE_CHUNK * ingest.ENCODE_CHUNK  # whole chunks reached the encoder
    assert c.last_add.added == read // 1000 * 1000 > 0
    c.close()
    assert consistent(path) == (read // 1000 * 1000,) * 2


def add_with_a_failed_second_index_commit(path, monkeypatch) -> None:
    """A new collection at ``path`` gets 30 documents in batches of 10, and MappedIndex.commit
    raises ENOSPC at its second call (the first batch commits); the real commit is back after."""
    real = bne.MappedIndex.commit
    calls = []

    def failing(self):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self)

    monkeypatch.setattr(bne.MappedIndex, "commit", failing)
    c = bne.Collection.create(path)
    with pytest.raises(OSError, match="No space"):
        c.add(docs_of(30), commit_every=10)
    c.close()
    monkeypatch.setattr(bne.MappedIndex, "commit", real)


def test_commit_failure_stops_and_the_next_add_drops_orphan_rows(tmp_path, fake, monkeypatch):
    path = tmp_path / "c.bne"
    add_with_a_failed_second_index_commit(path, monkeypatch)
    store = DocStore(path)
    assert store.count() == 20  # the texts of batch 2 were committed, its codes were not
    store.close()
    with bne.Collection.open(path, mode="a") as c:
        r = c.add(docs_of(30), commit_every=10)
    assert r.dropped == 10 and r.added == 20
    assert consistent(path) == (30, 30)


def test_commit_overlaps_encoding_of_the_next_batch(tmp_path, fake, monkeypatch):
    """Batch 1's commit waits until batch 2 is being encoded: a build that encodes and commits in
    turn would never get there (the wait times out and the test fails)."""
    second_encoding = threading.Event()
    overlapped = []
    real = bne.MappedIndex.commit

    def slow_commit(self):
        if not overlapped:
            overlapped.append(second_encoding.wait(timeout=20))
        return real(self)

    monkeypatch.setattr(bne.MappedIndex, "commit", slow_commit)
    fake.on_call = lambda call: second_encoding.set() if call == 2 else None
    with bne.Collection.create(tmp_path / "c.bne") as c:
        c.add(docs_of(20), commit_every=10)
    assert overlapped == [True]


def test_reading_overlaps_encoding(tmp_path, fake):
    """The input is read on its own thread: encoding starts before the reader has finished."""
    encoding = threading.Event()
    waited = []

    n = bcoll.INT8_MIN_DOCS + 10  # the model is chosen once this many are read (int8 or not)

    def docs():
        yield from docs_of(n)
        waited.append(encoding.wait(timeout=20))  # a build that reads everything first never encodes
        yield from docs_of(5, n)

    fake.on_call = lambda call: encoding.set()
    with bne.Collection.create(tmp_path / "c.bne") as c:
        r = c.add(docs())
    assert waited == [True] and r.added == n + 5


def test_progress_reports_rate_inputs_and_total(tmp_path, fake):
    seen = []
    with bne.Collection.create(tmp_path / "c.bne") as c:
        c.add(docs_of(1200), commit_every=500, progress=seen.append)
    encoded = [p.encoded for p in seen]
    assert encoded == sorted(encoded) and encoded[-1] == 1200
    assert seen[-1].committed == 1200 and seen[-1].total == 1200
    assert len({p.encoded for p in seen}) >= 3  # moves more often than once per commit


def test_index_without_recorded_model_opens_for_info(tmp_path):
    path = tmp_path / "plain.bne"
    with bne.open(path, mode="a", bits=1024) as idx:
        idx.add(np.zeros((2, 128), np.uint8))
    with bne.Collection.open(path) as c:
        assert c.info()["model_identity"] is None and c.verify()["codes"] == 2
        with pytest.raises(CollectionError, match="does not record the model"):
            c.search(["x"])


def test_verify_reports_a_damaged_docstore(tmp_path, fake):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(docs_of(400))
    ds = path_for(path)
    with open(ds, "rb") as f:
        data = bytearray(f.read())
    for off in range(4096 + 100, len(data) - 100, 997):  # scribble over pages after the header page
        data[off] ^= 0xFF
    with open(ds, "wb") as f:
        f.write(bytes(data))
    with bne.Collection.open(path) as c, pytest.raises(bne.errors.DocStoreError):
        c.verify()


def test_readme_collection_example_runs(tmp_path, fake, monkeypatch, capsys):
    """The README's Collection block, as written (with the fake model), so it cannot drift."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- collection -->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README has no collection block"
    (tmp_path / "docs.txt").write_text("The cat sat on the mat.\nA small cat sleeping.\nStock markets fell.\n")
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "3 0" and len(out) == 4  # the fake model ranks by hash: check the hits, not their order
    assert sorted(line.split(" ", 3)[3] for line in out[1:]) == [
        "A small cat sleeping.",
        "Stock markets fell.",
        "The cat sat on the mat.",
    ]


def test_bits_default_to_the_models(tmp_path):
    from bne.encoder.base import head_path

    c = bne.Collection.create(tmp_path / "a.bne", model=head_path(2048))  # no bits: the model's
    assert c.bits == 2048 and c.model.kind == "head"
    assert bne.Collection.create(tmp_path / "b.bne").bits == 1024  # "default" without bits: 1024
    with pytest.raises(bne.errors.ModelError, match="2048-bit codes"):
        bne.Collection.create(tmp_path / "c.bne", model=head_path(2048), bits=1024)


def test_cli_bits_must_be_a_multiple_of_64(tmp_path):
    (tmp_path / "d.txt").write_text("a\n")
    out = run_bne("build", "d.txt", "-o", "d.bne", "--bits", "1000", cwd=tmp_path)
    assert out.returncode == 2 and "multiple of 64" in out.stderr and not (tmp_path / "d.bne").exists()


def test_the_model_is_told_how_many_documents_come(tmp_path, monkeypatch):
    asked = []
    enc = FakeEncoder()

    def load(*a, docs=None, **k):
        asked.append(docs)
        return enc

    monkeypatch.setattr(bcoll, "load", load)
    with bne.Collection.create(tmp_path / "a.bne") as c:
        c.add(docs_of(30))
    with bne.Collection.create(tmp_path / "b.bne") as c:
        c.add(docs_of(bcoll.INT8_MIN_DOCS + 1))
    # the count, or None once INT8_MIN_DOCS are read and the reader is still going
    assert asked[0] == 30 and asked[1] in (None, bcoll.INT8_MIN_DOCS + 1)


def test_bad_input_fails_before_the_model_loads(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(bcoll, "load", lambda *a, **k: loaded.append(1) or FakeEncoder())

    def docs():
        yield from docs_of(3)
        raise bne.errors.CorpusError("in.txt:4: not UTF-8 text")

    with pytest.raises(bne.errors.CorpusError, match="in.txt:4"):
        bne.Collection.create(tmp_path / "c.bne").add(docs())
    assert loaded == [] and os.listdir(tmp_path) == []  # no model load (or int8 quantisation) for a bad file
