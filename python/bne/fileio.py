"""Atomic replacement of whole files: the one way bne writes a file that is not an index file.

A reader (or a crash) sees either the old file or the complete new one, never a torn one: the
content goes to a temporary file in the same folder, which is flushed to disk, renamed over the
target, and then the folder itself is flushed so that the rename survives a power loss. Index
files have their own commit protocol (``storage``); everything else (manifests, registries,
cached model exports, checksums, checkpoints, feature caches) goes through here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

StrPath = str | os.PathLike


def fsync_dir(path: StrPath) -> None:
    """Flushes the folder that holds ``path``, so that a rename or link in it is durable."""
    dfd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def fsync_file(path: StrPath) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: StrPath) -> Path:
    """A hidden name beside ``path``, unique to this process (two writers never share one)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def replacing(path: StrPath, *, tmp: StrPath | None = None) -> Iterator[Path]:
    """Yields a temporary path for the caller to write; on success it replaces ``path`` durably,
    on any exception (Ctrl-C included) it is removed and ``path`` is left as it was.

    ``tmp`` names the temporary file where a writer needs a particular suffix (``np.save`` adds
    ``.npy``, OpenVINO writes ``.xml`` beside ``.bin``); it must be in the same folder."""
    target = Path(path)
    t = Path(tmp) if tmp is not None else temp_name(target)
    try:
        yield t
        fsync_file(t)
        os.replace(t, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(t)
    fsync_dir(target)


def write_atomic(path: StrPath, data: bytes | str) -> None:
    """Replaces ``path`` with ``data`` (text is written as UTF-8), atomically and durably."""
    raw = data.encode() if isinstance(data, str) else data
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(raw)


def check_writable(path: StrPath, option: str) -> None:
    """ValueError (one line) when a file cannot be written at ``path``: checked before a long run
    (``bne bench --out``, ``bne eval --json``), so a typo does not cost the run."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{option} {p} is a folder: give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {p}: folder {parent} does not exist")
    if not (os.access(p, os.W_OK) if p.exists() else os.access(parent, os.W_OK | os.X_OK)):
        raise ValueError(f"{option} {p}: permission denied")
