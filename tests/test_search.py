"""bne.Index search: exactness against FAISS IndexBinaryFlat and numpy, the tie rule,
adversarial data, metamorphic relations, threads, filters and range search."""

import numpy as np
import pytest

import bne
from reference import hamming, knn, random_codes

faiss = pytest.importorskip("faiss")


def make_index(codes):
    index = bne.Index(codes.shape[1] * 8)
    index.add(codes)
    return index


@pytest.mark.parametrize("bits", [1024, 2048])
@pytest.mark.parametrize("k", [1, 10, 100])
def test_equals_faiss(bits, k, rng):
    db = random_codes(rng, 20000, bits)
    q = random_codes(rng, 33, bits)
    D, I = make_index(db).search(q, k)
    ref = faiss.IndexBinaryFlat(bits)
    ref.add(db)
    fD, fI = ref.search(q, k)
    np.testing.assert_array_equal(D, fD)  # identical distances
    for row in range(len(q)):
        kth = D[row, -1]
        # Ids identical except among ties at the k-th distance, where both are valid top-k sets.
        strict = D[row] < kth
        np.testing.assert_array_equal(I[row][strict], fI[row][strict])
        assert set(I[row][~strict]) <= set(np.flatnonzero(hamming(q[row : row + 1], db)[0] == kth))
        assert len(set(I[row])) == k


def test_range_search_equals_faiss(rng):
    db = random_codes(rng, 5000, 1024)
    db[:200] = db[0]  # a cluster, so some radius has many hits
    q = np.concatenate([db[:3], random_codes(rng, 4, 1024)])
    index = make_index(db)
    ref = faiss.IndexBinaryFlat(1024)
    ref.add(db)
    for radius in (0, 10, 470, 500):
        lims, D, I = index.range_search(q, radius)
        # FAISS keeps d < radius; bne's radius is inclusive.
        flims, fD, fI = ref.range_search(q, radius + 1)
        np.testing.assert_array_equal(lims, flims.astype(np.int64))
        for a, b_, da, db_ in zip(
            bne.split_ranges(lims, I),
            bne.split_ranges(flims, fI),
            bne.split_ranges(lims, D),
            bne.split_ranges(flims, fD),
            strict=True,
        ):
            assert sorted(zip(db_.tolist(), b_.tolist(), strict=True)) == list(
                zip(da.tolist(), a.tolist(), strict=True)
            )


def test_tie_rule_smaller_id_first():
    db = np.zeros((50, 128), np.uint8)
    db[10, 0] = 1  # distance 1 from the zero query
    D, I = make_index(db).search(np.zeros((1, 128), np.uint8), 5)
    np.testing.assert_array_equal(I[0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(D[0], [0] * 5)
    D, I = make_index(db).search(np.zeros((1, 128), np.uint8), 50)
    assert I[0, -1] == 10 and D[0, -1] == 1


def test_padding_when_k_exceeds_size(rng):
    db = random_codes(rng, 3, 1024)
    D, I = make_index(db).search(db[:2], 5)
    assert D.dtype == np.int32 and I.dtype == np.int64 and D.shape == (2, 5)
    np.testing.assert_array_equal(I[:, 3:], -1)
    np.testing.assert_array_equal(D[:, 3:], bne.PAD_DISTANCE)
    assert I[0, 0] == 0 and D[0, 0] == 0


def test_adversarial_rows(rng):
    db = random_codes(rng, 4000, 1024)
    db[100:110] = 0  # all-zero rows
    db[2000:2005] = db[7]  # duplicates
    index = make_index(db)
    D, I = index.search(db[[7, 100, 3999]], 8)
    assert list(I[0, :6]) == [7, 2000, 2001, 2002, 2003, 2004] and (D[0, :6] == 0).all()
    assert list(I[1, :8]) == list(range(100, 108))
    assert I[2, 0] == 3999 and D[2, 0] == 0


def test_query_equal_to_row_comes_first(rng):
    db = random_codes(rng, 10000, 2048)
    rows = rng.choice(len(db), 20, replace=False)
    D, I = make_index(db).search(db[rows], 3)
    np.testing.assert_array_equal(I[:, 0], rows)
    np.testing.assert_array_equal(D[:, 0], 0)


def test_metamorphic_shuffle_and_xor_mask(rng):
    db = random_codes(rng, 3000, 1024)
    q = random_codes(rng, 10, 1024)
    D, I = make_index(db).search(q, 20)
    # Shuffling rows permutes ids, distances unchanged.
    perm = rng.permutation(len(db))
    D2, I2 = make_index(db[perm]).search(q, 20)
    np.testing.assert_array_equal(D2, D)
    # XOR-masking queries and rows alike leaves every distance unchanged.
    mask = random_codes(rng, 1, 1024)
    D3, I3 = make_index(db ^ mask).search(q ^ mask, 20)
    np.testing.assert_array_equal(D3, D)
    np.testing.assert_array_equal(I3, I)
    # Top-k is a prefix of top-k' for k < k'.
    D4, I4 = make_index(db).search(q, 57)
    np.testing.assert_array_equal(I4[:, :20], I)
    np.testing.assert_array_equal(D4[:, :20], D)


@pytest.mark.parametrize("n,nq", [(1_100_000, 1), (600_000, 7), (3000, 2000)])  # big enough to split
def test_threads_never_change_results(n, nq, rng):
    db = random_codes(rng, n, 1024)
    db[::5] &= 0x0F  # ties across thread slices
    q = random_codes(rng, nq, 1024) & 0x0F
    index = make_index(db)
    ref = index.search(q, 15, threads=1)
    for threads in (2, 3, 5):
        got = index.search(q, 15, threads=threads)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


def test_allow_list(rng):
    db = random_codes(rng, 5000, 1024)
    q = random_codes(rng, 4, 1024)
    allow = rng.random(len(db)) < 0.1
    D, I = make_index(db).search(q, 10, allow=allow)
    sub = np.flatnonzero(allow)
    rD, rI = knn(db[sub], q, 10)
    np.testing.assert_array_equal(D, rD)
    np.testing.assert_array_equal(I, sub[rI])
    # Fewer allowed codes than k: padding.
    only = np.zeros(len(db), bool)
    only[[5, 9]] = True
    D, I = make_index(db).search(q, 4, allow=only)
    assert set(I[0, :2]) == {5, 9} and (I[:, 2:] == -1).all()


def test_index_basics(rng):
    index = bne.Index(1024)
    assert len(index) == 0 and index.bits == 1024 and index.code_bytes == 128
    a, b = random_codes(rng, 10, 1024), random_codes(rng, 5, 1024)
    index.add(a)
    index.add(b)
    assert len(index) == index.ntotal == 15
    np.testing.assert_array_equal(index.codes(), np.concatenate([a, b]))
    D, I = index.search(b, 1)
    np.testing.assert_array_equal(I[:, 0], np.arange(10, 15))
    assert "ntotal=15" in repr(index)


def test_non_contiguous_input_is_accepted(rng):
    db = random_codes(rng, 100, 2048)
    view = db[:, :128]  # a strided view of 1024-bit codes
    assert not view.flags.c_contiguous
    D, I = make_index(view).search(view[::7], 1)
    np.testing.assert_array_equal(I[:, 0], np.arange(0, 100, 7))


def test_knn_and_hamming_helpers(rng):
    db = random_codes(rng, 300, 512)
    q = random_codes(rng, 5, 512)
    np.testing.assert_array_equal(bne.hamming(q, db), hamming(q, db))
    D, I = bne.knn(db, q, 7)
    rD, rI = knn(db, q, 7)
    np.testing.assert_array_equal(D, rD)
    np.testing.assert_array_equal(I, rI)


def test_set_num_threads_roundtrip():
    before = bne.get_num_threads()
    try:
        bne.set_num_threads(1)
        assert bne.get_num_threads() == 1
        bne.set_num_threads(0)
        assert bne.get_num_threads() >= 1
    finally:
        bne.set_num_threads(0)
    assert bne.get_num_threads() == before


def test_arrays_that_travelled_through_pickle(rng):
    """Ray and multiprocessing hand over unpickled arrays: equal dtypes, distinct objects."""
    import pickle

    db = pickle.loads(pickle.dumps(random_codes(rng, 50, 1024)))
    q = pickle.loads(pickle.dumps(db[:3].copy()))
    D, I = make_index(db).search(q, 1)
    np.testing.assert_array_equal(I[:, 0], [0, 1, 2])


def test_reconstruct_by_id(tmp_path, rng):
    codes = random_codes(rng, 100, 256)
    ids = np.arange(1000, 1100, dtype=np.int64)[::-1].copy()
    index = bne.Index(256)
    index.add(codes, ids=ids)
    got = index.reconstruct(np.array([[1099, 1000], [-1, 1050]]))
    np.testing.assert_array_equal(got[0, 0], codes[0])
    np.testing.assert_array_equal(got[0, 1], codes[99])
    assert not got[1, 0].any()  # -1 (padding) gives zeros
    index.save(tmp_path / "r.bne")
    np.testing.assert_array_equal(bne.open(tmp_path / "r.bne").reconstruct([1050]), codes[[49]])


def test_positions_api(rng):
    """npositions / removed_positions / ids_at: what a sharded search needs without private names."""
    index = bne.Index(64)
    index.add(np.zeros((5, 8), np.uint8), ids=[50, 40, 30, 20, 10])
    index.remove([40, 20])
    assert index.npositions == 5 and len(index) == 3
    assert index.removed_positions().tolist() == [1, 3] and not index.removed_positions().flags.writeable
    assert index.ids_at(np.array([4, -1, 0, 7])).tolist() == [10, -1, 50, -1]
