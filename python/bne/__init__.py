"""bne: exact Hamming search over native binary text embeddings.

Search needs only numpy. ``bne.Collection`` (an index, its docstore and its model: what the
``bne`` command works on) and ``bne.read_corpus`` are imported on first use; the torch encoder
(``bne.Encoder`` / ``bne.BinaryEmbedder``) too. ``dir(bne)`` lists those lazily loaded names;
``from bne import *`` imports only the numpy-only ones (``__all__``).
"""

from __future__ import annotations

from ._core import (
    __version__,
    active_isa,
    available_isas,
    available_kernels,
    get_num_threads,
    kernel_info,
)
from ._core import set_isa as _set_isa
from ._core import set_num_threads as _set_num_threads
from .codes import check_threads, pack, unpack
from .errors import IndexFormatError, IndexLockedError, ResultTooLargeError
from .index import PAD_DISTANCE, Index, hamming, knn, split_ranges
from .mapped import MappedIndex, open

# Names imported on first use, by the module that holds them: the encoder pulls in torch +
# transformers (OpenVinoEncoder: openvino), the collection layer documents, models and SQLite.
_LAZY = {
    "Encoder": "encoder",
    "BinaryEmbedder": "encoder",
    "OpenVinoEncoder": "encoder.openvino",
    "Collection": "collection",
    "build_sharded": "distributed",
    "Doc": "corpus",
    "read_corpus": "corpus",
    "doc_text": "corpus",
}


def __getattr__(name: str) -> object:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'bne' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{mod}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def set_isa(isa: str) -> None:
    """Forces the kernels every later search uses: an ISA ('serial', 'avx2', 'avx512': its best
    variant here) or one kernel variant from ``available_kernels()`` (e.g. 'avx512-256').
    Raises ValueError when this CPU lacks it (``available_isas()`` lists the ISAs it has).
    ``kernel_info()`` says which kernel is in use and why: its ``'kernel'`` is the name of that
    variant, one that ``set_isa`` takes."""
    _set_isa(isa)


def set_num_threads(threads: int | None) -> None:
    """Default thread count for searches (``threads=None`` or 0 in a call); 0 or None restores
    all cores, more than the cores this process may use is clamped to them."""
    _set_num_threads(check_threads(threads))


# The lazy names (_LAZY) are left out of __all__ so that `from bne import *` stays numpy-only.
__all__ = [
    "Index",
    "IndexFormatError",
    "IndexLockedError",
    "ResultTooLargeError",
    "MappedIndex",
    "open",
    "PAD_DISTANCE",
    "__version__",
    "active_isa",
    "available_isas",
    "available_kernels",
    "get_num_threads",
    "hamming",
    "kernel_info",
    "knn",
    "pack",
    "set_isa",
    "set_num_threads",
    "split_ranges",
    "unpack",
]
