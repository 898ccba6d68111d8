"""Which encoder runs where: the backend rule (from measurements, docs/ENCODER.md) and
:func:`load`, which applies it with fallbacks (OpenVINO, then ONNX Runtime, then torch)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import last_line
from .base import cpu_flags, default_head
from .base import have as _have
from .int8 import int8_ready
from .onnx import OnnxEncoder
from .openvino import OpenVinoEncoder

__all__ = ["BACKENDS", "DEVICES", "INT8_MIN_DOCS", "cpu_flags", "default_cpu_backend", "load", "resolve_device"]

BACKENDS = ("auto", "onnx", "openvino", "torch")
DEVICES = ("cpu", "cuda", "auto")


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


def onnx_available() -> bool:
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
        for name, prec in tries if onnx_available() else []:
            try:
                if name == "openvino":
                    return OpenVinoEncoder.from_head(head, threads=threads, precision=prec, quiet=quiet)
                return OnnxEncoder.from_head(head, threads=threads, quiet=quiet)
            except Exception as e:
                if not quiet:
                    print(f"bne: {name} encoder unavailable ({last_line(e)}); trying the next runtime", file=sys.stderr)
        backend = "torch"
    if backend == "openvino":
        return OpenVinoEncoder.from_head(head, threads=threads, precision=precision or "fp32", quiet=quiet)
    if backend == "onnx":
        if precision not in (None, "fp32"):
            raise ValueError("the ONNX backend runs fp32; use the torch backend for bf16/fp16")
        return OnnxEncoder.from_head(head, threads=threads, quiet=quiet)
    from .encoder import Encoder

    return Encoder.from_head(head, threads=threads, precision=precision or "fp32")
