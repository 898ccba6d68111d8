"""Plain numpy oracles the native kernels are checked against."""

from __future__ import annotations

import numpy as np


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise distances via np.bitwise_count (chunked over rows of a to bound memory)."""
    out = np.empty((len(a), len(b)), dtype=np.int64)
    step = max(1, (1 << 24) // max(1, b.size))
    for i in range(0, len(a), step):
        out[i : i + step] = np.bitwise_count(a[i : i + step, None, :] ^ b[None, :, :]).sum(-1, dtype=np.int64)
    return out


def knn(db: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k under bne's tie rule: (distance, position) ascending; -1 / INT32_MAX padding."""
    d = hamming(queries, db)
    pos = np.broadcast_to(np.arange(len(db)), d.shape)
    order = np.lexsort((pos, d), axis=1)[:, :k]
    D = np.full((len(queries), k), np.iinfo(np.int32).max, dtype=np.int32)
    I = np.full((len(queries), k), -1, dtype=np.int64)
    kk = order.shape[1]
    D[:, :kk] = np.take_along_axis(d, order, axis=1)
    I[:, :kk] = order
    return D, I


def random_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)


#: A tiny BERT config for quick model tests (the real vocabulary, so the shipped tokenizer fits).
TINY_BERT = dict(
    hidden_size=64,
    num_hidden_layers=1,
    num_attention_heads=1,
    intermediate_size=128,
    vocab_size=30522,
    max_position_embeddings=128,
)
