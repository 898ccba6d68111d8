"""bne.lexical: query text is data, BM25 is FTS5's formula, shards rank as their union, RRF, deletes."""

from __future__ import annotations

import math
import random
import re
import sqlite3
import time

import numpy as np
import pytest

from bne import lexical

# words whose Porter stems are distinct, so a brute-force BM25 can count them as FTS5 does
VOCAB = [
    "apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum", "kiwi", "melon",
    "orange", "papaya", "quince", "raisin", "walnut", "almond", "cashew", "pecan", "hazel", "olive",
    "carrot", "potato", "tomato", "onion", "garlic", "pepper", "radish", "spinach", "celery", "fennel",
]  # fmt: skip


def make_corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (r + 1) ** 0.8 for r in range(len(VOCAB))]  # Zipf-like: some words in most documents
    return [" ".join(rng.choices(VOCAB, weights, k=rng.randint(1, 40))) for _ in range(n)]


def open_db(texts: list[str], ids: list[int] | None = None) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("PRAGMA trusted_schema=OFF")  # as the docstore opens it
    assert lexical.create(db)
    lexical.insert(db, ids if ids is not None else range(len(texts)), texts)
    db.commit()
    return db


def brute_bm25(texts: dict[int, str], query_words: list[str], repeats: bool = False) -> list[tuple[int, float]]:
    """BM25 as FTS5 defines it (k1 = 1.2, b = 0.75, idf floored at 1e-6), in plain Python."""
    docs = {i: t.split() for i, t in texts.items()}
    n = len(docs)
    avgdl = sum(len(d) for d in docs.values()) / n
    scores: dict[int, float] = {}
    for w in query_words if repeats else dict.fromkeys(query_words):
        df = sum(1 for d in docs.values() if w in d)
        if df == 0:
            continue
        idf = max(math.log((n - df + 0.5) / (df + 0.5)), 0) or 1e-6
        for i, d in docs.items():
            tf = d.count(w)
            if tf:
                norm = 1 - lexical.B + lexical.B * len(d) / avgdl
                scores[i] = scores.get(i, 0.0) + idf * tf * (lexical.K1 + 1) / (tf + lexical.K1 * norm)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def same_ranking(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


def distinct_scores(ranked: list[tuple[int, float]]) -> bool:
    """No two scores within float noise of each other, so the order is not decided by rounding."""
    s = sorted(x for _, x in ranked)
    return all(b - a > 1e-9 * max(1.0, b) for a, b in zip(s, s[1:], strict=False))


# --- query text is data --------------------------------------------------------------------------

HOSTILE_BASE = [
    "",
    " ",
    "\x00",
    "\x00apple\x00",
    "???!!!...",
    "()",
    "(",
    ")",
    '"',
    '""',
    '"""',
    "'",
    "apple*",
    "*",
    "^apple",
    "apple NEAR banana",
    "NEAR(apple banana, 2)",
    "NEAR(",
    "apple AND banana",
    "apple OR",
    "OR",
    "AND",
    "NOT",
    "apple NOT banana",
    "NOT apple",
    "text:apple",
    "title:apple",
    "{text}:apple",
    "- apple",
    "-text:apple",
    "docs_fts:apple",
    "rank:apple",
    "apple + banana",
    '"apple banana',
    'apple" OR "1"="1',
    "'; DROP TABLE docs; --",
    "apple\nbanana\r\ncherry\t",
    "\x1b[31mapple\x1b[0m",
    "\u202eelppa",
    "ａｐｐｌｅ",  # fullwidth: NFKC makes it "apple"
    "APPLE Apple aPpLe",
    "café crème brûlée",
    "naïve façade",
    "日本語のテキスト",
    "Ελληνικά κείμενα",
    "emoji 🍎🍌 apple",
    "apple_banana",
    "x" * 10_000,
    "apple " * 1000,
    "a1b2 3.14 2e10 0x1F",
    "\udcff lone surrogate",
    "apple\u200bbanana",
    "%s %d {0} {}",
    "\\ \\\\ \\x00",
    "apple; banana, cherry.",
]


def hostile_queries() -> list[str]:
    rng = random.Random(17)
    pieces = ['"', "'", "(", ")", "*", ":", "^", "+", "-", "NEAR", "AND", "OR", "NOT", "\x00", "\x07", "\\"]
    pieces += ["text:", "{", "}", ",", "apple", "banana", "cherry", "ß", "İ", "\u0301", "\ufeff", " ", "\t"]
    out = list(HOSTILE_BASE)
    for _ in range(300):
        out.append("".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(1, 12))))
    for _ in range(50):  # random code points, control characters and unpaired surrogates included
        out.append("".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randint(1, 30))))
    return out


def test_hostile_queries_are_words_or_nothing() -> None:
    texts = ["apple banana", "cherry near text", "not and or", "apple", "banana cherry apple", "plain words"]
    db = open_db(texts)
    queries = hostile_queries()
    assert len(queries) > 300
    word = re.compile(r'^"[^\W_]{1,64}"$')
    for q in queries:
        terms = lexical.query_terms(q)
        assert len(terms) <= lexical.MAX_TERMS
        assert all(word.match(t) for t in terms), (q, terms)
        assert len(set(terms)) == len(terms)
        # never an SQL or FTS5 error, whatever the text
        got = lexical.bm25_search(db, terms, 10)
        # and never another meaning: the ranking is that of the bare words OR-ed, one by one
        bare = [lexical._fold(t.strip('"')) for t in terms]  # FTS5 drops Latin diacritics
        want = brute_bm25(dict(enumerate(texts)), bare)
        assert [i for i, _ in got] == [i for i, _ in want][:10], q


def test_operators_are_searched_as_words() -> None:
    texts = ["apple banana", "banana only", "near words here", "apple"]
    db = open_db(texts)
    # NOT would exclude document 0; as data it is one more word (no document has "not")
    assert {i for i, _ in lexical.bm25_search(db, lexical.query_terms("apple NOT banana"), 10)} == {0, 1, 3}
    # NEAR(...) would need both words close; as data "near" finds document 2
    assert 2 in {i for i, _ in lexical.bm25_search(db, lexical.query_terms("NEAR(apple banana)"), 10)}
    # a prefix query would match "apple"; "appl" as a word matches nothing (porter stems apple to appl,
    # so check a prefix that is no stem)
    assert lexical.bm25_search(db, lexical.query_terms("ap*"), 10) == []
    # a column filter on a column that does not exist would be an FTS5 error
    assert lexical.query_terms("title:apple") == ['"title"', '"apple"']
    assert [i for i, _ in lexical.bm25_search(db, lexical.query_terms("title:apple"), 10)] == [3, 0]


def test_no_indexable_term() -> None:
    db = open_db(["apple"])
    for q in ["", "   ", "?!.,;:()[]{}", "\x00\x01\x02", '"" * ^ -', "_ __ ___", "\u0301\u0301"]:
        assert lexical.query_terms(q) == []
        assert lexical.bm25_search(db, [], 10) == []


def test_caps() -> None:
    huge = "apple " * 2_000_000  # 12 MB: only the first MAX_QUERY_CHARS are read
    t0 = time.perf_counter()
    assert lexical.query_terms(huge) == ['"apple"']
    assert time.perf_counter() - t0 < 5  # generous: a cap, not a speed target
    many = " ".join(f"w{i}" for i in range(1000))
    assert len(lexical.query_terms(many)) == lexical.MAX_TERMS
    db = open_db(["w1 w2", "w3", f"w{lexical.MAX_TERMS - 1} w{lexical.MAX_TERMS}"])
    # the longest expression FTS5 is given still parses; the term past the cap is not searched
    assert [i for i, _ in lexical.bm25_search(db, lexical.query_terms(many), 10)] == [0, 1, 2]
    assert lexical.bm25_search(db, lexical.query_terms(f"w{lexical.MAX_TERMS}"), 10)[0][0] == 2
    assert lexical.query_terms("a" * (lexical.MAX_TERM_CHARS + 1) + " b") == ['"b"']
    assert lexical.query_terms("a" * lexical.MAX_TERM_CHARS) == ['"' + "a" * lexical.MAX_TERM_CHARS + '"']
    assert lexical.query_terms("Apple APPLE apple banana") == ['"apple"', '"banana"']
    assert lexical.query_terms("ｆｕｌｌ") == ['"full"']
    with pytest.raises(TypeError):
        lexical.query_terms(b"apple")  # type: ignore[arg-type]


def test_unquoted_terms_are_refused() -> None:
    db = open_db(["apple"])
    with pytest.raises(ValueError, match="query_terms"):
        lexical.bm25_search(db, ["apple OR banana"], 10)


# --- BM25 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bm25_matches_brute_force(seed: int) -> None:
    texts = make_corpus(300, seed)
    db = open_db(texts)
    rng = random.Random(seed + 100)
    checked = 0
    for _ in range(80):
        words = rng.sample(VOCAB, rng.randint(1, 6))
        want = brute_bm25(dict(enumerate(texts)), words)
        if not distinct_scores(want[:21]):
            continue  # equal documents tie; their order is checked elsewhere
        checked += 1
        same_ranking(lexical.bm25_search(db, lexical.query_terms(" ".join(words)), 20), want[:20])
        # the own-scoring path with this table's own statistics gives the same list
        terms = lexical.query_terms(" ".join(words))
        got = lexical.bm25_search(db, terms, 20, stats=lexical.local_stats(db, terms))
        same_ranking(got, want[:20])
    assert checked > 20


def test_repeated_words_weigh_more() -> None:
    texts = make_corpus(300, 7)
    db = open_db(texts)
    words = ["apple", "fennel", "fennel", "celery", "fennel", "apple"]
    terms = lexical.query_terms(" ".join(words), repeats=True)
    assert terms == [f'"{w}"' for w in words]
    want = brute_bm25(dict(enumerate(texts)), words, repeats=True)
    assert distinct_scores(want[:21])
    same_ranking(lexical.bm25_search(db, terms, 20), want[:20])
    same_ranking(lexical.bm25_search(db, terms, 20, stats=lexical.local_stats(db, terms)), want[:20])
    assert [i for i, _ in want[:20]] != [i for i, _ in brute_bm25(dict(enumerate(texts)), words)[:20]]


def test_totals_and_stats() -> None:
    texts = make_corpus(100, 5)
    db = open_db(texts)
    assert lexical.count(db) == 100
    assert lexical.table_totals(db) == (100, sum(len(t.split()) for t in texts))
    assert lexical.max_rowid(db) == 99
    st = lexical.local_stats(db, lexical.query_terms("apple fennel zucchini"))
    assert st.df == {
        '"apple"': sum("apple" in t.split() for t in texts),
        '"fennel"': sum("fennel" in t.split() for t in texts),
        '"zucchini"': 0,
    }


def test_allowed_filters_before_the_limit() -> None:
    texts = make_corpus(300, 3)
    db = open_db(texts)
    terms = lexical.query_terms("apple banana cherry")
    full = lexical.bm25_search(db, terms, 300)
    allowed = {i for i, _ in full[::7]}  # drops most of the best ones: the search must look further
    got = lexical.bm25_search(db, terms, 10, allowed=allowed)
    assert [i for i, _ in got] == [i for i, _ in full if i in allowed][:10]
    assert lexical.bm25_search(db, terms, 10, allowed=lambda i: i % 2 == 0) == [r for r in full if r[0] % 2 == 0][:10]
    assert lexical.bm25_search(db, terms, 10, allowed=set()) == []
    st = lexical.local_stats(db, terms)  # the outside-statistics path filters the same way
    same_ranking(lexical.bm25_search(db, terms, 10, stats=st, allowed=allowed), got)


# --- shards -----------------------------------------------------------------------------------------


def test_three_shards_rank_as_their_union() -> None:
    texts = make_corpus(600, 9)
    union = open_db(texts)
    rng = random.Random(4)
    owner = [rng.randrange(3) for _ in texts]  # uneven shards with different statistics
    shards = []
    for s in range(3):
        ids = [i for i in range(len(texts)) if owner[i] == s]
        shards.append(open_db([texts[i] for i in ids], ids))
    checked = 0
    for _ in range(80):
        terms = lexical.query_terms(" ".join(rng.sample(VOCAB, rng.randint(1, 6))))
        want = lexical.bm25_search(union, terms, 30)
        if not distinct_scores(want):
            continue
        checked += 1
        stats = lexical.merge_stats(lexical.local_stats(db, terms) for db in shards)
        assert stats == lexical.local_stats(union, terms)
        got = lexical.merge_ranked((lexical.bm25_search(db, terms, 30, stats=stats) for db in shards), 30)
        same_ranking(got, want)
        # per-shard statistics give another ranking: the test would see a mistake
        local = lexical.merge_ranked((lexical.bm25_search(db, terms, 30) for db in shards), 30)
        assert [round(s, 9) for _, s in local] != [round(s, 9) for _, s in want]
    assert checked > 20


# --- deletes and transactions -----------------------------------------------------------------------


def test_deleted_documents_never_come_back() -> None:
    texts = ["apple banana", "apple cherry", "zucchini apple", "zucchini", "banana"]
    db = open_db(texts)
    lexical.delete(db, [2, 3], [texts[2], texts[3]])
    db.commit()
    assert lexical.bm25_search(db, lexical.query_terms("zucchini"), 10) == []
    assert {i for i, _ in lexical.bm25_search(db, lexical.query_terms("apple"), 10)} == {0, 1}
    assert lexical.count(db) == 3
    assert lexical.local_stats(db, ['"zucchini"']).df == {'"zucchini"': 0}
    # the statistics are those of the documents left
    rest = {0: texts[0], 1: texts[1], 4: texts[4]}
    same_ranking(
        lexical.bm25_search(db, lexical.query_terms("apple banana"), 10), brute_bm25(rest, ["apple", "banana"])
    )
    db.execute("INSERT INTO docs_fts(docs_fts) VALUES ('integrity-check')")  # FTS5's own check agrees


def test_rollback_leaves_nothing() -> None:
    db = open_db(["apple"])
    lexical.insert(db, [1, 2], ["banana", "banana apple"])
    db.rollback()  # a failed commit: the rows never happened
    assert lexical.count(db) == 1
    assert lexical.bm25_search(db, lexical.query_terms("banana"), 10) == []
    assert lexical.max_rowid(db) == 0


def test_schema_is_exactly_what_is_expected(tmp_path) -> None:
    path = tmp_path / "x.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA trusted_schema=OFF")
    assert not lexical.has_index(db)
    assert lexical.create(db) and not lexical.create(db)  # idempotent
    assert lexical.has_index(db)
    lexical.insert(db, [5], ["apple pie"])
    db.commit()
    objects = {(k, n): " ".join(s.split()) for k, n, s in db.execute("SELECT type, name, sql FROM sqlite_master")}
    assert objects == {key: " ".join(sql.split()) for key, sql in lexical.EXPECTED_SCHEMA.items()}
    db.close()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # searching never writes
    ro.execute("PRAGMA trusted_schema=OFF")
    assert lexical.bm25_search(ro, lexical.query_terms("pie"), 5)[0][0] == 5
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        lexical.insert(ro, [6], ["more"])


def test_varints() -> None:
    assert lexical._varints(bytes([0x05])) == [5]
    assert lexical._varints(bytes([0x81, 0x00, 0x7F])) == [128, 127]
    assert lexical._varints(bytes([0xFF] * 8 + [0x01])) == [(1 << 64) - 255]


# --- fusion --------------------------------------------------------------------------------------


def test_rrf_hand_checked() -> None:
    # dense: 10, 20, 30; lexical: 30, 40, 10; k = 60, equal weights
    fused = lexical.rrf_fuse([10, 20, 30], [30, 40, 10], k=60, weights=(1.0, 1.0))
    got = {f.id: (f.score, f.dense_rank, f.lexical_rank) for f in fused}
    assert got[10] == (pytest.approx(1 / 61 + 1 / 63), 1, 3)
    assert got[30] == (pytest.approx(1 / 63 + 1 / 61), 3, 1)
    assert got[20] == (pytest.approx(1 / 62), 2, None)
    assert got[40] == (pytest.approx(1 / 62), None, 2)
    # 10 and 30 tie (same sum): the better dense rank first; 20 and 40 tie: the one with a dense rank first
    assert [f.id for f in fused] == [10, 30, 20, 40]


def test_linear_fusion_hand_checked() -> None:
    # dense scores (minus distances) -1, -3, -5 -> 1, 0.5, 0; lexical 9, 6, 3 -> 1, 0.5, 0
    dense, lex = [(10, -1.0), (20, -3.0), (30, -5.0)], [(30, 9.0), (40, 6.0), (10, 3.0)]
    got = {f.id: (f.score, f.dense_rank, f.lexical_rank) for f in lexical.linear_fuse(dense, lex, weights=(1.0, 1.0))}
    assert got == {10: (1.0, 1, 3), 30: (1.0, 3, 1), 20: (0.5, 2, None), 40: (0.5, None, 2)}
    # ties as RRF: the better dense rank, then a dense rank at all
    assert [f.id for f in lexical.linear_fuse(dense, lex, weights=(1.0, 1.0))] == [10, 30, 20, 40]
    # weights scale each side; the gaps count, not only the order (RRF would put 20 above 40 here)
    fused = lexical.linear_fuse([(1, 0.0), (2, -1.0), (3, -100.0)], [(4, 5.0), (3, 1.0)], weights=(1.0, 2.0))
    assert [(f.id, f.score) for f in fused] == [(4, 2.0), (1, 1.0), (2, pytest.approx(0.99)), (3, 0.0)]
    # depth cuts each list before its min and max are taken; equal scores all map to 1
    fused = lexical.linear_fuse([(1, 5.0), (2, 5.0), (3, 0.0)], [], depth=2)
    assert [(f.id, f.score) for f in fused] == [(1, 1.0), (2, 1.0)]
    assert lexical.linear_fuse([], []) == [] and [f.id for f in lexical.linear_fuse([(7, 1.0)], [], limit=1)] == [7]
    with pytest.raises(ValueError, match="weights"):
        lexical.linear_fuse(dense, lex, weights=(1.0, float("nan")))


def test_rrf_weights_depth_limit() -> None:
    fused = lexical.rrf_fuse([1, 2, 3, 4], [4, 3, 9], k=0, weights=(1.0, 3.0), depth=2)
    # depth 2: dense 1, 2; lexical 4, 3 -> 1: 1/1, 2: 1/2, 4: 3/1, 3: 3/2
    assert [(f.id, f.score) for f in fused] == [(4, 3.0), (3, 1.5), (1, 1.0), (2, 0.5)]
    assert [f.id for f in lexical.rrf_fuse([1, 2], [], limit=1)] == [1]
    # the default weights favour the lexical side (1 : 1.5): its first beats the dense side's first
    assert lexical.WEIGHTS == (1.0, 1.5)
    assert [(f.id, f.score) for f in lexical.rrf_fuse([1], [2], k=60)] == [(2, 1.5 / 61), (1, 1 / 61)]
    assert lexical.rrf_fuse([], []) == []
    only_lex = lexical.rrf_fuse([], [7, 8])
    assert [(f.id, f.dense_rank, f.lexical_rank) for f in only_lex] == [(7, None, 1), (8, None, 2)]
    with pytest.raises(ValueError):
        lexical.rrf_fuse([1], [1], k=-1)


def test_rrf_is_deterministic() -> None:
    rng = random.Random(0)
    dense = rng.sample(range(1000), 100)
    lex = rng.sample(range(1000), 100)
    a = lexical.rrf_fuse(dense, lex)
    b = lexical.rrf_fuse(list(dense), list(lex))
    assert a == b
    keys = [(-f.score, f.dense_rank or 1 << 62, f.lexical_rank or 1 << 62, f.id) for f in a]
    assert keys == sorted(keys)


def _fusion_oracle(dense, lex, score_of, depth, limit):
    """The fusions' definition, plainly: each id's first rank per side, its score from them, sorted by
    (-score, dense rank, lexical rank, id), a missing rank last."""
    if depth is not None:
        dense, lex = dense[:depth], lex[:depth]
    first: dict[int, list] = {}
    for side, rows in enumerate((dense, lex)):
        for r, row in enumerate(rows, 1):
            slot = first.setdefault(row[0], [None, None])
            if slot[side] is None:
                slot[side] = r
    out = [(score_of(dense, lex, i, rs), rs[0], rs[1], i) for i, rs in first.items()]
    inf = float("inf")
    out.sort(key=lambda t: (-t[0], t[1] or inf, t[2] or inf, t[3]))
    return out if limit is None else out[:limit]


@pytest.mark.parametrize("seed", range(6))
def test_fusions_equal_their_definition_on_random_lists_with_repeats_and_ties(seed) -> None:
    rng = np.random.default_rng(seed)

    def rrf_score(k, w):
        return lambda d, lx, i, rs: sum(w[s] / (k + rs[s]) for s in (0, 1) if rs[s] is not None)

    def linear_score(w):
        def norm(rows, r):
            vals = [v for _, v in rows]
            lo, hi = min(vals), max(vals)
            return (rows[r - 1][1] - lo) / (hi - lo) if hi > lo else 1.0

        return lambda d, lx, i, rs: sum(w[s] * norm((d, lx)[s], rs[s]) for s in (0, 1) if rs[s] is not None)

    for _ in range(300):
        n = int(rng.choice([4, 40, 4000]))  # few ids: many repeats and shared ids
        dense = [(int(i), float(-rng.integers(0, 6))) for i in rng.integers(0, n, rng.integers(0, 60))]
        lex = [(int(i), float(rng.integers(0, 4))) for i in rng.integers(0, n, rng.integers(0, 60))]
        depth = [None, 1, 7, 50][rng.integers(4)]
        limit = [None, 1, 10][rng.integers(3)]
        k = float(rng.choice([0.0, 1.0, 60.0]))
        w = (float(rng.choice([0.0, 1.0, 0.5])), float(rng.choice([1.0, 1.5, 3.0])))
        got = lexical.rrf_fuse([i for i, _ in dense], [i for i, _ in lex], k=k, weights=w, depth=depth, limit=limit)
        want = _fusion_oracle(dense, lex, rrf_score(k, w), depth, limit)
        assert [(f.score, f.dense_rank, f.lexical_rank, f.id) for f in got] == want  # same sums, same order
        assert [f.id for f in got] == [t[3] for t in want]
        got = lexical.linear_fuse(dense, lex, weights=w, depth=depth, limit=limit)
        want = _fusion_oracle(dense, lex, linear_score(w), depth, limit)
        assert [(f.score, f.dense_rank, f.lexical_rank, f.id) for f in got] == want  # same sums, same order
        assert [f.id for f in got] == [t[3] for t in want]
