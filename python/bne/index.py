"""Exact Hamming search: the in-memory :class:`Index`, the file-backed :class:`MappedIndex`
(``bne.open``), and array-level helpers.

Both index kinds hold codes in one or more *parts* (the RAM buffer; the segments of a file;
codes added but not yet committed) and search them with the same code path: one native call
takes every part (zero-copy views in position order) and one bitmap of searchable positions
(tombstones and allow-list together), plans threads over all of them and merges once under the
tie rule: by distance, then by position (insertion order).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from . import _core, storage
from .codes import check_bits, check_codes, check_k, check_threads
from .errors import IndexFormatError, ResultTooLargeError

#: Distance reported in padded result slots (ids == -1), when k exceeds the searchable codes.
PAD_DISTANCE = int(np.iinfo(np.int32).max)


def _check_radius(radius: object) -> int:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)):
        raise TypeError(f"radius must be an int, got {type(radius).__name__}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return int(radius)


#: Ids are integers in [0, MAX_ID]: int64 without the negatives, so -1 means only "no hit".
MAX_ID = int(np.iinfo(np.int64).max)


def _integer_array(ids: object, what: str) -> np.ndarray:
    a = np.asarray(ids)
    if a.dtype == np.object_:  # Python ints too large for int64 / uint64
        raise ValueError(f"{what} must be integers in 0..2**63-1")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{what} must be integers (int64), got dtype {a.dtype}")
    return a


def _check_ids(ids: object, n: int) -> np.ndarray:
    """New ids: int64 in 0..2**63-1 (uint64 values are range-checked before the cast, never wrapped)."""
    a = _integer_array(ids, "ids")
    if a.shape != (n,):
        raise ValueError(f"ids must have shape ({n},), one per code, got {a.shape}")
    if n and (a.min() < 0 or (a.dtype == np.uint64 and a.max() > MAX_ID)):
        bad = a[(a < 0) | (a > MAX_ID)] if a.dtype != np.uint64 else a[a > MAX_ID]
        raise ValueError(f"ids must be in 0..2**63-1 (-1 marks padding in results), got {bad[:5].tolist()}")
    return a.astype(np.int64, copy=False)


def _lookup_ids(ids: object) -> np.ndarray:
    """Ids to look up (positions_of, remove, allow): out-of-domain values become -1 (absent)
    instead of wrapping onto a real id."""
    a = _integer_array(ids, "ids").ravel()
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
        ids = _lookup_ids(ids)
        sorted_ids, pos = self._lookup()
        if not len(sorted_ids):
            return np.full(len(ids), -1, np.int64)
        i = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        return np.where(sorted_ids[i] == ids, pos[i], -1)

    def reconstruct(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored codes of live ids (any shape of ids; -1 or absent ids give all-zero codes)."""
        shape = np.shape(ids)
        ids = _lookup_ids(ids).reshape(shape)
        pos = self.positions_of(ids.ravel())
        out = np.zeros((len(pos), self.code_bytes), np.uint8)
        for p, sel, local in self._by_part(pos):
            out[sel] = p.codes[local]
        return out.reshape(*ids.shape, self.code_bytes)

    # -- filters ----------------------------------------------------------------------------
    def _allowed_positions(self, allow: object) -> np.ndarray | None:
        if allow is None:
            return None
        a = np.asarray(allow)
        n = self.npositions
        if a.dtype == np.bool_:
            if a.shape != (n,):
                raise ValueError(
                    f"allow as a bool mask must have shape ({n},) (one entry per stored code), got {a.shape}"
                )
            return np.flatnonzero(a)
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"allow must be a list/array of ids or a bool mask, got dtype {a.dtype}")
        pos = self.positions_of(a)
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
        q = check_codes(queries, "queries", self.code_bytes)
        k = check_k(k)
        threads = check_threads(threads)
        if len(self) == 0:
            raise ValueError("search on an empty index: add codes first")
        _check_result_size(len(q), k, len(self))
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
        q = check_codes(queries, "queries", self.code_bytes)
        radius = _check_radius(radius)
        threads = check_threads(threads)
        by_limit = max_results is None
        if max_results is None:
            max_results = max(max_result_bytes() // RANGE_BYTES_PER_HIT, 1)
        elif isinstance(max_results, bool) or not isinstance(max_results, (int, np.integer)) or max_results < 0:
            raise ValueError(f"max_results must be an int >= 0, got {max_results!r}")
        if len(self) == 0:
            raise ValueError("range_search on an empty index: add codes first")
        self._check_mapping()
        bits = self._search_bits(self._allowed_positions(allow))
        try:
            lims, D, P = _core.range_segments(self._views(), q, radius, threads, bits, max_results=int(max_results))
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
        """Mapped indexes: refuse to read a file that shrank (reading past its end is SIGBUS)."""

    # -- shared mutation helpers ---------------------------------------------------------------
    def _new_ids(self, n: int, ids: object, max_id: int) -> np.ndarray:
        if ids is None:
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


class _Snapshot(_SearchMixin):
    """One state of a MappedIndex: a commit's segments (plus a writer's pending codes), its
    tombstones and the caches built over them. Every read of the index (search, ids, lookups)
    goes through the snapshot current when it starts, so a refresh() in another thread, which
    installs a new snapshot with one assignment, never mixes two commits inside one call. The
    numpy views keep their mapping alive while a snapshot uses them."""

    def __init__(self, owner: MappedIndex, parts: list[_Part], tomb: np.ndarray, end: int, fd: int) -> None:
        self._owner, self._p, self._tomb, self._end, self._fd = owner, parts, tomb, end, fd
        self._ino = os.fstat(fd).st_ino  # which file: a descriptor number can be reused
        self.bits, self.code_bytes, self.path = owner._header.bits, owner._header.code_bytes, owner.path
        self._own_fd = -1  # set when a refresh moved the index to a new file: this closes the old one
        self._changed()

    def _parts(self) -> list[_Part]:
        return self._p

    def _tombstones(self) -> np.ndarray:
        return self._tomb

    def _check_mapping(self) -> None:
        self._owner._check_open()
        st = os.fstat(self._owner._fd)
        if self._fd != self._owner._fd or self._ino != st.st_ino:  # a file replaced since: never truncated
            return
        size = st.st_size
        if size < self._end:
            raise IndexFormatError(
                f"{self.path}: the file shrank to {size} bytes while open (it held "
                f"{self._end}); another program truncated it; reopen it"
            )

    def __del__(self) -> None:
        if self._own_fd >= 0:
            os.close(self._own_fd)


class MappedIndex(_SearchMixin):
    """An index file mapped read-only into memory; see :func:`bne.open`.

    Searches read the codes straight from the mapping. In mode ``"a"`` the index also takes
    ``add`` / ``remove``; they are visible to this object's searches at once and reach the file
    at ``commit()``. Changes not committed are lost when the object is closed or the process dies.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        mode: str = "r",
        *,
        verify: bool = False,
        expect_bits: int | None = None,
        bits: int | None = None,
        metadata: dict | None = None,
        bit_order: str = "big",
        repair: bool = False,
    ) -> None:
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' (read-only) or 'a' (append), got {mode!r}")
        self.path = os.fspath(path)
        self.mode = mode
        self._fd = -1
        self._closed = False
        self._refresh_lock = threading.Lock()
        if mode == "a" and not os.path.lexists(self.path):
            if bits is None:
                raise FileNotFoundError(f"{self.path}: no such index; pass bits=... to create one")
            with contextlib.suppress(FileExistsError):  # another process created it first: append to theirs
                storage.save_atomic(
                    self.path, storage.new_header(check_bits(bits), bit_order, metadata), [], -1, overwrite=False
                )
        self._fd = storage.lock_writer(self.path) if mode == "a" else storage.open_index_file(self.path, False)
        try:
            self._load(warn=not verify)
            expect_bits = expect_bits if expect_bits is not None else bits
            if expect_bits is not None and expect_bits != self.bits:
                raise IndexFormatError(f"{self.path}: index holds {self.bits}-bit codes, expected {expect_bits}")
            if mode == "a":
                self._repair(repair)
                storage.clean_temps(storage.real_target(self.path))
            if verify:
                self.verify()
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise

    # -- state ------------------------------------------------------------------------------
    def _load(self, warn: bool = True) -> None:
        size = os.fstat(self._fd).st_size
        self._header, self._commit, self._problems = storage.read_state(self.path, self._fd, size)
        self._mm = storage.map_file(self._fd, self._commit.end_offset)
        self._segments = []
        base = 0
        for seg in self._commit.segments:
            if seg.count:  # a crafted file may list many empty segments: they hold nothing to scan
                codes, ids = storage.segment_arrays(self._mm, self._header, seg)
                self._segments.append(_Part(base, seg.count, ids, codes=codes))
            base += seg.count
        # Codes added since the last commit, held once (searched and written from these rows).
        self._pending_codes = _Rows(self._header.code_bytes, np.uint8)
        self._pending_ids = _Rows(None, np.int64)
        self._tomb = self._commit.tombstones
        self._max_id = self._commit.max_id
        self._changed()
        if self._problems and self.mode == "r" and warn:
            what = storage.describe_problems(self._problems, self._commit, size)
            warnings.warn(
                f"{self.path}: {what}; opened commit {self._commit.seq}; `bne verify` reports it and "
                f"bne.open(path, mode='a') repairs it",
                RuntimeWarning,
                2,
            )

    def _repair(self, allow_loss: bool) -> None:
        """Writer only: forget a torn tail and rewrite bad commit slots, unless that could throw
        away a commit whose record was lost (then refuse, unless repair=True)."""
        size = os.fstat(self._fd).st_size
        if not allow_loss and storage.may_hide_a_commit(self._problems, self._commit, size):
            what = storage.describe_problems(self._problems, self._commit, size)
            raise IndexFormatError(
                f"{self.path}: {what}. Nothing was changed; to keep commit {self._commit.seq} and "
                f"drop those bytes, back the file up and open it with bne.open(path, 'a', repair=True)"
            )
        if storage.repair(self._fd, self._commit, self._problems):
            self._problems = []

    def refresh(self) -> bool:
        """Follows a writer: maps the commits made since this object opened (or last refreshed)
        and returns True, or returns False when there is none (a stat and two small reads).

        A long-lived reader (a service holding ``bne.open(path)``) calls it before a search, or
        every few seconds; without it the object keeps searching the commit it mapped. A file
        replaced by ``compact()`` or ``save()`` is reopened. Searches running in other threads
        finish on the state they started with; later ones see the new commits. In append mode
        the object is the writer and always current: False.
        """
        self._check_open()
        if self.mode == "a":
            return False
        with self._refresh_lock:
            st, cur = os.stat(self.path), os.fstat(self._fd)
            if (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino):
                if storage.latest_seq(self._fd) == self._commit.seq:
                    return False
                self._reload(self._fd)
                return True
            fd = storage.open_index_file(self.path, False)
            try:
                self._reload(fd)
            except BaseException:
                os.close(fd)
                raise
            return True

    def _reload(self, fd: int) -> None:
        """Maps the newest commit of `fd` (this file, or the file now at the path); on any
        error the object keeps its state."""
        old_fd, old_snap = self._fd, self._snap
        saved = dict(self.__dict__)
        try:
            self._fd = fd
            self._load()
            if self.bits != saved["_header"].bits:
                raise IndexFormatError(
                    f"{self.path}: replaced by an index of {self.bits}-bit codes (this one holds "
                    f"{saved['_header'].bits}); open it again"
                )
        except BaseException:
            self.__dict__.update(saved)
            raise
        if fd != old_fd:
            old_snap._own_fd = old_fd  # closed when the last search of the old file lets go

    def _check_mapping(self) -> None:
        self._snap._check_mapping()

    def _changed(self) -> None:
        parts = self._segments
        if len(self._pending_codes):
            pending = _Part(
                self._commit.count, len(self._pending_codes), self._pending_ids.view(), codes=self._pending_codes.view()
            )
            parts = [*self._segments, pending]
        self._snap = _Snapshot(self, parts, self._tomb, self._commit.end_offset, self._fd)

    def _parts(self) -> list[_Part]:
        return self._snap._parts()

    # Reads go through one snapshot (see _Snapshot): consistent while refresh() swaps it.
    @property
    def npositions(self) -> int:
        return self._snap.npositions

    def __len__(self) -> int:
        return len(self._snap)

    def removed_positions(self) -> np.ndarray:
        return self._snap.removed_positions()

    def ids(self) -> np.ndarray:
        return self._snap.ids()

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        return self._snap.ids_at(positions)

    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        return self._snap._lookup()

    def positions_of(self, ids: np.typing.ArrayLike) -> np.ndarray:
        return self._snap.positions_of(ids)

    def reconstruct(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._snap.reconstruct(ids)

    def search(
        self, queries: np.ndarray, k: int, *, threads: int | None = None, allow: object = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._snap.search(queries, k, threads=threads, allow=allow)

    def search_positions(
        self, queries: np.ndarray, k: int, *, threads: int | None = None, allow: object = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._snap.search_positions(queries, k, threads=threads, allow=allow)

    def range_search(
        self,
        queries: np.ndarray,
        radius: int,
        *,
        threads: int | None = None,
        allow: object = None,
        max_results: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._snap.range_search(queries, radius, threads=threads, allow=allow, max_results=max_results)

    search.__doc__ = _SearchMixin.search.__doc__
    search_positions.__doc__ = _SearchMixin.search_positions.__doc__
    range_search.__doc__ = _SearchMixin.range_search.__doc__

    def _tombstones(self) -> np.ndarray:
        return self._tomb

    def _check_open(self) -> None:
        if self._closed or self._fd < 0:
            raise ValueError(f"{self.path}: index is closed")

    def _check_writable(self, what: str) -> None:
        self._check_open()
        if self.mode != "a":
            raise PermissionError(f"{self.path}: opened read-only; {what} needs bne.open(path, mode='a')")

    # -- properties -------------------------------------------------------------------------
    bits = property(lambda self: self._header.bits)
    code_bytes = property(lambda self: self._header.code_bytes)
    bit_order = property(lambda self: self._header.bit_order)
    metadata = property(lambda self: dict(self._header.metadata))

    def info(self) -> dict[str, Any]:
        """Format version, bits, counts, segments, commit number, metadata, file size."""
        d = storage.describe(self._header, self._commit)
        d.update(
            path=self.path,
            file_bytes=os.fstat(self._fd).st_size if self._fd >= 0 else None,
            pending=self.npositions - self._commit.count,
            isa=_core.active_isa(),
        )
        return d

    def segments(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Zero-copy read-only (codes, ids) views of each committed segment inside the mapping."""
        out = []
        for p in self._segments:
            assert p.ids is not None  # a file segment always stores its ids
            out.append((p.codes, p.ids))
        return out

    def codes(self) -> np.ndarray:
        """All stored codes (removed ones included): the mapped array itself for a one-segment
        file (no copy), a concatenated copy otherwise."""
        parts = [p.codes for p in self._parts()]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.empty((0, self.code_bytes), np.uint8)

    def __repr__(self) -> str:
        return f"bne.MappedIndex({self.path!r}, mode={self.mode!r}, bits={self.bits}, ntotal={len(self)})"

    # -- writing ----------------------------------------------------------------------------
    def add(self, codes: np.ndarray, ids: object = None) -> None:
        """Adds codes (and int64 ids; default: the next integers after the largest id) to the
        pending batch; searchable at once by this object, durable after ``commit()``."""
        self._check_writable("add")
        c = check_codes(codes, "codes", self.code_bytes)
        new = self._new_ids(len(c), ids, self._max_id)
        if not len(c):
            return
        self._pending_codes.append(c)
        self._pending_ids.append(new)
        self._max_id = max(self._max_id, int(new.max()))
        self._changed()

    def remove(self, ids: np.typing.ArrayLike) -> int:
        """Marks the codes with these ids removed (tombstones written at ``commit()``); returns
        how many were live."""
        self._check_writable("remove")
        pos = self._positions_to_remove(ids)
        self._tomb = np.union1d(self._tomb, pos).astype(np.int64)
        self._changed()
        return len(pos)

    def commit(self) -> None:
        """Makes every add/remove so far durable (fsync). After a crash the file opens with every
        committed code and nothing of what was not committed."""
        self._check_writable("commit")
        if (
            not len(self._pending_codes)
            and np.array_equal(self._tomb, self._commit.tombstones)
            and self._max_id == self._commit.max_id
        ):
            return
        parts = [(self._pending_codes.view(), self._pending_ids.view())] if len(self._pending_codes) else []
        storage.write_commit(self._fd, self._header, self._commit, parts, self._tomb, self._max_id)
        self._load()

    def compact(self, path: str | os.PathLike | None = None) -> None:
        """Writes the live codes and ids (no tombstones, one segment) to a new file, atomically.
        Without ``path`` (append mode only) the new file replaces this one and this object
        switches to it; readers of the old file keep their mapping."""
        self._check_open()
        if path is None:
            self._check_writable("compact() in place")
            self.commit()
        keep = np.ones(self.npositions, bool)
        keep[self._tomb] = False
        codes, ids = self.codes()[keep], self.ids()[keep]
        header = storage.new_header(self.bits, self.bit_order, self._header.metadata)
        if path is not None:
            storage.save_atomic(path, header, [(codes, ids)], self._max_id)
            return
        self._fd = storage.replace_locked(self._fd, self.path, header, [(codes, ids)], self._max_id)
        self._load()

    # -- checking and closing -----------------------------------------------------------------
    def verify(self) -> None:
        """Recomputes every checksum (header, commit records, table, codes and ids of every
        segment); raises IndexFormatError naming the first damaged part."""
        self._check_open()
        size = os.fstat(self._fd).st_size
        _, commit, problems = storage.read_state(self.path, self._fd, size)
        if problems:
            raise IndexFormatError(f"{self.path}: {storage.describe_problems(problems, commit, size)}")
        self._check_mapping()
        storage.verify_segments(self.path, self._mm, self._header, self._commit)
        ids = self.ids()
        if len(ids) and (ids.min() < 0 or ids.max() > self._commit.max_id):
            raise IndexFormatError(
                f"{self.path}: stored ids lie outside 0..{self._commit.max_id} (the recorded largest id)"
            )
        self._lookup()  # repeated ids

    def close(self) -> None:
        """Releases the file (and the writer lock); uncommitted changes are discarded."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._closed = True

    def __enter__(self) -> MappedIndex:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        """Commits (append mode, on success) and closes."""
        try:
            if exc_type is None and self.mode == "a" and not self._closed:
                self.commit()
        finally:
            self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1


def open(
    path: str | os.PathLike,
    mode: str = "r",
    *,
    verify: bool = False,
    expect_bits: int | None = None,
    bits: int | None = None,
    metadata: dict | None = None,
    bit_order: str = "big",
    repair: bool = False,
) -> MappedIndex:
    """Opens an index file written by ``Index.save`` or by a writer.

    ``mode="r"``: read-only mapping; opening reads a few pages whatever the file size.
    ``mode="a"``: append (one writer at a time, a file lock); creates the file when ``bits`` is
    given and it does not exist. ``verify=True`` checks every checksum first. ``expect_bits``
    raises IndexFormatError when the file holds codes of another width. A writer repairs what a
    crash leaves (a torn tail, a torn commit slot) but refuses a file where that could drop a
    commit whose record was lost (a zeroed slot with data after the last valid commit);
    ``repair=True`` accepts that loss explicitly.
    """
    return MappedIndex(
        path,
        mode,
        verify=verify,
        expect_bits=expect_bits,
        bits=bits,
        metadata=metadata,
        bit_order=bit_order,
        repair=repair,
    )


def knn(codes: np.ndarray, queries: np.ndarray, k: int, *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` against a code array without building an index; ids are row numbers."""
    c = check_codes(codes, "codes")
    q = check_codes(queries, "queries", c.shape[1])
    k = check_k(k)
    if len(c) == 0:
        raise ValueError("codes is empty: nothing to search")
    _check_result_size(len(q), k, len(c))
    return _core.knn(c, q, k, check_threads(threads))


def hamming(a: np.ndarray, b: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """Pairwise Hamming distances between rows of ``a`` and ``b``: int32 of shape ``(len(a), len(b))``."""
    ca = check_codes(a, "a")
    cb = check_codes(b, "b", ca.shape[1])
    return _core.hamming(ca, cb, check_threads(threads))


def split_ranges(lims: np.ndarray, values: np.ndarray) -> list[np.ndarray]:
    """Turns range-search output into one array per query: ``split_ranges(lims, I)``."""
    return [values[lims[i] : lims[i + 1]] for i in range(len(lims) - 1)]
