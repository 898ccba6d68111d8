"""Exact Hamming search: the FAISS-shaped :class:`Index` and array-level helpers."""

from __future__ import annotations

import numpy as np

from . import _core
from .codes import check_bits, check_codes, check_k, check_threads

#: Distance reported in padded result slots (ids == -1), when k exceeds the searchable codes.
PAD_DISTANCE = int(np.iinfo(np.int32).max)


def _check_allow(allow: object, n: int) -> np.ndarray | None:
    if allow is None:
        return None
    a = np.asarray(allow)
    if a.dtype != np.bool_:
        raise TypeError(f"allow must be a bool mask with one entry per stored code, got dtype {a.dtype}")
    if a.shape != (n,):
        raise ValueError(f"allow must have shape ({n},), got {a.shape}")
    return np.ascontiguousarray(a)


def _check_radius(radius: object) -> int:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)):
        raise TypeError(f"radius must be an int, got {type(radius).__name__}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return int(radius)


class Index:
    """Exact top-k Hamming search over packed binary codes, held in memory.

    Codes are uint8 rows of ``bits / 8`` bytes (see :func:`bne.pack`). Results follow one tie
    rule: by increasing distance, and among equal distances by increasing id (insertion
    position), so the top-k list is unique and identical on every ISA and thread count.
    """

    def __init__(self, bits: int) -> None:
        self._flat = _core.FlatIndex(check_bits(bits))

    @property
    def bits(self) -> int:
        return self._flat.bits

    @property
    def code_bytes(self) -> int:
        return self._flat.code_bytes

    @property
    def ntotal(self) -> int:
        """Number of stored codes (FAISS's name for ``len(index)``)."""
        return len(self._flat)

    def __len__(self) -> int:
        return len(self._flat)

    def __repr__(self) -> str:
        return f"bne.Index(bits={self.bits}, ntotal={len(self)})"

    def add(self, codes: np.ndarray) -> None:
        """Appends ``codes`` (uint8, shape ``(n, bits/8)``); their ids are their positions."""
        self._flat.add(check_codes(codes, "codes", self.code_bytes))

    def codes(self) -> np.ndarray:
        """A copy of the stored codes, shape ``(len(self), bits/8)``."""
        return self._flat.codes()

    def search(
        self, queries: np.ndarray, k: int, *, threads: int | None = None, allow: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest codes of each query.

        Returns ``(D, I)``: int32 distances and int64 ids, both of shape ``(nq, k)``, rows sorted
        by (distance, id). When fewer than ``k`` codes can be returned, the remaining slots hold
        id ``-1`` and distance ``bne.PAD_DISTANCE`` (2**31 - 1). ``allow`` (bool, one entry per
        stored code) restricts the search to the codes marked True. ``threads``: None or 0 uses
        :func:`bne.get_num_threads`. Ctrl-C interrupts a long search.
        """
        q = check_codes(queries, "queries", self.code_bytes)
        k = check_k(k)
        if len(self) == 0:
            raise ValueError("search on an empty index: add codes first")
        return self._flat.search(q, k, check_threads(threads), _check_allow(allow, len(self)))

    def range_search(
        self, queries: np.ndarray, radius: int, *, threads: int | None = None, allow: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every code at distance ``<= radius`` from each query, FAISS-style.

        Returns ``(lims, D, I)``: the hits of query ``i`` are ``D[lims[i]:lims[i+1]]`` and
        ``I[lims[i]:lims[i+1]]``, sorted by (distance, id). (FAISS's binary range search keeps
        distances ``< radius``; bne's radius is inclusive.)
        """
        q = check_codes(queries, "queries", self.code_bytes)
        if len(self) == 0:
            raise ValueError("range_search on an empty index: add codes first")
        return self._flat.range_search(q, _check_radius(radius), check_threads(threads), _check_allow(allow, len(self)))


def knn(codes: np.ndarray, queries: np.ndarray, k: int, *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` against a code array without building an index; ids are row numbers."""
    c = check_codes(codes, "codes")
    q = check_codes(queries, "queries", c.shape[1])
    k = check_k(k)
    if len(c) == 0:
        raise ValueError("codes is empty: nothing to search")
    return _core.knn(c, q, k, check_threads(threads))


def hamming(a: np.ndarray, b: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """Pairwise Hamming distances between rows of ``a`` and ``b``: int32 of shape ``(len(a), len(b))``."""
    ca = check_codes(a, "a")
    cb = check_codes(b, "b", ca.shape[1])
    return _core.hamming(ca, cb, check_threads(threads))


def split_ranges(lims: np.ndarray, values: np.ndarray) -> list[np.ndarray]:
    """Turns range-search output into one array per query: ``split_ranges(lims, I)``."""
    return [values[lims[i] : lims[i + 1]] for i in range(len(lims) - 1)]
