"""bne's text encoder (needs torch + transformers: ``pip install 'bne[encoder]'``).

* :class:`BinaryEmbedder` - BERT -> mean pooling -> Linear -> LayerNorm -> sign, the layout of the
  published ``bne-binary-1024`` checkpoints; trainable end to end (straight-through sign).
* :class:`Encoder` - ready to use: ``Encoder.default(bits=1024)`` is all-MiniLM-L6-v2 plus a shipped
  natively binary head; ``encode`` returns packed codes for :class:`bne.Index`.
* :func:`rescore` - re-rank Hamming candidates by float query logits against their bits.
"""

from .encoder import Encoder, available_heads, head_path, load_minilm, rescore_candidates
from .model import BinaryEmbedder, bert_tokenizer, default_tokenizer, minilm_dir, sign_ste

rescore = rescore_candidates

__all__ = [
    "BinaryEmbedder",
    "Encoder",
    "available_heads",
    "bert_tokenizer",
    "default_tokenizer",
    "head_path",
    "load_minilm",
    "minilm_dir",
    "rescore",
    "rescore_candidates",
    "sign_ste",
]
