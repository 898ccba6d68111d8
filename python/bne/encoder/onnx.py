"""The torch-free inference encoder: ONNX Runtime + the ``tokenizers`` library.

The model graph (backbone + head, see :mod:`bne.encoder.export`) is exported from the installed
torch weights on first use into the export cache (:mod:`bne.encoder.cache`). After that no
process imports torch or transformers to encode.

    >>> enc = OnnxEncoder.default(1024)
    >>> codes = enc.encode(["a cat sits on the mat"])
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..codes import pack
from ..errors import last_line
from .base import (
    PROGRESS_THRESHOLD,
    CodeEncoder,
    bert_wordpiece,
    clip_for_tokenizer,
    default_head,
    length_batches,
    minilm_dir,
    read_head_config,
)
from .cache import ensure_cached, onnx_path

#: Texts tokenised at once (bounds the tokenizer's output for huge inputs); the next chunk is
#: tokenised on a helper thread while the model runs on this one.
TOKENIZE_CHUNK = 2048

E = TypeVar("E")


def ensure_onnx(head: str | os.PathLike, *, quiet: bool = False) -> Path:
    """The cached ONNX graph of ``head``, exporting it first if needed (imports torch only then)."""

    def export(tmp: Path) -> None:
        from .export import export_onnx

        export_onnx(head, tmp)

    return ensure_cached(onnx_path(head), export, label=Path(head).name, quiet=quiet)


def open_cached(ensure: Callable[[], Path], make: Callable[[Path], E], quiet: bool) -> E:
    """``make(ensure())``: an encoder over a cached graph. A cached file that the runtime cannot
    read (damaged outside bne) is removed and exported again, once."""
    path = ensure()
    try:
        return make(path)
    except (KeyboardInterrupt, ValueError, TypeError):
        raise
    except Exception as e:  # onnxruntime / openvino raise their own Exception subclasses
        if not quiet:
            print(f"bne: cached model {path} is unreadable ({last_line(e)}); exporting it again", file=sys.stderr)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return make(ensure())


class OnnxEncoder(CodeEncoder):
    """Texts -> packed binary codes with ONNX Runtime (CPU), no torch. Same interface as
    :class:`bne.encoder.Encoder`: ``encode``, ``embed``, ``project``, ``search``, ``bits``, ``info``.

    ``threads``: ONNX Runtime intra-op threads (None: ONNX Runtime's default, one per physical core).
    ``optimization``: ONNX Runtime graph optimisation level, "all" (default), "extended", "basic"
    or "disable".
    """

    backend = "onnx"
    device = "cpu"
    precision = "fp32"

    def __init__(
        self,
        model: str | os.PathLike,
        head: str | os.PathLike,
        *,
        threads: int | None = None,
        max_length: int | None = None,
        optimization: str = "all",
        info: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.model_path = Path(model)
        self.head_path = Path(head)
        # config: given for a full embedder (bne.models), whose weights are not a head file
        cfg = read_head_config(self.head_path) if config is None else dict(config)
        self.normalize = bool(cfg.get("normalize", True))
        self.max_length = int(max_length or cfg.get("max_length", 256))
        self.threads = threads
        self.optimization = optimization
        self.info = {"name": self.head_path.stem, **cfg, **(info or {})}
        self._sessions: dict[int, Any] = {}
        self._tok = None
        self._tok_len = -1
        self._head: dict[str, np.ndarray] | None = None
        sess = self._session(threads)
        out = {o.name: o.shape for o in sess.get_outputs()}
        self.bits = int(out["logits"][1])
        self.hidden_size = int(out["pooled"][1])
        if self.bits % 64:
            raise ValueError(f"bne.Index needs a multiple of 64 bits, the model has {self.bits}")

    @classmethod
    def from_head(
        cls, head: str | os.PathLike, *, threads: int | None = None, quiet: bool = False, **kw: Any
    ) -> OnnxEncoder:
        """The encoder of a head file, exporting its ONNX graph into the cache on first use. A cached
        file that the runtime cannot read (damaged outside bne) is removed and exported again, once."""
        return open_cached(lambda: ensure_onnx(head, quiet=quiet), lambda p: cls(p, head, threads=threads, **kw), quiet)

    @classmethod
    def default(cls, bits: int = 1024, *, threads: int | None = None, **kw: Any) -> OnnxEncoder:
        return cls.from_head(default_head(bits), threads=threads, **kw)

    def __repr__(self) -> str:
        return (
            f"bne.encoder.{type(self).__name__}({self.info.get('name')!r}, bits={self.bits}, "
            f"max_length={self.max_length}, precision={self.precision!r})"
        )

    # -- runtime pieces --------------------------------------------------------------------------
    def _session(self, threads: int | None):
        n = int(threads or self.threads or 0)
        s = self._sessions.get(n)
        if s is None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.graph_optimization_level = {
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            }[self.optimization]
            so.intra_op_num_threads = n
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            s = ort.InferenceSession(str(self.model_path), sess_options=so, providers=["CPUExecutionProvider"])
            self._sessions[n] = s
        return s

    @property
    def tokenizer(self):
        if self._tok is None or self._tok_len != self.max_length:  # max_length may be changed after load
            self._tok = bert_wordpiece(minilm_dir() / "vocab.txt", self.max_length)
            self._tok_len = self.max_length
        return self._tok

    def _run(self, texts: list[str], batch_size: int, show_progress: bool | None, threads: int | None, desc: str):
        """Yields (row indices, logits, pooled) per batch; batches hold texts of similar length
        (long first), each padded only to its own longest text."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sess = self._session(threads)
        tok = self.tokenizer
        if show_progress is None:
            show_progress = len(texts) > PROGRESS_THRESHOLD
        bar = None
        if show_progress:
            from ..console import progress_bar  # plain lines when stderr is a log file

            bar = progress_bar(len(texts), desc, "text")
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1, thread_name_prefix="bne-tokenize")  # tokenizers releases the GIL
        max_length = self.max_length

        def tokenize(chunk: list[str]):
            return tok.encode_batch(clip_for_tokenizer(tok, chunk, max_length))  # memory follows max_length

        def batches() -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
            nxt = pool.submit(tokenize, texts[:TOKENIZE_CHUNK])
            for c0 in range(0, len(texts), TOKENIZE_CHUNK):
                encs = nxt.result()
                if c0 + TOKENIZE_CHUNK < len(texts):
                    nxt = pool.submit(tokenize, texts[c0 + TOKENIZE_CHUNK : c0 + 2 * TOKENIZE_CHUNK])
                lens = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
                for rows in length_batches(lens, batch_size):
                    width = int(lens[rows[0]])
                    ids = np.zeros((len(rows), width), dtype=np.int64)
                    for r, i in enumerate(rows):
                        ids[r, : lens[i]] = encs[i].ids
                    mask = (np.arange(width)[None, :] < lens[rows][:, None]).astype(np.int64)
                    yield rows + c0, {"input_ids": ids, "attention_mask": mask}

        try:
            if hasattr(sess, "run_pipelined"):  # OpenVINO: batches in flight on all streams while the next is padded
                results = sess.run_pipelined(batches(), ["logits", "pooled"])
            else:
                results = ((rows, sess.run(["logits", "pooled"], feeds)) for rows, feeds in batches())
            for rows, (z, pooled) in results:
                yield rows, z, pooled
                if bar is not None:
                    bar.update(len(rows))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()

    # -- public API ------------------------------------------------------------------------------
    def _logit_batches(self, texts, batch_size, show_progress, threads):  # CodeEncoder.encode
        for rows, z, _ in self._run(texts, batch_size, show_progress, threads, "encoding"):
            yield rows, z

    def embed(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        show_progress: bool | None = None,
        threads: int | None = None,
        normalize: bool = True,
    ) -> np.ndarray:
        """The float backbone embeddings (mean pooled, L2-normalised by default)."""
        texts = self._check_texts(texts)
        out = np.empty((len(texts), self.hidden_size), dtype=np.float32)
        for rows, _, pooled in self._run(texts, batch_size, show_progress, threads, "embedding"):
            out[rows] = pooled
        return _l2(out) if normalize else out

    def project(self, features: np.ndarray, return_logits: bool = False):
        """Codes (and logits) of precomputed backbone features (:meth:`embed` with ``normalize=False``)."""
        if self._head is None:
            from safetensors.numpy import load_file

            sd = load_file(str(self.head_path))
            self._head = {
                k[len("projection.") :] if k.startswith("projection.") else k: v.astype(np.float32)
                for k, v in sd.items()
            }
        w = self._head
        x = np.asarray(features, dtype=np.float32)
        if self.normalize:
            x = _l2(x)
        z = x @ w["0.weight"].T + w["0.bias"]
        mu = z.mean(1, keepdims=True)
        var = z.var(1, keepdims=True)
        z = ((z - mu) / np.sqrt(var + 1e-5) * w["1.weight"] + w["1.bias"]).astype(np.float32)
        codes = pack(z >= 0)
        return (codes, z) if return_logits else codes


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
