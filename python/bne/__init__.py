"""bne: exact Hamming search over native binary text embeddings.

Search needs only numpy. ``bne.Collection`` (an index, its docstore and its model: what the
``bne`` command works on) and ``bne.read_corpus`` are imported on first use; the torch encoder
(``bne.Encoder`` / ``bne.BinaryEmbedder``) too.
"""

from __future__ import annotations

from ._core import (
    __version__,
    active_isa,
    available_isas,
    available_kernels,
    get_num_threads,
    kernel_info,
    set_num_threads,
)
from ._core import set_isa as _set_isa
from .codes import pack, unpack
from .errors import IndexFormatError, IndexLockedError
from .index import PAD_DISTANCE, Index, MappedIndex, hamming, knn, open, split_ranges


def __getattr__(name: str):
    # The encoder pulls in torch + transformers: import it only when it is asked for.
    if name in ("Encoder", "BinaryEmbedder"):
        from . import encoder

        return getattr(encoder, name)
    # The collection layer (documents, models, SQLite): imported on first use, like the encoder.
    if name in ("Collection", "build_sharded"):
        from . import collection

        return getattr(collection, name)
    if name in ("Doc", "read_corpus", "doc_text"):
        from . import corpus

        return getattr(corpus, name)
    raise AttributeError(f"module 'bne' has no attribute {name!r}")


def set_isa(isa: str) -> None:
    """Forces the kernels every later search uses: an ISA ('serial', 'avx2', 'avx512': its best
    variant here) or one kernel variant from ``available_kernels()`` (e.g. 'avx512-256').
    Raises ValueError when this CPU lacks it (``available_isas()`` lists the ISAs it has).
    ``kernel_info()`` says which kernel is in use and why."""
    _set_isa(isa)


# Encoder / BinaryEmbedder are left out of __all__ so that `from bne import *` stays numpy-only.
__all__ = [
    "Index",
    "IndexFormatError",
    "IndexLockedError",
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
