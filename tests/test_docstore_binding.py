"""An index and its docstore are one collection: a docstore of another collection put beside an
index is refused at open (the random ``docstore_tag`` both record) and by verify (the tags, and a
row for every live code). Collections of an older bne (no tag on either side) keep working."""

from __future__ import annotations

import os
import shutil
import sqlite3

import numpy as np
import pytest

import bne
from bne import collection as bcoll
from bne import storage
from bne.corpus import Doc
from bne.docstore import DocStore, path_for
from bne.errors import CollectionError, DocStoreMismatchError
from runner import run_bne, run_main
from test_collection import FakeEncoder
from test_hybrid_store import drop_index_tag


@pytest.fixture
def fake(monkeypatch):
    enc = FakeEncoder()
    monkeypatch.setattr(bcoll, "load", lambda *a, **k: enc)
    return enc


def corpus(n: int, word: str) -> list[Doc]:
    return [Doc(f"{word}{i}", f"{word} document {i} about {word}s") for i in range(n)]


def build(path, docs, **kw) -> None:
    with bne.Collection.create(path) as c:
        c.add(docs, commit_every=16, **kw)


def tags(path) -> tuple[object, object]:
    """(the index's tag, the docstore's tag)."""
    with bne.open(path) as idx:
        meta = idx.metadata
    store = DocStore(path)
    try:
        return meta.get("docstore_tag"), store.tag
    finally:
        store.close()


def swapped(tmp_path, n_index: int, n_other: int):
    """x.bne of one collection with the docstore of another beside it."""
    build(tmp_path / "a.bne", corpus(n_index, "vitamin"))
    build(tmp_path / "b.bne", corpus(n_other, "planet"))
    mix = tmp_path / "mix"
    mix.mkdir()
    shutil.copy(tmp_path / "a.bne", mix / "x.bne")
    shutil.copy(path_for(tmp_path / "b.bne"), path_for(mix / "x.bne"))
    return mix / "x.bne"


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_new_collection_binds_its_two_files(tmp_path, fake):
    build(tmp_path / "a.bne", corpus(20, "vitamin"))
    build(tmp_path / "b.bne", corpus(20, "vitamin"))  # the same documents: another collection all the same
    ta, tb = tags(tmp_path / "a.bne"), tags(tmp_path / "b.bne")
    assert ta[0] == ta[1] and tb[0] == tb[1]
    assert isinstance(ta[0], int) and 0 <= ta[0] < 2**63 and ta[0] != tb[0]


@pytest.mark.parametrize("n_other", [40, 60], ids=["smaller", "same-size"])
def test_a_docstore_of_another_collection_is_refused(tmp_path, fake, n_other):
    path = swapped(tmp_path, 60, n_other)
    ds = path_for(path)
    with pytest.raises(DocStoreMismatchError) as e:
        bne.Collection.open(path)
    assert str(e.value) == (
        f"{ds} belongs to another index than {path} (their tags differ): restore its own docstore, or rebuild"
    )
    with pytest.raises(DocStoreMismatchError, match="their tags differ"):
        bne.Collection.open(path, mode="a")  # add / remove / compact: nothing is written
    for args in (
        ["verify", path],
        ["search", path, "vitamin", "-k", "60", "--mode", "dense", "--json"],
        ["info", path],
        ["remove", path, "vitamin3"],
    ):
        code, out, err = run_main(*args)
        line = one_line(err)
        assert code == 1 and out == "" and str(ds) in line and str(path) in line and "tags differ" in line, args
    with bne.open(path) as idx:
        assert len(idx) == 60  # the refused remove changed nothing
    assert DocStore(path).count() == n_other


def test_verify_counts_live_codes_without_text(tmp_path, fake):
    """Collections of an older bne have no tags: a swapped docstore is caught by its coverage."""
    path = swapped(tmp_path, 60, 40)
    drop_index_tag(path)
    db = sqlite3.connect(path_for(path))
    db.execute("DELETE FROM lexp_meta WHERE k = 'docstore_tag'")
    db.commit()
    db.close()
    with bne.Collection.open(path) as c, pytest.raises(DocStoreMismatchError) as e:
        c.verify()
    assert str(e.value) == (
        f"document store {path_for(path)}: 20 of 60 live codes of {path} have no text (ids 40..59): "
        f"it does not belong to this index, or rows were lost"
    )
    # as a user runs it: one line, exit 1 (the collection is inconsistent, as for a damaged index)
    out = run_bne("verify", path)
    assert out.returncode == 1 and out.stdout == ""
    assert one_line(out.stderr) == f"bne: error: {e.value}"


def test_verify_names_the_first_runs_of_missing_ids(tmp_path, fake):
    path = tmp_path / "c.bne"
    build(path, corpus(50, "vitamin"))
    db = sqlite3.connect(path_for(path))
    db.execute("DELETE FROM docs WHERE id IN (3, 10, 11, 12, 20, 30, 31)")  # rows lost (no postings change)
    db.commit()
    db.close()
    with bne.Collection.open(path) as c, pytest.raises(DocStoreMismatchError, match=r"7 of 50 live codes") as e:
        c.verify()
    assert "(ids 3, 10..12, 20, ...)" in str(e.value)


def test_removed_and_uncommitted_rows_are_not_missing_texts(tmp_path, fake):
    path = tmp_path / "c.bne"
    build(path, corpus(30, "vitamin"))
    with bne.open(path, mode="a") as idx:  # a remove that stopped between its two commits: rows stay
        assert idx.remove(np.array([4, 5])) == 2
        idx.commit()
    store = DocStore(path, create=True)
    store.insert([30, 31], corpus(2, "extra"))  # the texts of a batch whose codes were never committed
    store.commit()
    store.close()
    with bne.Collection.open(path) as c:
        checked = c.verify()
    assert (checked["documents"], checked["past_commit"], checked["lexical"]["stale"]) == (32, 2, 2)


def test_a_tag_on_one_side_only_is_a_mismatch(tmp_path, fake):
    path = tmp_path / "c.bne"
    build(path, corpus(20, "vitamin"))
    db = sqlite3.connect(path_for(path))
    db.execute("DELETE FROM lexp_meta WHERE k = 'docstore_tag'")
    db.commit()
    db.close()
    with pytest.raises(DocStoreMismatchError, match=r"\(the index records a tag, the docstore none\)"):
        bne.Collection.open(path)
    path2 = tmp_path / "d.bne"
    build(path2, corpus(20, "vitamin"))
    drop_index_tag(path2)
    with pytest.raises(DocStoreMismatchError, match=r"\(the docstore records a tag, the index none\)"):
        bne.Collection.open(path2)


def test_an_older_untagged_collection_opens_searches_verifies_and_appends(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(bcoll, "_new_tag", lambda: None)  # bne before the tag
    path = tmp_path / "old.bne"
    build(path, corpus(30, "vitamin"))
    monkeypatch.undo()
    monkeypatch.setattr(bcoll, "load", lambda *a, **k: fake)
    assert tags(path) == (None, None)
    with bne.Collection.open(path, mode="a") as c:
        assert c.add(corpus(5, "planet")).added == 5
    assert tags(path) == (None, None)  # an existing collection is never tagged afterwards
    with bne.Collection.open(path) as c:
        hits = c.search(["vitamin document 7 about vitamins"], k=3, mode="dense").hits[0]
        assert hits[0].doc_id == "vitamin7" and hits[0].text == "vitamin document 7 about vitamins"
        checked = c.verify()
        assert checked["documents"] == 35 and checked["lexical"]["documents"] == 35
    code, out, err = run_main("verify", path)
    assert code == 0 and "docstore intact (35 documents)" in out, err


def test_the_tag_survives_append_remove_and_compact(tmp_path, fake):
    path = tmp_path / "c.bne"
    build(path, corpus(40, "vitamin"))
    tag = tags(path)
    with bne.Collection.open(path, mode="a") as c:
        c.add(corpus(10, "planet"))
        assert tags(path) == tag
        assert c.remove([f"vitamin{i}" for i in range(0, 40, 3)]) == 14
        c.compact()  # rewrites the index file: its metadata carries over
    assert tags(path) == tag
    code, out, err = run_main("remove", path, "planet1", "--compact")
    assert code == 0, err
    assert tags(path) == tag and tag[0] is not None
    with bne.Collection.open(path) as c:
        assert c.verify()["documents"] == 35 and len(c) == 35


def test_a_build_resumed_after_ctrl_c_keeps_its_tag(tmp_path, fake):
    path = tmp_path / "c.bne"

    def interrupt(call: int) -> None:
        if call == 4:  # batches 1-3 of 10 committed
            raise KeyboardInterrupt

    fake.on_call = interrupt
    with bne.Collection.create(path) as c:
        r = c.add(corpus(60, "vitamin"), commit_every=10)
    assert r.interrupted and r.added == 30
    fake.on_call = None
    tag = tags(path)
    assert tag[0] == tag[1] is not None
    with bne.Collection.open(path, mode="a") as c:
        assert c.add(corpus(60, "vitamin"), commit_every=10).added == 30
    assert tags(path) == tag
    with bne.Collection.open(path) as c:
        assert c.verify()["documents"] == 60


def test_a_lost_docstore_is_made_again_with_the_index_tag_and_verify_counts_the_lost_rows(tmp_path, fake):
    path = tmp_path / "c.bne"
    build(path, corpus(20, "vitamin"))
    tag = tags(path)[0]
    os.remove(path_for(path))
    with bne.Collection.open(path, mode="a") as c:
        c.add(corpus(5, "planet"))
    assert tags(path) == (tag, tag)
    with bne.Collection.open(path) as c, pytest.raises(DocStoreMismatchError, match=r"20 of 25 live codes"):
        c.verify()


def test_the_check_at_open_reads_no_ids(tmp_path, fake, monkeypatch):
    """One header and one SQLite row: never the docstore's ids (O(N))."""
    path = swapped(tmp_path, 30, 30)

    def no_scan(self):
        raise AssertionError("open read every id")

    monkeypatch.setattr(DocStore, "ids", no_scan)
    with pytest.raises(DocStoreMismatchError):
        bne.Collection.open(path)


def test_a_damaged_tag_in_the_index_is_one_line(tmp_path, fake):
    path = tmp_path / "c.bne"
    build(path, corpus(5, "vitamin"))
    with bne.open(path) as idx:
        meta = {**idx.metadata, "docstore_tag": "not a number"}
        parts, bits = [(np.array(idx.codes()), np.array(idx.ids()))], idx.bits
    storage.save_atomic(path, storage.new_header(bits, metadata=meta), parts, 4)
    with pytest.raises(CollectionError, match=r"c\.bne: its docstore_tag metadata is not a 63-bit integer"):
        bne.Collection.open(path)
    # an index without its docstore is unchanged: the index alone answers (ids, no texts)
    shutil.move(path_for(path), tmp_path / "elsewhere")
    with bne.Collection.open(path) as c:
        assert len(c) == 5


def test_verify_fails_on_a_missing_or_damaged_docstore_with_exit_1(tmp_path, fake):
    """A tagged index was built with a docstore: verify says it is missing (not "OK"); a damaged
    docstore exits 1 as a damaged index does, in one line of bounded length."""
    path = tmp_path / "x.bne"
    build(path, corpus(40, "vitamin"))
    ds = path_for(path)
    shutil.copy(ds, tmp_path / "saved.sqlite")
    os.remove(ds)
    code, out, err = run_main("verify", path)
    assert code == 1 and out == "" and err.startswith("bne: error: ") and "is missing" in err, (code, out, err)
    assert len(err.strip().splitlines()) == 1
    shutil.copy(tmp_path / "saved.sqlite", ds)
    assert run_main("verify", path)[0] == 0
    size = os.path.getsize(ds)
    with open(ds, "r+b") as f:  # garbage over the pages after the first: the file is still SQLite's
        f.seek(4096)
        f.write(bytes(range(256)) * ((size - 4096) // 256))
    code, out, err = run_main("verify", path)
    assert code == 1 and ("damaged" in err or "malformed" in err), (code, err)
    assert len(err.strip().splitlines()) == 1 and len(err) < 600, err
