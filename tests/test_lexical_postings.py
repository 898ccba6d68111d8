"""bne.lexical_postings: exact BM25 over own postings equals brute force and FTS5's bm25(), across
segments and merges, with deletes, re-inserts, rollbacks and 3 shards with global statistics; the C++
scorer (MaxScore, masks, search_many, threads) equals the numpy reference to the last bit."""

from __future__ import annotations

import random
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from bne import lexical, lexical_segments
from bne import lexical_postings as lp
from bne import lexical_segments as lseg
from test_lexical import VOCAB, brute_bm25, make_corpus, same_ranking


def reference(
    s: lp.Searcher,
    terms: list[str],
    limit: int,
    stats: lexical.Stats | None = None,
    allowed: object = None,
) -> list[tuple[int, float]]:
    """The oracle: every posting of every term summed into a numpy array (no pruning, no cache, no
    C++), in the same term order as ``Searcher.search``, so its scores are the same to the last bit."""
    plans, (knorm, _), seg_of, _ = s._prepare([terms], stats, False)
    if limit < 1 or not plans[0]:
        return []
    acc = np.zeros(len(knorm), np.float64)
    for w, rows, _ in plans[0]:
        for seg, df, db, tb in rows:
            d, t = lseg._unpack(df, db, tb)
            tf = t.astype(np.float64)
            if seg_of is not None:
                keep = seg_of[d] == seg
                d, tf = d[keep], tf[keep]
            acc[d] += w * tf / (tf + knorm[d])  # a term's postings hold each live id once: += is exact
    ids = np.flatnonzero(acc)
    mask, admit = lp._allowed(allowed, len(knorm))  # type: ignore[arg-type]
    if mask is not None:
        ids = ids[ids < len(mask)]
        ids = ids[mask[ids]]
    sc = acc[ids]
    if admit is None and len(ids) > limit:  # the limit-th best score, ties kept
        kth = np.partition(sc, len(sc) - limit)[len(sc) - limit]
        ids, sc = ids[sc >= kth], sc[sc >= kth]
    out: list[tuple[int, float]] = []
    for o in np.lexsort((ids, -sc)):
        if len(out) == limit:
            break
        if admit is None or admit(int(ids[o])):
            out.append((int(ids[o]), float(sc[o])))
    return out


def reference_search(db: sqlite3.Connection, terms: list[str], limit: int, **kw) -> list[tuple[int, float]]:
    return reference(lp.Searcher(db, cache_mb=0), terms, limit, **kw)


def open_db(texts: dict[int, str], batch: int = 7) -> sqlite3.Connection:
    """Postings and FTS5 side by side, one commit per ``batch`` documents (one segment each)."""
    db = sqlite3.connect(":memory:")
    lseg.create(db)
    lexical.create(db)
    items = list(texts.items())
    for k in range(0, len(items), batch):
        part = items[k : k + batch]
        lseg.insert(db, [i for i, _ in part], [t for _, t in part])
        lexical.insert(db, [i for i, _ in part], [t for _, t in part])
        db.commit()
    return db


def queries(seed: int, n: int = 12) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample(VOCAB + ["absent"], rng.randint(1, 6)) for _ in range(n)]


@pytest.mark.parametrize("seed", range(3))
def test_matches_brute_force_and_fts5(seed: int) -> None:
    texts = dict(enumerate(make_corpus(300, seed)))
    db = open_db(texts, batch=7)  # 43 segments: merged twice at level 0 (F = 8), 3 levels in use
    levels = dict(db.execute("SELECT level, count(*) FROM lexp_seg GROUP BY level").fetchall())
    assert levels[1] >= 1 and all(c < lseg.F for c in levels.values())
    s = lp.Searcher(db)
    s.prune_min_postings = 0  # check before every term: this corpus is small
    pruned = 0
    for words in queries(seed, 40):
        terms = lexical.query_terms(" ".join(words))
        want = brute_bm25(texts, words)
        same_ranking(s.search(terms, 1000), want)
        same_ranking(s.search(terms, 1000, prune=False), want)
        for k in (1, 3, 10):
            same_ranking(s.search(terms, k), want[:k])  # MaxScore: exact
            pruned += s.pruned_terms
            same_ranking(s.search(terms, k, prune=False), want[:k])
        same_ranking(s.search(terms, 10), lexical.bm25_search(db, terms, 10))
    assert pruned > 20  # the common terms were skipped in many of these queries


def test_stems_and_repeats_count_as_fts5_does() -> None:
    texts = {0: "running cells", 1: "the cell runs", 2: "cell cell cell", 3: "nothing here", 4: "run"}
    db = open_db(texts, batch=2)
    s = lp.Searcher(db)
    for q, rep in [("cells running", False), ("cell cells run", False), ("cell cell", True), ("zzz", False)]:
        terms = lexical.query_terms(q, repeats=rep)
        same_ranking(s.search(terms, 10), lexical.bm25_search(db, terms, 10))
    assert s.search([], 10) == [] and s.search(lexical.query_terms("cell"), 0) == []
    with pytest.raises(ValueError, match="double-quoted"):
        s.search(["cell"], 5)


def test_deletes_are_exact_and_ids_can_come_back() -> None:
    texts = dict(enumerate(make_corpus(120, 5)))
    db = open_db(texts, batch=9)
    s = lp.Searcher(db)
    s.prune_min_postings = 0  # MaxScore's candidate lookups meet deleted postings too
    pruned = 0
    gone = list(range(3, 120, 4))
    lseg.delete(db, gone, [texts[i] for i in gone])
    lexical.delete(db, gone, [texts[i] for i in gone])
    db.commit()
    live = {i: t for i, t in texts.items() if i not in gone}
    for words in queries(6):
        terms = lexical.query_terms(" ".join(words))
        got = s.search(terms, 1000)
        assert not {i for i, _ in got} & set(gone)
        same_ranking(got, brute_bm25(live, words))  # N, avgdl and df without the deleted rows
        same_ranking(s.search(terms, 20), lexical.bm25_search(db, terms, 20))
        same_ranking(s.search(terms, 3), brute_bm25(live, words)[:3])
        pruned += s.pruned_terms
    assert pruned > 0
    # an id deleted and inserted again with another text (as after DocStore.delete_above)
    lseg.insert(db, [3], ["apple apple zucchini"])
    db.commit()
    live[3] = "apple apple zucchini"
    same_ranking(s.search(lexical.query_terms("apple zucchini"), 1000), brute_bm25(live, ["apple", "zucchini"]))
    # merges drop dead postings (and their df correction) and keep the ranking, the re-inserted id included
    more = dict(zip(range(200, 300), make_corpus(100, 8), strict=True))
    for k in range(200, 300, 9):
        ids = [i for i in range(k, min(k + 9, 300))]
        lseg.insert(db, ids, [more[i] for i in ids])
        db.commit()
    live.update(more)
    assert db.execute("SELECT max(level) FROM lexp_seg").fetchone()[0] >= 1
    for words in queries(9):
        terms = lexical.query_terms(" ".join(words))
        same_ranking(s.search(terms, 1000), brute_bm25(live, words))
        same_ranking(s.search(terms, 5), brute_bm25(live, words)[:5])
    # compaction purges the dead postings and keeps the ranking
    lseg.compact(db)
    db.commit()
    assert db.execute("SELECT count(*) FROM lexp_seg").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM lexp_dead").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM lexp_deldf").fetchone()[0] == 0  # no correction left over
    same_ranking(s.search(lexical.query_terms("apple zucchini"), 1000), brute_bm25(live, ["apple", "zucchini"]))
    for words in queries(7):
        same_ranking(s.search(lexical.query_terms(" ".join(words)), 1000), brute_bm25(live, words))


def test_bad_deletes_are_refused() -> None:
    db = open_db({0: "apple pie", 1: "banana"})
    with pytest.raises(ValueError, match="not in the index"):
        lseg.delete(db, [7], ["x"])
    with pytest.raises(ValueError, match="not the one"):
        lseg.delete(db, [0], ["apple"])
    with pytest.raises(ValueError, match="distinct"):
        lseg.insert(db, [5, 5], ["a", "b"])


def test_rollback_leaves_nothing() -> None:
    db = open_db({0: "apple pie", 1: "banana"})
    s = lp.Searcher(db)
    assert {i for i, _ in s.search(lexical.query_terms("apple banana"), 5)} == {0, 1}
    lseg.insert(db, [2], ["apple apple apple"])
    lseg.delete(db, [1], ["banana"])
    assert {i for i, _ in s.search(lexical.query_terms("apple banana"), 5)} == {0, 2}  # own writes are seen
    db.rollback()
    assert {i for i, _ in s.search(lexical.query_terms("apple banana"), 5)} == {0, 1}
    assert s.local_stats(lexical.query_terms("apple")).n_docs == 2


def test_allowed_filters_before_the_limit() -> None:
    texts = dict(enumerate(make_corpus(200, 9)))
    db = open_db(texts, batch=50)
    terms = lexical.query_terms("apple banana")
    full = lp.Searcher(db).search(terms, 1000)
    odd = {i for i, _ in full if i % 2}
    got = lp.Searcher(db).search(terms, 15, allowed=odd)
    assert got == [r for r in full if r[0] in odd][:15]
    assert lp.bm25_search(db, terms, 15, allowed=lambda i: i % 2 == 1) == got


def test_three_shards_rank_as_their_union() -> None:
    texts = dict(enumerate(make_corpus(240, 4)))
    rng = random.Random(4)
    cut = sorted(rng.sample(range(1, 240), 2))
    bounds = [(0, cut[0]), (cut[0], cut[1]), (cut[1], 240)]
    shards = [open_db({i - a: texts[i] for i in range(a, b)}, batch=11) for a, b in bounds]
    for words in queries(8):
        terms = lexical.query_terms(" ".join(words))
        stats = lexical.merge_stats(lp.local_stats(db, terms) for db in shards)
        parts = [
            [(i + a, s) for i, s in lp.bm25_search(db, terms, 30, stats=stats)]
            for db, (a, _) in zip(shards, bounds, strict=True)
        ]
        same_ranking(lexical.merge_ranked(parts, 30), brute_bm25(texts, words)[:30])
        # and the FTS5 path with the same statistics agrees
        fts = [lexical.local_stats(db, terms) for db in shards]
        assert lexical.merge_stats(fts) == stats


def test_file_backed_readonly_search(tmp_path) -> None:
    path = tmp_path / "d.sqlite"
    db = sqlite3.connect(path)
    lseg.create(db)
    lseg.insert(db, [0, 1], ["apple pie", "banana split"])
    db.commit()
    db.close()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    assert lp.bm25_search(ro, lexical.query_terms("pie"), 5)[0][0] == 0  # the tokenizer lives in temp
    # a search leaves no transaction open: another connection's commit is seen by the same Searcher
    r = sqlite3.connect(path)
    s = lp.Searcher(r)
    assert s.search(lexical.query_terms("split"), 5)[0][0] == 1 and not r.in_transaction
    w = sqlite3.connect(path, timeout=1)
    lseg.insert(w, [2], ["split split split"])
    w.commit()  # "database is locked" if the reader held its shared lock
    assert s.search(lexical.query_terms("split"), 5)[0][0] == 2
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        lseg.insert(ro, [6], ["more"])


def test_posting_formats_round_trip() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for d, tf in [
        (np.array([5]), np.array([1])),  # one posting: raw
        (np.array([0, 1, 65535, 65536 * 2]), np.array([1, 300, 2, 70000])),  # a gap over 65535, big tfs
        (np.cumsum(rng.integers(1, 65536, 1000)), rng.integers(1, 256, 1000)),  # uint16 gaps, uint8 tfs
    ]:
        docs, tfs = lseg._pack(d, tf)
        got_d, got_t = lseg._unpack(len(d), docs, tfs)
        assert got_d.tolist() == d.tolist()
        assert got_t.tolist() == np.minimum(tf, 65535).tolist()
    assert len(lseg._pack(np.arange(0, 3000, 3), np.ones(1000, np.int64))[0]) == 2 * 1000 + 2


def test_skip_floor_is_near_exact_with_its_bound() -> None:
    texts = dict(enumerate(make_corpus(300, 11)))
    db = open_db(texts, batch=40)
    s = lp.Searcher(db)
    skipped = 0
    for words in queries(12, 30):
        terms = lexical.query_terms(" ".join(words))
        exact = dict(brute_bm25(texts, words))
        want = brute_bm25(texts, words)[:10]
        got = s.search(terms, 10, skip_floor=True)
        bound = s.skipped_bound
        skipped += bound > 0
        for i, sc in got:  # each score is low by less than the bound, never high
            assert -1e-12 <= exact[i] - sc <= bound + 1e-12
        if len(want) == 10 and len(exact) > 10:
            kth, nxt = want[-1][1], sorted(exact.values(), reverse=True)[10]
            if kth - nxt > bound:  # no near-tie at the cut: the same documents
                assert {i for i, _ in got} == {i for i, _ in want}
    assert skipped > 5  # the common words (in over half the documents) were skipped


def test_schema_is_exactly_what_is_expected() -> None:
    db = sqlite3.connect(":memory:")
    lseg.create(db)
    lseg.create(db)  # idempotent
    lseg.insert(db, [0, 1], ["apple pie", "banana"])
    db.commit()
    objects = {(t, n): s for t, n, s in db.execute("SELECT type, name, sql FROM sqlite_master")}
    assert objects == lseg.EXPECTED_SCHEMA
    assert len(objects) == 5  # no index or shadow table beside the five


# --- the C++ scorer against the numpy reference (the oracle) and FTS5 ------------------------------


def corpus_with_ties(n: int, seed: int) -> list[str]:
    """make_corpus with every 5th text a copy of an earlier one: equal scores, ranked by id."""
    texts = make_corpus(n, seed)
    rng = random.Random(seed)
    for i in range(5, n, 5):
        texts[i] = texts[rng.randrange(i)]
    return texts


def same_up_to_near_ties(got: list[tuple[int, float]], brute: list[tuple[int, float]], k: int) -> None:
    """``got`` is a top ``k`` of ``brute`` (the full ranking), where two documents whose exact scores
    are equal may come in either order (a sum in another order differs in its last bit)."""
    exact = dict(brute)
    assert len(got) == min(k, len(brute)) and len({i for i, _ in got}) == len(got)
    for (i, sc), (_, want) in zip(got, brute, strict=False):
        assert sc == pytest.approx(exact[i], rel=1e-12) and sc == pytest.approx(want, rel=1e-9)


def gapped_ids(n: int) -> list[int]:
    """Ids with a hole of 100,000 in the middle: the lists spanning it keep int32 ids (a gap > 65535),
    the others uint16 gaps, so both formats (and both lookups of each) are scored."""
    return [i if i < n // 2 else i + 100_000 for i in range(n)]


def formats(db: sqlite3.Connection) -> set[str]:
    out = set()
    for df, docs in db.execute("SELECT df, docs FROM lexp_post WHERE df > 40"):
        out.add("int32" if len(docs) == 4 * df else "gaps")
    return out


@pytest.mark.parametrize("seed", range(2))
def test_fast_path_is_the_reference_to_the_last_bit(seed: int) -> None:
    ids = gapped_ids(400)
    texts = dict(zip(ids, corpus_with_ties(400, seed), strict=True))
    db = open_db(texts, batch=70)  # 6 segments, the 3rd across the hole; 7 with the re-inserts: no merge
    gone = ids[3::7]
    lseg.delete(db, gone, [texts[i] for i in gone])
    lexical.delete(db, gone, [texts[i] for i in gone])
    db.commit()
    back = gone[::2]  # deleted and inserted again with other texts: their old postings are dead
    for i, t in zip(back, corpus_with_ties(len(back), seed + 50), strict=True):
        texts[i] = t
    lseg.insert(db, back, [texts[i] for i in back])
    lexical.insert(db, back, [texts[i] for i in back])
    db.commit()
    live = {i: t for i, t in texts.items() if i not in set(gone) - set(back)}
    assert formats(db) == {"int32", "gaps"}
    s = lp.Searcher(db)
    s.prune_min_postings = 0  # MaxScore checks before every term: this corpus is small
    rng = np.random.default_rng(seed)
    n = max(ids) + 1
    masks = {
        "none": None,
        "tombstones": rng.random(n) > 0.4,
        "few": np.isin(np.arange(n), rng.choice(ids, 6, replace=False)),
        "short": np.ones(n // 3, bool),  # ids past its end are not allowed
    }
    pruned = 0
    for words in queries(seed, 25):
        terms = lexical.query_terms(" ".join(words))
        brute = brute_bm25(live, words)
        for name, mask in masks.items():
            for k in (1, 5, 40, 1000):  # 1000: more than the matches
                want = reference_search(db, terms, k, allowed=mask)
                got = s.search(terms, k, allowed=mask)
                assert got == want, (name, k)  # same ids, same order, same float bits
                pruned += s.pruned_terms
                assert s.search(terms, k, allowed=mask, prune=False) == want
                keep = [r for r in brute if mask is None or (r[0] < len(mask) and mask[r[0]])]
                same_up_to_near_ties(got, keep, k)  # a small allow-list still gets every hit it has
        same_up_to_near_ties(s.search(terms, 30), lexical.bm25_search(db, terms, 1000), 30)
    assert pruned > 50  # MaxScore cut the common terms in many of these searches


def test_allowed_forms_agree() -> None:
    texts = dict(enumerate(corpus_with_ties(300, 3)))
    db = open_db(texts, batch=50)
    s = lp.Searcher(db)
    s.prune_min_postings = 0
    terms = lexical.query_terms("apple banana cherry quince")
    full = s.search(terms, 1000)
    odd = {i for i, _ in full if i % 3 == 1}
    mask = np.zeros(300, bool)
    mask[list(odd)] = True
    want = [r for r in full if r[0] in odd]
    for allowed in (odd, frozenset(odd), mask, lambda i: i in odd, list(odd)):
        for k in (1, 7, 500):
            assert s.search(terms, k, allowed=allowed) == want[:k]
    assert s.search(terms, 10, allowed=set()) == [] and s.search(terms, 10, allowed=np.zeros(0, bool)) == []
    assert s.search(terms, 10, allowed={-5, 10**12, "x"}) == []  # odd members are no error, and match nothing
    with pytest.raises(ValueError, match="bool mask"):
        s.search(terms, 10, allowed=np.arange(5))


def test_search_many_equals_search_one_by_one() -> None:
    texts = dict(zip(gapped_ids(300), corpus_with_ties(300, 4), strict=True))
    db = open_db(texts, batch=40)
    s = lp.Searcher(db)
    s.prune_min_postings = 0
    qs = [lexical.query_terms(" ".join(w)) for w in queries(4, 30)] + [[], lexical.query_terms("absent")]
    mask = np.arange(max(texts) + 1) % 2 == 0
    stats = lp.local_stats(db, sorted({t for q in qs for t in q}))
    for kw in ({}, {"allowed": mask}, {"allowed": lambda i: i % 2 == 0}, {"stats": stats}):
        want = [s.search(q, 8, **kw) for q in qs]
        assert sum(map(len, want)) > 100
        for threads in (None, 1, 2, 5):
            assert s.search_many(qs, 8, threads=threads, **kw) == want
    assert s.search_many([], 5) == [] and s.search_many(qs, 0) == [[] for _ in qs]
    with pytest.raises(ValueError, match="threads"):
        s.search_many(qs, 5, threads=0)


def test_one_searcher_many_python_threads(tmp_path) -> None:
    path = tmp_path / "d.sqlite"
    w = sqlite3.connect(path)
    texts = dict(enumerate(corpus_with_ties(300, 6)))
    lseg.create(w)
    lseg.insert(w, list(texts), list(texts.values()))
    w.commit()
    db = sqlite3.connect(path, check_same_thread=False)  # as a collection shares its connection
    s = lp.Searcher(db, cache_mb=0.05)  # a tiny cache: entries come and go while threads read
    qs = [lexical.query_terms(" ".join(x)) for x in queries(6, 40)]
    want = [reference_search(db, q, 10) for q in qs]

    def worker(seed: int) -> None:
        order = list(range(len(qs)))
        random.Random(seed).shuffle(order)
        for _ in range(3):
            for k in order:
                assert s.search(qs[k], 10) == want[k]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, range(4)))  # a worker's failure is raised here
    assert s._cache_used <= 0.05 * 2**20


def test_cache_follows_writes_and_its_bound(monkeypatch) -> None:
    texts = dict(enumerate(make_corpus(200, 7)))
    db = open_db(texts, batch=50)
    s = lp.Searcher(db)
    terms = lexical.query_terms("apple zucchini")
    assert [i for i, _ in s.search(terms, 3)] != [500]
    assert s._cache  # the postings were kept
    lseg.insert(db, [500], ["zucchini zucchini apple"])  # a write, not yet committed: seen (own connection)
    assert s.search(terms, 1)[0][0] == 500
    db.rollback()
    lseg.insert(db, [501], ["zucchini apple apple"])  # another write after the rollback: a new version
    db.commit()
    texts[501] = "zucchini apple apple"
    same_ranking(s.search(terms, 1000), brute_bm25(texts, ["apple", "zucchini"]))
    tiny = lp.Searcher(db, cache_mb=0.001)
    for words in queries(7, 20):
        tiny.search(lexical.query_terms(" ".join(words)), 5)
        assert tiny._cache_used <= 0.001 * 2**20
    # queries cycling through more terms than fit (least recently used out would evict each list
    # before its next use): a term that was hit stays (second chances)
    sized = lp.Searcher(db, cache_mb=3 * 1200 / 2**20)  # about three of this corpus' lists
    reads: list[str] = []
    read = sized._postings
    sized._postings = lambda tok: reads.append(tok) or read(tok)  # type: ignore[method-assign]
    sized.search(lexical.query_terms("apple"), 5)
    sized.search(lexical.query_terms("apple"), 5)
    for _ in range(3):
        for k, w in enumerate(VOCAB[1:]):
            sized.search(lexical.query_terms(f"apple {w}" if k % 3 == 0 else w), 5)
            assert sized._cache_used <= sized.cache_bytes
    assert reads.count("appl") == 1 and reads.count("banana") == 3
    monkeypatch.setenv("BNE_LEXICAL_CACHE_MB", "3")
    assert lp.Searcher(db).cache_bytes == 3 * 2**20
    monkeypatch.setenv("BNE_LEXICAL_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="BNE_LEXICAL_CACHE_MB"):
        lp.Searcher(db)


def test_damaged_postings_are_a_clear_error() -> None:
    db = open_db(dict(enumerate(make_corpus(50, 8))), batch=50)
    terms = lexical.query_terms("apple")
    assert lp.bm25_search(db, terms, 5)
    db.execute("UPDATE lexp_post SET docs = x'01020304aa' WHERE term = 'appl'")  # 5 bytes: no format
    with pytest.raises(ValueError, match="damaged posting list"):
        lp.bm25_search(db, terms, 5)
    db.rollback()
    big = np.array([10**6, 10**6 + 1], np.int32).tobytes()  # ids past every row
    db.execute("UPDATE lexp_post SET df = 2, docs = ?, tfs = x'0101' WHERE term = 'appl'", (big,))
    with pytest.raises(ValueError, match="id out of range"):
        lp.bm25_search(db, terms, 5)


# --- a searcher that lives across writes (incremental refresh) and small allow-lists ----------------


def live_texts_delete(db: sqlite3.Connection, live: dict[int, str], ids: list[int]) -> None:
    lseg.delete(db, ids, [live.pop(i) for i in ids])


def agree_with_fresh(readers: list[lp.Searcher], qs: list[list[str]], rng: random.Random) -> None:
    """Each long-lived searcher answers as a new one on the same connection: same ids, same float bits,
    with and without a small allow-list (ids of any kind: live, deleted, never used)."""
    fresh = lp.Searcher(readers[0].conn, cache_mb=0)
    top = max(1, len(fresh._prepare([], None, False)[1][0]))
    few = np.zeros(top + 5, bool)
    few[rng.sample(range(top + 5), min(top + 5, rng.randint(1, 8)))] = True
    for terms in qs:
        for kw in ({"limit": 4}, {"limit": 1000}, {"limit": 6, "allowed": few}):
            want = fresh.search(terms, **kw)  # type: ignore[arg-type]
            for s in readers:
                assert s.search(terms, **kw) == want, kw  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [0, *(pytest.param(s, marks=pytest.mark.slow) for s in range(1, 6))])
def test_long_lived_searcher_follows_every_write(tmp_path, monkeypatch, seed: int) -> None:
    """Inserts (level merges up to level 3 with F = 3), deletes, delete_above, ids back after their
    delete, compaction and rolled-back writes on one connection; after each step, searchers on a
    second connection that lived through all of it (caches large, small and tiny: eviction while
    updating) agree with a new searcher to the last bit, and with brute force."""
    monkeypatch.setattr(lexical_segments, "F", 3)
    rng = random.Random(seed)
    path = tmp_path / "d.sqlite"
    w = sqlite3.connect(path)
    lseg.create(w)
    w.commit()
    r = sqlite3.connect(path)
    readers = [lp.Searcher(r), lp.Searcher(r, cache_mb=0.01), lp.Searcher(r, cache_mb=0.0005)]
    qs = [lexical.query_terms(" ".join(x)) for x in queries(seed, 6)]
    corpus = make_corpus(2000, seed + 20)
    live: dict[int, str] = {}
    gone: list[int] = []
    nxt = 0
    ops = ["insert"] * 6 + ["delete", "delete_above", "again", "rollback", "compact"]
    kinds = ["insert"] * 4 + [rng.choice(ops) for _ in range(70)]
    for step, kind in enumerate(kinds):
        if (kind in ("delete", "delete_above") and len(live) < 10) or (kind == "again" and not gone):
            kind = "insert"
        if kind == "insert":
            n = rng.randint(1, 12)
            ids = list(range(nxt, nxt + n))
            nxt += n + (70_000 if rng.random() < 0.1 else 0)  # now and then a gap: int32 ids in the merged lists
            for i in ids:
                live[i] = corpus[(i * 7 + step) % len(corpus)]
            lseg.insert(w, ids, [live[i] for i in ids])
        elif kind == "delete":
            ids = rng.sample(sorted(live), rng.randint(1, 4))
            live_texts_delete(w, live, ids)
            gone += ids
        elif kind == "delete_above":  # as DocStore.delete_above after a cut write: the newest rows go
            ids = sorted(live)[-rng.randint(1, 6) :]
            live_texts_delete(w, live, ids)
            gone += ids
        elif kind == "again":  # ids deleted earlier, indexed again with other texts
            ids = sorted(set(rng.sample(gone, min(len(gone), rng.randint(1, 3)))))
            gone = [i for i in gone if i not in ids]
            for i in ids:
                live[i] = corpus[rng.randrange(len(corpus))]
            lseg.insert(w, ids, [live[i] for i in ids])
        elif kind == "rollback":  # a write that never commits: its segment number is used again next
            lseg.insert(w, [nxt], ["apple apple zucchini"])
            lseg.delete(w, [min(live)], [live[min(live)]])
            w.rollback()
            continue
        else:
            lseg.compact(w)
        w.commit()
        agree_with_fresh(readers, qs, rng)
        words = ["apple", "zucchini", VOCAB[step % len(VOCAB)]]
        same_ranking(readers[0].search(lexical.query_terms(" ".join(words)), 10_000), brute_bm25(live, words))
    levels = {lvl for (lvl,) in w.execute("SELECT level FROM lexp_seg")}
    assert max(levels) >= 2, levels  # merges of merges happened
    assert readers[2]._cache_used <= readers[2].cache_bytes


def test_own_uncommitted_writes_and_rollbacks(monkeypatch) -> None:
    """A searcher on the writing connection sees its uncommitted segments, and after a rollback does
    not take the next write's segment (same number, other postings) for the one it read, merges
    included; a read transaction the caller holds (as the collection's lexical side does) is no
    write: the segments read in it stay trusted."""
    monkeypatch.setattr(lexical_segments, "F", 3)
    texts = dict(enumerate(make_corpus(60, 13)))
    db = open_db(texts, batch=10)
    s = lp.Searcher(db)
    qs = [lexical.query_terms(" ".join(x)) for x in queries(13, 5)] + [lexical.query_terms("apple zucchini")]
    rng = random.Random(13)
    agree_with_fresh([s], qs, rng)
    for k, extra in enumerate(["apple apple apple", "zucchini zucchini", "apple zucchini apple"]):
        ids = list(range(100 + 10 * k, 103 + 10 * k))
        lseg.insert(db, ids, [extra] * 3)  # uncommitted; with F = 3 some of these merge
        agree_with_fresh([s], qs, rng)
        db.rollback()
        agree_with_fresh([s], qs, rng)
        lseg.insert(db, ids[:1], ["zucchini banana"])  # the rolled-back segment's number, other postings
        agree_with_fresh([s], qs, rng)
        lseg.insert(db, ids[1:2], ["banana"])
        db.commit()
        agree_with_fresh([s], qs, rng)
    # a caller's read transaction with no writes of its own: segments read in it are trusted
    db.execute("BEGIN")
    s.search(qs[-1], 5)
    db.rollback()
    assert not s._tentative
    lseg.insert(db, [500], ["apple"])
    s.search(qs[-1], 5)  # read in the writer's open transaction: not trusted past it
    assert s._tentative
    db.commit()  # the same version: nothing is read again until the next write
    agree_with_fresh([s], qs, rng)
    lseg.insert(db, [501], ["banana"])
    db.commit()
    agree_with_fresh([s], qs, rng)
    assert not s._tentative


def test_an_append_reads_only_the_new_segment(monkeypatch) -> None:
    """The effect of the incremental refresh: after a commit that only appends, a cached token reads
    the new segment's row (and nothing else), the id arrays grow without a reload; a delete or a
    merge reloads the arrays, and a merge reads the merged segment only."""
    texts = dict(enumerate(make_corpus(100, 14)))
    db = open_db(texts, batch=20)  # 5 segments
    s = lp.Searcher(db)
    terms = lexical.query_terms("apple banana cherry")
    s.search(terms, 5)
    reads: list[tuple[list[str], list[int] | None]] = []
    post, many = s._postings, s._postings_many
    monkeypatch.setattr(s, "_postings", lambda tok, segs=None: reads.append(([tok], segs)) or post(tok, segs))
    monkeypatch.setattr(s, "_postings_many", lambda toks, segs: reads.append((toks, segs)) or many(toks, segs))
    loads = []
    live = lseg._live
    monkeypatch.setattr(lp, "_live", lambda conn: loads.append(1) or live(conn))
    segs = [r[0] for r in db.execute("SELECT seg FROM lexp_seg")]
    lseg.insert(db, [100, 101], ["apple cherry", "banana banana"])
    db.commit()
    new = max(segs) + 1
    texts.update({100: "apple cherry", 101: "banana banana"})
    same_ranking(s.search(terms, 1000), brute_bm25(texts, ["apple", "banana", "cherry"]))
    assert reads == [(["appl", "banana", "cherri"], [new])]  # one read, the new segment only
    assert not loads  # grown, not reloaded
    reads.clear()
    lseg.delete(db, [3], [texts.pop(3)])
    db.commit()
    same_ranking(s.search(terms, 1000), brute_bm25(texts, ["apple", "banana", "cherry"]))
    assert loads == [1] and not reads  # no segment changed: the rows stay (df read again), the arrays reload
    for k in range(2):  # 8 segments: merged into one
        lseg.insert(db, [200 + k], ["cherry"])
        texts[200 + k] = "cherry"
        db.commit()
    assert db.execute("SELECT count(*) FROM lexp_seg").fetchone()[0] == 1
    reads.clear()
    same_ranking(s.search(terms, 1000), brute_bm25(texts, ["apple", "banana", "cherry"]))
    merged = db.execute("SELECT seg FROM lexp_seg").fetchone()[0]
    assert reads == [(["appl", "banana", "cherri"], [merged])]
    assert all(r[0] == merged for e in s._cache.values() for r in e[1])  # the merged-away rows are gone


@pytest.mark.parametrize("seed", [0, 1, *(pytest.param(s, marks=pytest.mark.slow) for s in range(2, 6))])
def test_small_allow_lists_equal_the_oracle(seed: int) -> None:
    """Allow-lists of 1..50 ids (live, deleted, indexed again, never used) over segments of both id
    formats: each search reads only the allowed ids' segments, and ranks as the numpy oracle to the
    last bit, cached or not, one query or many; df and avgdl stay the collection's."""
    ids = gapped_ids(500)
    texts = dict(zip(ids, corpus_with_ties(500, seed + 30), strict=True))
    db = open_db(texts, batch=90)  # 6 segments, 7 with the re-inserts: no merge
    gone = ids[5::9]
    lseg.delete(db, gone, [texts[i] for i in gone])
    back = gone[::3]
    lseg.insert(db, back, [texts[i] + " apple" for i in back])
    db.commit()
    assert formats(db) == {"int32", "gaps"}
    warm, cold = lp.Searcher(db), lp.Searcher(db, cache_mb=0)
    half = lp.Searcher(db)  # half of the terms cached: both kinds of read in one query
    rng = np.random.default_rng(seed)
    qs = [lexical.query_terms(" ".join(w)) for w in queries(seed + 30, 16)]
    for t in qs:
        warm.search(t, 5)
    for t in qs[::2]:
        half.search(t, 5)
    n = max(ids) + 1
    nseg = db.execute("SELECT count(*) FROM lexp_seg").fetchone()[0]
    for size in range(1, 51):
        pick = rng.choice(n + 10, size, replace=False)  # past the last id too
        if size % 3 == 0:
            pick[: size // 2] = rng.choice(ids, size // 2, replace=False)  # mostly indexed ids
        mask = np.zeros(n + 10, bool)
        mask[pick] = True
        allowed = {int(i) for i in pick}
        for terms in qs[size % 4 :: 4]:
            for k in (1, 5, 100):
                want = reference(cold, terms, k, allowed=mask)
                for s in (warm, cold, half):
                    assert s.search(terms, k, allowed=mask) == want
                assert cold.search(terms, k, allowed=allowed) == want  # a set: the same mask
        assert warm.search_many(qs, 7, allowed=mask) == [reference(cold, t, 7, allowed=mask) for t in qs]
    # what an uncached token reads: its rows of the allowed ids' segments, every segment's df
    need = {int(cold._seg_live[ids[0]]), int(cold._seg_live[ids[-1]])}
    for t in qs[0]:
        tok = cold._query_tokens([t])[0][0]
        df, rows, anywhere = cold._lists_in(tok, need)
        full_df, full_rows = cold._lists(tok)
        assert df == full_df and anywhere == bool(full_rows)
        assert {r[0] for r in rows} <= need and rows == [r for r in full_rows if r[0] in need]
    assert nseg >= 5
