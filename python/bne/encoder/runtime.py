"""The torch-free inference encoder: ONNX Runtime + the ``tokenizers`` library.

The model graph (backbone + head, see :mod:`bne.encoder.export`) is exported from the installed
torch weights on first use into ``<cache>/onnx/<head>-<hash>.onnx``, named by the content hashes of
the head, its config and the backbone, so a changed head or backbone gets a new file. The export
runs under a file lock and lands by atomic rename, so concurrent first runs export once and never
see a partial file. After that no process imports torch or transformers to encode.

    >>> enc = load("default", 1024)                  # OnnxEncoder on CPU (torch fallback)
    >>> codes = enc.encode(["a cat sits on the mat"])
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..codes import pack
from .base import CodeEncoder, cache_dir, default_head, file_sha256, length_batches, minilm_dir, read_head_config

#: Bump when the exported graph changes (inputs, outputs, opset): old cache files are then ignored.
EXPORT_VERSION = 1
BACKENDS = ("auto", "onnx", "openvino", "torch")
DEVICES = ("cpu", "cuda", "auto")
#: Texts tokenised at once (bounds the tokenizer's output for huge inputs); the next chunk is
#: tokenised on a helper thread while the model runs on this one.
TOKENIZE_CHUNK = 2048
PROGRESS_THRESHOLD = 2000


def onnx_path(head: str | os.PathLike) -> Path:
    """Cache path of the ONNX graph for ``head``: versioned by the head, config and backbone hashes."""
    head = Path(head)
    h = hashlib.sha256()
    h.update(file_sha256(head, memo=False).encode())
    cfg = head.with_suffix(".json")
    if cfg.is_file():
        h.update(file_sha256(cfg, memo=False).encode())
    h.update(file_sha256(minilm_dir() / "model.safetensors").encode())
    h.update(f"export-v{EXPORT_VERSION}".encode())
    return cache_dir() / "onnx" / f"{head.stem}-{h.hexdigest()[:20]}.onnx"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the atomic rename alone keeps files whole
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_onnx(head: str | os.PathLike, *, quiet: bool = False) -> Path:
    """The cached ONNX graph of ``head``, exporting it first if needed (imports torch only then)."""

    def export(tmp: Path) -> None:
        from .export import export_onnx

        export_onnx(head, tmp)

    return ensure_cached(onnx_path(head), export, label=Path(head).name, quiet=quiet)


def ensure_cached(path: Path, export: Callable[[Path], Any], *, label: str, quiet: bool = False) -> Path:
    """``path`` in the cache, made by ``export(tmp)`` first if missing: under a file lock, landing by
    atomic rename, so concurrent first runs export once and never see a partial file.

    The sha256 of what was exported is recorded beside it (``<path>.sha256``) and checked before
    each use (the hash itself is memoised by :func:`file_sha256` under the file's inode and ctime, so
    only a changed file is read again): a graph damaged or replaced outside bne would change every
    code without an error, so it is exported again instead, with one note."""
    if path.is_file() and _cache_ok(path):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(
            f"cannot create the model cache {path.parent} ({e.strerror}); set BNE_CACHE_DIR to a writable folder"
        ) from None
    with _locked(path.with_name(path.name + ".lock")):
        if path.is_file():
            if _cache_ok(path):  # another process exported it while we waited
                return path
            if not quiet:  # kept until the new export replaces it, but never used
                why = "does not match its recorded sha256" if _sha_file(path).exists() else "has no recorded sha256"
                print(f"bne: cached model {path} {why}; exporting it again", file=sys.stderr)
        if not quiet:
            print(f"bne: exporting {label} to ONNX once (cached in {path.parent})", file=sys.stderr)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            export(tmp)
            _record_sha(tmp, path)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return path


def _sha_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _record_sha(tmp: Path, final: Path) -> None:
    """Writes the sha256 of ``tmp`` (about to be renamed to ``final``) to ``final``'s .sha256 file."""
    from .base import atomic_write_text

    atomic_write_text(_sha_file(final), file_sha256(tmp, memo=False) + "\n")


def _cache_ok(path: Path) -> bool:
    """Whether the cached ``path`` holds exactly what was exported (its recorded sha256). A file
    without a record (written before records, or a crash between the two renames) does not pass."""
    try:
        want = _sha_file(path).read_text(encoding="ascii").strip()
        return len(want) == 64 and file_sha256(path) == want
    except (OSError, ValueError):
        return False


def _discard(path: Path) -> None:
    for f in (path, _sha_file(path)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)


def bert_wordpiece(vocab_file: str | os.PathLike, max_length: int):
    """BERT uncased WordPiece as a ``tokenizers.Tokenizer``: the same pipeline transformers'
    ``BertTokenizerFast`` builds from a vocab.txt ([CLS] ... [SEP], truncation to ``max_length``)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from tokenizers.processors import BertProcessing

    vocab: dict[str, int] = {}
    with open(vocab_file, encoding="utf-8") as f:
        for i, line in enumerate(f):
            vocab[line.rstrip("\n")] = i
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = BertPreTokenizer()
    tok.post_processor = BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    tok.enable_truncation(max_length=int(max_length))
    tok.no_padding()
    return tok


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
        path = ensure_onnx(head, quiet=quiet)
        try:
            return cls(path, head, threads=threads, **kw)
        except (KeyboardInterrupt, ValueError, TypeError):
            raise
        except Exception as e:  # onnxruntime / openvino raise their own Exception subclasses
            if not quiet:
                print(f"bne: cached model {path} is unreadable ({_first_line(e)}); exporting it again", file=sys.stderr)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return cls(ensure_onnx(head, quiet=quiet), head, threads=threads, **kw)

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
            from ..progress import progress_bar  # plain lines when stderr is a log file

            bar = progress_bar(len(texts), desc, "text")
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1, thread_name_prefix="bne-tokenize")  # tokenizers releases the GIL

        def batches() -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
            nxt = pool.submit(tok.encode_batch, texts[:TOKENIZE_CHUNK])
            for c0 in range(0, len(texts), TOKENIZE_CHUNK):
                encs = nxt.result()
                if c0 + TOKENIZE_CHUNK < len(texts):
                    nxt = pool.submit(tok.encode_batch, texts[c0 + TOKENIZE_CHUNK : c0 + 2 * TOKENIZE_CHUNK])
                lens = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
                for rows in length_batches(lens, batch_size):
                    width = int(lens[rows[0]])
                    ids = np.zeros((len(rows), width), dtype=np.int64)
                    for r, i in enumerate(rows):
                        ids[r, : lens[i]] = encs[i].ids
                    mask = (np.arange(width)[None, :] < lens[rows][:, None]).astype(np.int64)
                    yield rows + c0, {"input_ids": ids, "attention_mask": mask}

        try:
            if isinstance(sess, _OvSession):  # batches in flight on all streams while the next is padded
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


class OpenVinoEncoder(OnnxEncoder):
    """The same cached ONNX graph run by OpenVINO (optional: ``pip install openvino``), which can run
    the backbone in bf16 on CPUs with AVX512-BF16 or AMX. ``precision``: 'fp32', 'bf16' or 'int8'
    (static int8, calibrated once by NNCF and cached, see :func:`ensure_int8`; needs ``pip install nncf``
    the first time).
    ``hint``: OpenVINO's PERFORMANCE_HINT, 'throughput' (default: bulk work, see :class:`_OvSession`)
    or 'latency' (one stream over all threads: a single small batch at a time)."""

    backend = "openvino"

    def __init__(
        self,
        model: str | os.PathLike,
        head: str | os.PathLike,
        *,
        precision: str = "fp32",
        hint: str = "throughput",
        **kw: Any,
    ) -> None:
        if precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"the OpenVINO backend runs fp32, bf16 or int8, not {precision!r}")
        if hint not in ("throughput", "latency"):
            raise ValueError(f"hint must be 'throughput' or 'latency', not {hint!r}")
        self.precision = precision
        self.hint = hint
        self._quiet = bool(kw.pop("_quiet", False))  # set by from_head: no note when quantising
        super().__init__(model, head, **kw)

    @classmethod
    def from_head(cls, head: str | os.PathLike, *, threads: int | None = None, quiet: bool = False, **kw: Any):
        return super().from_head(head, threads=threads, quiet=quiet, _quiet=quiet, **kw)

    def _session(self, threads: int | None):
        n = int(threads or self.threads or 0)
        s = self._sessions.get(n)
        if s is None:
            if self.precision != "int8":
                s = _OvSession(self.model_path, n, self.precision, self.hint)
            else:
                path = ensure_int8(self.model_path, quiet=self._quiet)
                try:
                    s = _OvSession(path, n, self.precision, self.hint)
                except Exception as e:  # a damaged int8 file (the ONNX file is not at fault: ValueError)
                    for f in (path, path.with_suffix(".bin")):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(f)
                    raise ValueError(f"cached int8 model {path} is unreadable ({_first_line(e)}); removed it") from e
            self._sessions[n] = s
        return s


class _OvSession:
    """``InferenceSession.run``/``get_outputs`` over an OpenVINO compiled model, plus
    :meth:`run_pipelined` for bulk work.

    Compiled with PERFORMANCE_HINT THROUGHPUT: OpenVINO splits the threads into streams (on 2
    threads: 2 streams of 1 thread) that each run their own batch, with no synchronisation between
    threads inside a layer; one infer request per stream keeps them all busy, and Python pads the
    next batch meanwhile. Measured 1.07-1.10x fewer CPU-ms per passage than LATENCY (one stream over
    all threads) on 2 threads (docs/ENCODER.md). A single request (a few queries) then runs on one
    stream's threads only, which is why queries use ONNX Runtime.
    """

    def __init__(self, path: Path, threads: int, precision: str, hint: str = "throughput") -> None:
        import openvino as ov

        core = ov.Core()
        if precision == "int8":  # the layers left unquantized run in bf16 where the CPU has it
            precision = "bf16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "fp32"
        cfg: dict[str, str | int] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": hint.upper(),
        }
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = threads
        self.model = core.compile_model(core.read_model(str(path)), "CPU", cfg)
        n = int(self.model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests = [self.model.create_infer_request() for _ in range(max(1, n))]

    def get_outputs(self):
        from types import SimpleNamespace

        return [
            SimpleNamespace(
                name=o.get_any_name(), shape=[d.get_length() if d.is_static else None for d in o.get_partial_shape()]
            )
            for o in self.model.outputs
        ]

    def _outputs(self, request, names) -> list[np.ndarray]:
        # copies: a request's output buffers are reused by its next inference
        return [np.array(request.get_tensor(self.model.output(n)).data, dtype=np.float32, copy=True) for n in names]

    def run(self, names, feeds):
        self.requests[0].infer(feeds)
        return self._outputs(self.requests[0], names)

    def run_pipelined(self, batches, names):
        """Yields (key, outputs) for each (key, feeds) of ``batches``, in order, with up to one
        batch per stream in flight."""
        from collections import deque

        free = list(self.requests)
        busy: deque = deque()
        try:
            for key, feeds in batches:
                if not free:
                    req, k = busy.popleft()
                    req.wait()
                    out = self._outputs(req, names)
                    free.append(req)
                    yield k, out
                req = free.pop()
                req.start_async(feeds)  # copies the inputs (share_inputs defaults to False)
                busy.append((req, key))
            while busy:
                req, k = busy.popleft()
                req.wait()
                out = self._outputs(req, names)
                free.append(req)
                yield k, out
        finally:
            for req, _ in busy:  # stopped early (error, interrupted): let running requests finish
                req.wait()


#: Bump when the quantisation recipe changes: old int8 files are then ignored.
INT8_VERSION = 1
#: Calibration texts for the int8 activation ranges (measured: 300 suffice, docs/ENCODER.md).
INT8_CALIBRATION = 300
_CALIBRATION_MODULES = (
    "argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools", "gzip", "hashlib",
    "heapq", "http.client", "inspect", "io", "ipaddress", "itertools", "json", "logging", "math", "os",
    "pathlib", "pickle", "random", "re", "shutil", "socket", "sqlite3", "statistics", "string",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "typing", "unittest", "urllib.parse",
    "uuid", "zipfile",
)  # fmt: skip


def calibration_texts(n: int | None = None) -> list[str]:
    """English prose of every length that every install has without a download or a licence
    question: the docstrings of standard-library modules and of their public top-level classes and
    functions, read from the source files with ``ast`` (not imported: what a process imported or
    patched before cannot change them). The int8 file's name hashes these texts, so another
    Python's docstrings get their own file."""
    import ast
    import importlib.util
    import re

    out: list[str] = []
    seen: set[str] = set()
    for name in _CALIBRATION_MODULES:
        try:
            spec = importlib.util.find_spec(name)
            src = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
            tree = ast.parse(src)
        except (ImportError, OSError, ValueError, SyntaxError):  # pragma: no cover - no source shipped
            continue
        nodes: list[Any] = [tree] + [
            d
            for d in tree.body
            if isinstance(d, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not d.name.startswith("_")
        ]
        for node in nodes:
            doc = re.sub(r"\s+", " ", ast.get_docstring(node) or "").strip()[:1500]
            if len(doc) > 40 and doc not in seen:
                seen.add(doc)
                out.append(doc)
    n = INT8_CALIBRATION if n is None else n
    return [out[i * len(out) // n] for i in range(n)] if len(out) > n else out  # spread over the modules


def int8_path(onnx: Path, texts: Sequence[str] | None = None) -> Path:
    """Where the int8 model of ``onnx`` is cached: named by the recipe version and the calibration texts."""
    h = hashlib.sha256(f"int8-v{INT8_VERSION}".encode())
    for t in calibration_texts() if texts is None else texts:
        h.update(t.encode())
        h.update(b"\0")
    return onnx.with_name(f"{onnx.stem}-int8-{h.hexdigest()[:12]}.xml")


def int8_ready(head: str | os.PathLike) -> bool:
    """The int8 model of ``head`` is already in the cache (no quantisation to wait for)."""
    p = int8_path(onnx_path(head))
    return p.is_file() and p.with_suffix(".bin").is_file() and _cache_ok(p) and _cache_ok(p.with_suffix(".bin"))


def ensure_int8(onnx: Path, *, quiet: bool = False) -> Path:
    """The OpenVINO IR (.xml + .bin) of ``onnx`` with static int8 weights and activations, made
    once by ``nncf.quantize`` (transformer preset: SmoothQuant, mixed symmetric/asymmetric ranges)
    on :func:`calibration_texts`, cached next to the ONNX file under the same lock-and-rename
    rules. ValueError when NNCF is needed and missing."""
    texts = calibration_texts()
    path = int8_path(onnx, texts)
    weights = path.with_suffix(".bin")
    if path.is_file() and weights.is_file() and _cache_ok(path) and _cache_ok(weights):
        return path
    with _locked(path.with_name(path.name + ".lock")):
        if path.is_file() and weights.is_file():
            if _cache_ok(path) and _cache_ok(weights):
                return path
            if not quiet:
                print(
                    f"bne: cached int8 model {path} does not match its recorded sha256; quantising it again",
                    file=sys.stderr,
                )
            _discard(path)
            _discard(weights)
        if not _have("nncf"):
            raise ValueError("precision int8 needs NNCF once, to quantise the model: pip install nncf")
        if len(texts) < 8:  # pragma: no cover - a Python without its library sources
            raise ValueError("precision int8: no standard-library sources to calibrate on; use fp32 or bf16")
        if not quiet:
            print(f"bne: quantising {onnx.name} to int8 once (cached in {onnx.parent})", file=sys.stderr)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.xml")
        try:
            _quantize(onnx, tmp, texts)
            _record_sha(tmp.with_suffix(".bin"), weights)
            _record_sha(tmp, path)
            os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(tmp, path)  # the .xml last: it is what readers look for
        finally:
            for f in (tmp, tmp.with_suffix(".bin")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f)
    return path


def _quantize(onnx: Path, out: Path, texts: list[str]) -> None:
    """Runs :func:`_quantize_child` in a child Python: NNCF imports torch, scikit-learn and more,
    which the encoding process then need not load (nor hold). ValueError with the child's last
    error line when it fails."""
    import json
    import subprocess

    import bne

    env = dict(os.environ)
    src = str(Path(bne.__file__).resolve().parent.parent)  # bne importable in the child as here
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = "import json, sys; from bne.encoder.runtime import _quantize_child; _quantize_child(*json.load(sys.stdin))"
    try:
        r = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps([str(onnx), str(out), texts]),
            capture_output=True,
            text=True,
            env=env,
        )
    except OSError as e:
        raise ValueError(f"int8 quantisation could not start {sys.executable} ({e.strerror or e})") from None
    if r.returncode != 0 or not out.is_file():
        lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip() and "warn" not in ln.lower()]
        raise ValueError(f"int8 quantisation failed ({lines[-1] if lines else f'exit status {r.returncode}'})")


def _quantize_child(onnx: str, out: str, texts: list[str]) -> None:
    import logging

    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)
    tok = bert_wordpiece(minilm_dir() / "vocab.txt", 256)
    data = []
    for e in tok.encode_batch(texts):
        ids = np.asarray([e.ids], dtype=np.int64)
        data.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # NNCF's progress bars
        q = nncf.quantize(
            ov.Core().read_model(onnx),
            nncf.Dataset(data),
            model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(data),
        )
    ov.save_model(q, out, compress_to_fp16=False)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# -- choosing a backend ---------------------------------------------------------------------------


def _nvidia_present() -> bool:
    # Cheap check first, so that a CPU-only machine never pays for importing torch to find out.
    return (
        os.path.exists("/proc/driver/nvidia/version")
        or os.path.exists("/dev/nvidia0")
        or bool(os.environ.get("BNE_ASSUME_GPU"))
    )


def resolve_device(device: str) -> str:
    """'cpu', 'cuda' or 'auto' -> 'cpu' or 'cuda'. 'cuda' without a usable GPU raises ValueError."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu"
    if device == "auto" and not _nvidia_present():
        return "cpu"
    try:
        import torch
    except ImportError:
        if device == "auto":
            return "cpu"
        raise ValueError(
            "--device cuda needs torch with CUDA (pip install 'bne[encoder]' with a CUDA build of torch)"
        ) from None
    if torch.cuda.is_available():
        return "cuda"
    if device == "auto":
        return "cpu"
    raise ValueError("--device cuda: torch sees no CUDA GPU (torch.cuda.is_available() is False)")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


#: Bulk encodes smaller than this do not wait for an int8 quantisation (about 30 s once, quiet,
#: on a 2-core Zen 4); int8 saves about 6 ms per passage there, so it pays off near 5,000.
INT8_MIN_DOCS = 5000


def float_precision() -> str:
    """bf16 where the CPU computes it natively (AVX512-BF16, AMX-BF16), else fp32."""
    return "bf16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "fp32"


def default_cpu_backend(purpose: str = "query") -> tuple[str, str]:
    """(backend, precision) for CPU encoding, by a rule from measurements (docs/ENCODER.md).

    * queries (latency, cold start): ONNX Runtime fp32 - session ready in ~0.3 s, codes equal to
      torch fp32 (100.000 % of bits on SciFact passages);
    * bulk (``bne build``): OpenVINO with one stream per core. Static int8 where the CPU has int8
      dot products (AVX512-VNNI, AVX-VNNI or AMX) and NNCF is installed to quantise the model once
      (on an AVX512 EPYC: 1.5x less CPU per passage than bf16, 97.2 % of bits equal to torch fp32,
      STS-B and SciFact above the floors); else bf16 where the CPU has AVX512-BF16 or AMX-BF16
      (99.8 % of bits equal), else fp32; ONNX Runtime fp32 when OpenVINO is not installed.
    """
    if purpose == "bulk" and _have("openvino"):
        flags = cpu_flags()
        if flags & {"avx512_vnni", "avx_vnni", "amx_int8"} and _have("nncf"):
            return "openvino", "int8"
        return "openvino", float_precision()
    return "onnx", "fp32"


def _have(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules[module] is None: blocked on purpose
        return False


def _onnx_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("tokenizers") is not None


def load(
    model: str | os.PathLike = "default",
    bits: int = 1024,
    *,
    backend: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    precision: str | None = None,
    purpose: str = "query",
    quiet: bool = False,
    docs: int | None = None,
):
    """An encoder for ``model`` ('default': the shipped head for ``bits``; or a head .safetensors).

    ``docs``: how many texts a bulk encoder is for, when known. Quantising to int8 takes about half a
    minute once, and pays for itself only over thousands of passages: below
    :data:`INT8_MIN_DOCS` the rule's int8 becomes bf16 (or fp32) unless the int8 model is cached.

    ``device``: 'cpu', 'cuda' (torch, fp16 autocast unless ``precision``) or 'auto' (cuda when a GPU
    is visible). ``backend`` on CPU: 'onnx' (torch-free), 'torch', or 'auto' = :func:`default_cpu_backend`
    for ``purpose`` ('query' or 'bulk'), falling back to torch when ONNX Runtime is missing or the
    export fails. ``precision`` applies to torch: 'fp32', 'bf16' or 'fp16'.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    head = default_head(bits) if str(model) == "default" else Path(model)
    if not head.is_file():
        raise FileNotFoundError(f"model not found: {head}")
    dev = resolve_device(device)
    if dev == "cuda":
        if backend == "onnx":
            raise ValueError("the ONNX backend runs on the CPU; use --device cpu or the torch backend for cuda")
        from .encoder import Encoder

        return Encoder.from_head(head, threads=threads, device="cuda", precision=precision or "fp16")
    if backend == "auto":
        # The rule's choice, then ONNX Runtime fp32, then torch: a missing package, a read-only
        # cache or a failed export degrades the speed, never the ability to encode.
        choice, auto_precision = default_cpu_backend(purpose)
        tries = []
        if choice == "openvino" and precision in (None, "fp32", "bf16"):
            if precision is None and auto_precision == "int8":
                if docs is None or docs >= INT8_MIN_DOCS or int8_ready(head):
                    tries.append(("openvino", "int8"))
                auto_precision = float_precision()  # also the next try when int8 fails
            tries.append(("openvino", precision or auto_precision))
        if precision in (None, "fp32"):
            tries.append(("onnx", "fp32"))
        for name, prec in tries if _onnx_available() else []:
            try:
                if name == "openvino":
                    return OpenVinoEncoder.from_head(head, threads=threads, precision=prec, quiet=quiet)
                return OnnxEncoder.from_head(head, threads=threads, quiet=quiet)
            except Exception as e:
                if not quiet:
                    print(
                        f"bne: {name} encoder unavailable ({_first_line(e)}); trying the next runtime", file=sys.stderr
                    )
        backend = "torch"
    if backend == "openvino":
        return OpenVinoEncoder.from_head(head, threads=threads, precision=precision or "fp32", quiet=quiet)
    if backend == "onnx":
        if precision not in (None, "fp32"):
            raise ValueError("the ONNX backend runs fp32; use the torch backend for bf16/fp16")
        return OnnxEncoder.from_head(head, threads=threads, quiet=quiet)
    from .encoder import Encoder

    return Encoder.from_head(head, threads=threads, precision=precision or "fp32")
