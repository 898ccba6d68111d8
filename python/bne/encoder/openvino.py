"""The same cached ONNX graph run by OpenVINO (optional: ``pip install openvino``): bf16 on CPUs
with AVX512-BF16 or AMX, static int8 (:mod:`bne.encoder.int8`), and pipelined bulk runs."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import last_line
from .base import cpu_flags
from .int8 import ensure_int8
from .onnx import OnnxEncoder


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
                    raise ValueError(f"cached int8 model {path} is unreadable ({last_line(e)}); removed it") from e
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
