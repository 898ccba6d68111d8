"""Bad input: one table of (call, exception, message); never a crash or silent garbage."""

import re

import numpy as np
import pytest

import bne
from bne import _core

u8 = lambda *shape: np.zeros(shape, np.uint8)  # noqa: E731


def index_with(n=10, bits=1024):
    index = bne.Index(bits)
    if n:
        index.add(u8(n, bits // 8))
    return index


CASES = [
    (
        "bits not multiple of 64",
        lambda: bne.Index(1000),
        ValueError,
        "bits must be a positive multiple of 64, got 1000",
    ),
    ("bits zero", lambda: bne.Index(0), ValueError, "positive multiple of 64, got 0"),
    ("bits float", lambda: bne.Index(1024.0), TypeError, "bits must be an int, got float"),
    (
        "add float codes",
        lambda: index_with(0).add(np.zeros((2, 128), np.float32)),
        TypeError,
        "codes must have dtype uint8 (packed bits), got float32 (use bne.pack",
    ),
    ("add int64 codes", lambda: index_with(0).add(np.zeros((2, 128), np.int64)), TypeError, "got int64"),
    ("add bool codes", lambda: index_with(0).add(np.zeros((2, 1024), bool)), TypeError, "got bool"),
    (
        "add list",
        lambda: index_with(0).add([[0] * 128]),
        TypeError,
        "codes must be a numpy uint8 array of packed bits, got list",
    ),
    (
        "add wrong width",
        lambda: index_with(0).add(u8(2, 96)),
        ValueError,
        "codes must have 128 bytes per row (1024 bits), got 96",
    ),
    (
        "add 1-D",
        lambda: index_with(0).add(u8(128)),
        ValueError,
        "codes must be a 2-D array (n, bytes_per_code), got shape (128,); for a single code use x.reshape(1, -1)",
    ),
    ("add 3-D", lambda: index_with(0).add(u8(2, 2, 128)), ValueError, "got shape (2, 2, 128)"),
    (
        "search wrong width",
        lambda: index_with().search(u8(1, 256), 1),
        ValueError,
        "queries must have 128 bytes per row (1024 bits), got 256",
    ),
    (
        "search wrong dtype",
        lambda: index_with().search(np.zeros((1, 128), np.int8), 1),
        TypeError,
        "queries must have dtype uint8",
    ),
    ("search 1-D", lambda: index_with().search(u8(128), 1), ValueError, "queries must be a 2-D array"),
    ("k zero", lambda: index_with().search(u8(1, 128), 0), ValueError, "k must be >= 1, got 0"),
    ("k negative", lambda: index_with().search(u8(1, 128), -3), ValueError, "k must be >= 1, got -3"),
    ("k float", lambda: index_with().search(u8(1, 128), 2.5), TypeError, "k must be an int, got float"),
    ("empty index", lambda: index_with(0).search(u8(1, 128), 1), ValueError, "search on an empty index"),
    (
        "empty index range",
        lambda: index_with(0).range_search(u8(1, 128), 3),
        ValueError,
        "range_search on an empty index",
    ),
    ("radius negative", lambda: index_with().range_search(u8(1, 128), -1), ValueError, "radius must be >= 0, got -1"),
    ("threads negative", lambda: index_with().search(u8(1, 128), 1, threads=-1), ValueError, "threads must be >= 0"),
    (
        "allow wrong dtype",
        lambda: index_with().search(u8(1, 128), 1, allow=np.ones(10, np.float32)),
        TypeError,
        "allow must be a list/array of ids or a bool mask, got dtype float32",
    ),
    (
        "allow wrong shape",
        lambda: index_with().search(u8(1, 128), 1, allow=np.ones(9, bool)),
        ValueError,
        "allow as a bool mask must have shape (10,) (one entry per stored code), got (9,)",
    ),
    (
        "hamming width mismatch",
        lambda: bne.hamming(u8(1, 128), u8(1, 256)),
        ValueError,
        "b must have 128 bytes per row (1024 bits), got 256",
    ),
    (
        "hamming width not x8",
        lambda: bne.hamming(u8(1, 12), u8(1, 12)),
        ValueError,
        "a must have a multiple of 8 bytes per row",
    ),
    ("knn empty", lambda: bne.knn(u8(0, 128), u8(1, 128), 1), ValueError, "codes is empty"),
    (
        "pack NaN",
        lambda: bne.pack(np.array([[1.0, np.nan, -1.0]])),
        ValueError,
        "pack input contains NaN (first at index (0, 1))",
    ),
    ("pack strings", lambda: bne.pack(np.array(["a", "b"])), TypeError, "pack needs a bool or numeric array"),
    ("pack scalar", lambda: bne.pack(1.0), ValueError, "got a scalar"),
    ("pack bad bit_order", lambda: bne.pack(np.ones((1, 8)), bit_order="middle"), ValueError, "bit_order must be"),
    ("unpack too many bits", lambda: bne.unpack(u8(1, 8), bits=65), ValueError, "bits must be an int in 1..64"),
    ("unpack float", lambda: bne.unpack(np.zeros((1, 8))), TypeError, "codes must have dtype uint8"),
    ("set_isa unknown", lambda: bne.set_isa("sse9"), ValueError, "unknown ISA 'sse9'; available: serial"),
    ("set_num_threads negative", lambda: bne.set_num_threads(-2), ValueError, "threads must be >= 0"),
    # The native layer checks on its own too (it is also the C++ API).
    (
        "core dtype",
        lambda: _core.knn(np.zeros((2, 128), np.float64), u8(1, 128), 1),
        TypeError,
        "codes must have dtype uint8 (packed bits), got float64",
    ),
    (
        "core non-contiguous",
        lambda: _core.knn(u8(4, 256)[:, ::2], u8(1, 128), 1),
        ValueError,
        "codes must be C-contiguous",
    ),
    (
        "core width",
        lambda: _core.knn(u8(4, 128), u8(1, 64), 1),
        ValueError,
        "queries must have 128 bytes per row (1024 bits), got 64",
    ),
    ("core k", lambda: _core.knn(u8(4, 128), u8(1, 128), 0), ValueError, "k must be >= 1, got 0"),
    (
        "core code width",
        lambda: _core.knn(u8(4, 12), u8(1, 12), 1),
        ValueError,
        "positive multiple of 8 bytes (64 bits), got 12",
    ),
    (
        "core allow bitmap",
        lambda: _core.knn(u8(4, 128), u8(1, 128), 1, allow=np.ones(4, bool)),
        ValueError,
        "allow must be a uint8 bitmap of 8 bytes",
    ),
    (
        "ids wrong length",
        lambda: index_with(0).add(u8(2, 128), ids=[1]),
        ValueError,
        "ids must have shape (2,), one per code, got (1,)",
    ),
    (
        "ids float",
        lambda: index_with(0).add(u8(2, 128), ids=[1.0, 2.0]),
        TypeError,
        "ids must be integers (int64), got dtype float64",
    ),
    (
        "ids duplicate in batch",
        lambda: index_with(0).add(u8(2, 128), ids=[7, 7]),
        ValueError,
        "duplicate ids in this batch: [7]",
    ),
    (
        "ids already present",
        lambda: index_with(3).add(u8(1, 128), ids=[1]),
        ValueError,
        "ids already in the index (remove them first): [1]",
    ),
    ("remove float ids", lambda: index_with(3).remove([1.5]), TypeError, "ids must be integers"),
    ("core isa", lambda: _core.knn(u8(4, 128), u8(1, 128), 1, isa="avx9000"), ValueError, "unknown ISA 'avx9000'"),
]


@pytest.mark.parametrize("call,exc,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        call()


def test_failed_add_leaves_index_unchanged():
    index = index_with(3)
    with pytest.raises(ValueError):
        index.add(u8(2, 64))
    assert len(index) == 3
