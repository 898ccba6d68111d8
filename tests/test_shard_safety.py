"""`bne shard` and `bne build --ray` lose or hide no user data (without Ray): a damaged source is
refused, the folder gets its documents, repeated or clashing ids are refused before anything is
written, no empty shards; a --ray build over a folder of another input is refused."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

import bne
from bne import distributed, shards
from bne.cli import main as cli_main
from bne.corpus import Doc
from bne.docstore import DocStore, path_for
from bne.errors import CollectionError
from bne.models import identify
from test_distributed import make_collection


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def rows(store_key, ids) -> dict:
    st = DocStore(store_key)
    try:
        return st.get(ids)
    finally:
        st.close()


@pytest.fixture
def two(tmp_path):
    """Two collections with distinct ids (a: 0..119, b: 500..579) and their docstores."""
    make_collection(tmp_path / "a.bne", np.arange(120, dtype=np.int64))
    make_collection(tmp_path / "b.bne", np.arange(500, 580, dtype=np.int64), seed=3)
    return tmp_path / "a.bne", tmp_path / "b.bne"


def test_damaged_source_is_refused_and_nothing_written(two, tmp_path, capsys):
    a, _ = two
    data = a.read_bytes()
    at = data.index(bne.open(a).reconstruct([60]).tobytes())
    with open(a, "r+b") as f:  # one byte of a code
        f.seek(at)
        f.write(bytes([data[at] ^ 0x5A]))
    code, _, err = run(capsys, "verify", a)
    assert code == 1
    code, out, err = run(capsys, "shard", a, "--shards", "2", "-o", tmp_path / "sh")
    assert code == 1 and out == "" and "checksum" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "sh").exists()


def test_folder_gets_the_documents_under_the_ids_of_its_codes(two, tmp_path, capsys):
    a, b = two
    code, out, err = run(capsys, "remove", a, "d7", "d30")  # removed documents stay out of the folder
    assert code == 0, err
    code, out, err = run(capsys, "shard", a, b, "--shards", "3", "-o", tmp_path / "sh")
    assert code == 0 and "3 shards" in out and "documents in corpus.docs.sqlite" in out, out + err
    folder = shards.docstore_key(tmp_path / "sh")
    assert os.path.exists(path_for(folder))
    paths, _ = shards.read_manifest(tmp_path / "sh")
    held = np.concatenate([np.delete(bne.open(p).ids(), bne.open(p).removed_positions()) for p in paths])
    assert len(held) == 118 + 80 and 7 not in held and 30 not in held
    want = {**rows(a, range(120)), **rows(b, range(500, 580))}
    got = rows(folder, held.tolist())
    assert got == {int(i): want[int(i)] for i in held}  # same ext_id, title, text, meta under each id
    st = DocStore(folder)
    assert st.count() == len(held) and not st.has_lexical  # texts only: each shard has its lexical file
    st.close()
    # what a folder search prints: the documents' own ids and texts (Collection._documents)
    coll = bne.Collection.__new__(bne.Collection)
    coll.path = str(tmp_path / "sh")
    docs, problem = bne.Collection._documents(coll, np.array([0, 119, 579]))
    assert problem is None and {i: d.ext_id for i, d in docs.items()} == {0: "d0", 119: "d119", 579: "d579"}


def test_a_later_split_without_texts_leaves_no_stale_docstore(two, tmp_path, capsys):
    a, _ = two
    assert run(capsys, "shard", a, "--shards", "2", "-o", tmp_path / "sh")[0] == 0
    bare = bne.Index(64)
    bare.add(np.zeros((10, 8), np.uint8), ids=np.arange(1000, 1010))
    bare.save(tmp_path / "bare.bne")
    code, out, err = run(capsys, "shard", tmp_path / "bare.bne", "--shards", "2", "-o", tmp_path / "sh")
    assert code == 0 and "cannot read the texts beside" in err and "documents in" not in out, out + err
    assert not os.path.exists(path_for(shards.docstore_key(tmp_path / "sh")))
    assert not list((tmp_path / "sh").glob("*.tmp*"))


@pytest.mark.parametrize("case", ["same", "hardlink", "copy", "clash", "ext_id"])
def test_repeated_or_clashing_ids_are_refused_before_writing(two, tmp_path, capsys, case):
    a, b = two
    other = {"same": a, "hardlink": tmp_path / "h.bne", "copy": tmp_path / "c.bne", "clash": tmp_path / "z.bne"}
    if case == "hardlink":
        os.link(a, tmp_path / "h.bne")
        os.link(path_for(a), path_for(tmp_path / "h.bne"))
    elif case == "copy":
        (tmp_path / "c.bne").write_bytes(a.read_bytes())
        Path(path_for(tmp_path / "c.bne")).write_bytes(Path(path_for(a)).read_bytes())
    elif case == "clash":  # another collection numbered from 0 as well
        make_collection(tmp_path / "z.bne", np.arange(40, dtype=np.int64), seed=9)
    else:  # distinct ids, but a document id of a is in it too
        make_collection(tmp_path / "e.bne", np.arange(1000, 1003, dtype=np.int64), seed=9)
        st = DocStore(tmp_path / "e.bne", create=True)
        st.db.execute("UPDATE docs SET ext_id = 'd5' WHERE id = 1001")
        st.commit()
        st.close()
        other["ext_id"] = tmp_path / "e.bne"
    code, out, err = run(capsys, "shard", a, b, other[case], "--shards", "2", "-o", tmp_path / "sh")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, out + err
    expect = {"same": "given twice", "hardlink": "given twice", "copy": "id 0 is in both", "clash": "id 0 is in both"}
    assert expect.get(case, "document id 'd5' is in both") in err, err
    assert not (tmp_path / "sh").exists()


def test_shard_count_is_capped_at_the_live_codes(tmp_path, capsys):
    make_collection(tmp_path / "s.bne", np.arange(7, dtype=np.int64))
    code, out, err = run(capsys, "shard", tmp_path / "s.bne", "--shards", "25", "-o", tmp_path / "sh")
    assert code == 0 and "7 shards, not 25" in err and "sh: 7 shards" in out, out + err
    paths, _ = shards.read_manifest(tmp_path / "sh")
    assert [len(bne.open(p)) for p in paths] == [1] * 7
    assert sorted(p.name for p in (tmp_path / "sh").glob("*.bne")) == [f"shard-{i:05d}.bne" for i in range(7)]
    empty = bne.Index(64)
    empty.save(tmp_path / "e.bne")
    assert len(shards.shard_index(tmp_path / "e.bne", 5, tmp_path / "e")) == 1  # no codes: one empty shard


# -- bne build --ray over a folder that holds a collection, without Ray ------------------------------


@pytest.fixture
def fake_ray(monkeypatch):
    """build_sharded without Ray: the encoder writes each shard (empty codes, the shard count in
    its metadata) unless one is there, and the manifest; calls records the texts of each run."""
    calls: list[list[str]] = []

    def encode(texts, out_dir, *, n_shards, model, **kw):
        calls.append(list(texts))
        paths = [shards.shard_path(out_dir, i) for i in range(n_shards)]
        written = [i for i, p in enumerate(paths) if not os.path.exists(p)]  # as shard_done keeps a shard
        for i in written:
            storage_save(paths[i], n_shards, i)
        shards.write_manifest(out_dir, paths, model.bits, model.to_metadata())
        skipped = [i for i in range(n_shards) if i not in written]
        return {"shards": paths, "encoded": dict.fromkeys(written, 1), "skipped": skipped}

    monkeypatch.setattr(distributed, "start_ray", lambda *a: None)
    monkeypatch.setattr(distributed, "encode_shards", encode)
    return calls


def storage_save(path, n_shards, i):
    from bne import storage

    header = storage.new_header(64, metadata={"shards": n_shards, "shard": i, "base": 0})
    storage.save_atomic(path, header, [(np.zeros((0, 8), np.uint8), np.zeros(0, np.int64))], -1)


def folder_texts(folder) -> list[str]:
    st = DocStore(shards.docstore_key(folder))
    try:
        return [d.text for _, d in sorted(st.get(st.ids()).items())]
    finally:
        st.close()


def corpus(n: int, tag: str = "") -> list[Doc]:
    return [Doc(f"{tag}{i}", f"text {tag}{i}") for i in range(n)]


def test_ray_rerun_with_other_documents_or_shards_is_refused(tmp_path, fake_ray):
    out = tmp_path / "raysh"
    first = distributed.build_sharded(out, corpus(30), shards=3)
    assert first["documents"] == 30 and len(fake_ray) == 1
    for docs, n, msg in (
        (corpus(10, "x"), 3, "holds a collection of other documents (30, not these 10); remove it first"),
        (corpus(31), 3, "other documents (30, not these 31)"),
        ([*corpus(29), Doc("29", "changed")], 3, "other documents"),
        (corpus(30), 4, "was built with 3 shards, not 4; remove it first"),
    ):
        with pytest.raises(CollectionError, match=msg.replace("(", r"\(").replace(")", r"\)")) as e:
            distributed.build_sharded(out, docs, shards=n)
        assert str(out) in str(e.value) and "\n" not in str(e.value)
    assert len(fake_ray) == 1  # refused before encoding anything
    assert folder_texts(out) == [f"text {i}" for i in range(30)]  # the 30 are all still there
    again = distributed.build_sharded(out, corpus(30), shards=3)  # the same build again: a resume
    assert again["skipped"] == [0, 1, 2] and len(fake_ray) == 2
    assert len(shards.read_manifest(out)[0]) == 3 and folder_texts(out) == [f"text {i}" for i in range(30)]


def test_ray_interrupted_build_resumes_the_same_input_only(tmp_path, fake_ray, monkeypatch):
    out = tmp_path / "raysh"
    encode = distributed.encode_shards  # the fake of fake_ray
    stop = {"after": 2}

    def interrupted(texts, out_dir, **kw):
        if stop["after"]:  # writes shards 0 and 1, then the run dies (no manifest)
            for i in range(stop["after"]):
                storage_save(shards.shard_path(out_dir, i), kw["n_shards"], i)
            stop["after"] = 0
            raise RuntimeError("worker died")
        return encode(texts, out_dir, **kw)

    monkeypatch.setattr(distributed, "encode_shards", interrupted)
    with pytest.raises(RuntimeError, match="worker died"):
        distributed.build_sharded(out, corpus(30), shards=3)
    assert not (out / shards.MANIFEST).exists() and folder_texts(out) == [f"text {i}" for i in range(30)]
    with pytest.raises(CollectionError, match="other documents"):
        distributed.build_sharded(out, corpus(30, "y"), shards=3)
    with pytest.raises(CollectionError, match="built with 3 shards, not 5"):  # read from the shard files
        distributed.build_sharded(out, corpus(30), shards=5)
    done = distributed.build_sharded(out, corpus(30), shards=3)
    assert done["skipped"] == [0, 1] and done["encoded"] == {2: 1}
    assert len(shards.read_manifest(out)[0]) == 3 and folder_texts(out) == [f"text {i}" for i in range(30)]


def test_ray_build_over_a_folder_of_bne_shard_is_refused(two, tmp_path, fake_ray, capsys):
    a, _ = two
    assert run(capsys, "shard", a, "--shards", "2", "-o", tmp_path / "sh")[0] == 0
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"_id": f"n{i}", "text": f"new {i}"}) + "\n" for i in range(5)))
    code, out, err = run(capsys, "build", src, "-o", tmp_path / "sh", "--ray", "--shards", "2")
    assert code == 2 and "holds shards of another model or bit count; remove it first" in err, err
    ref = identify("default")  # as if the split collection had been built with the default model
    shards.write_manifest(tmp_path / "sh", shards.read_manifest(tmp_path / "sh")[0], ref.bits, ref.to_metadata())
    code, out, err = run(capsys, "build", src, "-o", tmp_path / "sh", "--ray", "--shards", "2")
    assert code == 2 and "holds a collection of other documents (120, not these 5); remove it first" in err, err
    assert len(err.strip().splitlines()) == 1 and fake_ray == []
    assert len(rows(shards.docstore_key(tmp_path / "sh"), range(120))) == 120
    bare = bne.Index(64)
    bare.add(np.zeros((4, 8), np.uint8))
    bare.save(tmp_path / "bare.bne")
    assert run(capsys, "shard", tmp_path / "bare.bne", "--shards", "2", "-o", tmp_path / "bare")[0] == 0
    shards.write_manifest(tmp_path / "bare", shards.read_manifest(tmp_path / "bare")[0], ref.bits, ref.to_metadata())
    code, out, err = run(capsys, "build", src, "-o", tmp_path / "bare", "--ray", "--shards", "2")
    assert code == 2 and "holds shards without their documents; remove it first" in err, err
    code, out, err = run(capsys, "build", src, "-o", tmp_path / "new", "--ray", "--shards", "2")
    assert (
        code == 0
        and "5 documents in 2 shards" in out
        and folder_texts(tmp_path / "new") == [f"new {i}" for i in range(5)]
    )
