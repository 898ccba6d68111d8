"""The export cache: model graphs exported once into ``<cache>/onnx/``, found again by name.

Each cached file is named by the content hashes of what made it (a changed head or backbone gets
a new file), made under a file lock and landed by atomic rename (concurrent first runs export once
and never see a partial file), and checked against the sha256 recorded beside it before each use.
This module knows nothing of torch, ONNX Runtime or OpenVINO: the exporters and the runtimes above
it hand it a function that writes the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..fileio import replacing, write_atomic
from .base import cache_dir, file_sha256, minilm_dir

#: Bump when the exported graph changes (inputs, outputs, opset): old cache files are then ignored.
EXPORT_VERSION = 1


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


def embedder_onnx_path(sha256: str) -> Path:
    """Cache path of a full embedder's ONNX graph: named by its content hash and the export version."""
    return cache_dir() / "onnx" / f"embedder-{sha256[:24]}-v{EXPORT_VERSION}.onnx"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (created if missing) for the duration of the block."""
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


def lock_for(path: Path) -> Path:
    """The lock file that guards ``path``."""
    return path.with_name(path.name + ".lock")


def ensure_cached(path: Path, export: Callable[[Path], Any], *, label: str, quiet: bool = False) -> Path:
    """``path`` in the cache, made by ``export(tmp)`` first if missing: under a file lock, landing by
    atomic rename, so concurrent first runs export once and never see a partial file.

    The sha256 of what was exported is recorded beside it (``<path>.sha256``) and checked before
    each use (the hash itself is memoised by :func:`file_sha256` under the file's inode and ctime, so
    only a changed file is read again): a graph damaged or replaced outside bne would change every
    code without an error, so it is exported again instead, with one note."""
    if path.is_file() and cache_ok(path):
        return path
    make_cache_folder(path.parent)
    with locked(lock_for(path)):
        if path.is_file():
            if cache_ok(path):  # another process exported it while we waited
                return path
            if not quiet:  # kept until the new export replaces it, but never used
                why = "does not match its recorded sha256" if sha_file(path).exists() else "has no recorded sha256"
                print(f"bne: cached model {path} {why}; exporting it again", file=sys.stderr)
        if not quiet:
            print(f"bne: exporting {label} to ONNX once (cached in {path.parent})", file=sys.stderr)
        with replacing(path) as tmp:
            export(tmp)
            record_sha(tmp, path)
    return path


def make_cache_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(
            f"cannot create the model cache {folder} ({e.strerror}); set BNE_CACHE_DIR to a writable folder"
        ) from None


def sha_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def record_sha(tmp: Path, final: Path) -> None:
    """Writes the sha256 of ``tmp`` (about to be renamed to ``final``) to ``final``'s .sha256 file."""
    write_atomic(sha_file(final), file_sha256(tmp, memo=False) + "\n")


def cache_ok(path: Path) -> bool:
    """Whether the cached ``path`` holds exactly what was exported (its recorded sha256). A file
    without a record (written before records, or a crash between the two renames) does not pass."""
    try:
        want = sha_file(path).read_text(encoding="ascii").strip()
        return len(want) == 64 and file_sha256(path) == want
    except (OSError, ValueError):
        return False


def discard(path: Path) -> None:
    """Removes a cached file and its recorded sha256."""
    for f in (path, sha_file(path)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)
