"""Backbone features (mean-pooled, not normalised) of many texts, cached on disk by content."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..fileio import replacing


def feature_cache_path(texts: list[str], encoder, cache_dir: str | os.PathLike) -> Path:
    h = hashlib.sha256()
    h.update(repr((encoder.info.get("backbone", "minilm"), encoder.max_length)).encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return Path(cache_dir) / f"feats-{h.hexdigest()[:20]}.npy"


def backbone_features(
    texts: list[str], encoder, *, batch_size: int = 64, cache_dir: str | None = None, show_progress: bool | None = None
) -> np.ndarray:
    """Raw (unnormalised) mean-pooled backbone features of ``texts``, cached as .npy in ``cache_dir``."""
    path = feature_cache_path(texts, encoder, cache_dir) if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path)
    x = encoder.embed(texts, batch_size=batch_size, show_progress=show_progress, normalize=False)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_name = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")  # np.save adds .npy to other names
        with replacing(path, tmp=tmp_name) as tmp:
            np.save(tmp, x)
    return x
