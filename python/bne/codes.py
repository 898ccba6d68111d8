"""Packing embeddings to binary codes and back, and the checks every code (and id) array goes through.

Bit order: dimension 0 is the most significant bit of byte 0 (numpy ``packbits`` order, the same
as sentence-transformers' ``quantize_embeddings(precision="ubinary")``). ``bit_order="little"``
gives FAISS's ``fvecs2bitvecs`` order (dimension 0 is the least significant bit of byte 0).
A dimension is 1 when its value is > 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np

BitOrder = Literal["big", "little"]


def check_bit_order(bit_order: object) -> None:
    """ValueError unless ``bit_order`` is 'big' or 'little' (codes, headers and saves share it)."""
    if bit_order not in ("big", "little"):
        raise ValueError(
            f"bit_order must be 'big' (numpy/sentence-transformers) or 'little' (FAISS), got {bit_order!r}"
        )


def _renamed_bit_order(bit_order: BitOrder, bitorder: BitOrder | None, where: str) -> BitOrder:
    """The ``bit_order`` to use, accepting the old spelling ``bitorder`` with a DeprecationWarning."""
    if bitorder is None:
        return bit_order
    warnings.warn(
        f"{where}(bitorder=...) is deprecated; use bit_order=... (the name Index.save and bne.open use)",
        DeprecationWarning,
        3,
    )
    return bitorder


def pack(x: np.typing.ArrayLike, bit_order: BitOrder = "big", *, bitorder: BitOrder | None = None) -> np.ndarray:
    """Packs ``{-1,+1}``, bool or float embeddings of shape ``(..., dim)`` to uint8 codes of
    shape ``(..., ceil(dim / 8))``; a dimension becomes bit 1 when its value is > 0.

    NaN raises ValueError (its sign is meaningless). Index codes need ``dim`` to be a multiple of 64.
    ``bitorder`` is the deprecated spelling of ``bit_order``.
    """
    bit_order = _renamed_bit_order(bit_order, bitorder, "pack")
    check_bit_order(bit_order)
    a = np.asarray(x)
    if a.ndim == 0:
        raise ValueError("pack needs an array of shape (..., dim), got a scalar")
    if a.dtype == np.bool_:
        bits = a
    elif np.issubdtype(a.dtype, np.number):
        if np.issubdtype(a.dtype, np.complexfloating):
            raise TypeError(f"pack needs real-valued embeddings, got dtype {a.dtype}")
        if np.issubdtype(a.dtype, np.floating) and np.isnan(a).any():
            bad = np.argwhere(np.isnan(a))[0]
            raise ValueError(
                f"pack input contains NaN (first at index {tuple(int(i) for i in bad)}); the sign of NaN is undefined"
            )
        bits = a > 0
    else:
        raise TypeError(f"pack needs a bool or numeric array, got dtype {a.dtype}")
    return np.packbits(bits, axis=-1, bitorder=bit_order)


def unpack(
    codes: np.ndarray,
    bits: int | None = None,
    bit_order: BitOrder = "big",
    *,
    signs: bool = True,
    bitorder: BitOrder | None = None,
) -> np.ndarray:
    """Inverse of :func:`pack`: ``(..., bytes)`` uint8 codes to ``(..., bits)`` values,
    int8 in ``{-1,+1}`` (``signs=True``) or uint8 in ``{0,1}``. ``bits`` defaults to 8 * bytes.
    ``bitorder`` is the deprecated spelling of ``bit_order``."""
    bit_order = _renamed_bit_order(bit_order, bitorder, "unpack")
    check_bit_order(bit_order)
    c = check_uint8(codes, "codes")
    nbits = c.shape[-1] * 8 if c.ndim else 0
    if bits is None:
        bits = nbits
    if not isinstance(bits, (int, np.integer)) or not 0 < bits <= nbits:
        raise ValueError(
            f"bits must be an int in 1..{nbits} for codes of {c.shape[-1] if c.ndim else 0} bytes, got {bits!r}"
        )
    b = np.unpackbits(c, axis=-1, count=int(bits), bitorder=bit_order)
    if not signs:
        return b
    return (b.astype(np.int8) * 2 - 1).astype(np.int8)


def check_uint8(x: object, name: str) -> np.ndarray:
    """The array itself if it is a uint8 ndarray; TypeError naming ``name`` otherwise (no silent cast)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy uint8 array of packed bits, got {type(x).__name__}")
    if x.dtype != np.uint8:
        hint = " (use bne.pack for {-1,+1}, bool or float embeddings)" if x.dtype != np.int8 else ""
        raise TypeError(f"{name} must have dtype uint8 (packed bits), got {x.dtype}{hint}")
    return x


def check_codes(x: object, name: str, code_bytes: int | None = None, *, contiguous: bool = True) -> np.ndarray:
    """A C-contiguous (n, code_bytes) uint8 array, or a TypeError/ValueError naming ``name``.

    1-D arrays are refused (use ``x.reshape(1, -1)`` for one code); non-contiguous arrays are
    accepted and copied once (``contiguous=False``: not yet, so that a caller can check the
    result size on the shape before the copy).
    """
    a = check_uint8(x, name)
    if a.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (n, bytes_per_code), got shape {a.shape}"
            + ("; for a single code use x.reshape(1, -1)" if a.ndim == 1 else "")
        )
    if code_bytes is not None and a.shape[1] != code_bytes:
        raise ValueError(f"{name} must have {code_bytes} bytes per row ({code_bytes * 8} bits), got {a.shape[1]}")
    if code_bytes is None and (a.shape[1] == 0 or a.shape[1] % 8):
        raise ValueError(f"{name} must have a multiple of 8 bytes per row (bits a multiple of 64), got {a.shape[1]}")
    return np.ascontiguousarray(a) if contiguous else a


#: Widest code an index takes: 2**20 bits (128 KiB per code), far above any text embedding;
#: the file header stores bits as u32 and distances must fit int32.
MAX_BITS = 1 << 20


def check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if bits <= 0 or bits % 64:
        raise ValueError(f"bits must be a positive multiple of 64, got {bits}")
    if bits > MAX_BITS:
        raise ValueError(f"bits must be at most {MAX_BITS} (2**20), got {bits}")
    return int(bits)


def check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def check_radius(radius: object) -> int:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)):
        raise TypeError(f"radius must be an int, got {type(radius).__name__}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return int(radius)


def check_threads(threads: object) -> int:
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 or None = all cores), got {threads}")
    return min(int(threads), 2**31 - 1)  # more than the cores is clamped to them anyway


#: Ids are integers in [0, MAX_ID]: int64 without the negatives, so -1 means only "no hit".
MAX_ID = int(np.iinfo(np.int64).max)


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def integer_array(ids: object, what: str, expected: str = "integers (int64)") -> np.ndarray:
    """`ids` as an integer array (any iterable; [] is int64); TypeError "{what} must be
    {expected}, got dtype ..." for other dtypes, ValueError for ints outside 0..2**63-1 that
    numpy cannot hold as integers."""
    if isinstance(ids, Iterable) and not isinstance(ids, (Sequence, np.ndarray)):
        ids = list(ids)  # a set, a generator, dict keys: numpy would make one object of them
    a = np.asarray(ids)
    if a.size == 0 and a.dtype != np.bool_:
        return a.astype(np.int64)  # [] is float64 to numpy
    if a.dtype == np.object_ or (
        a.dtype.kind == "f" and not isinstance(ids, np.ndarray) and all(map(_is_int, _flat(ids)))
    ):
        # Python ints outside int64/uint64 (object), or a list mixing 2**63.. with small or
        # negative ints (numpy makes floats of it): a range error, not a dtype one.
        ints = [v for v in _flat(ids) if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))]
        bad = [int(v) for v in ints if not 0 <= v <= MAX_ID][:5]
        raise ValueError(f"{what} must be integers in 0..2**63-1" + (f", got {bad}" if bad else ""))
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{what} must be {expected}, got dtype {a.dtype}")
    return a


def _flat(x: object) -> Iterator[object]:
    """The scalars of nested lists/tuples/arrays (for naming bad values in an error)."""
    if isinstance(x, (list, tuple, np.ndarray)):
        for v in x:
            yield from _flat(v)
    else:
        yield x
