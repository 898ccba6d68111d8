"""Issue 18 item 5(b): result sizes are bounded. ``nq x k``, ``nq x rescore`` and range results
past the result limit raise ResultTooLargeError (a ValueError: exit 2 in the CLI) naming the
limit, before anything large is allocated; range search takes an explicit cap."""

from __future__ import annotations

import json
import os
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import bne
from bne import _core
from bne.encoder.base import search_codes
from bne.errors import ResultTooLargeError
from bne.index import MAX_RESULT_BYTES
from runner import needs_encoder, run_main, run_python


def codes(n, nbytes=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, nbytes), dtype=np.uint8)


def brute_range(db, q, radius):
    d = bne.hamming(q, db)
    return [np.flatnonzero(row <= radius) for row in d]


def test_limit_is_documented_and_overridable(monkeypatch):
    assert bne.index.max_result_bytes() == MAX_RESULT_BYTES == 1 << 30
    monkeypatch.setenv("BNE_MAX_RESULT_BYTES", "12345")
    assert bne.index.max_result_bytes() == 12345
    monkeypatch.setenv("BNE_MAX_RESULT_BYTES", "lots")
    with pytest.raises(ValueError, match="BNE_MAX_RESULT_BYTES must be a positive number"):
        bne.index.max_result_bytes()


def test_issue_knn_1000_queries_k_100000_small_index_refused_without_allocating():
    idx = bne.Index(64)
    idx.add(codes(1000))
    q = codes(1000, seed=1)
    tracemalloc.start()
    try:
        with pytest.raises(ResultTooLargeError) as e:
            idx.search(q, 100_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(e.value)
    assert "k=100000 asks for results for 1000 queries" in msg and "1,073,741,824-byte result limit" in msg
    assert "BNE_MAX_RESULT_BYTES" in msg and "holds 1000 codes" in msg and "\n" not in msg
    assert isinstance(e.value, ValueError)
    assert peak < 8 << 20, peak  # the 1.2 GB result was never allocated
    with pytest.raises(ResultTooLargeError, match="k=100000 asks for results for 1000 queries"):
        bne.knn(idx.codes(), q, 100_000)


def test_knn_under_the_limit_still_pads_past_the_index(monkeypatch):
    idx = bne.Index(64)
    idx.add(codes(10))
    D, I = idx.search(codes(3, seed=1), 20)
    assert D.shape == (3, 20) and (I[:, 10:] == -1).all() and sorted(I[0, :10]) == list(range(10))
    monkeypatch.setenv("BNE_MAX_RESULT_BYTES", str(3 * 20 * 12))  # exactly the result: allowed
    assert idx.search(codes(3, seed=1), 20)[1].shape == (3, 20)
    monkeypatch.setenv("BNE_MAX_RESULT_BYTES", str(3 * 20 * 12 - 1))
    with pytest.raises(ResultTooLargeError, match="k=20 asks for results for 3 queries"):
        idx.search(codes(3, seed=1), 20)


def _child(code: str) -> dict:
    """Runs `code` in a fresh interpreter (its peak RSS is its own) and returns its JSON line."""
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


CHILD = """
import json, resource, numpy as np, bne
from bne.errors import ResultTooLargeError
db = np.random.default_rng(0).integers(0, 256, ({n}, 8), dtype=np.uint8)
q = np.random.default_rng(1).integers(0, 256, ({nq}, 8), dtype=np.uint8)
idx = bne.Index(64); idx.add(db)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    {call}
    msg = None
except ResultTooLargeError as e:
    msg = str(e)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"msg": msg, "grew_mb": (after - before) / 1024}}))
"""


def test_issue_range_radius_bits_is_capped_in_a_fresh_process():
    # 50 queries x 1M codes at radius = bits: 50M hits, ~2.3 GB uncapped; the default cap
    # (22,369,621 hits for 1 GiB) stops it early, and so does an explicit one
    r = _child(CHILD.format(n=1_000_000, nq=50, call="idx.range_search(q, 64)"))
    assert "radius=64 over 50 queries found more than 22,369,621 results (max_results=22,369,621" in r["msg"]
    assert "1,073,741,824-byte result limit" in r["msg"]
    assert r["grew_mb"] < 1200, r
    r = _child(CHILD.format(n=1_000_000, nq=50, call="idx.range_search(q, 64, max_results=1_000_000)"))
    assert "radius=64 over 50 queries found more than 1,000,000 results (max_results=1,000,000)" in r["msg"]
    assert r["grew_mb"] < 200, r


def test_issue_knn_k_100000_large_index_refused_in_a_fresh_process():
    r = _child(CHILD.format(n=200_000, nq=1000, call="idx.search(q, 100_000)"))
    assert "k=100000 asks for results for 1000 queries, which needs 1.12 GiB" in r["msg"]
    assert r["grew_mb"] < 100, r


def test_range_default_cap_follows_the_limit(monkeypatch):
    idx = bne.Index(64)
    db = codes(20_000)
    idx.add(db)
    q = codes(50, seed=1)
    monkeypatch.setenv("BNE_MAX_RESULT_BYTES", str(48 * 100_000))
    with pytest.raises(ResultTooLargeError) as e:
        idx.range_search(q, 64)  # 1,000,000 hits
    msg = str(e.value)
    assert "radius=64 over 50 queries found more than 100,000 results" in msg
    assert "4,800,000-byte result limit" in msg and "\n" not in msg
    # a radius whose hits fit: exact, and equal to brute force
    lims, D, I = idx.range_search(q, 20)
    assert lims[-1] < 100_000
    for got, want in zip(bne.split_ranges(lims, I), brute_range(db, q, 20), strict=True):
        assert sorted(got.tolist()) == want.tolist()


def test_range_explicit_cap_exact_boundary():
    idx = bne.Index(64)
    db = codes(3000)
    idx.add(db)
    q = codes(4, seed=2)
    total = sum(len(h) for h in brute_range(db, q, 64))
    assert total == 12_000
    lims, _, _ = idx.range_search(q, 64, max_results=total)  # exactly the cap: allowed
    assert lims[-1] == total
    with pytest.raises(ResultTooLargeError, match="found more than 11,999 results \\(max_results=11,999\\)"):
        idx.range_search(q, 64, max_results=total - 1)
    with pytest.raises(ValueError, match="max_results must be an int >= 0"):
        idx.range_search(q, 64, max_results=-1)
    # the raw core too, with several threads racing to the cap
    with pytest.raises(ResultTooLargeError, match="more than 100 results"):
        _core.range_search(db, q, 64, 2, max_results=100)


def test_mapped_index_range_cap_is_exact_at_the_boundary(tmp_path):
    path = tmp_path / "a.bne"
    with bne.open(path, "a", bits=64) as w:
        w.add(codes(500))
        w.commit()
        w.add(codes(500, seed=3))
    r = bne.open(path)
    with pytest.raises(ResultTooLargeError, match="max_results=999"):
        r.range_search(codes(1, seed=4), 64, max_results=999)
    assert r.range_search(codes(1, seed=4), 64, max_results=1000)[0][-1] == 1000


class _Logits:
    @staticmethod
    def make(nq, bits=64, seed=5):
        return np.random.default_rng(seed).standard_normal((nq, bits)).astype(np.float32)


def test_issue_rescore_100000_is_clamped_to_the_index_and_bounded(monkeypatch):
    idx = bne.Index(64)
    idx.add(codes(300))
    q = codes(2000, seed=1)
    logits = _Logits.make(2000)
    # rescore far above the index: candidates are clamped to its 300 codes, same answer
    D1, I1 = search_codes(idx, q[:50], logits[:50], 10, rescore=100_000)
    D2, I2 = search_codes(idx, q[:50], logits[:50], 10, rescore=300)
    assert np.array_equal(I1, I2) and np.array_equal(D1, D2)
    monkeypatch.setenv("BNE_MAX_RESULT_BYTES", str(10 << 20))  # 2000 x 300 x 28 bytes = 16.8 MB
    with pytest.raises(ResultTooLargeError) as e:
        search_codes(idx, q, logits, 10, rescore=100_000)
    assert "rescore=100000 for 2000 queries (300 candidates each)" in str(e.value)
    assert "10,485,760-byte result limit" in str(e.value)


def test_rescore_blocks_keep_scores_exact():
    # M large enough that the column blocks split one query's candidates: scores match the dot product
    from bne.encoder.base import rescore_candidates

    bits = 64 * 1024  # 64 MiB / (4 * 65536) = 256 candidates a block
    rng = np.random.default_rng(0)
    cand_codes = rng.integers(0, 256, (2, 600, bits // 8), dtype=np.uint8)
    ids = np.arange(1200, dtype=np.int64).reshape(2, 600)
    q = rng.standard_normal((2, bits)).astype(np.float32)
    S, I = rescore_candidates(q, cand_codes, ids, 5)
    signs = bne.unpack(cand_codes, bits).astype(np.float32)
    want = np.einsum("qb,qmb->qm", q, signs)
    order = np.argsort(-want, axis=1, kind="stable")[:, :5]
    assert np.array_equal(I, np.take_along_axis(ids, order, 1))
    assert np.allclose(S, np.take_along_axis(want, order, 1), rtol=1e-5)


# -- the thread budget (item 8) ----------------------------------------------------------------


def test_thread_budget_is_returned_and_concurrent_results_exact():
    info = _core.thread_budget()
    assert info["enabled"] is True and info["free"] == info["cores"] == bne.kernel_info()["cores"]
    db = codes(200_000, 128)
    q = codes(40, 128, seed=9)
    want = bne.knn(db, q, 10, threads=1)

    def worker(_):
        return [bne.knn(db, q[j : j + 1], 10) for j in range(len(q))]

    with ThreadPoolExecutor(8) as pool:  # a worker's exception is raised here
        got = list(pool.map(worker, range(8)))
    for rows in got:
        assert np.array_equal(np.vstack([r[1] for r in rows]), want[1])
        assert np.array_equal(np.vstack([r[0] for r in rows]), want[0])
    assert _core.thread_budget()["free"] == info["cores"]  # every lease was given back


def test_thread_budget_can_be_switched_off():
    try:
        _core.set_thread_budget(False)
        assert _core.thread_budget()["enabled"] is False
        db = codes(5000)
        assert np.array_equal(bne.knn(db, db[:3], 1)[1][:, 0], [0, 1, 2])
    finally:
        _core.set_thread_budget(True)
    assert _core.thread_budget()["enabled"] is True


def test_thread_budget_env_zero_turns_it_off():
    out = run_python(
        "from bne import _core; print(_core.thread_budget()['enabled'])", env={"BNE_THREAD_BUDGET": "0"}, timeout=60
    )
    assert out.stdout.strip() == "False", out.stderr


# -- the CLI: exit 2 and one line ---------------------------------------------------------------


def _plain_collection(folder, n):
    """n random 1024-bit codes recorded with the default model, and their docstore."""
    from bne.corpus import Doc
    from bne.docstore import DocStore

    path = os.path.join(folder, "plain.bne")
    with bne.open(path, mode="a", bits=1024, metadata={"model": "default", "bits": 1024}) as idx:
        idx.add(codes(n, 128), ids=np.arange(n, dtype=np.int64))
    s = DocStore(path, create=True)
    s.insert(range(n), [Doc(f"d{i}", f"text {i}") for i in range(n)])
    s.commit()
    s.close()
    return path


def _one_line(code, err, *needles):
    assert code == 2, err
    # a first run may note the one-time ONNX export; anything else is the error
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("bne: exporting")]
    assert len(lines) == 1 and "Traceback" not in err and "MemoryError" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("flag", [["-k", "100000"], ["--rescore", "100000"]])
def test_cli_k_and_rescore_past_the_limit_exit_2(tmp_path, monkeypatch, flag):
    needs_encoder()
    path = _plain_collection(tmp_path, 40)
    qfile = tmp_path / "q.txt"
    qfile.write_text("".join(f"query {i}\n" for i in range(300)))
    # k clamps to the 40 codes: 300 x 40 x 12 = 144,000 bytes; with --rescore, 300 x 40 x 148
    monkeypatch.setenv("BNE_MAX_RESULT_BYTES", "100000")
    code, out, err = run_main("search", path, "--queries", qfile, *flag)
    what = (
        "k=40 asks for results for 300 queries"
        if flag[0] == "-k"
        else "rescore=100000 for 300 queries (40 candidates each)"
    )
    _one_line(code, err, "bne: error:", what, "100,000-byte result limit")
    assert out == ""
    monkeypatch.setenv("BNE_MAX_RESULT_BYTES", "200000000")
    code, out, err = run_main("search", path, "--queries", qfile, *flag, "--json")
    assert code == 0, err
    res = json.loads(out)["results"]
    want = 40 if flag[0] == "-k" else 10  # --rescore keeps the default k=10
    assert len(res) == 300 and all(len(r["hits"]) == want for r in res)


@pytest.mark.slow
def test_cli_issue_2000_queries_k_100000_exit_2(tmp_path):
    """The issue's reproduction at the default limit: 2000 queries, -k 100000, over 100,000
    codes (2.4 GB of results uncapped, ~28 GB with --rescore)."""
    needs_encoder()
    path = _plain_collection(tmp_path, 100_000)
    qfile = tmp_path / "q.txt"
    qfile.write_text("".join(f"query number {i}\n" for i in range(2000)))
    code, _, err = run_main("search", path, "--queries", qfile, "-k", "100000")
    _one_line(
        code, err, "k=100000 asks for results for 2000 queries, which needs 2.24 GiB", "1,073,741,824-byte result limit"
    )
    code, _, err = run_main("search", path, "--queries", qfile, "--rescore", "100000")
    _one_line(code, err, "rescore=100000 for 2000 queries (100000 candidates each) needs 27.57 GiB")


def test_threads_keep_the_tie_rule_under_heavy_ties():
    """Threads take chunks of positions in any order: with only 20 distinct codes, every top-k
    boundary is a tie, and the answer must still be the smallest positions (brute force)."""
    base = codes(20, 128, seed=11)
    db = base[np.random.default_rng(12).integers(0, 20, 400_000)]
    q = codes(6, 128, seed=13)
    d = bne.hamming(q, db)
    want = np.argsort(d, axis=1, kind="stable")[:, :25]
    for threads in (0, 2):
        D, I = bne.knn(db, q, 25, threads=threads)
        assert np.array_equal(I, want), threads
        assert np.array_equal(D, np.take_along_axis(d, want, 1))
    idx = bne.Index(1024)
    idx.add(db)
    r = int(np.sort(d, axis=1)[:, 50].min())
    lims, D, I = idx.range_search(q, r, threads=2)
    for i, got in enumerate(bne.split_ranges(lims, I)):
        assert np.array_equal(got, np.flatnonzero(d[i] <= r)[np.argsort(d[i][d[i] <= r], kind="stable")])
