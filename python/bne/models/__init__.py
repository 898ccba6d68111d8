"""Models: which model is this (:mod:`bne.models.identity`: :class:`ModelRef`, :func:`identify`,
:func:`resolve`, the registry, :func:`same_model`) and an encoder for it
(:mod:`bne.models.loading`: :func:`load`). Only numpy is imported here."""

from __future__ import annotations

from ..errors import ModelError, ModelNotFoundError
from .identity import (
    HEADS_DIR,
    KINDS,
    ModelRef,
    identify,
    known_models,
    register,
    registry_path,
    resolve,
    same_model,
)
from .loading import EmbedderOnnxEncoder, embedder_config, load, onnx_path

__all__ = [
    "KINDS",
    "EmbedderOnnxEncoder",
    "HEADS_DIR",
    "ModelError",
    "ModelNotFoundError",
    "ModelRef",
    "embedder_config",
    "identify",
    "known_models",
    "load",
    "onnx_path",
    "register",
    "registry_path",
    "resolve",
    "same_model",
]
