"""Ray cases, run by tests/test_distributed.py inside a network namespace that has only a
loopback interface, so every Ray process can bind to and talk over 127.0.0.1 and nothing else."""

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import bne  # noqa: E402
from bne import distributed, lexical, shards  # noqa: E402
from bne import lexical_postings as lp  # noqa: E402
from bne import lexical_segments as lseg  # noqa: E402
from bne.corpus import Doc, doc_text  # noqa: E402
from bne.docstore import DocStore  # noqa: E402
from bne.errors import DocStoreError  # noqa: E402

PORT = 6391
# `ray start` with this interpreter, whose workers then import this checkout's bne (a `ray` command
# found on PATH may belong to another environment, with another bne)
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_codes(rng, n, bits):
    return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)


def listening_addresses():
    out = subprocess.run(["ss", "-Htlnu"], capture_output=True, text=True).stdout
    return {line.split()[4].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


def assert_loopback_only():
    addrs = listening_addresses()
    assert addrs and addrs <= {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]", "*", "0.0.0.0", "[::]"}, addrs
    # In this namespace "*" can only be reached through lo: there is no other interface.
    ifaces = os.listdir("/sys/class/net")
    assert ifaces == ["lo"], ifaces


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def union(tmp_path):
    rng = np.random.default_rng(3)
    codes = random_codes(rng, 5000, 256)
    codes[::3] &= 0x0F  # plenty of ties across shard borders
    ids = rng.choice(10**9, 5000, replace=False).astype(np.int64)
    index = bne.Index(256)
    index.add(codes, ids=ids)
    path = tmp_path / "union.bne"
    index.save(path)
    return index, path


def test_sharded_equals_single_node(local_ray, union, tmp_path):
    index, path = union
    shards = distributed.shard_index(path, 3, tmp_path / "shards")
    assert [len(bne.open(p)) for p in shards] == [1666, 1667, 1667]
    sharded = distributed.ShardedIndex(tmp_path / "shards")
    q = random_codes(np.random.default_rng(4), 17, 256) & 0x0F
    for k in (1, 10, 200, 6000):
        D, I = sharded.search(q, k)
        rD, rI = index.search(q, k)
        np.testing.assert_array_equal(D, rD)
        np.testing.assert_array_equal(I, rI)
    assert_loopback_only()
    sharded.close()


def test_dead_actor_is_restarted_and_query_retried(local_ray, union, tmp_path):
    index, path = union
    distributed.shard_index(path, 2, tmp_path / "s")
    sharded = distributed.ShardedIndex(tmp_path / "s", max_retries=2)
    q = random_codes(np.random.default_rng(5), 4, 256)
    pid = ray.get(sharded.actors[1].info.remote())["pid"]
    ray.kill(sharded.actors[1], no_restart=False)  # the actor dies; Ray restarts it
    D, I = sharded.search(q, 5)  # during the restart: retried, same answer
    np.testing.assert_array_equal(I, index.search(q, 5)[1])
    deadline = time.time() + 60  # ray.kill is asynchronous: wait for the new process
    while ray.get(sharded.actors[1].info.remote())["pid"] == pid and time.time() < deadline:
        time.sleep(0.2)
    assert ray.get(sharded.actors[1].info.remote())["pid"] != pid
    np.testing.assert_array_equal(sharded.search(q, 5)[1], index.search(q, 5)[1])
    sharded.close()


def test_unavailable_shard_raises_or_is_marked_partial(local_ray, union, tmp_path):
    index, path = union
    shards = distributed.shard_index(path, 3, tmp_path / "p")
    sharded = distributed.ShardedIndex(tmp_path / "p", max_retries=1, timeout=30)
    os.rename(shards[1], shards[1] + ".gone")  # the restarted actor cannot map its file any more
    ray.kill(sharded.actors[1], no_restart=False)
    deadline = time.time() + 60  # ray.kill is asynchronous: wait until the shard is really down
    while time.time() < deadline:
        try:
            ray.get(sharded.actors[1].info.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            break
        time.sleep(0.2)
    q = random_codes(np.random.default_rng(6), 3, 256)
    with pytest.raises(distributed.ShardUnavailableError, match=r"shard 1 \(.*shard-00001.bne\) is unavailable"):
        sharded.search(q, 10)
    D, I, missing = sharded.search(q, 10, allow_partial=True)
    assert missing == [1]
    # Exactly the single-node answer over the shards that answered.
    keep = np.r_[0:1666, 3333:5000]
    sub = bne.Index(256)
    sub.add(index.codes()[keep], ids=index.ids()[keep])
    np.testing.assert_array_equal(I, sub.search(q, 10)[1])
    sharded.close()


def same_ranking(got, want):
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-9)


def test_distributed_build_resumes(local_ray, tmp_path):
    head = os.environ.get("BNE_TEST_HEAD")
    if not head:
        pytest.skip("BNE_TEST_HEAD (a head file) not given")
    texts = [f"document number {i} about {'cats' if i % 2 else 'finance'}" for i in range(60)]
    out = distributed.encode_shards(texts, tmp_path / "b", n_shards=3, model=head)
    assert sorted(out["encoded"].values()) == [20, 20, 20] and out["lexical"] == {0: 20, 1: 20, 2: 20}
    os.remove(out["shards"][1])  # as if the task writing shard 1 had failed
    os.remove(shards.lexical_path(out["shards"][2]))  # ... and the one writing shard 2's lexical file
    again = distributed.encode_shards(texts, tmp_path / "b", n_shards=3, model=head)
    assert again["encoded"] == {0: 0, 1: 20, 2: 0} and again["skipped"] == [0, 2]
    assert again["lexical"] == {0: 0, 1: 0, 2: 20}
    sharded = distributed.ShardedIndex(tmp_path / "b")
    assert len(sharded) == 60 and sharded.lexical_ready
    from bne import models

    codes = models.load(models.identify(head, 1024), threads=1, purpose="bulk").encode(texts)
    D, I = sharded.search(codes[:5], 1)
    np.testing.assert_array_equal(I[:, 0], np.arange(5))
    one = sqlite3.connect(":memory:")  # one lexical index over all 60 texts, ids = positions
    lseg.create(one)
    lseg.insert(one, range(60), texts)
    queries = [lexical.query_terms(q, repeats=True) for q in ("cats", "finance number 7", "document 41 41")]
    for got, terms in zip(sharded.lexical_search(queries, 25), queries, strict=True):
        same_ranking(got, lp.bm25_search(one, terms, 25))
    sharded.close()


WORDS = [
    "cell", "gene", "protein", "virus", "cancer", "blood", "brain", "heart",
    "lung", "liver", "drug", "trial", "dose", "risk", "rate", "age",
]  # fmt: skip


@pytest.fixture
def texts_union(tmp_path):
    """An index of 300 documents with shuffled ids and its docstore (with the lexical index of all)."""
    rng = random.Random(11)
    weights = [1 / (r + 1) for r in range(len(WORDS))]
    ids = np.random.default_rng(11).permutation(300).astype(np.int64) + 2
    docs = [
        Doc(f"d{i}", " ".join(rng.choices(WORDS, weights, k=rng.randint(1, 30))), rng.choice(["", "Risk rate"]))
        for i in ids
    ]
    index = bne.Index(64)
    index.add(random_codes(np.random.default_rng(12), 300, 64), ids=ids)
    path = tmp_path / "t.bne"
    index.save(path)
    store = DocStore(path, create=True)
    store.insert(ids.tolist(), docs)
    store.commit()
    fts = sqlite3.connect(":memory:")  # the FTS5 oracle over the same texts
    lexical.create(fts)
    lexical.insert(fts, ids.tolist(), [doc_text(d.title, d.text) for d in docs])
    yield path, store, fts, ids
    store.close()


def test_sharded_lexical_search_equals_one_index(local_ray, texts_union, tmp_path):
    path, store, fts, ids = texts_union
    paths = distributed.shard_index(path, 3, tmp_path / "lx")
    sharded = distributed.ShardedIndex(tmp_path / "lx", max_retries=2)
    assert sharded.lexical_ready and sharded.lexical_problem is None
    rng = random.Random(13)
    queries = [
        lexical.query_terms(" ".join(rng.choices(WORDS + ["absent"], k=rng.randint(1, 6))), repeats=True)
        for _ in range(36)
    ] + [[], lexical.query_terms("absent")]
    for depth in (1, 10, 400):
        got = sharded.lexical_search(queries, depth)
        assert len(got) == len(queries) and got[-2:] == [[], []]
        for g, terms in zip(got, queries, strict=True):
            same_ranking(g, lp.bm25_search(store.db, terms, depth))
            same_ranking(g, lexical.bm25_search(fts, terms, depth))
    assert sum(len(g) for g in got) > 36 * 50  # most documents match most queries
    # a mask by id, shorter than the largest id: ids past its end are not allowed
    mask = np.zeros(250, bool)
    mask[1::3] = True
    got = sharded.lexical_search(queries[:12], 15, allowed=mask)
    for g, terms in zip(got, queries[:12], strict=True):
        same_ranking(g, lp.bm25_search(store.db, terms, 15, allowed=lambda i: i < 250 and bool(mask[i])))
        assert all(i % 3 == 1 and i < 250 for i, _ in g)
    assert sum(len(g) for g in got) > 12 * 10
    # a dead actor is restarted (reopening its lexical file) and the call retried
    want = sharded.lexical_search(queries[:5], 20)
    ray.kill(sharded.actors[1], no_restart=False)
    assert sharded.lexical_search(queries[:5], 20) == want
    with pytest.raises(ValueError, match="depth"):
        sharded.lexical_search(queries, 0)
    with pytest.raises(ValueError, match="bool mask"):
        sharded.lexical_search(queries, 5, allowed=np.ones(5, np.int64))
    with pytest.raises(ValueError, match="query_terms"):
        sharded.lexical_search([["cell"]], 5)  # not quoted: query text is never FTS5 syntax
    sharded.close()

    # a shard without its lexical file: not ready, dense search still answers
    os.rename(shards.lexical_path(paths[2]), tmp_path / "kept.lex")
    sharded = distributed.ShardedIndex(tmp_path / "lx")
    assert not sharded.lexical_ready and "shard-00002.bne.lex.sqlite is missing" in sharded.lexical_problem
    with pytest.raises(DocStoreError, match="no lexical index for this folder of shards: .* is missing"):
        sharded.lexical_search(queries, 5)
    assert sharded.search(random_codes(np.random.default_rng(1), 2, 64), 3)[1].shape == (2, 3)
    sharded.close()

    # a hostile lexical file (SQL that would run on a write) is refused in one line
    os.rename(tmp_path / "kept.lex", shards.lexical_path(paths[2]))
    conn = sqlite3.connect(shards.lexical_path(paths[0]))
    conn.execute("CREATE TRIGGER t AFTER INSERT ON lexp_meta BEGIN DELETE FROM lexp_seg; END")
    conn.commit()
    conn.close()
    sharded = distributed.ShardedIndex(tmp_path / "lx")
    assert not sharded.lexical_ready
    with pytest.raises(DocStoreError, match="holds a trigger 't' that bne did not write; refusing") as e:
        sharded.lexical_search(queries, 5)
    assert "\n" not in str(e.value) and "shard-00000.bne.lex.sqlite" in str(e.value)
    sharded.close()

    # another shard's lexical file (complete, but of other documents) is not used either
    shutil.copyfile(shards.lexical_path(paths[1]), shards.lexical_path(paths[0]))
    sharded = distributed.ShardedIndex(tmp_path / "lx")
    assert not sharded.lexical_ready
    assert "shard-00000.bne.lex.sqlite holds other documents than its shard" in sharded.lexical_problem
    sharded.close()


def test_sharded_hybrid_search_equals_one_collection(local_ray, tmp_path, monkeypatch):
    """`Collection.search` on a folder of 3 shards ranks like the one collection they were split
    from, in every mode: the same ids, ranks on each side, BM25 and fused scores (the dense side
    through the actors, the lexical side with collection-wide statistics, then the same fusion)."""
    import bne.collection as bcoll

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_collection import FakeEncoder

    enc = FakeEncoder()
    monkeypatch.setattr(bcoll, "load", lambda *a, **k: enc)
    rng = random.Random(21)
    docs = [Doc(f"d{i}", " ".join(rng.choices(WORDS, k=rng.randint(1, 20)))) for i in range(240)]
    one = tmp_path / "one.bne"
    with bne.Collection.create(one) as c:
        c.add(docs, commit_every=50)
    distributed.shard_index(one, 3, tmp_path / "three")
    queries = [" ".join(rng.choices(WORDS + ["absent"], k=rng.randint(1, 5))) for _ in range(24)] + ["", "?!"]
    with bne.Collection.open(one) as a, bne.Collection.open(tmp_path / "three") as b:
        assert b.sharded
        for mode in ("hybrid", "lexical", "dense"):
            ra, rb = a.search(queries, 10, mode=mode), b.search(queries, 10, mode=mode)
            assert ra.modes == rb.modes and len(rb.hits) == len(queries)
            for ha, hb in zip(ra.hits, rb.hits, strict=True):
                key = [(h.id, h.dense_rank, h.lexical_rank, h.distance) for h in ha]
                assert key == [(h.id, h.dense_rank, h.lexical_rank, h.distance) for h in hb], mode
                for x, y in zip(ha, hb, strict=True):
                    for u, v in ((x.score, y.score), (x.bm25, y.bm25)):
                        assert (u is None) == (v is None) and (u is None or abs(u - v) <= 1e-9 * abs(u)), mode
        fused = a.search(queries, 10)  # the default: hybrid, with hits from both sides
        assert fused.mode == "hybrid"
        assert any(h.dense_rank and h.lexical_rank for row in fused.hits for h in row)


@pytest.fixture(scope="module")
def two_node_cluster():
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    subprocess.run(
        [
            *RAY,
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(PORT),
            "--include-dashboard",
            "false",
            "--resources",
            json.dumps({"node_a": 1}),
            *common,
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    subprocess.run(
        [
            *RAY,
            "start",
            "--address",
            f"127.0.0.1:{PORT}",
            "--node-ip-address",
            "127.0.0.1",
            "--resources",
            json.dumps({"node_b": 1}),
            *common,
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    try:
        yield f"127.0.0.1:{PORT}"
    finally:
        subprocess.run([*RAY, "stop", "--force"], env=env, capture_output=True)


def test_two_node_cluster(two_node_cluster, union, tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address=two_node_cluster, logging_level="ERROR", configure_logging=False)
    try:
        deadline = time.time() + 30
        while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.time() < deadline:
            time.sleep(0.5)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        index, path = union
        distributed.shard_index(path, 2, tmp_path / "c")
        sharded = distributed.ShardedIndex(tmp_path / "c", resources=[{"node_a": 0.5}, {"node_b": 0.5}])
        assert len(set(sharded.nodes)) == 2  # one shard per node, pinned by resources
        q = random_codes(np.random.default_rng(7), 9, 256)
        D, I = sharded.search(q, 20)
        rD, rI = index.search(q, 20)
        np.testing.assert_array_equal(D, rD)
        np.testing.assert_array_equal(I, rI)
        assert_loopback_only()
        sharded.close()
    finally:
        ray.shutdown()


def test_cli_build_and_search_on_ray(tmp_path):
    head = os.environ.get("BNE_TEST_HEAD")
    if not head:
        pytest.skip("BNE_TEST_HEAD (a head file) not given")
    if ray.is_initialized():
        ray.shutdown()
    docs = tmp_path / "docs.txt"
    docs.write_text("The cat sat on the mat.\nStock markets fell sharply.\nThe kitten slept on the rug.\n")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "bne.cli", *a], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
        )

    out = run("build", "docs.txt", "-o", "shards", "--ray", "--shards", "2", "--model", head)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "3 documents in 2 shards" in out.stdout
    lex = sorted(p.name for p in (tmp_path / "shards").glob("*.lex.sqlite"))
    assert lex == ["shard-00000.bne.lex.sqlite", "shard-00001.bne.lex.sqlite"]
    folder_store = DocStore(tmp_path / "shards" / "corpus")
    assert not folder_store.has_lexical and folder_store.count() == 3  # the folder's docstore: texts only
    folder_store.close()
    (tmp_path / "other.txt").write_text("Something else entirely.\n")
    again = run("build", "other.txt", "-o", "shards", "--ray", "--shards", "2", "--model", head)
    assert again.returncode == 2 and "remove it first" in again.stderr, again.stderr[-3000:]  # the 3 are kept
    out = run("search", "shards", "Stock markets fell sharply.", "-k", "1", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    hit = json.loads(out.stdout)["results"][0]["hits"][0]
    # documents are encoded for throughput (bf16, or int8 once it is cached: ~97 % of bits equal),
    # queries in fp32: the document's own text is its top hit, a few dozen bits away at most
    assert hit["snippet"] == "Stock markets fell sharply." and hit["distance"] <= 64
