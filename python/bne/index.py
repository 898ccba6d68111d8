"""Exact Hamming search: the in-memory :class:`Index`, the search code path it shares with the
file-backed :class:`MappedIndex` (``mapped``, ``bne.open``), and array-level helpers.

Both index kinds hold codes in one or more *parts* (the RAM buffer; the segments of a file;
codes added but not yet committed) and search them with the same code path: one native call
takes every part (zero-copy views in position order) and one bitmap of searchable positions
(tombstones and allow-list together), plans threads over all of them and merges once under the
tie rule: by distance, then by position (insertion order).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from . import _core, storage
from .codes import MAX_ID, check_bits, check_codes, check_k, check_radius, check_threads, integer_array
from .errors import IndexFormatError, ResultTooLargeError

#: Distance reported in padded result slots (ids == -1), when k exceeds the searchable codes.
PAD_DISTANCE = int(np.iinfo(np.int32).max)


def _check_ids(ids: object, n: int) -> np.ndarray:
    """New ids: int64 in 0..2**63-1 (uint64 values are range-checked before the cast, never wrapped)."""
    a = integer_array(ids, "ids")
    if a.shape != (n,):
        raise ValueError(f"ids must have shape ({n},), one per code, got {a.shape}")
    if n and (a.min() < 0 or (a.dtype == np.uint64 and a.max() > MAX_ID)):
        bad = a[(a < 0) | (a > MAX_ID)] if a.dtype != np.uint64 else a[a > MAX_ID]
        raise ValueError(f"ids must be in 0..2**63-1 (-1 marks padding in results), got {bad[:5].tolist()}")
    return a.astype(np.int64, copy=False)


def lookup_ids(ids: object) -> np.ndarray:
    """Ids to look up (positions_of, remove, allow): out-of-domain values become -1 (absent)
    instead of wrapping onto a real id."""
    a = integer_array(ids, "ids").ravel()
    if a.dtype == np.uint64:
        return np.where(a > MAX_ID, -1, a.astype(np.int64))
    return a.astype(np.int64, copy=False)


#: The result-size limit of one search call, in bytes: ``nq * k * 12`` for top-k (int32 distance
#: + int64 id a slot; the call's peak is ~3x that), ``nq * M * (20 + bits/8)`` for rescoring M
#: candidates, and ``RANGE_BYTES_PER_HIT`` a hit for a range search (its working peak). Past it
#: the call raises ResultTooLargeError before allocating the result (a range search stops as
#: soon as it has found too many); BNE_MAX_RESULT_BYTES (or assigning this constant) changes it.
MAX_RESULT_BYTES = 1 << 30
#: Kept for code that imported the old name.
MAX_PADDED_RESULT_BYTES = MAX_RESULT_BYTES
#: Peak bytes a range-search hit takes while it is collected, sorted and returned (measured:
#: ~45); the default ``max_results`` is the limit over this (22 million hits for 1 GiB).
RANGE_BYTES_PER_HIT = 48


def max_result_bytes() -> int:
    """The result-size limit in force: BNE_MAX_RESULT_BYTES if set, else MAX_RESULT_BYTES."""
    env = os.environ.get("BNE_MAX_RESULT_BYTES", "").strip()
    if not env:
        return int(MAX_RESULT_BYTES)
    try:
        v = int(env)
    except ValueError:
        v = 0
    if v <= 0:
        raise ValueError(f"BNE_MAX_RESULT_BYTES must be a positive number of bytes, got {env[:40]!r}")
    return v


def _limit_text(limit: int) -> str:
    return f"the {limit:,}-byte result limit (BNE_MAX_RESULT_BYTES / bne.index.MAX_RESULT_BYTES)"


def check_result_bytes(nbytes: int, what: str, advice: str) -> None:
    """ResultTooLargeError when a search would return more than :func:`max_result_bytes`."""
    limit = max_result_bytes()
    if nbytes > limit:
        raise ResultTooLargeError(f"{what} needs {nbytes / 2**30:.2f} GiB, over {_limit_text(limit)}; {advice}")


def _check_result_size(nq: int, k: int, n: int) -> None:
    """(nq, k) int32 distances + int64 ids must fit the result limit; checked before any allocation."""
    advice = "search fewer queries at once or use a smaller k"
    if k > n:
        advice += f" (the index holds {n} codes: slots past them are only padding)"
    check_result_bytes(nq * k * 12, f"k={k} asks for results for {nq} queries, which", advice)


def contiguous_codes(a: np.ndarray, name: str) -> np.ndarray:
    """A checked code array made C-contiguous, after the result-size check: a copy of a
    non-contiguous (broadcast, Fortran-order, strided) array is refused past the same limit."""
    if a.flags.c_contiguous:
        return a
    check_result_bytes(
        a.shape[0] * a.shape[1],
        f"copying the non-contiguous {name} ({a.shape[0]} rows)",
        "pass fewer rows at once or a C-contiguous array",
    )
    return np.ascontiguousarray(a)


def _bitmap(n: int, positions: np.ndarray, allow: bool) -> np.ndarray:
    """Packed little-endian bitmap over n positions (padded to 64-bit words): all bits set except
    `positions` (allow=False), or only `positions` set (allow=True)."""
    nbytes = (n + 63) // 64 * 8
    pos = np.asarray(positions, np.int64)
    if len(pos) * 64 >= n:  # dense: one pass over a bool mask
        mask = np.zeros(nbytes * 8, bool)
        mask[pos] = True
        bits = np.packbits(mask, bitorder="little")
        return bits if allow else ~bits
    if allow:
        bits = np.zeros(nbytes, np.uint8)
        np.bitwise_or.at(bits, pos >> 3, (1 << (pos & 7)).astype(np.uint8))
    else:
        bits = np.full(nbytes, 0xFF, np.uint8)
        np.bitwise_and.at(bits, pos >> 3, (~(1 << (pos & 7))).astype(np.uint8))
    return bits


def merge_topk(results: list[tuple[np.ndarray, ...]], k: int, nq: int) -> tuple[np.ndarray, ...]:
    """Merges top-k lists ``(D, positions, *payload)`` of disjoint position ranges (shards) into
    one under the tie rule: by distance, then by position, padding (-1) last. Payload arrays (ids)
    follow their hits. The segments of one index are merged inside the native search instead."""
    if not results:
        return np.full((nq, k), PAD_DISTANCE, np.int32), np.full((nq, k), -1, np.int64)
    if len(results) == 1:
        return results[0]
    cols = [np.concatenate([r[j] for r in results], axis=1) for j in range(len(results[0]))]
    D, P = cols[0], cols[1]
    key = np.where(P >= 0, P, np.iinfo(np.int64).max)
    order = np.lexsort((key, D), axis=1)[:, :k]
    out = [np.take_along_axis(c, order, 1) for c in cols]
    if out[0].shape[1] < k:  # fewer hits than k in total: pad
        pad = ((0, 0), (0, k - out[0].shape[1]))
        out = [np.pad(c, pad, constant_values=PAD_DISTANCE if j == 0 else -1) for j, c in enumerate(out)]
    return tuple(out)


class _Rows:
    """Rows appended in batches and held once: a numpy array grown geometrically (amortised O(1)
    per row), read through zero-copy views of its filled part. A view handed out stays valid
    after later appends (growth moves to a new array; the old one lives while it is referenced)."""

    __slots__ = ("_a", "n")

    def __init__(self, width: int | None, dtype: np.typing.DTypeLike) -> None:
        self._a = np.empty((0, width) if width else (0,), dtype)
        self.n = 0

    def append(self, rows: np.ndarray) -> None:
        need = self.n + len(rows)
        if need > len(self._a):
            grown = np.empty((max(need, 2 * len(self._a), 256), *self._a.shape[1:]), self._a.dtype)
            grown[: self.n] = self._a[: self.n]
            self._a = grown
        self._a[self.n : need] = rows
        self.n = need

    def view(self) -> np.ndarray:
        v = self._a[: self.n]
        v.flags.writeable = False  # searches and callers read; only append() writes
        return v

    def __len__(self) -> int:
        return self.n


class _Part:
    """A contiguous run of positions [base, base + n): a zero-copy code array (a file segment,
    the RAM buffer, a writer's pending codes) and its ids (None: the ids are the positions)."""

    __slots__ = ("base", "n", "codes", "ids")

    def __init__(self, base: int, n: int, ids: np.ndarray | None, codes: np.ndarray) -> None:
        self.base, self.n, self.ids, self.codes = base, n, ids, codes

    def view(self) -> np.ndarray:
        """The codes without a copy (what the native search reads)."""
        return self.codes


class _SearchMixin:
    """search / range_search / ids over `_parts()`, with tombstones and id lookups."""

    bits: int
    code_bytes: int
    # Caches, dropped by _changed(): (sorted live ids, their positions); the tombstone bitmap.
    _lookup_cache: tuple[np.ndarray, np.ndarray] | None
    _bits_cache: dict[tuple[str, int], np.ndarray | None]

    # Implemented by subclasses.
    def _parts(self) -> list[_Part]:
        raise NotImplementedError

    def _tombstones(self) -> np.ndarray:
        raise NotImplementedError

    # -- sizes ------------------------------------------------------------------------------
    @property
    def npositions(self) -> int:
        """Stored positions, removed codes included: positions run 0 .. npositions-1 in
        insertion order (what search_positions returns and a bool ``allow`` mask covers)."""
        parts = self._parts()
        return parts[-1].base + parts[-1].n if parts else 0

    def removed_positions(self) -> np.ndarray:
        """Sorted positions of removed codes (tombstones), a read-only view."""
        t = self._tombstones().view()
        t.flags.writeable = False
        return t

    def __len__(self) -> int:
        """Number of live (searchable) codes."""
        return self.npositions - len(self._tombstones())

    @property
    def ntotal(self) -> int:
        """FAISS's name for ``len(index)``."""
        return len(self)

    # -- ids --------------------------------------------------------------------------------
    def ids(self) -> np.ndarray:
        """External ids of every stored position (removed ones included), in insertion order."""
        self._check_mapping()
        out = [p.ids if p.ids is not None else np.arange(p.base, p.base + p.n, dtype=np.int64) for p in self._parts()]
        return np.concatenate(out) if out else np.empty(0, np.int64)

    def _by_part(self, positions: np.ndarray) -> Iterator[tuple[_Part, np.ndarray, np.ndarray]]:
        """(part, selection mask, local positions) for each part that holds some of `positions`
        (-1 entries belong to none): work in proportion to the positions, not to the index."""
        parts = self._parts()
        if not parts or not positions.size:
            return
        bases = np.fromiter((p.base for p in parts), np.int64, len(parts))
        which = np.searchsorted(bases, positions, side="right") - 1
        which[(positions < 0) | (positions >= parts[-1].base + parts[-1].n)] = -1
        for w in np.unique(which[which >= 0]):
            sel = which == w
            yield parts[w], sel, positions[sel] - parts[w].base

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """The ids stored at `positions` (-1 where a position is -1 or out of range)."""
        positions = np.asarray(positions, np.int64)
        out = np.full(positions.shape, -1, np.int64)
        self._check_mapping()
        for p, sel, local in self._by_part(positions):
            out[sel] = local + p.base if p.ids is None else p.ids[local]
        return out

    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted live ids, their positions); built on first use, dropped on every change."""
        cache = self._lookup_cache
        if cache is None:
            ids = self.ids()
            pos = np.arange(len(ids), dtype=np.int64)
            tomb = self._tombstones()
            if len(tomb):
                keep = np.ones(len(ids), bool)
                keep[tomb] = False
                ids, pos = ids[keep], pos[keep]
            order = np.argsort(ids, kind="stable")
            cache = (ids[order], pos[order])
            self._check_stored_ids(cache[0])
            self._lookup_cache = cache
        return cache

    def _check_stored_ids(self, sorted_ids: np.ndarray) -> None:
        """Stored ids come from a file: a negative or repeated id would make hits ambiguous."""
        if len(sorted_ids) and (sorted_ids[0] < 0 or bool((sorted_ids[1:] == sorted_ids[:-1]).any())):
            where = getattr(self, "path", "index")
            raise IndexFormatError(f"{where}: stored ids are negative or repeated; the file is damaged")

    def _changed(self) -> None:
        self._lookup_cache = None
        self._bits_cache = {}

    def positions_of(self, ids: np.typing.ArrayLike) -> np.ndarray:
        """Positions of the given live ids (-1 where an id is absent or removed)."""
        ids = lookup_ids(ids)
        sorted_ids, pos = self._lookup()
        if not len(sorted_ids):
            return np.full(len(ids), -1, np.int64)
        i = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        return np.where(sorted_ids[i] == ids, pos[i], -1)

    def reconstruct(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored codes of live ids (any shape of ids; -1 or absent ids give all-zero codes)."""
        shape = np.shape(ids)
        ids = lookup_ids(ids).reshape(shape)
        pos = self.positions_of(ids.ravel())
        out = np.zeros((len(pos), self.code_bytes), np.uint8)
        self._check_mapping()
        for p, sel, local in self._by_part(pos):
            out[sel] = p.codes[local]
        return out.reshape(*ids.shape, self.code_bytes)

    # -- filters ----------------------------------------------------------------------------
    def _allowed_positions(self, allow: object) -> np.ndarray | None:
        if allow is None:
            return None
        if isinstance(allow, Iterable) and not isinstance(allow, (Sequence, np.ndarray)):
            allow = list(allow)  # a set, a generator, dict keys: as remove() takes them
        a = np.asarray(allow) if isinstance(allow, (Sequence, np.ndarray)) else None
        n = self.npositions
        if a is not None and a.dtype == np.bool_:
            if a.shape != (n,):
                raise ValueError(
                    f"allow as a bool mask must have shape ({n},) (one entry per stored code), got {a.shape}"
                )
            return np.flatnonzero(a)
        pos = self.positions_of(integer_array(allow, "allow", "a list/array of ids or a bool mask"))
        return np.unique(pos[pos >= 0])

    def _search_bits(self, allowed: np.ndarray | None) -> np.ndarray | None:
        """One bitmap of searchable positions over every part (tombstones and allow-list
        together), or None when every position is searchable. The tombstone bitmap is cached
        until the next change."""
        cache = self._bits_cache
        n = self.npositions
        key = ("tombstones", n)
        if key not in cache:
            tomb = self._tombstones()
            cache[key] = _bitmap(n, tomb, allow=False) if len(tomb) else None
        bits = cache[key]
        if allowed is None:
            return bits
        mine = _bitmap(n, allowed, allow=True)
        return mine if bits is None else mine & bits

    def _views(self) -> list[np.ndarray]:
        return [p.view() for p in self._parts()]

    # -- search -----------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, *, threads: int | None = None, allow: object = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest live codes of each query.

        Returns ``(D, I)``: int32 distances and int64 ids, both of shape ``(nq, k)``, rows sorted
        by distance, ties by insertion order (for default ids: smaller id first). When fewer than
        ``k`` codes can be returned, the remaining slots hold id ``-1`` and distance
        ``bne.PAD_DISTANCE`` (2**31 - 1). ``allow`` restricts the search to the given ids (or to a
        bool mask over stored codes, in insertion order). ``threads``: None or 0 uses
        :func:`bne.get_num_threads`. Ctrl-C interrupts a long search.
        """
        D, P = self.search_positions(queries, k, threads=threads, allow=allow)
        return D, self.ids_at(P)

    def search_positions(
        self, queries: np.ndarray, k: int, *, threads: int | None = None, allow: object = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, but returns stored positions (insertion order, -1 = padding)
        instead of ids: what a sharded search merges under the tie rule."""
        q = check_codes(queries, "queries", self.code_bytes, contiguous=False)
        k = check_k(k)
        threads = check_threads(threads)
        if len(self) == 0:
            raise ValueError("search on an empty index: add codes first")
        _check_result_size(len(q), k, len(self))  # on the shape, before any copy of the queries
        q = contiguous_codes(q, "queries")
        self._check_mapping()
        bits = self._search_bits(self._allowed_positions(allow))
        return _core.search_segments(self._views(), q, k, threads, bits)

    def range_search(
        self,
        queries: np.ndarray,
        radius: int,
        *,
        threads: int | None = None,
        allow: object = None,
        max_results: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every live code at distance ``<= radius`` from each query, FAISS-style.

        Returns ``(lims, D, I)``: the hits of query ``i`` are ``D[lims[i]:lims[i+1]]`` and
        ``I[lims[i]:lims[i+1]]`` (ids), sorted by distance then insertion order. (FAISS's
        binary range search keeps distances ``< radius``; bne's radius is inclusive.)
        ``bne.split_ranges(lims, I)`` gives one array per query.

        ``max_results`` caps the hits of all queries together (default: the result limit
        :func:`max_result_bytes` over ``RANGE_BYTES_PER_HIT``, 22 million for 1 GiB). A search that finds
        more stops early and raises ResultTooLargeError naming the cap: FAISS grows its result
        without bound, and a large radius can match every code for every query.
        """
        q = contiguous_codes(check_codes(queries, "queries", self.code_bytes, contiguous=False), "queries")
        radius = check_radius(radius)
        threads = check_threads(threads)
        by_limit = max_results is None
        if max_results is None:
            max_results = max(max_result_bytes() // RANGE_BYTES_PER_HIT, 1)
        elif isinstance(max_results, bool) or not isinstance(max_results, (int, np.integer)) or max_results < 0:
            raise ValueError(f"max_results must be an int >= 0, got {max_results!r}")
        max_results = min(int(max_results), MAX_ID)  # past int64: no cap
        if len(self) == 0:
            raise ValueError("range_search on an empty index: add codes first")
        self._check_mapping()
        bits = self._search_bits(self._allowed_positions(allow))
        try:
            # A distance never exceeds bits: a larger radius matches every code, as bits does.
            lims, D, P = _core.range_segments(
                self._views(), q, min(radius, self.bits), threads, bits, max_results=max_results
            )
        except ResultTooLargeError as e:
            if "more than" not in str(e):  # out of memory: the core's own message
                raise
            cap = f"max_results={max_results:,}" + (f", from {_limit_text(max_result_bytes())}" if by_limit else "")
            raise ResultTooLargeError(
                f"range_search with radius={radius} over {len(q)} queries found more than {max_results:,} "
                f"results ({cap}); use a smaller radius, fewer queries at once, or a larger max_results"
            ) from None
        return lims, D, self.ids_at(P)

    def _check_mapping(self) -> None:
        """Mapped indexes: refuse to read a file that shrank (reading past its end is SIGBUS).
        Every method that reads codes or ids of the mapping calls it first."""

    # -- shared mutation helpers ---------------------------------------------------------------
    def _new_ids(self, n: int, ids: object, max_id: int) -> np.ndarray:
        if ids is None:
            if max_id + n > MAX_ID:  # int64 would overflow: refuse before anything changes
                raise ValueError(
                    f"default ids are exhausted: they continue after the largest id ({max_id}) and stop at "
                    f"2**63-1; pass ids=... for these {n} codes"
                )
            return np.arange(max_id + 1, max_id + 1 + n, dtype=np.int64)
        new = _check_ids(ids, n)
        if len(np.unique(new)) != n:
            vals, counts = np.unique(new, return_counts=True)
            raise ValueError(f"duplicate ids in this batch: {vals[counts > 1][:10].tolist()}")
        if n and new.min() <= max_id:
            clash = new[self.positions_of(new) >= 0]
            if len(clash):
                raise ValueError(f"ids already in the index (remove them first): {clash[:10].tolist()}")
        return new

    def _positions_to_remove(self, ids: np.typing.ArrayLike) -> np.ndarray:
        pos = self.positions_of(ids)
        return np.unique(pos[pos >= 0])


class Index(_SearchMixin):
    """Exact top-k Hamming search over packed binary codes, held in memory.

    Codes are uint8 rows of ``bits / 8`` bytes (see :func:`bne.pack`). Ids default to
    0, 1, 2, ... in insertion order; ``add(codes, ids=...)`` stores int64 ids of your own.
    """

    def __init__(self, bits: int) -> None:
        self._bits = check_bits(bits)
        self._codes = _Rows(self._bits // 8, np.uint8)
        self._id_rows: _Rows | None = None  # None: ids are positions
        self._tomb = np.empty(0, np.int64)
        self._max_id = -1
        self._changed()

    bits = property(lambda self: self._bits)
    code_bytes = property(lambda self: self._bits // 8)

    def _parts(self) -> list[_Part]:
        if not len(self._codes):
            return []
        ids = self._id_rows.view() if self._id_rows is not None else None
        return [_Part(0, len(self._codes), ids, codes=self._codes.view())]

    def _tombstones(self) -> np.ndarray:
        return self._tomb

    def __repr__(self) -> str:
        return f"bne.Index(bits={self.bits}, ntotal={len(self)})"

    def add(self, codes: np.ndarray, ids: object = None) -> None:
        """Appends ``codes`` (uint8, shape ``(n, bits/8)``) with int64 ``ids`` (default: the next
        integers after the largest id so far). Duplicate ids raise ValueError."""
        c = check_codes(codes, "codes", self.code_bytes)
        new = self._new_ids(len(c), ids, self._max_id)
        n0 = len(self._codes)
        if ids is not None and self._id_rows is None and not np.array_equal(new, np.arange(n0, n0 + len(c))):
            self._id_rows = _Rows(None, np.int64)
            self._id_rows.append(np.arange(n0, dtype=np.int64))
        self._codes.append(c)
        if self._id_rows is not None:
            self._id_rows.append(new)
        if len(new):
            self._max_id = max(self._max_id, int(new.max()))
        self._changed()

    def remove(self, ids: np.typing.ArrayLike) -> int:
        """Removes the codes with these ids from every later search; returns how many were live."""
        pos = self._positions_to_remove(ids)
        self._tomb = np.union1d(self._tomb, pos).astype(np.int64)
        self._changed()
        return len(pos)

    def codes(self) -> np.ndarray:
        """A copy of the stored codes (removed ones included), shape ``(positions, bits/8)``."""
        return self._codes.view().copy()

    def _live(self) -> tuple[np.ndarray, np.ndarray]:
        keep = np.ones(len(self._codes), bool)
        keep[self._tomb] = False
        return self._codes.view()[keep], self.ids()[keep]

    def compact(self) -> None:
        """Drops removed codes from memory (ids are kept, positions renumbered)."""
        if not len(self._tomb):
            return
        codes, ids = self._live()
        self._codes, self._id_rows = _Rows(self.code_bytes, np.uint8), _Rows(None, np.int64)
        self._codes.append(codes)
        self._id_rows.append(ids)
        self._tomb = np.empty(0, np.int64)
        self._changed()

    def save(self, path: str | os.PathLike, *, metadata: dict | None = None, bit_order: str = "big") -> None:
        """Writes the live codes and their ids to ``path`` atomically (temporary file in the same
        folder, fsync, rename, fsync of the folder); open it with :func:`bne.open`."""
        header = storage.new_header(self.bits, bit_order, metadata)
        codes, ids = self._live()
        storage.save_atomic(path, header, [(codes, ids)], self._max_id)


def knn(codes: np.ndarray, queries: np.ndarray, k: int, *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` against a code array without building an index; ids are row numbers."""
    c = check_codes(codes, "codes", contiguous=False)
    q = check_codes(queries, "queries", c.shape[1], contiguous=False)
    k = check_k(k)
    if len(c) == 0:
        raise ValueError("codes is empty: nothing to search")
    _check_result_size(len(q), k, len(c))
    c, q = np.ascontiguousarray(c), contiguous_codes(q, "queries")  # the database is the caller's to size
    return _core.knn(c, q, k, check_threads(threads))


def hamming(a: np.ndarray, b: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """Pairwise Hamming distances between rows of ``a`` and ``b``: int32 of shape ``(len(a), len(b))``.
    A matrix over the result limit (:func:`max_result_bytes`) raises ResultTooLargeError first."""
    ca = check_codes(a, "a", contiguous=False)
    cb = check_codes(b, "b", ca.shape[1], contiguous=False)
    threads = check_threads(threads)
    check_result_bytes(
        len(ca) * len(cb) * 4,
        f"bne.hamming of {len(ca)} x {len(cb)} rows (an int32 matrix), which",
        "compare fewer rows at once, or use knn / an Index for the nearest codes only",
    )
    return _core.hamming(contiguous_codes(ca, "a"), contiguous_codes(cb, "b"), threads)


def split_ranges(lims: np.ndarray, values: np.ndarray) -> list[np.ndarray]:
    """Turns range-search output into one array per query: ``split_ranges(lims, I)``.

    ``lims`` must be what range_search returned with ``values``: 1-D integers starting at 0,
    never decreasing, ending at ``len(values)``; anything else is a ValueError."""
    lims = np.asarray(lims)
    if lims.ndim != 1 or not len(lims) or not np.issubdtype(lims.dtype, np.integer):
        raise ValueError(
            f"lims must be a 1-D integer array of nq + 1 offsets, got shape {lims.shape} dtype {lims.dtype}"
        )
    n = len(values)
    if lims[0] != 0 or lims[-1] != n or bool((lims[1:] < lims[:-1]).any()):
        raise ValueError(
            f"lims must start at 0, never decrease and end at len(values) = {n} (range_search's lims "
            f"with its D or I), got {lims[:5].tolist()}{' ...' if len(lims) > 5 else ''}"
        )
    return [values[lims[i] : lims[i + 1]] for i in range(len(lims) - 1)]
