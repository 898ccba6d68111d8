"""TEMPORARY stand-in for the model registry (being written on branch `models`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ModelError


@dataclass(frozen=True)
class ModelRef:
    name: str
    sha256: str
    kind: str
    bits: int

    def to_metadata(self) -> dict[str, Any]:
        return {"model": self.name, "model_sha256": self.sha256, "model_kind": self.kind, "bits": self.bits}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> ModelRef | None:
        if meta.get("model") is None:
            return None
        return cls(
            str(meta["model"]),
            str(meta.get("model_sha256", "")),
            str(meta.get("model_kind", "head")),
            int(meta["bits"]),
        )


def identify(spec: str | os.PathLike, bits: int | None = None) -> ModelRef:
    spec = os.fspath(spec)
    if spec != "default" and not os.path.exists(spec):
        raise ModelError(f"model not found: {spec} (use 'default' or the path of a head .safetensors file)")
    return ModelRef("default" if spec == "default" else os.path.abspath(spec), "", "head", bits or 1024)


def load(
    ref: ModelRef,
    *,
    device: str = "cpu",
    threads: int | None = None,
    purpose: str = "query",
    quiet: bool = False,
    search_dirs: Sequence[str] = (),
):
    try:
        from .encoder.runtime import load as rload

        return rload(ref.name, ref.bits, device=device, threads=threads, purpose=purpose, quiet=quiet)
    except ImportError as e:
        raise ModelError(f"the encoder needs the 'encoder' extra (pip install 'bne[encoder]'): {e}") from None
    except (OSError, KeyError, RuntimeError) as e:
        raise ModelError(f"cannot load model {ref.name}: {type(e).__name__}: {e}") from None


def resolve(ref: ModelRef, search_dirs: Sequence[str] = ()):
    raise NotImplementedError
