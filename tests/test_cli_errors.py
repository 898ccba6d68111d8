"""Issue 11 ("Trust"), the command line and the docstore: each test checks an effect (documents
stored, texts returned, files left, bytes printed), not only an exit code.

Most run ``bne.cli.main`` in this process (the encoder loads once); the read-only folder and the
disk-full cases need a subprocess (another user namespace, a file size limit).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import bne
from bne import cli, console, distributed, ingest
from bne.collection import Collection
from bne.corpus import CorpusError, Doc, read_corpus, txt_key
from bne.docstore import DocStore, DocStoreError, path_for
from runner import needs_encoder, popen_bne, run_bne, run_main, run_python

QUICK = [
    "The cat sat on the mat.",
    "A dog barked at the mailman.",
    "Stock markets fell sharply today.",
    "The kitten slept on the rug.",
]
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # what must never reach the terminal (newline ends a line)


def one_line_error(code, err, *needles):
    assert code not in (0, None), err
    lines = [
        line for line in err.splitlines() if line.strip() and not line.startswith("usage:") and not line.startswith(" ")
    ]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def plain_index(folder, texts, *, metadata=None, ext_ids=None, store=True):
    """An index of random codes (ids 0..n-1, recorded model 'default') and its docstore, written
    with the API: no encoder needed. Searches on it return these texts, in some order."""
    path = os.path.join(folder, "plain.bne")
    codes = np.random.default_rng(0).integers(0, 256, (len(texts), 128), dtype=np.uint8)
    with bne.open(path, mode="a", bits=1024, metadata=metadata or {"model": "default", "bits": 1024}) as idx:
        idx.add(codes, ids=np.arange(len(texts), dtype=np.int64))
    if store:
        s = DocStore(path, create=True)
        s.insert(
            range(len(texts)),
            [Doc(e, t) for e, t in zip(ext_ids or [f"d{i}" for i in range(len(texts))], texts, strict=True)],
        )
        s.commit()
        s.close()
    return path


def count(path) -> int:
    s = DocStore(path)
    try:
        return s.count()
    finally:
        s.close()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The README quickstart's four documents, built by `bne build` with the real encoder."""
    needs_encoder()
    d = tmp_path_factory.mktemp("quick")
    (d / "docs.txt").write_text("\n".join(QUICK) + "\n")
    code, out, err = run_main("build", d / "docs.txt", "-o", d / "docs.bne", "-q")
    assert code == 0 and "4 added" in out, err
    return d


def search_json(index, *args):
    code, out, err = run_main("search", index, *args, "--json")
    assert code == 0, err
    return json.loads(out)["results"]


# -- item 1: --append of a new .txt file adds its lines; resuming adds nothing twice -----------


def test_append_new_txt_file_adds_its_document(quick, tmp_path):
    idx = tmp_path / "docs.bne"
    for suffix in ("", ".docs.sqlite"):
        shutil.copy(str(quick / "docs.bne") + suffix, str(idx) + suffix)
    (tmp_path / "more.txt").write_text("Interest rates rose again.\n")
    code, out, err = run_main("build", tmp_path / "more.txt", "-o", idx, "--append", "-q")
    assert code == 0 and "(1 added, 0 already present)" in out, out + err
    assert len(bne.open(idx)) == 5 and count(idx) == 5
    hit = search_json(idx, "Interest rates rose again", "-k", "1")[0]["hits"][0]
    assert hit["snippet"] == "Interest rates rose again." and hit["source"] == "more.txt:1"


def test_resume_of_the_same_txt_file_adds_nothing_twice(quick, tmp_path):
    # what an interrupted build leaves committed is a prefix of the file: build the first 2 lines
    # of docs.txt, then the whole file (a resume), then the whole file again
    lines = QUICK + ["The cat sat on the mat."]  # a repeated line is a document of its own
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "docs.txt").write_text("\n".join(lines[:2]) + "\n")
    (tmp_path / "docs.txt").write_text("\n".join(lines) + "\n")
    idx = tmp_path / "docs.bne"
    assert run_main("build", tmp_path / "part" / "docs.txt", "-o", idx, "-q")[0] == 0
    code, out, err = run_main("build", tmp_path / "docs.txt", "-o", idx, "--append", "-q")
    assert "(3 added, 2 already present)" in out, out + err
    code, out, err = run_main("build", tmp_path / "docs.txt", "-o", idx, "--append", "-q")
    assert "(0 added, 5 already present)" in out, out + err
    assert len(bne.open(idx)) == 5 and count(idx) == 5


def test_a_repeated_id_in_one_input_keeps_the_first_document(tmp_path, monkeypatch):
    src = tmp_path / "docs.jsonl"
    rows = [("a", "the cat sat on the mat"), ("b", "dogs bark at night"), ("a", "quantum chromodynamics")]
    rows += [(5, "five apples"), ("5", "five again")]  # the same id once read as text
    src.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in rows))
    idx = tmp_path / "d.bne"
    code, out, err = run_main("build", src, "-o", idx, "-q")
    assert code == 0 and "(3 added, 0 already present, 2 skipped: their id came earlier in the input)" in out, out
    assert len(bne.open(idx)) == 3 and count(idx) == 3
    for query, text in (("quantum cat", "the cat sat on the mat"), ("five", "five apples")):
        hits = search_json(idx, query, "--mode", "lexical", "-k", "5")[0]["hits"]
        assert [h["snippet"] for h in hits] == [text], hits  # the later text is nowhere, not even in BM25
    code, out, err = run_main("remove", idx, "a")
    assert code == 0 and count(idx) == 2, out + err
    # the same through the API, across chunks of the reader, and with a sharded build's reader
    monkeypatch.setattr(ingest, "ENCODE_CHUNK", 2)
    docs = [Doc(str(i % 3), f"text {i}") for i in range(7)]
    with Collection.create(tmp_path / "api.bne", model="default") as coll:
        r = coll.add(docs)
        assert (r.added, r.present, r.repeated) == (3, 0, 4)
        got = coll.search(["text"], 10, mode="lexical").hits[0]
        assert sorted((h.doc_id, h.text) for h in got) == [("0", "text 0"), ("1", "text 1"), ("2", "text 2")]
    encoded = []
    monkeypatch.setattr(distributed, "start_ray", lambda *a: None)
    monkeypatch.setattr(distributed, "encode_shards", lambda texts, *a, **kw: encoded.append(texts) or {"shards": []})
    result = distributed.build_sharded(tmp_path / "shards", docs, shards=2)
    assert result["documents"] == 3 and result["repeated"] == 4 and encoded == [["text 0", "text 1", "text 2"]]
    store = DocStore(distributed.docstore_key(tmp_path / "shards"))
    assert [d.text for d in store.get(range(5)).values()] == ["text 0", "text 1", "text 2"]
    store.close()


def test_append_over_a_line_number_keyed_docstore_of_an_older_bne(tmp_path):
    """Docstores written before content keys hold .txt lines under their line numbers."""
    needs_encoder()
    idx = plain_index(tmp_path, QUICK, ext_ids=["1", "2", "3", "4"])
    db = sqlite3.connect(path_for(idx))
    db.execute("PRAGMA user_version=0")
    db.commit()
    db.close()
    (tmp_path / "docs.txt").write_text("\n".join(QUICK) + "\n")
    (tmp_path / "more.txt").write_text("Interest rates rose again.\n")
    assert "(0 added, 4 already present)" in run_main("build", tmp_path / "docs.txt", "-o", idx, "--append", "-q")[1]
    assert "(1 added, 0 already present)" in run_main("build", tmp_path / "more.txt", "-o", idx, "--append", "-q")[1]
    assert count(idx) == 5 and len(bne.open(idx)) == 5


def test_txt_keys_are_content_keys(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfsame\nsame\r\nother\n")
    docs = list(read_corpus(tmp_path / "a.txt"))
    assert [d.text for d in docs] == ["same", "same", "other"]
    assert [d.ext_id for d in docs] == [txt_key("same"), txt_key("same", 2), txt_key("other")]
    assert [json.loads(d.meta)["line"] for d in docs] == [1, 2, 3]


# -- item 9: docstore failures and bad numbers are one-line errors -----------------------------


def test_garbage_docstore_is_a_one_line_error_naming_it(tmp_path):
    idx = plain_index(tmp_path, QUICK, store=False)
    with open(path_for(idx), "wb") as f:
        f.write(b"SQLite format 3\0" + os.urandom(4000))
    (tmp_path / "more.txt").write_text("x\n")
    code, out, err = run_main("build", tmp_path / "more.txt", "-o", idx, "--append", "-q")
    one_line_error(code, err, "document store", path_for(idx))
    code, out, err = run_main("info", idx)  # the index itself is fine: info still describes it
    assert code == 0 and re.search(r"documents\s+- \(docstore unreadable", out) and "document store" in err
    assert "Traceback" not in err
    with pytest.raises(DocStoreError, match="plain.bne.docs.sqlite"):
        DocStore(idx)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--threads", "-1"], "--threads"),
        (["--threads", "0"], "--threads"),
        (["--commit-every", "0"], "--commit-every"),
        (["--commit-every", "-5"], "--commit-every"),
        (["--batch-size", "0"], "--batch-size"),
        (["--threads", "two"], "--threads"),
    ],
)
def test_bad_numbers_fail_before_any_file_exists(tmp_path, args, needle):
    (tmp_path / "docs.txt").write_text("hello\n")
    code, out, err = run_main("build", tmp_path / "docs.txt", "-o", tmp_path / "x.bne", *args)
    one_line_error(code, err, needle)
    assert sorted(os.listdir(tmp_path)) == ["docs.txt"]  # item 12: nothing created


@pytest.mark.parametrize(
    "args,needle",
    [
        (["-k", "0"], "-k"),
        (["-k", "2147483648"], "-k"),
        (["--threads", "-1"], "--threads"),
        (["--rescore", "0"], "--rescore"),
    ],
)
def test_bad_search_numbers_are_one_line_errors(tmp_path, args, needle):
    idx = plain_index(tmp_path, QUICK)
    one_line_error(*run_main("search", idx, "cat", *args)[::2], needle)


def test_too_many_threads_are_clamped(quick, tmp_path):
    before = bne.get_num_threads()
    try:
        code, out, err = run_main(
            "search", quick / "docs.bne", "a small cat", "-k", "1", "--threads", "100000", "--json"
        )
    finally:
        bne.set_num_threads(before)
    assert code == 0 and f"using {os.cpu_count() or 1}" in err
    assert json.loads(out)["results"][0]["hits"][0]["snippet"] in (QUICK[0], QUICK[3])


def _unshare_ok() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-U", "true"]).returncode == 0


def test_read_only_folder_can_be_searched():
    """info and search open the docstore read-only: they work in a folder nobody may write, and
    write nothing. Root ignores permission bits, so as root the commands run in a new user
    namespace (`unshare -U`), where the files' owner is unmapped and the bits apply."""
    needs_encoder()
    if os.geteuid() == 0 and not _unshare_ok():
        pytest.skip("running as root without `unshare -U`: cannot make a folder read-only to myself")
    folder = tempfile.mkdtemp(prefix="bne-ro-")
    try:
        idx = plain_index(folder, QUICK)
        # a docstore of an older bne: WAL mode, which needs a writable folder for its -shm file
        legacy = os.path.join(folder, "legacy.bne")
        shutil.copy(idx, legacy)
        db = sqlite3.connect(path_for(legacy))
        db.executescript(
            "CREATE TABLE docs (id INTEGER PRIMARY KEY, ext_id TEXT NOT NULL, title TEXT, text TEXT NOT NULL, "
            "meta TEXT); CREATE INDEX docs_ext_id ON docs(ext_id); PRAGMA journal_mode=WAL;"
        )
        db.executemany("INSERT INTO docs VALUES (?, ?, '', ?, '')", [(i, str(i), t) for i, t in enumerate(QUICK)])
        db.commit()
        db.close()
        before = {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)}
        for n in before:
            os.chmod(os.path.join(folder, n), 0o444)
        os.chmod(folder, 0o555)
        prefix = ["unshare", "-U"] if os.geteuid() == 0 else []
        script = (
            "import sys; from bne.cli import main; "
            "sys.exit(main(['info', sys.argv[1]]) or main(['info', sys.argv[2]]) or "
            "main(['search', sys.argv[1], 'a cat', '-k', '4']) or main(['search', sys.argv[2], 'a cat', '-k', '4']))"
        )
        res = run_python(script, idx, legacy, prefix=prefix, timeout=300)
        assert res.returncode == 0, res.stderr
        assert len(re.findall(r"documents\s+4", res.stdout)) == 2, res.stdout
        for t in QUICK:  # every text came back, from both docstores
            assert res.stdout.count(t) == 2, res.stdout
        assert {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)} == before
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(folder)


def test_disk_full_in_the_docstore_is_one_line_and_leaves_nothing(tmp_path):
    """A file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes the docstore's writes fail as a
    full disk would; the fresh build is removed, not left half made."""
    needs_encoder()
    import resource
    import signal

    big = [f"document {i} " + "lorem ipsum dolor sit amet " * 1200 for i in range(16)]  # ~32 KB each
    (tmp_path / "big.txt").write_text("\n".join(big) + "\n")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    res = run_bne("build", "big.txt", "-o", "big.bne", "-q", cwd=tmp_path, preexec_fn=limit)
    line = one_line_error(res.returncode, res.stderr, "big.bne.docs.sqlite")
    assert re.search(r"full|too large|I/O", line), line
    assert sorted(os.listdir(tmp_path)) == ["big.txt"]


# -- item 10: errors name the user's file -------------------------------------------------------


def test_errors_name_the_users_file(tmp_path):
    (tmp_path / "docs.txt").write_text("hello\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "latin1.txt").write_bytes("ok\nfine\ncaf\xe9\n".encode("latin-1"))
    code, _, err = run_main("build", "docs.txt", "-o", "nodir/x.bne", cwd=tmp_path)
    line = one_line_error(code, err, "nodir")
    assert ".tmp" not in line and "does not exist" in line
    one_line_error(*run_main("build", "docs.txt", "-o", "out", cwd=tmp_path)[::2], "out is a folder")
    one_line_error(*run_main("build", "latin1.txt", "-o", "x.bne", cwd=tmp_path)[::2], "latin1.txt:3", "UTF-8")
    with pytest.raises(CorpusError, match=r"a\.csv:2"):
        (tmp_path / "a.csv").write_bytes(b"1,ok\n2,\xff\n")
        list(read_corpus(tmp_path / "a.csv"))
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "docs.txt", "latin1.txt", "out"]


# -- item 11 ------------------------------------------------------------------------------------


def test_missing_docstore_warns_once_and_prints_ids(quick, tmp_path):
    idx = tmp_path / "bare.bne"
    shutil.copy(quick / "docs.bne", idx)
    code, out, err = run_main("search", idx, "a small cat", "another query", "-k", "2")
    assert code == 0 and err.count("document store not found") == 1 and "printing ids only" in err
    ids = re.findall(r"^\s+\d+\.\s+d=\s*\d+\s+(\d+)\s*$", out, re.M)
    assert len(ids) == 4 and set(ids) <= {"0", "1", "2", "3"}, out


def test_search_on_a_beir_folder_fails_before_ray(tmp_path, monkeypatch):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "a", "text": "b"}\n')
    started = []
    monkeypatch.setattr(distributed, "start_ray", lambda *a: started.append(a))
    code, _, err = run_main("search", tmp_path, "query")
    one_line_error(code, err, "manifest.json", "BEIR")
    assert started == []


def test_queries_jsonl_gives_query_ids_and_bad_lines_are_one_line_errors(quick, tmp_path):
    q = tmp_path / "queries.jsonl"
    q.write_text('{"_id": "q1", "text": "a small kitten sleeping"}\n\n"stock market crash"\n')
    res = search_json(quick / "docs.bne", "--queries", q, "-k", "1")
    assert [(r["query"], r.get("query_id")) for r in res] == [
        ("a small kitten sleeping", "q1"),
        ("stock market crash", None),
    ]
    assert res[0]["hits"][0]["snippet"] in (QUICK[0], QUICK[3]) and res[1]["hits"][0]["snippet"] == QUICK[2]
    q.write_text('{"_id": "q1", "title": "no text"}\n')
    one_line_error(*run_main("search", quick / "docs.bne", "--queries", q)[::2], "queries.jsonl:1", "text")
    q.write_text('{"_id": "q1", "text": "a", "n": ' + "1" * 5000 + "}\n")  # json raises a plain ValueError
    one_line_error(*run_main("search", quick / "docs.bne", "--queries", q)[::2], "queries.jsonl:1", "not valid JSON")

    q.write_text('{"_id": "q1", "text": "a cat"}\n{"_id": "q2", "text": "bad \\ud800 half"}\n')
    one_line_error(*run_main("search", quick / "docs.bne", "--queries", q)[::2], "queries.jsonl:2", "surrogate \\ud800")


def test_a_lone_surrogate_in_a_json_document_names_its_line_and_a_pair_is_text(tmp_path):
    src = tmp_path / "docs.jsonl"
    # a JSON escape can decode to half a UTF-16 pair, a str that no encoder or SQLite can take
    src.write_text('{"_id": "a", "text": "good"}\n{"_id": "b", "title": "x \\uDC00", "text": "fine"}\n')
    one_line_error(*run_main("build", src, "-o", tmp_path / "a.bne")[::2], "docs.jsonl:2", "surrogate \\udc00")
    assert not (tmp_path / "a.bne").exists() and not (tmp_path / "a.bne.docs.sqlite").exists()
    src.write_text('{"_id": "e", "text": "smile \\ud83d\\ude00 please", "meta": ["\\ud83d\\ude00"]}\n')
    code, _, err = run_main("build", src, "-o", tmp_path / "b.bne")
    assert code == 0, err
    res = search_json(tmp_path / "b.bne", "smile", "-k", "1")
    assert res[0]["hits"][0]["snippet"] == "smile \U0001f600 please"


def test_rescore_without_a_number_keeps_the_query(quick):
    res = search_json(quick / "docs.bne", "--rescore", "stock market crash", "-k", "2")
    assert res[0]["query"] == "stock market crash" and res[0]["hits"][0]["snippet"] == QUICK[2]
    assert "score" in res[0]["hits"][0]
    res = search_json(quick / "docs.bne", "-k", "1", "stock market crash", "--rescore", "3")  # number, query after -k
    assert res[0]["query"] == "stock market crash" and "score" in res[0]["hits"][0]


def test_bench_sizes_take_suffixes():
    assert cli.parse_sizes("10k,1M,2_000,1e3") == [1000, 2000, 10_000, 1_000_000]
    for bad in ("10x", "0", "1.5", "", "1e400", "2000G"):
        with pytest.raises(Exception, match="bad size"):
            cli.parse_sizes(bad)
    one_line_error(*run_main("bench", "--sizes", "ten")[::2], "--sizes", "10k")


def test_k_larger_than_the_index_is_not_an_allocation(quick):
    res = search_json(quick / "docs.bne", "cat", "-k", str(cli.MAX_K))
    assert len(res[0]["hits"]) == 4


# -- item 13: nothing from a file reaches the terminal raw --------------------------------------

EVIL = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202e"


def test_info_escapes_metadata(tmp_path):
    idx = plain_index(tmp_path, QUICK, metadata={"model": "default", "model_name": EVIL, EVIL: EVIL})
    code, out, err = run_main("info", idx)
    assert code == 0 and not RAW.search(out + err) and "\u202e" not in out
    assert "\\x1b]0;owned\\x07" in out and "\\u202e" in out
    code, out, err = run_main("info", idx, "--json")
    assert code == 0 and not RAW.search(out) and json.loads(out)["metadata"]["model_name"] == EVIL


def test_info_without_a_docstore_says_so_and_shards_without_ray_get_a_note(tmp_path):
    idx = plain_index(tmp_path, QUICK, store=False)
    code, out, err = run_main("info", idx)
    assert code == 0 and "documents       - (no docstore beside it; search prints ids only)" in out, out
    assert "None" not in out
    (tmp_path / "d.txt").write_text("one line\n")
    code, out, err = run_main("build", tmp_path / "d.txt", "-o", tmp_path / "x.bne", "--shards", "3", "-q")
    assert "bne: note: --shards applies to --ray builds only; ignored" in err


def test_search_escapes_docstore_text_and_ids(quick, tmp_path):
    texts = [f"text {i} {EVIL} end" for i in range(4)]
    idx = plain_index(tmp_path, texts, ext_ids=[f"id{i}{EVIL}" for i in range(4)])
    code, out, err = run_main("search", idx, f"query {EVIL}", "-k", "4")
    assert code == 0 and not RAW.search(out + err)
    assert out.count("\\x1b]0;owned\\x07") == 9  # the query line, then text and id of 4 hits
    code, out, err = run_main("search", idx, "query", "-k", "4", "--json")
    hits = json.loads(out)["results"][0]["hits"]
    assert not RAW.search(out) and sorted(h["doc_id"] for h in hits) == [f"id{i}{EVIL}" for i in range(4)]


def test_queries_that_are_not_utf8_are_one_line_errors(tmp_path):
    idx = plain_index(tmp_path, QUICK)
    one_line_error(*run_main("search", idx, "caf\udce9")[::2], "caf\\udce9", "not UTF-8")  # argv bytes 63 61 66 e9
    res = run_bne("search", idx, "--queries", "-", input=b"ok\ncaf\xe9\n", text=False, timeout=120)
    one_line_error(res.returncode, res.stderr.decode(), "<stdin>:2", "not UTF-8")


def test_error_messages_are_escaped(tmp_path):
    code, _, err = run_main("build", f"missing{EVIL}.txt", "-o", tmp_path / "x.bne")
    line = one_line_error(code, err, "input not found")
    assert not RAW.search(err) and "\\x1b[2J" in line


# -- item 14: SQL stored in a docstore never runs -----------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TRIGGER wipe AFTER INSERT ON docs BEGIN DELETE FROM docs; END",
        "CREATE VIEW v AS SELECT 1",
        "CREATE TABLE extra (x)",
    ],
)
def test_docstore_with_unknown_schema_objects_is_refused(tmp_path, sql):
    idx = plain_index(tmp_path, QUICK)
    db = sqlite3.connect(path_for(idx))
    db.execute(sql)
    db.commit()
    db.close()
    (tmp_path / "more.txt").write_text("Interest rates rose again.\n")
    code, out, err = run_main("build", tmp_path / "more.txt", "-o", idx, "--append", "-q")
    one_line_error(code, err, "did not write", path_for(idx))
    db = sqlite3.connect(path_for(idx))
    assert db.execute("SELECT COUNT(*) FROM docs").fetchone()[0] == 4  # the trigger never ran
    db.close()
    assert len(bne.open(idx)) == 4
    code, out, err = run_main("info", idx)  # readers refuse it too, and still describe the index
    assert code == 0 and "did not write" in err


def test_docstore_with_a_changed_docs_table_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / "x.bne.docs.sqlite")
    db.execute(
        "CREATE TABLE docs (id INTEGER PRIMARY KEY, ext_id TEXT NOT NULL, title TEXT, "
        "text TEXT NOT NULL DEFAULT (load_extension('x')), meta TEXT)"
    )
    db.commit()
    db.close()
    with pytest.raises(DocStoreError, match="table 'docs'"):
        DocStore(tmp_path / "x.bne", create=True)


def test_docstore_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "x.bne.docs.sqlite")
    with pytest.raises(DocStoreError, match="not a regular file"):
        DocStore(tmp_path / "x.bne")


# -- item 15: manifest paths stay inside the manifest's folder ----------------------------------


@pytest.mark.parametrize("shard", ["../../etc/passwd", "/etc/passwd", "a/../../x.bne", "..", 7, ""])
def test_manifest_paths_stay_inside_its_folder(tmp_path, monkeypatch, shard):
    from bne import distributed

    (tmp_path / "manifest.json").write_text(
        json.dumps({"bits": 1024, "shards": ["shard-0.bne", shard], "metadata": {}})
    )
    with pytest.raises(ValueError, match="manifest"):
        distributed.read_manifest(tmp_path)
    started = []
    monkeypatch.setattr(distributed, "start_ray", lambda *a: started.append(a))
    one_line_error(*run_main("search", tmp_path, "query")[::2], "manifest.json")
    assert started == []


def test_manifest_paths_inside_are_kept(tmp_path):
    from bne import distributed

    (tmp_path / "manifest.json").write_text(
        json.dumps({"bits": 1024, "shards": ["a.bne", "sub/./b.bne"], "metadata": {}})
    )
    paths, _ = distributed.read_manifest(tmp_path / "manifest.json")
    assert paths == [str(tmp_path / "a.bne"), str(tmp_path / "sub" / "b.bne")]


# -- item 16 (docstore half): the docstore has its index's permission bits ----------------------


def test_docstore_mode_follows_the_index(quick, tmp_path):
    index_mode = stat.S_IMODE(os.stat(quick / "docs.bne").st_mode)
    assert stat.S_IMODE(os.stat(path_for(quick / "docs.bne")).st_mode) == index_mode
    idx = plain_index(tmp_path, QUICK, store=False)  # an index whose docstore is made by --append
    os.chmod(idx, 0o640)
    (tmp_path / "more.txt").write_text("Interest rates rose again.\n")
    old = os.umask(0o022)
    try:
        code, out, err = run_main("build", tmp_path / "more.txt", "-o", idx, "--append", "-q")
    finally:
        os.umask(old)
    assert code == 0 and count(idx) == 1, err
    assert stat.S_IMODE(os.stat(path_for(idx)).st_mode) == 0o640


def test_demo_prints_hits_from_its_docstore(tmp_path):
    needs_encoder()
    code, out, err = run_main("demo", "--limit", "30", "--keep", tmp_path)
    assert code == 0, err
    assert out.count("query: ") == 5
    # hybrid by default, and each hit says why it ranks there, as `bne search` does
    assert "\nmode: hybrid (dense + lexical, reciprocal rank fusion k=60" in out
    hits = re.findall(r"^\s+rrf=(\d\.\d+) d=\s*(\d+) bm25=\s*(\S+) ranks=\s*(\S+)/(\S+)\s+\S", out, re.M)
    assert len(hits) == 15
    for q in range(5):
        scores = [float(h[0]) for h in hits[3 * q : 3 * q + 3]]
        assert scores == sorted(scores, reverse=True)
    assert any(h[2] != "-" for h in hits) and all(h[3] != "-" or h[4] != "-" for h in hits)
    assert count(tmp_path / "stdlib.bne") == 30
    code, out, err = run_main("demo", "--limit", "20", "--keep", tmp_path)  # an earlier demo's: replaced
    assert code == 0 and count(tmp_path / "stdlib.bne") == 20, err


def test_demo_keep_never_replaces_a_file_it_did_not_write(tmp_path):
    (tmp_path / "stdlib.bne").write_text("my precious\n")
    code, _, err = run_main("demo", "--limit", "5", "--keep", tmp_path)
    one_line_error(code, err, "stdlib.bne exists and was not written by bne demo")
    assert (tmp_path / "stdlib.bne").read_text() == "my precious\n" and not (
        tmp_path / "stdlib.bne.docs.sqlite"
    ).exists()
    one_line_error(*run_main("demo", "--keep", tmp_path / "stdlib.bne")[::2], "is not a folder")
    one_line_error(*run_main("demo", "--keep", tmp_path / "nowhere")[::2], "does not exist")


@pytest.mark.slow
def test_ctrl_c_then_append_resumes_exactly(tmp_path):
    """A real SIGINT during `bne build` (twice), then `--append`: every line once, in order."""
    needs_encoder()
    import signal

    lines = [f"line {i} about {('cats', 'rates', 'bread')[i % 3]}" for i in range(3000)]
    (tmp_path / "big.txt").write_text("\n".join(lines) + "\n")
    idx = tmp_path / "r.bne"
    cmd = ["build", "big.txt", "-o", "r.bne", "-q", "--commit-every", "50"]
    for target in (500, 1500):
        p = popen_bne(*cmd, *(["--append"] if idx.exists() else []), cwd=tmp_path, stdout=None)
        while p.poll() is None:
            try:
                if len(bne.open(idx)) >= target:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        if p.returncode == 130:
            assert "committed to r.bne" in err and "Traceback" not in err
    res = run_bne(*cmd[:-2], "--append", cwd=tmp_path)
    assert res.returncode == 0 and "3000 codes" in res.stdout, res.stderr
    db = sqlite3.connect(path_for(idx))
    assert db.execute("SELECT text FROM docs ORDER BY id").fetchall() == [(t,) for t in lines]
    db.close()
    assert len(bne.open(idx)) == 3000


@pytest.mark.parametrize("trials", [pytest.param(150, id="150"), pytest.param(5000, id="5000", marks=pytest.mark.slow)])
def test_mutated_docstores_fail_cleanly(tmp_path, trials):
    """Random byte damage to a docstore: every read either works or raises DocStoreError."""
    idx = plain_index(tmp_path, [f"document {i} " * 20 for i in range(200)])
    good = Path(path_for(idx)).read_bytes()
    rng = np.random.default_rng(7)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(trials):
        data = bytearray(good)
        for pos in rng.integers(0, len(data), rng.integers(1, 9)):
            data[pos] = rng.integers(0, 256)
        if rng.random() < 0.2:
            data = data[: rng.integers(0, len(data))]
        with open(path_for(idx), "wb") as f:
            f.write(data)
        try:
            s = DocStore(idx)
            s.count(), s.ext_ids(), s.get(range(0, 200, 7))
            s.close()
            outcomes["ok"] += 1
        except DocStoreError:
            outcomes["refused"] += 1
    assert outcomes["ok"] + outcomes["refused"] == trials and outcomes["refused"] > 0


def test_safe_and_json_text_leave_no_control_character():
    import unicodedata

    bad = [
        chr(c)
        for c in range(0x110000)
        if unicodedata.category(chr(c)) in ("Cc", "Zl", "Zp", "Cs") or 0x202A <= c <= 0x202E or 0x2066 <= c <= 0x2069
    ]
    text = "".join(bad)
    shown = console.safe(text)
    assert not any(c in shown for c in bad) and shown.count("\\") == len(bad)
    dumped = console.json_text({"t": text})
    assert not any(c in dumped for c in bad if c != "\n")  # newlines: only the indentation's
    no_surrogates = "".join(c for c in bad if not 0xD800 <= ord(c) <= 0xDFFF)  # JSON pairs adjacent ones up
    assert json.loads(console.json_text({"t": no_surrogates}))["t"] == no_surrogates  # escaped, not lost
    assert console.safe("plain é 日本") == "plain é 日本"


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("value", ["-1", "0", "many"])
def test_train_and_eval_threads_are_checked(command, value):
    """bne train / eval --threads: a one-line argparse error, not a torch RuntimeError."""
    code, _, err = run_main(command, "--threads", value)
    assert code == 2 and "--threads" in err and "Traceback" not in err


def test_threads_option_clamps_to_the_cpus():
    from bne.encoder.base import threads_option

    assert threads_option("100000") == (os.cpu_count() or 1) and threads_option("1") == 1
