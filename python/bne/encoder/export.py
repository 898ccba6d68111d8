"""Exports a head + its all-MiniLM-L6-v2 backbone, or a full BinaryEmbedder, to one ONNX graph
(needs torch + transformers).

Graph: ``input_ids, attention_mask`` (int64, batch x tokens) -> ``logits`` (batch x bits, the
pre-sign head outputs) and ``pooled`` (batch x hidden, the unnormalised mean-pooled backbone output).
``bne.encoder.onnx`` runs it with ONNX Runtime; this module is imported only to (re)create it, and
checks what it wrote with ONNX Runtime directly (it imports no runtime module: they import it).

    python -m bne.encoder.export [HEAD.safetensors] -o model.onnx
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .encoder import Encoder
from .model import mean_pool

OPSET = 17
#: Texts that every export is checked on (sign agreement with the torch model it came from).
CHECK_TEXTS = [
    "a cat sits on the mat",
    "Binary codes make exact search over millions of documents cheap.",
    "Les élèves étudient l'économie à Zürich, naïvement.",
    "東京の天気は晴れです",
    "0.5 mg/kg of IL-6 inhibitor reduced inflammation (p < 0.01) in 12 of 15 mice " * 6,
]


class _Graph(nn.Module):
    def __init__(self, enc: Encoder) -> None:
        super().__init__()
        self.bert = enc.model.encoder
        self.projection = enc.model.projection
        self.normalize = enc.model.normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        h = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        pooled = mean_pool(h, attention_mask)
        e = nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled
        return self.projection(e), pooled


def export_encoder_onnx(enc: Encoder, out: str | os.PathLike) -> Path:
    """Traces ``enc``'s model (BERT -> mean pool -> head) to the ONNX graph at ``out``."""
    out = Path(out)
    cfg = enc.model.bert_config
    attn = cfg._attn_implementation
    # The eager attention traces to plain MatMul/Softmax; sdpa's mask helpers trace less portably.
    cfg._attn_implementation = "eager"
    graph = _Graph(enc).eval()
    ids = torch.tensor([[101, 1037, 4937, 102, 0], [101, 2023, 2003, 1037, 102]], dtype=torch.int64)
    mask = (ids != 0).long()
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape-constant branches that are constant for BERT
            torch.onnx.export(
                graph,
                (ids, mask),
                str(out),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input_ids", "attention_mask"],
                output_names=["logits", "pooled"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "tokens"},
                    "attention_mask": {0: "batch", 1: "tokens"},
                    "logits": {0: "batch"},
                    "pooled": {0: "batch"},
                },
            )
    finally:
        cfg._attn_implementation = attn
    return out


def _onnx_logits(path: Path, enc: Encoder, texts: Sequence[str]) -> np.ndarray:
    """The graph's logits for ``texts`` run by ONNX Runtime, one text at a time (no padding),
    tokenised by ``enc``'s own tokenizer."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    out = []
    for t in texts:
        ids = np.asarray([enc.tokenizer(t, truncation=True, max_length=enc.max_length)["input_ids"]], dtype=np.int64)
        out.append(sess.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0])
    return np.stack(out).astype(np.float32)


def check_export(enc: Encoder, path: str | os.PathLike, label: str) -> None:
    """RuntimeError unless the graph at ``path`` (run by ONNX Runtime) gives ``enc``'s (torch) codes
    on :data:`CHECK_TEXTS`."""
    a = enc.encode(CHECK_TEXTS, return_logits=True)[1]
    b = _onnx_logits(Path(path), enc, CHECK_TEXTS)
    agree = float(np.mean((a >= 0) == (b >= 0)))
    err = float(np.max(np.abs(a - b)))
    if agree < 0.995 or err > 0.05:
        raise RuntimeError(
            f"the ONNX export of {label} disagrees with torch: {agree:.4f} of bits equal, max |logit diff| {err:.3g}"
        )


def export_onnx(head: str | os.PathLike, out: str | os.PathLike, *, check: bool = True) -> Path:
    """Writes the ONNX graph of ``head`` (on all-MiniLM-L6-v2) to ``out`` and, with ``check``,
    verifies with ONNX Runtime that its codes match the torch model's on :data:`CHECK_TEXTS`."""
    enc = Encoder.from_head(head)
    out = export_encoder_onnx(enc, out)
    if check:
        check_export(enc, out, Path(head).name)
    return out


def export_embedder_onnx(
    path: str | os.PathLike, out: str | os.PathLike, *, max_length: int = 128, check: bool = True
) -> Path:
    """The same graph for a full :class:`BinaryEmbedder` (a ``save_pretrained`` folder, a ``bne train
    --full`` file or a seed ``.pt``): its own BERT instead of all-MiniLM-L6-v2, the same tokenizer."""
    from .model import BinaryEmbedder, default_tokenizer

    model = BinaryEmbedder.from_pretrained(path)
    enc = Encoder(model, default_tokenizer(), max_length=max_length)
    out = export_encoder_onnx(enc, out)
    if check:
        check_export(enc, out, Path(path).name)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from .base import default_head

    p = argparse.ArgumentParser(prog="python -m bne.encoder.export", description=__doc__.splitlines()[0])
    p.add_argument("head", nargs="?", default=None, help="head .safetensors (default: the shipped head for --bits)")
    p.add_argument("--bits", type=int, default=1024)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    out = export_onnx(args.head or default_head(args.bits), args.output)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
