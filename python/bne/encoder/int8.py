"""Static int8 models: the cached ONNX graph quantised once by NNCF into an OpenVINO IR (.xml +
.bin), cached beside it under the same lock, rename and sha256 rules as :mod:`bne.encoder.cache`.
NNCF runs in a child Python, so the encoding process never loads torch for it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import replacing
from .base import bert_wordpiece, have, minilm_dir
from .cache import cache_ok, discard, lock_for, locked, onnx_path, record_sha

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
    return p.is_file() and p.with_suffix(".bin").is_file() and cache_ok(p) and cache_ok(p.with_suffix(".bin"))


def ensure_int8(onnx: Path, *, quiet: bool = False) -> Path:
    """The OpenVINO IR (.xml + .bin) of ``onnx`` with static int8 weights and activations, made
    once by ``nncf.quantize`` (transformer preset: SmoothQuant, mixed symmetric/asymmetric ranges)
    on :func:`calibration_texts`, cached next to the ONNX file under the same lock-and-rename
    rules. ValueError when NNCF is needed and missing."""
    texts = calibration_texts()
    path = int8_path(onnx, texts)
    weights = path.with_suffix(".bin")
    if path.is_file() and weights.is_file() and cache_ok(path) and cache_ok(weights):
        return path
    with locked(lock_for(path)):
        if path.is_file() and weights.is_file():
            if cache_ok(path) and cache_ok(weights):
                return path
            if not quiet:
                print(
                    f"bne: cached int8 model {path} does not match its recorded sha256; quantising it again",
                    file=sys.stderr,
                )
            discard(path)
            discard(weights)
        if not have("nncf"):
            raise ValueError("precision int8 needs NNCF once, to quantise the model: pip install nncf")
        if len(texts) < 8:  # pragma: no cover - a Python without its library sources
            raise ValueError("precision int8: no standard-library sources to calibrate on; use fp32 or bf16")
        if not quiet:
            print(f"bne: quantising {onnx.name} to int8 once (cached in {onnx.parent})", file=sys.stderr)
        # OpenVINO writes the .bin beside the .xml it is given: both temporary names share a stem.
        # The inner block lands first: the .bin, then the .xml, which is what readers look for.
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.xml")
        with replacing(path, tmp=tmp), replacing(weights, tmp=tmp.with_suffix(".bin")):
            _quantize(onnx, tmp, texts)
            record_sha(tmp.with_suffix(".bin"), weights)
            record_sha(tmp, path)
    return path


def _quantize(onnx: Path, out: Path, texts: list[str]) -> None:
    """Runs :func:`_quantize_child` in a child Python: NNCF imports torch, scikit-learn and more,
    which the encoding process then need not load (nor hold). ValueError with the child's last
    error line when it fails."""
    import json
    import subprocess

    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the folder holding bne/: importable in the child as here
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = "import json, sys; from bne.encoder.int8 import _quantize_child; _quantize_child(*json.load(sys.stdin))"
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
