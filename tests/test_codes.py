"""pack / unpack: bit order, interchangeability with sentence-transformers and FAISS."""

import numpy as np
import pytest

import bne


def test_pack_msb_first_like_numpy(rng):
    x = rng.standard_normal((5, 1024)).astype(np.float32)
    codes = bne.pack(x)
    assert codes.dtype == np.uint8 and codes.shape == (5, 128)
    np.testing.assert_array_equal(codes, np.packbits(x > 0, axis=-1))
    # Dimension 0 is the most significant bit of byte 0.
    one = np.full((1, 64), -1.0)
    one[0, 0] = 1.0
    assert bne.pack(one)[0, 0] == 0b1000_0000


def test_pack_accepts_signs_bools_and_ints(rng):
    s = np.where(rng.random((3, 128)) < 0.5, -1, 1).astype(np.int8)
    expected = np.packbits(s > 0, axis=-1)
    np.testing.assert_array_equal(bne.pack(s), expected)
    np.testing.assert_array_equal(bne.pack(s > 0), expected)
    np.testing.assert_array_equal(bne.pack(s.astype(np.float64)), expected)
    np.testing.assert_array_equal(bne.pack(s.tolist()), expected)
    assert bne.pack(np.zeros((1, 8)))[0, 0] == 0  # 0 is not > 0


def test_unpack_roundtrip(rng):
    s = np.where(rng.random((4, 192)) < 0.5, -1, 1).astype(np.int8)
    codes = bne.pack(s)
    np.testing.assert_array_equal(bne.unpack(codes), s)
    np.testing.assert_array_equal(bne.unpack(codes, signs=False), (s > 0).astype(np.uint8))
    np.testing.assert_array_equal(bne.unpack(codes, bits=100), s[:, :100])
    for order in ("big", "little"):
        np.testing.assert_array_equal(bne.unpack(bne.pack(s, bit_order=order), bit_order=order), s)


def test_hamming_equals_sign_disagreements(rng):
    a = rng.standard_normal((3, 256))
    b = rng.standard_normal((4, 256))
    expected = ((a[:, None, :] > 0) != (b[None, :, :] > 0)).sum(-1)
    np.testing.assert_array_equal(bne.hamming(bne.pack(a), bne.pack(b)), expected)


def test_sentence_transformers_ubinary_order(rng):
    st_quant = pytest.importorskip("sentence_transformers.quantization")
    x = rng.standard_normal((6, 1024)).astype(np.float32)
    ubinary = st_quant.quantize_embeddings(x, precision="ubinary")
    np.testing.assert_array_equal(bne.pack(x), ubinary)


def test_faiss_fvecs2bitvecs_order(rng):
    faiss = pytest.importorskip("faiss")
    x = rng.standard_normal((6, 128)).astype(np.float32)
    ref = np.empty((6, 16), np.uint8)
    faiss.fvecs2bitvecs(faiss.swig_ptr(x), faiss.swig_ptr(ref), 128, 6)
    np.testing.assert_array_equal(bne.pack(x, bit_order="little"), ref)
    # Distances do not depend on the order, as long as both sides use the same one.
    np.testing.assert_array_equal(
        bne.hamming(bne.pack(x, bit_order="little"), ref), bne.hamming(bne.pack(x), bne.pack(x))
    )
