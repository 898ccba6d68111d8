"""The import path of the torch-free encoder in earlier docs and scripts
(``bne.encoder.runtime.load``, ``default_cpu_backend``, ``OnnxEncoder``...). The code lives in
:mod:`bne.encoder.backend` (the rule and :func:`load`), :mod:`bne.encoder.onnx`,
:mod:`bne.encoder.openvino`, :mod:`bne.encoder.int8` and :mod:`bne.encoder.cache`."""

from __future__ import annotations

from .backend import BACKENDS, DEVICES, INT8_MIN_DOCS, default_cpu_backend, float_precision, load, resolve_device
from .base import bert_wordpiece, cpu_flags
from .cache import EXPORT_VERSION, ensure_cached, onnx_path
from .int8 import calibration_texts, ensure_int8, int8_path, int8_ready
from .onnx import OnnxEncoder, ensure_onnx
from .openvino import OpenVinoEncoder

__all__ = [
    "BACKENDS",
    "DEVICES",
    "EXPORT_VERSION",
    "INT8_MIN_DOCS",
    "OnnxEncoder",
    "OpenVinoEncoder",
    "bert_wordpiece",
    "calibration_texts",
    "cpu_flags",
    "default_cpu_backend",
    "ensure_cached",
    "ensure_int8",
    "ensure_onnx",
    "float_precision",
    "int8_path",
    "int8_ready",
    "load",
    "onnx_path",
    "resolve_device",
]
