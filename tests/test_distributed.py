"""Runs the Ray cases (tests/ray_cases) inside a fresh network namespace whose only interface is
loopback: the local ray.init() and the two-node `ray start` cluster then bind to 127.0.0.1 and
cannot reach anything else. (Ray 2.60 ignores --node-ip-address=127.0.0.1 on a machine with an
external interface and listens there too, which these tests must not do.)

Also, without Ray: the shards' lexical postings files (bne.shards)."""

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import bne
from bne import lexical, shards
from bne import lexical_postings as lp
from bne.cli import main as cli_main
from bne.corpus import Doc, doc_text
from bne.docstore import DocStore
from bne.errors import DocStoreError

CASES = Path(__file__).parent / "ray_cases"


def make_head(path: Path) -> bool:
    """A random-hyperplane head for the distributed-build case (any head file works)."""
    try:
        import torch
        from safetensors.torch import save_file
    except ImportError:
        return False
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "projection.0.weight": torch.randn(1024, 384, generator=g),
            "projection.0.bias": torch.zeros(1024),
            "projection.1.weight": torch.ones(1024),
            "projection.1.bias": torch.zeros(1024),
        },
        str(path),
    )
    return True


@pytest.fixture
def loopback_namespace():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to make a loopback-only network namespace")
    name = f"bne-ray-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:  # anything Ray left behind
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_ray_cases_on_loopback(loopback_namespace, tmp_path):
    pytest.importorskip("ray")
    # A private Ray temp dir: `ray start` records "the latest cluster on this machine" there, and
    # ray.init() without an address would otherwise try a stale one left by another run.
    ray_tmp = tempfile.mkdtemp(prefix="bray", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = dict(
        os.environ, RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_TMPDIR=ray_tmp
    )
    env.pop("RAY_ADDRESS", None)
    head = tmp_path / "head.safetensors"
    if make_head(head):
        env["BNE_TEST_HEAD"] = str(head)
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            loopback_namespace,
            sys.executable,
            "-m",
            "pytest",
            str(CASES),
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "python_files=case_*.py",
            "-W",
            "ignore::DeprecationWarning",
            "--basetemp",
            str(tmp_path / "cases"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    shutil.rmtree(ray_tmp, ignore_errors=True)
    print(out.stdout[-4000:])
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert " passed" in summary
    if "BNE_TEST_HEAD" in env:
        assert "skipped" not in summary, summary  # the distributed build ran too


# -- the shards' lexical files, without Ray ---------------------------------------------------------

WORDS = [
    "cell", "gene", "protein", "virus", "cancer", "blood", "brain", "heart",
    "lung", "liver", "drug", "trial", "dose", "risk", "rate", "age",
]  # fmt: skip


def make_collection(path: Path, ids: np.ndarray, seed: int = 0) -> list[Doc]:
    """An index at ``path`` with ``ids`` and its docstore (titles and texts of Zipf-weighted words)."""
    rng = random.Random(seed)
    weights = [1 / (r + 1) for r in range(len(WORDS))]
    docs = [
        Doc(f"d{i}", " ".join(rng.choices(WORDS, weights, k=rng.randint(1, 30))), rng.choice(["", "Gene dose"]))
        for i in ids
    ]
    index = bne.Index(64)
    index.add(np.random.default_rng(seed).integers(0, 256, (len(ids), 8), dtype=np.uint8), ids=ids)
    index.save(path)
    store = DocStore(path, create=True)
    store.insert(ids.tolist(), docs)
    store.commit()
    store.close()
    return docs


def sharded_lexical(paths: list[str], terms: list[str], depth: int, allowed=None) -> list[tuple[int, float]]:
    """What ShardedIndex.lexical_search does across actors, in one process: round 1 statistics,
    merged; round 2 each shard's top depth with them, merged."""
    conns = [shards.open_lexical(shards.lexical_path(p)) for p in paths]
    try:
        stats = lexical.merge_stats(lp.Searcher(c).local_stats(terms) for c in conns)
        parts = []
        for c in conns:  # a file holds id - base (shards.write_lexical): results are shifted back
            b = shards.lexical_base(c)
            adm = None if allowed is None else (lambda i, b=b: allowed(i + b))
            parts.append([(i + b, sc) for i, sc in lp.Searcher(c).search(terms, depth, stats=stats, allowed=adm)])
    finally:
        for c in conns:
            c.close()
    return lexical.merge_ranked(parts, depth)


def test_shard_index_writes_lexical_files_that_rank_as_the_union(tmp_path, capsys):
    ids = np.random.default_rng(1).permutation(400).astype(np.int64) + 3  # shards' id ranges overlap
    docs = make_collection(tmp_path / "u.bne", ids)
    assert cli_main(["shard", str(tmp_path / "u.bne"), "-o", str(tmp_path / "s"), "--shards", "3"]) == 0
    assert "3 shards, their lexical index files and manifest.json" in capsys.readouterr().out
    paths, _ = shards.read_manifest(tmp_path / "s")
    # each lexical file holds exactly its shard's documents, under their ids
    for p in paths:
        conn = shards.open_lexical(shards.lexical_path(p))
        held = shards.lexical_ids(conn)
        assert held.tolist() == sorted(bne.open(p).ids().tolist())
        conn.close()
    assert [shards.lexical_done(shards.lexical_path(p), len(bne.open(p))) for p in paths] == [True] * 3
    assert not shards.lexical_done(shards.lexical_path(paths[0]), len(bne.open(paths[0])) + 1)
    one = DocStore(tmp_path / "u.bne")  # the source's own lexical index: all 400 documents
    fts = sqlite3.connect(":memory:")
    lexical.create(fts)
    lexical.insert(fts, ids.tolist(), [doc_text(d.title, d.text) for d in docs])
    rng = random.Random(2)
    for _ in range(25):
        terms = lexical.query_terms(" ".join(rng.choices(WORDS + ["absent"], k=rng.randint(1, 5))), repeats=True)
        got = sharded_lexical(paths, terms, 50)
        assert len(got) > 0
        for want in (lp.bm25_search(one.db, terms, 50), lexical.bm25_search(fts, terms, 50)):
            assert [i for i, _ in got] == [i for i, _ in want]
            assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-9)
        odd = sharded_lexical(paths, terms, 20, allowed=lambda i: i % 2 == 1)
        assert odd == [r for r in lp.bm25_search(one.db, terms, 400) if r[0] % 2 == 1][:20]
    one.close()


def test_shard_index_without_texts_writes_no_lexical_files(tmp_path):
    index = bne.Index(64)
    index.add(np.zeros((10, 8), np.uint8))
    index.save(tmp_path / "bare.bne")
    (tmp_path / "s").mkdir()
    stale = tmp_path / "s" / "shard-00001.bne.lex.sqlite"
    shards.write_lexical(stale, [([0], ["left from an earlier split"])])
    notes: list[str] = []
    paths = shards.shard_index(tmp_path / "bare.bne", 2, tmp_path / "s", notes=notes)
    assert len(notes) == 1 and "no lexical index files" in notes[0] and "bare.bne" in notes[0]
    assert not any(os.path.exists(shards.lexical_path(p)) for p in paths)  # the stale one is gone too


def test_lexical_file_is_written_atomically(tmp_path):
    path = tmp_path / "x.bne.lex.sqlite"

    def chunks():
        yield [0, 1], ["alpha beta", "beta gamma"]
        raise KeyboardInterrupt  # a build stopped half way

    with pytest.raises(KeyboardInterrupt):
        shards.write_lexical(path, chunks())
    assert os.listdir(tmp_path) == []  # no file that could look complete, no temporary left
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".x.bne.lex.sqlite.{dead.stdout.strip()}.tmp"  # as a killed writer leaves it
    leftover.write_bytes(b"half")
    assert shards.write_lexical(path, [([0, 1], ["alpha beta", "beta gamma"]), ([5], ["gamma"])], mode=0o640) == 3
    assert sorted(os.listdir(tmp_path)) == ["x.bne.lex.sqlite"]
    assert os.stat(path).st_mode & 0o777 == 0o640
    conn = shards.open_lexical(path)
    assert shards.lexical_info(conn) == (3, 0, 5)
    assert lp.Searcher(conn).search(lexical.query_terms("gamma"), 5)[0][0] == 5
    conn.close()


def test_a_shard_far_into_the_ids_pays_for_its_own_ids_only(tmp_path):
    """A shard's file holds id - base: its scorer's per-id arrays cover the shard's ids, not every id
    before them (20M ids before this shard cost ~500 MB before), and results are global ids."""
    import tracemalloc

    from bne import distributed

    base = 20_000_000
    texts = [f"alpha {'beta ' * (i % 3)}gamma{i % 4}" for i in range(50)]
    path = tmp_path / "far.lex.sqlite"
    assert shards.write_lexical(path, [(range(base, base + 50), texts)], base=base) == 50
    conn = shards.open_lexical(path)
    assert shards.lexical_base(conn) == base and list(shards.lexical_ids(conn)) == list(range(base, base + 50))
    tracemalloc.start()
    searcher = lp.Searcher(conn)
    terms = lexical.query_terms("beta gamma2", repeats=True)
    stats = searcher.local_stats(terms)
    got = distributed._search_shard(searcher, [terms], 10, stats, None, base, None, base)[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20, peak
    fts = sqlite3.connect(":memory:")  # the oracle, over the global ids
    lexical.create(fts)
    lexical.insert(fts, range(base, base + 50), texts)
    want = lexical.bm25_search(fts, terms, 10)
    assert [i for i, _ in got] == [i for i, _ in want] and all(i >= base for i, _ in got)
    assert all(abs(a - b) <= 1e-9 * abs(b) for (_, a), (_, b) in zip(got, want, strict=True))
    mask = np.zeros(30, bool)  # the driver's part of a mask, from the shard's first id: only id base + 7
    mask[7] = True
    assert "beta" in texts[7]  # so it matches, and it is the only document allowed
    assert [i for i, _ in distributed._search_shard(searcher, [terms], 10, stats, mask, base, None, base)[0]] == [
        base + 7
    ]
    conn.close()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("CREATE TRIGGER t AFTER INSERT ON lexp_meta BEGIN DELETE FROM lexp_seg; END", "trigger 't' that bne"),
        ("CREATE VIEW v AS SELECT * FROM lexp_seg", "view 'v' that bne did not write"),
        ("DROP TABLE lexp_dead", "tables missing"),
        ("DELETE FROM lexp_meta WHERE k = 'ready'", "is incomplete"),
    ],
)
def test_hostile_or_incomplete_lexical_file_is_refused_in_one_line(tmp_path, damage, message):
    path = tmp_path / "x.lex.sqlite"
    shards.write_lexical(path, [([0], ["alpha"])])
    conn = sqlite3.connect(path)
    conn.execute(damage)
    conn.commit()
    conn.close()
    with pytest.raises(DocStoreError, match=message) as e:
        shards.open_lexical(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert not shards.lexical_done(path, 1)


def test_lexical_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "x.lex.sqlite"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(DocStoreError, match="cannot open lexical index .*x.lex.sqlite") as e:
        shards.open_lexical(path)
    assert "\n" not in str(e.value)
    os.unlink(path)
    os.mkfifo(path)
    with pytest.raises(DocStoreError, match="not a regular file"):
        shards.open_lexical(path)
    with pytest.raises(FileNotFoundError):
        shards.open_lexical(tmp_path / "none.lex.sqlite")
