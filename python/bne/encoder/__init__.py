"""bne's text encoder.

* :func:`load` - the inference encoder for a head: ONNX Runtime + ``tokenizers`` (no torch in the
  process once the model is exported into the cache), or torch as a fallback and on GPUs.
* :class:`OnnxEncoder` / :class:`OpenVinoEncoder` - the torch-free encoders (``bne.encoder.onnx``,
  ``bne.encoder.openvino``; the backend rule in ``bne.encoder.backend``).
* :class:`BinaryEmbedder` - BERT -> mean pooling -> Linear -> LayerNorm -> sign, the layout of the
  published ``bne-binary-1024`` checkpoints; trainable end to end (straight-through sign). Needs torch.
* :class:`Encoder` - the torch encoder: ``Encoder.default(bits=1024)`` is all-MiniLM-L6-v2 plus a
  shipped natively binary head; ``encode`` returns packed codes for :class:`bne.Index`.
* :func:`rescore_candidates` - re-rank Hamming candidates by float query logits against their bits
  (``rescore`` is its deprecated old name).

Names are imported on first use, so ``from bne.encoder import load`` or ``rescore_candidates`` does
not import torch or transformers.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_LAZY = {
    # torch-free
    "available_heads": "base",
    "head_path": "base",
    "minilm_dir": "base",
    "cache_dir": "base",
    "rescore_candidates": "base",
    "load": "backend",
    "OnnxEncoder": "onnx",
    "OpenVinoEncoder": "openvino",
    "onnx_path": "cache",
    # torch + transformers
    "Encoder": "encoder",
    "load_minilm": "encoder",
    "BinaryEmbedder": "model",
    "bert_tokenizer": "model",
    "default_tokenizer": "model",
    "sign_ste": "model",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name == "rescore":  # not cached: every use warns
        warnings.warn("bne.encoder.rescore is deprecated; use bne.encoder.rescore_candidates", DeprecationWarning, 2)
        name = "rescore_candidates"
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'bne.encoder' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
