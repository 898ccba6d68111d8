"""Loading a model: an encoder for a :class:`~bne.models.ModelRef`. Heads run through
:func:`bne.encoder.backend.load`; full embedders on the CPU as an ONNX graph exported once into the
export cache under their content hash (torch only to export it), torch when that is not possible
(or on a GPU). Only numpy is imported here; the runtimes load on first use."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..encoder import backend as encoders
from ..encoder.cache import embedder_onnx_path, ensure_cached
from ..encoder.onnx import OnnxEncoder, open_cached
from ..errors import ModelError, last_line
from .identity import _HEAD_KEYS, ModelRef, _model_files, _read_json, _sniff, _torch_state_dict, identify, resolve

#: BinaryEmbedder.encode's default, the length the seed was trained at
DEFAULT_MAX_LENGTH = 128


def load(
    ref: ModelRef,
    *,
    device: str = "cpu",
    threads: int | None = None,
    purpose: str = "query",
    quiet: bool = False,
    search_dirs: Iterable[str | os.PathLike] = (),
    backend: str = "auto",
    docs: int | None = None,
):
    """An encoder for ``ref`` (``.bits``, ``.max_length``, ``.info``, ``.encode(...)``). Heads run through
    :func:`bne.encoder.backend.load`; full embedders on the CPU as an ONNX graph exported once into the
    cache under their content hash, torch when that is not possible (or on a GPU). ``docs``: how many
    texts a bulk encoder is for, if known (see :func:`bne.encoder.backend.load`)."""
    path = resolve(ref, search_dirs=search_dirs)
    if not ref.sha256:  # an index older than content hashes: learn what its model is now
        ref = identify(path, ref.bits)
    if ref.kind == "head":
        enc = encoders.load(
            path, ref.bits, backend=backend, device=device, threads=threads, purpose=purpose, quiet=quiet, docs=docs
        )
    else:
        enc = _load_embedder(ref, path, runtime=backend, device=device, threads=threads, quiet=quiet)
    if enc.bits != ref.bits:  # pragma: no cover - identify read the same weights
        raise ModelError(f"model {ref.name!r} makes {enc.bits}-bit codes, expected {ref.bits}")
    enc.info.update(name=ref.name, model_sha256=ref.sha256, model_kind=ref.kind)
    return enc


def embedder_config(path: Path) -> dict[str, Any]:
    """normalize and max_length of a full embedder, read as BinaryEmbedder.from_pretrained reads them."""
    cfg: dict[str, Any] = {}
    if path.is_dir():
        if (path / "config.json").is_file():
            cfg = _read_json(path / "config.json")
    elif path.with_suffix(".json").is_file():
        cfg = _read_json(path.with_suffix(".json"))
        if not isinstance(cfg.get("backbone"), dict):
            cfg = {}
    ml = cfg.get("max_length", DEFAULT_MAX_LENGTH)
    if isinstance(ml, bool) or not isinstance(ml, int) or not 2 <= ml <= 8192:
        raise ModelError(f"{path}: max_length must be an int in [2, 8192], got {ml!r}")
    return {"normalize": bool(cfg.get("normalize", False)), "max_length": ml, "backbone": "BinaryEmbedder"}


def onnx_path(ref: ModelRef) -> Path:
    """Cache path of a full embedder's ONNX graph: named by its content hash and the export version."""
    return embedder_onnx_path(ref.sha256)


def _load_embedder(ref: ModelRef, path: Path, *, runtime: str, device: str, threads: int | None, quiet: bool):
    cfg = embedder_config(path)
    dev = encoders.resolve_device(device)
    if runtime not in encoders.BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(encoders.BACKENDS)}, got {runtime!r}")
    if dev == "cpu" and runtime in ("auto", "onnx", "openvino") and encoders.onnx_available():
        try:
            return _embedder_onnx(ref, path, cfg, threads=threads, quiet=quiet)
        except Exception as e:  # a failed export or runtime degrades the speed, not the ability to encode
            if runtime != "auto":
                raise
            if not quiet:
                print(f"bne: onnx encoder unavailable ({last_line(e)}); using torch", file=sys.stderr)
    from ..encoder.encoder import Encoder
    from ..encoder.model import BinaryEmbedder, default_tokenizer

    model = BinaryEmbedder.from_pretrained(path)
    info = {"name": ref.name, **cfg}
    return Encoder(
        model,
        default_tokenizer(),
        max_length=cfg["max_length"],
        threads=threads,
        device=dev,
        info=info,
        precision="fp16" if dev == "cuda" else "fp32",
    )


def _embedder_onnx(ref: ModelRef, path: Path, cfg: dict[str, Any], *, threads: int | None, quiet: bool):
    def export(tmp: Path) -> None:
        from ..encoder.export import export_embedder_onnx

        export_embedder_onnx(path, tmp, max_length=cfg["max_length"])

    return open_cached(
        lambda: ensure_cached(onnx_path(ref), export, label=ref.name, quiet=quiet),
        lambda p: EmbedderOnnxEncoder(p, path, threads=threads, config=cfg, info={"name": ref.name}),
        quiet,
    )


class EmbedderOnnxEncoder(OnnxEncoder):
    """A full BinaryEmbedder's ONNX graph; ``project`` reads its head from the embedder's weights."""

    def project(self, features, return_logits: bool = False):
        if self._head is None:
            self._head = _projection_weights(self.head_path)
        return super().project(features, return_logits)


def _projection_weights(path: Path) -> dict[str, Any]:
    import numpy as np

    weights, _ = _model_files(path)
    if _sniff(weights) == "safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="numpy") as f:
            sd = {k: f.get_tensor(k) for k in _HEAD_KEYS}
    else:
        sd = {k: v.float().numpy() for k, v in _torch_state_dict(weights).items() if k in _HEAD_KEYS}
    return {k[len("projection.") :]: np.asarray(v, dtype=np.float32) for k, v in sd.items()}
