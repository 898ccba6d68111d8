"""Type stubs for the compiled core (python/bindings.cpp)."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__version__: str

def available_isas() -> list[str]: ...
def active_isa() -> str: ...
def set_isa(isa: str) -> None: ...
def available_kernels() -> list[str]: ...
def kernel_info() -> dict[str, object]: ...
def get_num_threads() -> int: ...
def set_num_threads(threads: int) -> None: ...
def set_thread_budget(enabled: bool) -> None: ...
def thread_budget() -> dict[str, object]: ...
def knn(
    codes: npt.NDArray[np.uint8],
    queries: npt.NDArray[np.uint8],
    k: int,
    threads: int = 0,
    allow: npt.NDArray[np.uint8] | None = None,
    isa: str | None = None,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]: ...
def range_search(
    codes: npt.NDArray[np.uint8],
    queries: npt.NDArray[np.uint8],
    radius: int,
    threads: int = 0,
    allow: npt.NDArray[np.uint8] | None = None,
    isa: str | None = None,
    max_results: int = ...,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int64]]: ...
def search_segments(
    segments: Sequence[npt.NDArray[np.uint8]],
    queries: npt.NDArray[np.uint8],
    k: int,
    threads: int = 0,
    allow: npt.NDArray[np.uint8] | None = None,
    isa: str | None = None,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]: ...
def range_segments(
    segments: Sequence[npt.NDArray[np.uint8]],
    queries: npt.NDArray[np.uint8],
    radius: int,
    threads: int = 0,
    allow: npt.NDArray[np.uint8] | None = None,
    isa: str | None = None,
    max_results: int = ...,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int64]]: ...
def hamming(
    a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], threads: int = 0, isa: str | None = None
) -> npt.NDArray[np.int32]: ...
def stream_xor(codes: npt.NDArray[np.uint8]) -> int: ...
def bm25_search(
    queries: Sequence[Sequence[tuple[float, Sequence[tuple[int, int, bytes, bytes]]]]],
    knorm: npt.NDArray[np.float64],
    seg_of: npt.NDArray[np.int32] | None,
    allowed: npt.NDArray[np.bool_] | None,
    limit: int,
    prune: bool = True,
    prune_min_postings: int = 2048,
    threads: int = 1,
    knorm_key: int = 0,
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], int]]: ...
