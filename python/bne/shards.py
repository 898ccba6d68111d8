"""Folders of shards, without Ray: shard files, their names and the manifest that lists them.

* :func:`shard_index` splits one index file (or several, in order) into N shard files of
  contiguous positions, so shard i covers global positions ``[base_i, base_i + n_i)``.
* :func:`read_manifest` / :func:`write_manifest`: the folder's ``manifest.json``.
* :func:`is_sharded`, :func:`docstore_key`: a folder of shards and where its docstore lives.

Serving and building shards on Ray is :mod:`bne.distributed`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from . import mapped, storage
from .fileio import write_atomic
from .models import ModelRef

MANIFEST = "manifest.json"


def shard_path(folder: str | os.PathLike, i: int, prefix: str = "shard") -> str:
    """The file of shard ``i`` in ``folder``: ``<prefix>-00007.bne``."""
    return os.path.join(os.fspath(folder), f"{prefix}-{int(i):05d}.bne")


def is_sharded(path: str | os.PathLike) -> bool:
    """A folder of shards (or its manifest) rather than one index file."""
    p = os.fspath(path)
    return os.path.isdir(p) or p.endswith(".json")


def docstore_key(path: str | os.PathLike) -> str:
    """What :func:`docstore.path_for` is applied to: the index file, or ``<folder>/corpus``."""
    p = os.fspath(path)
    if not is_sharded(p):
        return p
    folder = p if os.path.isdir(p) else os.path.dirname(p)
    return os.path.join(folder, "corpus")


def _live_chunks(paths: Sequence[str], chunk: int = 1 << 20):
    """(codes, ids) of every live code of the source files, in position order, in chunks."""
    for path in paths:
        src = mapped.open(path)
        tomb = src.removed_positions()
        base = 0
        for codes, ids in src.segments():
            keep = np.ones(len(codes), bool)
            lo, hi = np.searchsorted(tomb, [base, base + len(codes)])
            keep[tomb[lo:hi] - base] = False
            for s in range(0, len(codes), chunk):
                k = keep[s : s + chunk]
                yield np.asarray(codes[s : s + chunk])[k], np.asarray(ids[s : s + chunk])[k]
            base += len(codes)
        src.close()


def shard_index(
    sources: str | Sequence[str], n_shards: int, out_dir: str | os.PathLike, *, prefix: str = "shard"
) -> list[str]:
    """Splits the live codes of ``sources`` (in order) into ``n_shards`` files of near-equal
    size in ``out_dir`` and writes a manifest; returns the shard paths."""
    paths = [os.fspath(sources)] if isinstance(sources, (str, os.PathLike)) else [os.fspath(p) for p in sources]
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    heads = [mapped.open(p) for p in paths]
    bits = {h.bits for h in heads}
    if len(bits) != 1:
        raise ValueError(f"sources hold codes of different widths: {sorted(bits)}")
    total = sum(len(h) for h in heads)
    meta = dict(heads[0].metadata)
    for h in heads:
        h.close()
    bits_v = bits.pop()
    os.makedirs(out_dir, exist_ok=True)
    bounds = [total * i // n_shards for i in range(n_shards + 1)]
    out: list[str] = []
    buf_c: list[np.ndarray] = []
    buf_i: list[np.ndarray] = []
    filled = 0

    def flush(i: int) -> None:
        codes = np.concatenate(buf_c) if buf_c else np.zeros((0, bits_v // 8), np.uint8)
        ids = np.concatenate(buf_i) if buf_i else np.zeros(0, np.int64)
        path = shard_path(out_dir, i, prefix)
        header = storage.new_header(bits_v, metadata={**meta, "shard": i, "shards": n_shards, "base": bounds[i]})
        storage.save_atomic(path, header, [(codes, ids)], int(ids.max()) if len(ids) else -1)
        out.append(path)

    shard = 0
    for codes, ids in _live_chunks(paths):
        while len(codes):
            room = bounds[shard + 1] - filled
            take = min(room, len(codes))
            buf_c.append(codes[:take])
            buf_i.append(ids[:take])
            codes, ids, filled = codes[take:], ids[take:], filled + take
            if filled == bounds[shard + 1]:
                flush(shard)
                buf_c, buf_i, shard = [], [], shard + 1
    while shard < n_shards:  # empty trailing shards when total < n_shards
        flush(shard)
        buf_c, buf_i, shard = [], [], shard + 1
    write_manifest(out_dir, out, bits_v, meta)
    return out


def write_manifest(out_dir, shard_paths: Sequence[str], bits: int, metadata: dict) -> str:
    """Writes ``out_dir``'s manifest (shard paths relative to it), atomically and durably."""
    path = os.path.join(os.fspath(out_dir), MANIFEST)
    rel = [os.path.relpath(p, os.fspath(out_dir)) for p in shard_paths]
    write_atomic(path, json.dumps({"bits": bits, "shards": rel, "metadata": metadata}, indent=1))
    return path


def read_manifest(path: str | os.PathLike) -> tuple[list[str], dict]:
    """(shard paths, manifest) of a manifest file or the folder holding one. Shard paths must be
    relative and stay inside the manifest's folder (no absolute paths, no ``..``): a manifest
    from elsewhere cannot make a reader open other files. A bad manifest raises ``ValueError``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (ValueError, RecursionError) as e:  # JSON syntax, not UTF-8, absurd nesting
        raise ValueError(f"{path}: not a bne shard manifest ({type(e).__name__}: {e})") from None
    if (
        not isinstance(m, dict)
        or not isinstance(m.get("shards"), list)
        or not m["shards"]
        or type(m.get("bits")) is not int
        or not isinstance(m.get("metadata", {}), dict)
    ):
        raise ValueError(f'{path}: not a bne shard manifest (needs "bits", a list of "shards" and a "metadata" object)')
    folder = os.path.dirname(os.path.abspath(path))
    out = []
    for p in m["shards"]:
        if not isinstance(p, str) or not p or "\0" in p:
            raise ValueError(f"{path}: shard entry {p!r} is not a file name")
        norm = os.path.normpath(p)
        if os.path.isabs(p) or norm in (".", "..") or norm.startswith(".." + os.sep):
            raise ValueError(
                f"{path}: shard path {p!r} leaves the manifest's folder; shard paths must be relative "
                f"to it, without '..'"
            )
        out.append(os.path.join(folder, norm))
    return out, m


def shard_done(path: str, expected: int, model: ModelRef) -> bool:
    """A shard file present with the right model, bits and count: written completely before
    (saves are atomic), so a resumed build skips it."""
    if not os.path.exists(path):
        return False
    try:
        idx = mapped.open(path)
    except (ValueError, OSError):
        return False
    meta = idx.metadata
    ok = (
        idx.bits == model.bits
        and (meta.get("model"), meta.get("model_sha256", "")) == (model.name, model.sha256)
        and len(idx) == expected
    )
    idx.close()
    return ok
