"""Every kernel variant against the numpy oracle and the serial kernel, over many widths, sizes,
query counts and tie patterns: results never depend on the kernel."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bne
from bne import _core
from reference import hamming, knn, random_codes

WIDTHS = [64, 128, 192, 256, 320, 448, 512, 576, 960, 1024, 1088, 1536, 2048, 2112, 4096, 8192]


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("n", [1, 3, 4, 5, 8, 9, 17, 1000])
def test_pairwise_matches_numpy(isa, bits, n, rng):
    a = random_codes(rng, 7, bits)
    b = random_codes(rng, n, bits)
    got = _core.hamming(a, b, isa=isa)
    assert got.dtype == np.int32 and got.shape == (7, n)
    np.testing.assert_array_equal(got, hamming(a, b))


@pytest.mark.parametrize("bits", [64, 192, 1024, 2048, 8192])
def test_extreme_distances(isa, bits):
    zeros = np.zeros((5, bits // 8), np.uint8)
    ones = np.full((5, bits // 8), 255, np.uint8)
    assert (_core.hamming(zeros, ones, isa=isa) == bits).all()
    assert (_core.hamming(ones, ones, isa=isa) == 0).all()


@pytest.mark.parametrize("bits", [64, 320, 1024, 2048])
def test_every_isa_equals_serial(bits, rng):
    db = random_codes(rng, 3001, bits)
    q = random_codes(rng, 9, bits)
    # Low-entropy rows force many ties so the tie rule is exercised on every ISA.
    db[::3] &= 0x11
    q[::2] &= 0x11
    ref_d, ref_i = _core.knn(db, q, 25, isa="serial")
    for isa in bne.available_kernels():
        d, i = _core.knn(db, q, 25, isa=isa)
        np.testing.assert_array_equal(d, ref_d, err_msg=isa)
        np.testing.assert_array_equal(i, ref_i, err_msg=isa)
        np.testing.assert_array_equal(_core.hamming(q, db, isa=isa), _core.hamming(q, db, isa="serial"))


def test_unaligned_buffers(isa, rng):
    """Kernels use unaligned loads: codes starting at an odd address still work."""
    raw = rng.integers(0, 256, size=(200 * 128 + 1), dtype=np.uint8)
    db = raw[1:].reshape(200, 128)  # offset by one byte, still C-contiguous
    assert db.ctypes.data % 8 == 1
    q = random_codes(rng, 3, 1024)
    np.testing.assert_array_equal(_core.hamming(q, db, isa=isa), hamming(q, db))


@settings(max_examples=60, deadline=None)
@given(
    words=st.integers(1, 40),
    n=st.integers(1, 300),
    nq=st.integers(1, 9),
    k=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    low_entropy=st.booleans(),
)
def test_knn_property(words, n, nq, k, seed, low_entropy):
    r = np.random.default_rng(seed)
    bits = 64 * words
    db = random_codes(r, n, bits)
    q = random_codes(r, nq, bits)
    if low_entropy:  # many equal distances
        db &= 0x03
        q &= 0x03
    ref_d, ref_i = knn(db, q, k)
    for isa in bne.available_kernels():
        for threads in (1, 2):
            d, i = _core.knn(db, q, k, threads=threads, isa=isa)
            np.testing.assert_array_equal(d, ref_d)
            np.testing.assert_array_equal(i, ref_i)


@pytest.mark.parametrize("bits", [64, 128, 320, 512, 576, 1024, 1088, 2048, 2112, 4096])
@pytest.mark.parametrize("nq", [1, 3, 8, 9, 16, 17, 35])
def test_fused_scan_every_kernel(isa, bits, nq, rng):
    """Top-k and range search through each kernel's fused scan: query batches around the kernel's
    batch sizes (1..16 and beyond), code counts that leave partial groups of 4 and 8, ties."""
    db = random_codes(rng, 1000 + nq, bits)
    q = random_codes(rng, nq, bits)
    db[::4] &= 0x21  # many equal distances, so the tie rule decides
    q[::3] &= 0x21
    db[5] = q[0]  # a distance-0 hit
    ref_d, ref_i = knn(db, q, 13)
    d, i = _core.knn(db, q, 13, threads=1, isa=isa)
    np.testing.assert_array_equal(d, ref_d)
    np.testing.assert_array_equal(i, ref_i)
    full = hamming(q, db)
    radius = int(np.percentile(full, 3))
    lims, rd, ri = _core.range_search(db, q, radius, threads=1, isa=isa)
    for row in range(nq):
        want = np.flatnonzero(full[row] <= radius)
        want = want[np.lexsort((want, full[row][want]))]
        np.testing.assert_array_equal(ri[lims[row] : lims[row + 1]], want)
        np.testing.assert_array_equal(rd[lims[row] : lims[row + 1]], full[row][want])


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 15, 255, 256, 257, 1023])
def test_block_edges_every_kernel(isa, n, rng):
    """Sizes around the kernels' code groups (4, 8) and the search's cache blocks."""
    db = random_codes(rng, n, 1024)
    q = np.concatenate([db[:: max(1, n // 5)][:5], random_codes(rng, 12, 1024)])
    ref_d, ref_i = knn(db, q, 5)
    d, i = _core.knn(db, q, 5, threads=1, isa=isa)
    np.testing.assert_array_equal(d, ref_d)
    np.testing.assert_array_equal(i, ref_i)


def test_kernel_results_equal_faiss(rng):
    faiss = pytest.importorskip("faiss")
    db = random_codes(rng, 5000, 2048)
    q = random_codes(rng, 21, 2048)
    ref = faiss.IndexBinaryFlat(2048)
    ref.add(db)
    fD, _ = ref.search(q, 10)
    for isa in bne.available_kernels():
        d, _ = _core.knn(db, q, 10, isa=isa)
        np.testing.assert_array_equal(d, fD, err_msg=isa)
