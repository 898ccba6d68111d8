"""Collection.search's three modes (issue 17): each ranking against an oracle computed apart from
bne.hybrid (dense: the index's own search of the fake encoder's codes; lexical: FTS5's bm25() over
the same texts, bne.lexical; hybrid: rrf_fuse of those two lists), removed documents and allow-lists
on both sides, collections without a lexical index, hostile query text, the CLI's options and
--json, and a reader following a writer."""

from __future__ import annotations

import gc
import json
import os
import random
import sqlite3
import threading

import numpy as np
import pytest

import bne
from bne import collection as bcoll
from bne import hybrid, lexical
from bne.corpus import Doc, doc_text
from bne.docstore import DocStore, StoredDoc, path_for
from bne.encoder.base import search_codes
from bne.errors import CollectionError
from runner import run_main
from test_cli_errors import one_line_error
from test_collection import FakeEncoder
from test_hybrid_store import drop_index_tag

WORDS = [
    *("cat", "dog", "mat", "sun", "moon", "tree", "river", "stone", "bird", "fish", "apple", "bread", "cloud"),
    *("rain", "snow", "wind", "fire", "water", "light", "dark", "green", "blue", "red", "house", "road", "city"),
    *("field", "music", "paper", "glass"),
]


@pytest.fixture
def fake(monkeypatch):
    enc = FakeEncoder()
    monkeypatch.setattr(bcoll, "load", lambda *a, **k: enc)
    return enc


def corpus(n: int, start: int = 0) -> list[Doc]:
    """Texts with a real spread of term frequencies and lengths, and one unique word each."""
    out = []
    for i in range(start, start + n):
        r = random.Random(i)
        words = [r.choice(WORDS[: 8 + i % 23]) for _ in range(3 + i % 11)]
        out.append(Doc(f"d{i}", " ".join(words) + f" item{i}", title=f"title {WORDS[i % len(WORDS)]}" if i % 3 else ""))
    return out


DOCS = corpus(120)
QUERIES = ["cat on the mat", "river stone river", "green glass music", "item7 bird", "snow", "apple bread city"]


@pytest.fixture
def built(tmp_path, fake):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(DOCS, commit_every=50)
    return path


def fts_oracle(docs: list[Doc], ids=None) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    lexical.create(conn)
    lexical.insert(conn, range(len(docs)) if ids is None else ids, [doc_text(d.title, d.text) for d in docs])
    return conn


def dense_oracle(fake, path, q: str, k: int, rescore=None, allow=None):
    codes, logits = fake.encode([q], return_logits=True)
    with bne.open(path) as idx:
        kw = {} if allow is None else {"allow": np.asarray(allow, np.int64)}
        D, ids = search_codes(idx, codes, logits, min(k, len(idx)), rescore=rescore, **kw)
    keep = ids[0] >= 0
    return ids[0][keep].tolist(), D[0][keep].tolist()


def hamming_of(fake, path, q: str, ids) -> list[int]:
    codes = fake.encode([q])
    with bne.open(path) as idx:
        return bne.hamming(codes, idx.reconstruct(np.asarray(ids, np.int64)))[0].tolist()


def ranked(res, q=0):
    return [h.id for h in res.hits[q]]


# -- the three rankings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rrf_k, depth, weights, rescore",
    [
        (60.0, 100, (1.0, 1.0), None),
        (10.0, 15, (1.0, 0.5), None),
        (0.0, 12, (0.3, 2.0), 30),
        (60.0, 100, (1.0, 1.0), 50),
    ],
)
def test_hybrid_is_rrf_of_the_dense_and_the_fts5_lists(built, fake, rrf_k, depth, weights, rescore):
    oracle = fts_oracle(DOCS)
    k = 10
    with bne.Collection.open(built) as c:
        res = c.search(QUERIES, k, rescore=rescore, rrf_k=rrf_k, depth=depth, weights=weights)
    assert res.mode == "hybrid" and res.note is None and res.modes == ["hybrid"] * len(QUERIES)
    for qi, q in enumerate(QUERIES):
        side = max(depth, k)
        dense, _ = dense_oracle(fake, built, q, side, rescore=rescore)
        lex = lexical.bm25_search(oracle, lexical.query_terms(q, repeats=True), side)
        want = lexical.rrf_fuse(dense, [i for i, _ in lex], k=rrf_k, weights=weights, limit=k)
        hits = res.hits[qi]
        assert [h.id for h in hits] == [f.id for f in want], q
        assert [h.score for h in hits] == pytest.approx([f.score for f in want])
        assert [(h.dense_rank, h.lexical_rank) for h in hits] == [(f.dense_rank, f.lexical_rank) for f in want]
        scores = dict(lex)
        for h in hits:
            assert h.bm25 == (None if h.id not in scores else pytest.approx(scores[h.id], rel=1e-9))
            assert (h.bm25 is None) == (h.lexical_rank is None)
            assert (h.doc_id, h.text) == (DOCS[h.id].ext_id, DOCS[h.id].text)
        assert [h.distance for h in hits] == hamming_of(fake, built, q, [h.id for h in hits])
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    # words and bits both count: some hits come from one side only (else the test proves little)
    every = [h for row in res.hits for h in row]
    assert any(h.lexical_rank for h in every) and any(h.dense_rank for h in every)
    assert depth >= 50 or weights[1] < weights[0] or any(h.dense_rank is None for h in every)


@pytest.mark.parametrize("depth, weights, rescore", [(100, None, None), (12, (0.3, 2.0), None), (30, (1.0, 1.0), 20)])
def test_linear_fusion_of_the_dense_and_the_fts5_lists(built, fake, depth, weights, rescore):
    oracle = fts_oracle(DOCS)
    k = 10
    with bne.Collection.open(built) as c:
        res = c.search(QUERIES, k, rescore=rescore, depth=depth, weights=weights, fusion="linear")
    assert res.mode == "hybrid"
    for qi, q in enumerate(QUERIES):
        side = max(depth, k)
        dense, val = dense_oracle(fake, built, q, side, rescore=rescore)
        scored = list(zip(dense, val if rescore else [-v for v in val], strict=True))  # higher is better
        lex = lexical.bm25_search(oracle, lexical.query_terms(q, repeats=True), side)
        want = lexical.linear_fuse(scored, lex, weights=weights or lexical.LINEAR_WEIGHTS, limit=k)
        hits = res.hits[qi]
        assert [h.id for h in hits] == [f.id for f in want], q
        assert [h.score for h in hits] == pytest.approx([f.score for f in want])
        assert [(h.dense_rank, h.lexical_rank) for h in hits] == [(f.dense_rank, f.lexical_rank) for f in want]
        assert all(0.0 <= h.score <= sum(weights or lexical.LINEAR_WEIGHTS) + 1e-12 for h in hits)
    every = [h for row in res.hits for h in row]
    assert any(h.lexical_rank is None for h in every) or any(h.dense_rank is None for h in every)


def test_lexical_mode_is_fts5_bm25_and_dense_mode_is_hamming(built, fake):
    oracle = fts_oracle(DOCS)
    with bne.Collection.open(built) as c:
        lex = c.search(QUERIES, 7, mode="lexical")
        dense = c.search(QUERIES, 7, mode="dense")
        rescored = c.search(QUERIES, 7, mode="dense", rescore=40)
    assert (lex.mode, dense.mode) == ("lexical", "dense") and lex.note is None and dense.note is None
    for qi, q in enumerate(QUERIES):
        want = lexical.bm25_search(oracle, lexical.query_terms(q, repeats=True), 7)
        assert [(h.id, h.score) for h in lex.hits[qi]] == [(i, pytest.approx(s, rel=1e-9)) for i, s in want]
        assert all(h.bm25 == h.score and h.dense_rank is None for h in lex.hits[qi])
        assert [h.lexical_rank for h in lex.hits[qi]] == list(range(1, len(want) + 1))
        ids, dist = dense_oracle(fake, built, q, 7)
        assert [(h.id, h.distance) for h in dense.hits[qi]] == list(zip(ids, dist, strict=True))
        assert all(h.bm25 is None and h.lexical_rank is None and h.score is None for h in dense.hits[qi])
        assert [h.dense_rank for h in dense.hits[qi]] == list(range(1, 8))
        ids, scores = dense_oracle(fake, built, q, 7, rescore=40)
        assert ranked(rescored, qi) == ids and [h.score for h in rescored.hits[qi]] == pytest.approx(scores)
        # rescored hits still show their Hamming distance
        assert [h.distance for h in rescored.hits[qi]] == hamming_of(fake, built, q, ids)


def test_the_lexical_side_runs_after_the_query_is_encoded(built, fake, monkeypatch):
    """One collection's BM25 runs once the query encoder is done (on a few cores the two slowed
    each other), in the caller's thread, one batch for all the queries."""
    events = []
    real = hybrid.lexical_postings.Searcher.search_many
    encode = fake.encode

    def spy(self, queries, *a, **k):
        events.append(("lexical", len(queries), threading.current_thread() is threading.main_thread()))
        return real(self, queries, *a, **k)

    def spy_encode(*a, **k):
        events.append(("encode", None, None))
        return encode(*a, **k)

    monkeypatch.setattr(hybrid.lexical_postings.Searcher, "search_many", spy)
    monkeypatch.setattr(fake, "encode", spy_encode)
    with bne.Collection.open(built) as c:
        c.search(QUERIES[:2], 3)
        c.search(QUERIES[:1], 3)
    assert events == [("encode", None, None), ("lexical", 2, True), ("encode", None, None), ("lexical", 1, True)]


# -- removed documents and allow-lists ------------------------------------------------------------


def test_removed_documents_never_come_back_from_either_side(built, fake):
    gone = [7, 8, 30, 31, 55]
    queries = [doc_text(DOCS[i].title, DOCS[i].text) for i in gone] + [f"item{i}" for i in gone]
    reader = bne.Collection.open(built)
    before = reader.search(queries, 5, mode="lexical")
    assert {h.id for row in before.hits for h in row} >= set(gone)  # found while present
    with bne.open(built, mode="a") as idx:
        idx.remove(gone)
        idx.commit()
    assert reader.refresh()  # the lexical mask follows the refreshed index
    live = set(range(len(DOCS))) - set(gone)
    oracle = fts_oracle(DOCS)
    for c in (reader, bne.Collection.open(built)):
        for mode in ("hybrid", "dense", "lexical"):
            res = c.search(queries, 20, mode=mode)
            assert not {h.id for row in res.hits for h in row} & set(gone), mode
            assert all(len(row) > 0 for row in res.hits[: len(gone)]) or mode == "lexical"
        lex = c.search(queries, 6, mode="lexical")
        for qi, q in enumerate(queries):
            want = lexical.bm25_search(oracle, lexical.query_terms(q, repeats=True), 6, allowed=live)
            assert ranked(lex, qi) == [i for i, _ in want]
        c.close()


def test_allow_restricts_both_sides(built, fake):
    allow = [3, 5, 11, 12, 40, 41, 42, 99, 100]
    oracle = fts_oracle(DOCS)
    with bne.Collection.open(built) as c:
        for mode in ("hybrid", "dense", "lexical"):
            res = c.search(QUERIES, 6, mode=mode, allow=allow)
            assert {h.id for row in res.hits for h in row} <= set(allow), mode
        res = c.search(QUERIES, 6, allow=np.array(allow), depth=8)
        assert c.search(QUERIES, 6, allow=[]).hits == [[] for _ in QUERIES]
        with pytest.raises(TypeError, match="integer ids"):
            c.search(QUERIES, 6, allow=np.ones(len(DOCS), bool))
    for qi, q in enumerate(QUERIES):
        dense, _ = dense_oracle(fake, built, q, 8, allow=allow)
        lex = lexical.bm25_search(oracle, lexical.query_terms(q, repeats=True), 8, allowed=set(allow))
        want = lexical.rrf_fuse(dense, [i for i, _ in lex], limit=6)
        assert ranked(res, qi) == [f.id for f in want]


# -- collections without a lexical index ----------------------------------------------------------


def drop_lexical(path) -> None:
    """The collection as an older bne wrote it: no lexical tables, no docstore tag on either side."""
    conn = sqlite3.connect(path_for(path))
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'lexp_%'").fetchall():
        conn.execute(f"DROP TABLE {name}")
    conn.commit()
    conn.close()
    drop_index_tag(path)


def snapshot_of(folder) -> dict[str, tuple[bytes, int]]:
    return {n: ((folder / n).read_bytes(), os.stat(folder / n).st_mtime_ns) for n in sorted(os.listdir(folder))}


def test_without_a_lexical_index_dense_with_one_note_and_nothing_written(built, fake, tmp_path):
    drop_lexical(built)
    before = snapshot_of(tmp_path)
    os.chmod(tmp_path, 0o555)
    try:
        with bne.Collection.open(built) as c:
            res = c.search(QUERIES, 5)
            assert res.mode == "dense" and res.modes == ["dense"] * len(QUERIES)
            assert res.note is not None and "\n" not in res.note
            assert f"{path_for(built)} has no lexical index: dense ranking only" in res.note
            assert "bne build" in res.note and "--append" in res.note
            ids, _ = dense_oracle(fake, built, QUERIES[0], 5)
            assert ranked(res) == ids
            assert c.search(QUERIES, 5, mode="dense").note is None  # asked for: nothing to say
            for mode in ("hybrid", "lexical"):
                with pytest.raises(CollectionError, match=f"^{mode} search: .* has no lexical index; `bne build") as e:
                    c.search(QUERIES, 5, mode=mode)
                assert "\n" not in str(e.value)
        code, out, err = run_main("search", built, "cat", "dog", "snow", "-k", "2")
        assert code == 0 and err.count("has no lexical index") == 1 and err.count("bne: note:") == 1, err
        assert out.startswith("mode: dense") and out.count("query: ") == 3
        one_line_error(*run_main("search", built, "cat", "--mode", "hybrid")[::2], "has no lexical index", "--append")
        one_line_error(*run_main("search", built, "cat", "--mode", "lexical")[::2], "has no lexical index")
        code, out, err = run_main("search", built, "cat", "--mode", "dense", "--json")
        assert code == 0 and "note" not in err and json.loads(out)["results"][0]["mode"] == "dense"
    finally:
        os.chmod(tmp_path, 0o755)
    assert snapshot_of(tmp_path) == before  # read-only: not a byte or an mtime changed


def test_a_docstore_made_without_the_lexical_index_and_an_incomplete_one(tmp_path, fake):
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(DOCS[:40])
    os.remove(path_for(path))
    store = DocStore(path, create=True, lexical=False)
    store.insert(range(40), DOCS[:40])
    store.commit()
    drop_index_tag(path)  # an older bne's collection: no tag on either side
    with bne.Collection.open(path) as c:
        assert c.search(["cat"], 3).mode == "dense"
        steps = store.add_lexical(step=16)
        next(steps)  # one step of the backfill committed: incomplete
        res = c.search(["cat"], 3)
        assert res.mode == "dense" and "incomplete" in (res.note or "")
        with pytest.raises(CollectionError, match="incomplete"):
            c.search(["cat"], 3, mode="lexical")
        list(steps)
        res = c.search([doc_text(DOCS[3].title, DOCS[3].text)], 3)  # backfill done: hybrid from the next search
        top = res.hits[0][0]
        assert res.mode == "hybrid" and (top.id, top.dense_rank, top.lexical_rank) == (3, 1, 1)
    store.close()


def test_a_missing_docstore_gives_the_dense_ranking_and_the_warning(built, fake):
    os.remove(path_for(built))
    with bne.Collection.open(built) as c:
        res = c.search(QUERIES, 3)
        assert res.mode == "dense" and res.note is None and "not found" in (res.warning or "")
        with pytest.raises(CollectionError, match="document store not found"):
            c.search(QUERIES, 3, mode="hybrid")


# -- hostile query text -----------------------------------------------------------------------------


def hostile_queries() -> list[str]:
    base = [
        "",
        " ",
        "!!!",
        "?.,;:-_()[]{}<>",
        '"',
        '""',
        '"unbalanced',
        "cat*",
        "*",
        "^cat",
        "cat NEAR dog",
        "NEAR(cat dog, 2)",
        "NEAR(",
        "text: cat",
        "title:cat",
        "docs_fts:cat",
        "cat AND dog",
        "cat OR",
        "NOT cat",
        "AND",
        "OR OR OR",
        "(cat",
        "cat)",
        "((((",
        "))))",
        "cat\x00dog",
        "\x00",
        "\x1b[31mred\x1b[0m",
        "\t\n\r",
        "'; DROP TABLE docs; --",
        "1' OR '1'='1",
        "cat' --",
        "%",
        "_",
        "\\",
        "é",
        "café naïve",
        "🐈 cat 🐕",
        "\u202eevil",
        "\ufeffcat",
        "a" * 5000,
        "cat " * 2000,
        "x" * 10_000_000,
        "cat " * 2_500_000,
    ]
    r = random.Random(17)
    pieces = ['"', "*", "(", ")", ":", "^", "-", "+", "NEAR", "AND", "OR", "NOT", "cat", "river", "{", "}"]
    pieces += ["\x00", "\x07"]
    pieces += ["item7", "MATCH", "rowid", "bm25(", "'", ";", "--", "/*", "é", "\u0301", "\ud7ff", "0", "1e9", " "]
    for _ in range(260):
        base.append("".join(r.choice(pieces) + r.choice(["", " "]) for _ in range(r.randint(1, 12))))
    return base


def test_hostile_queries_never_fail_and_an_empty_one_gets_the_dense_ranking(built, fake):
    queries = hostile_queries()
    assert len(queries) > 300
    with bne.Collection.open(built) as c:
        for mode in ("hybrid", "dense", "lexical"):
            res = c.search(queries, 5, mode=mode)
            assert len(res.hits) == len(queries) and len(res.modes) == len(queries)
            assert all(0 <= h.id < len(DOCS) for r in res.hits for h in r)
        hyb = c.search(queries, 5)
        lex = c.search(queries, 5, mode="lexical")
        for q, row, m, lrow in zip(queries, hyb.hits, hyb.modes, lex.hits, strict=True):
            if not lexical.query_terms(q, repeats=True):  # no word: the dense ranking, no lexical hit
                assert m == "dense" and [h.lexical_rank for h in row] == [None] * len(row)
                assert [h.id for h in row] == dense_oracle(fake, built, q, 5)[0] and lrow == []
            else:
                assert m == "hybrid"
        empty = c.search(["", "!!!"], 5, mode="lexical")
        assert empty.hits == [[], []] and "no hits" in (empty.note or "")


def test_hostile_queries_through_the_cli(built, fake, tmp_path):
    queries = hostile_queries()[:80] + ["x" * 10_000_000]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"_id": str(i), "text": q}) + "\n" for i, q in enumerate(queries)))
    for mode in ("hybrid", "lexical", "dense"):
        code, out, err = run_main("search", built, "--queries", qfile, "--mode", mode, "--json", "-k", "3")
        assert code == 0 and "Traceback" not in err and "rror" not in err, err
        res = json.loads(out)
        assert len(res["results"]) == len(queries) and res["mode"] == mode
    args = ["cat AND dog", "NEAR(cat", '"', "title:x*", ")", "\x1b[2J"]
    code, out, err = run_main("search", built, *args, "-k", "2")
    assert code == 0 and "\x1b" not in out and out.count("query: ") == len(args), err
    assert "(no word to search for: dense ranking)" in out  # the query '"'


# -- the command --------------------------------------------------------------------------------


def test_json_fields_match_the_api(built, fake):
    with bne.Collection.open(built) as c:
        api = c.search(QUERIES[:3], 4, rrf_k=20, depth=30, weights=(1.0, 2.0))
    code, out, err = run_main(
        "search", built, *QUERIES[:3], "-k", "4", "--rrf-k", "20", "--depth", "30", "--weights", "1,2", "--json"
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["mode"] == "hybrid"
    for r, row in zip(res["results"], api.hits, strict=True):
        assert r["mode"] == "hybrid"
        assert [
            (h["id"], h["distance"], h["bm25"], h["dense_rank"], h["lexical_rank"], h["score"]) for h in r["hits"]
        ] == [(h.id, h.distance, h.bm25, h.dense_rank, h.lexical_rank, h.score) for h in row]
    code, out, _ = run_main("search", built, "snow", "--mode", "lexical", "--json", "-k", "2")
    h = json.loads(out)["results"][0]["hits"][0]
    assert h["score"] == h["bm25"] > 0 and h["lexical_rank"] == 1 and h["dense_rank"] is None
    code, out, err = run_main("search", built, "item7 bird", "-k", "3")
    assert code == 0 and out.startswith("mode: hybrid (dense + lexical, reciprocal rank fusion k=60"), out
    assert "rrf=" in out and "bm25=" in out and "ranks=" in out
    with bne.Collection.open(built) as c:
        api = c.search(QUERIES[:2], 4, fusion="linear", weights=(1.0, 3.0))
    code, out, err = run_main(
        "search", built, *QUERIES[:2], "-k", "4", "--fusion", "linear", "--weights", "1,3", "--json"
    )
    assert code == 0, err
    got = [
        [(h["id"], h["score"], h["dense_rank"], h["lexical_rank"]) for h in r["hits"]]
        for r in json.loads(out)["results"]
    ]
    assert got == [[(h.id, h.score, h.dense_rank, h.lexical_rank) for h in row] for row in api.hits]
    code, out, err = run_main("search", built, "item7 bird", "-k", "3", "--fusion", "linear")
    assert code == 0 and out.startswith(
        "mode: hybrid (dense + lexical, linear fusion of min-max scores, depth 100, weights 1,1;"
    )
    assert "linear=" in out and "rrf=" not in out


@pytest.mark.parametrize(
    "args, note",
    [
        (["--mode", "dense", "--fusion", "linear"], "--fusion applies to hybrid mode only; ignored in dense mode"),
        (
            ["--mode", "lexical", "--depth", "50", "--weights", "1,2"],
            "--depth, --weights apply to hybrid mode only; ignored in lexical mode",
        ),
        (["--mode", "lexical", "--rescore", "5"], "--rescore re-ranks the dense side; ignored in lexical mode"),
        (["--fusion", "linear", "--rrf-k", "10"], "--rrf-k applies to --fusion rrf only; ignored with --fusion linear"),
        (["--rrf-k", "10", "--depth", "20", "--weights", "1,2", "--rescore", "20"], None),
        (["--mode", "dense", "--rescore", "5"], None),
        (["--depth", "500", "--rescore", "120"], None),  # 120 codes: every one is re-ranked, as asked
    ],
)
def test_an_option_the_search_cannot_use_gets_one_note(built, fake, args, note):
    """A fusion option outside hybrid mode (or --rrf-k with linear fusion, --rescore in lexical mode)
    changes nothing: the hits equal the search without it, and stderr says it was ignored."""
    code, out, err = run_main("search", built, "item7 bird", "-k", "3", "--json", *args)
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("bne: note:")]
    assert notes == ([] if note is None else [f"bne: note: {note}"])
    if note is not None:  # the ignored options removed: the same hits
        kept = [a for a in args if a in ("--mode", "dense", "lexical")]
        if "--fusion" in args and "--rrf-k" in args:
            kept = ["--fusion", "linear"]
        code2, out2, _ = run_main("search", built, "item7 bird", "-k", "3", "--json", *kept)
        assert code2 == 0 and json.loads(out)["results"] == json.loads(out2)["results"]


@pytest.mark.parametrize(
    "args, same, note",
    [
        (["--depth", "2"], ["--depth", "3"], "--depth 2 is below -k 3: each side's list holds 3"),
        (["--mode", "dense", "--rescore", "2"], ["--mode", "dense", "--rescore", "3"], "all 3 are re-ranked"),
        (["--depth", "4", "--rescore", "2"], ["--depth", "4", "--rescore", "4"], "below the 4 dense candidates"),
    ],
)
def test_an_option_raised_to_what_the_search_needs_gets_one_note(built, args, same, note):
    """--depth below -k, or --rescore below the dense list, is searched at the larger value: the
    hits equal the search given that value, stderr says so, and the header shows the depth used."""
    code, out, err = run_main("search", built, "item7 bird", "-k", "3", "--json", *args)
    notes = [ln for ln in err.splitlines() if ln.startswith("bne: note:")]
    assert code == 0 and len(notes) == 1 and note in notes[0], err
    code2, out2, err2 = run_main("search", built, "item7 bird", "-k", "3", "--json", *same)
    assert code2 == 0 and "bne: note:" not in err2 and json.loads(out)["results"] == json.loads(out2)["results"]
    if args[0] == "--depth":
        code, out, _ = run_main("search", built, "item7 bird", "-k", "3", *args)
        assert code == 0 and f"depth {same[1]}," in out.splitlines()[0], out


def test_api_rescore_must_be_a_whole_number_of_candidates(built):
    with bne.Collection.open(built) as c:
        for bad in (0, -1, 2.5, True, "10"):
            with pytest.raises(ValueError, match="rescore must be None or a whole number >= 1"):
                c.search(["item7 bird"], 3, mode="dense", rescore=bad)
        assert c.search(["item7 bird"], 3, mode="dense", rescore=np.int64(5)).hits[0][0].score is not None


def test_api_allow_takes_any_iterable_of_ids(built):
    allow = [3, 5, 11, 12, 40]
    with bne.Collection.open(built) as c:
        want = [[h.id for h in row] for row in c.search(QUERIES, 4, allow=allow).hits]
        wide = np.array(allow + [2**63, 2**64 - 1], np.uint64)  # past int64: no document, never wrapped
        for same in (set(allow), (i for i in allow), np.array(allow, np.uint64), wide, allow + [-1, 2**63 - 1]):
            assert [[h.id for h in row] for row in c.search(QUERIES, 4, allow=same).hits] == want
        assert c.search(QUERIES, 4, allow=range(3)).hits != c.search(QUERIES, 4).hits
        assert {h.id for row in c.search(QUERIES, 4, allow=range(3)).hits for h in row} <= {0, 1, 2}
        for bad in ("12", [[3, 5]], [1.5]):
            with pytest.raises(TypeError, match="allow must be"):
                c.search(QUERIES, 4, allow=bad)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--mode", "bits"], "invalid choice"),
        (["--rrf-k", "-1"], ">= 0"),
        (["--rrf-k", "nan"], ">= 0"),
        (["--rrf-k", "x"], "expected a number"),
        (["--depth", "0"], "--depth"),
        (["--weights", "1"], "DENSE,LEXICAL"),
        (["--weights", "0,0"], "not both 0"),
        (["--weights", "1,-2"], "DENSE,LEXICAL"),
        (["--weights", "inf,1"], "DENSE,LEXICAL"),
        (["--fusion", "dbsf"], "invalid choice"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(built, fake, args, needle):
    code, out, err = run_main("search", built, "cat", *args)
    assert code == 2 and out == ""
    one_line_error(code, err, needle)


def test_bad_api_arguments(built, fake):
    with bne.Collection.open(built) as c:
        bad = ({"mode": "bits"}, {"rrf_k": -1}, {"depth": 0}, {"weights": (1, 2, 3)}, {"weights": (0, 0)})
        for kw in (*bad, {"fusion": "dbsf"}, {"fusion": "linear", "weights": (0, 0)}):
            with pytest.raises(ValueError):
                c.search(["cat"], 3, **kw)
        with pytest.raises(TypeError, match="list of query texts"):
            c.search("cat", 3)


# -- a reader following a writer --------------------------------------------------------------------


def test_a_reader_sees_a_writers_new_documents_on_both_sides_after_refresh(built, fake):
    new = corpus(30, start=len(DOCS))
    q = [doc_text(new[5].title, new[5].text)]
    reader = bne.Collection.open(built)
    assert len(reader.search(q, 3).hits[0]) == 3  # the reader's docstore connection is open from here on
    with bne.Collection.open(built, mode="a") as w:  # the reader's connection does not block this writer
        w.add(new[:20], commit_every=7)
        # the docstore holds the texts of a batch before the index holds its codes: the index decides
        assert 125 not in [h.id for h in reader.search(q, 10, mode="lexical").hits[0]]
        assert reader.refresh()
        top = reader.search(q, 3).hits[0][0]
        assert (top.id, top.doc_id, top.dense_rank, top.lexical_rank, top.distance) == (125, "d125", 1, 1, 0)
        stop = threading.Event()
        errors: list[BaseException] = []

        def follow():
            try:
                while not stop.is_set():
                    reader.refresh()
                    reader.search(q, 5)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=follow)
        t.start()
        try:
            w.add(new[20:], commit_every=2)  # commits while the reader searches
        finally:
            stop.set()
            t.join()
        assert not errors
    reader.refresh()
    res = reader.search([f"item{len(DOCS) + 29}"], 2, mode="lexical")
    assert res.hits[0][0].id == len(DOCS) + 29
    reader.close()


def test_a_reader_leaves_out_what_a_newer_commit_removed(tmp_path, fake):
    """A reader's snapshot still holds a code that a newer commit removed, but the docstore no
    longer has its text or its own id: the hit is left out with a note, never shown empty."""
    path = tmp_path / "c.bne"
    with bne.Collection.create(path) as c:
        c.add(corpus(40))
    q = [doc_text(DOCS[7].title, DOCS[7].text)]
    reader = bne.Collection.open(path)
    for mode in ("hybrid", "dense", "lexical"):
        first = reader.search(q, 3, mode=mode)
        assert first.hits[0][0].doc_id == "d7" and first.note is None, mode
    with bne.Collection.open(path, mode="a") as w:
        assert w.remove(["d7"]) == 1
    for mode in ("hybrid", "dense", "lexical"):
        res = reader.search(q, 3, mode=mode)
        got = [(h.rank, h.doc_id) for h in res.hits[0]]
        assert "d7" not in [d for _, d in got] and all(h.text for h in res.hits[0]), (mode, got)
        assert [r for r, _ in got] == list(range(1, len(got) + 1))
        if mode == "dense":  # (the lexical side reads the docstore's newest commit: d7 is not found there)
            assert len(got) == 2 and "1 hit(s) left out: not in the docstore" in (res.note or "")
    assert reader.refresh()
    res = reader.search(q, 3, mode="dense")
    assert res.note is None and len(res.hits[0]) == 3 and "d7" not in [h.doc_id for h in res.hits[0]]
    reader.close()


def test_a_refresh_during_a_search_does_not_change_its_result(built, fake, monkeypatch):
    """A refresh() in another thread between the dense search and the filling-in of distances
    (here forced at that point) must not mix commits: the result is the one of the snapshot the
    search started with, distances included (a removed code read as zeros gave popcount(query))."""
    q = [doc_text(DOCS[5].title, DOCS[5].text)]
    reader = bne.Collection.open(built)
    want = [(h.id, h.distance, h.score) for h in reader.search(q, 3, mode="hybrid", rescore=20).hits[0]]
    real = hybrid._fill_distances

    def refresh_first(index, codes, rows):
        with bne.open(built, mode="a") as w:  # bne remove's first commit: the code's tombstone
            w.remove([want[0][0]])
        assert reader.refresh()
        return real(index, codes, rows)

    monkeypatch.setattr(hybrid, "_fill_distances", refresh_first)
    res = reader.search(q, 3, mode="hybrid", rescore=20)
    assert [(h.id, h.distance, h.score) for h in res.hits[0]] == want and res.note is None
    reader.close()


def test_a_collection_dropped_or_closed_holds_no_docstore_open(built, fake):
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.collect()
    gc.disable()
    try:
        base = fds()
        for _ in range(20):  # dropped without close(): refcounting alone must release the docstore
            c = bne.Collection.open(built)
            assert c.search(["item7 bird"], 3, mode="hybrid").hits[0]
            del c
        assert fds() <= base + 2, (base, fds())
    finally:
        gc.enable()
    c = bne.Collection.open(built)
    c.search(["item7 bird"], 3, mode="lexical")
    c.close()
    with pytest.raises(ValueError, match="collection is closed"):
        c.search(["item7 bird"], 3, mode="lexical")
    assert c.lexical._store is None  # the failed search did not open the docstore again


# -- a folder of shards: the call to the sharded index's lexical side ------------------------------


class _Shards:
    lexical_ready = True

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __len__(self) -> int:
        return 50

    def search(self, codes, k):
        D = np.tile(np.arange(k, dtype=np.int32), (len(codes), 1))
        return D, np.tile(np.arange(k, dtype=np.int64), (len(codes), 1))

    def lexical_search(self, terms, depth, allowed=None):
        self.calls.append((terms, depth, allowed))
        return [[(40 - j, 10.0 - j) for j in range(min(depth, 5))] for _ in terms]


class _ShardedColl:
    sharded = True
    path = "folder"

    def __init__(self, fake) -> None:
        self.index = _Shards()
        self._fake = fake

    def encoder(self, purpose):
        return self._fake


def test_a_folder_of_shards_fuses_its_lexical_search(fake):
    coll = _ShardedColl(fake)
    docs = lambda ids: ({int(i): StoredDoc(f"x{i}", "", "text", "") for i in ids}, None)  # noqa: E731
    res = hybrid.search(
        coll, ["cat dog", "!!"], 4, mode=None, rescore=None, threads=None, allow=None, rrf_k=60.0, depth=20,
        weights=(1.0, 1.0), documents=docs,
    )  # fmt: skip
    assert coll.index.calls == [([['"cat"', '"dog"'], []], 20, None)]
    assert res.mode == "hybrid" and res.modes == ["hybrid", "dense"]
    want = lexical.rrf_fuse(list(range(20)), [40 - j for j in range(5)], weights=(1.0, 1.0), limit=4)
    assert ranked(res) == [f.id for f in want] and ranked(res, 1) == [0, 1, 2, 3]
    res = hybrid.search(
        coll, ["cat dog"], 4, mode=None, rescore=None, threads=None, allow=None, rrf_k=60.0, depth=20,
        weights=(1.0, 1.0), documents=docs, fusion="linear",
    )  # fmt: skip
    dense = [(i, -float(i)) for i in range(20)]  # the shards' distances 0..19, higher is better
    want = lexical.linear_fuse(dense, [(40 - j, 10.0 - j) for j in range(5)], weights=(1.0, 1.0), limit=4)
    assert [(h.id, h.score) for h in res.hits[0]] == [(f.id, pytest.approx(f.score)) for f in want]
    coll.index.lexical_ready = False
    res = hybrid.search(
        coll, ["cat"], 4, mode=None, rescore=None, threads=None, allow=None, rrf_k=60.0, depth=20,
        weights=(1.0, 1.0), documents=docs,
    )  # fmt: skip
    assert res.mode == "dense" and "folder has no lexical index" in (res.note or "")


def test_huge_index_ids_allocate_no_huge_mask(tmp_path, fake):
    """An index written through the API may hold any ids: the live-id mask stops at the docstore's last row."""
    path = tmp_path / "api.bne"
    texts = [doc_text(d.title, d.text) for d in DOCS[:3]]
    with bne.open(path, mode="a", bits=1024, metadata={"model": "default", "bits": 1024}) as idx:
        idx.add(fake.encode(texts), ids=np.array([0, 1, 10**15], np.int64))
        idx.commit()
    store = DocStore(path, create=True)
    store.insert([0, 1, 2], DOCS[:3])
    store.commit()
    store.close()
    with bne.Collection.open(path) as c:
        res = c.search([texts[2], texts[1]], 3)
        mask = c.lexical.live_mask(c.index)
    assert res.mode == "hybrid" and mask.tolist() == [True, True]  # row 2 is no index id: never a lexical hit
    # the code with no document is left out, with a note, rather than shown with no text under its number
    assert 10**15 not in [h.id for h in res.hits[0]] and "1 hit(s) left out: not in the docstore" in res.note
    assert res.hits[1][0].id == 1 and (res.hits[1][0].dense_rank, res.hits[1][0].lexical_rank) == (1, 1)
    assert 2 not in [h.id for row in res.hits for h in row]
