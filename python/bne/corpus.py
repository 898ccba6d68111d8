"""Reading documents for ``bne build``: .txt, .jsonl, .tsv/.csv, or a BEIR folder.

Every reader yields :class:`Doc` records; ``ext_id`` is the document's own id as text (a line
number for .txt files).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import itertools
import json
import os
from pathlib import Path
from typing import Iterator


class CorpusError(ValueError):
    """The input cannot be read as a corpus (missing, unknown format, malformed, empty)."""


@dataclasses.dataclass
class Doc:
    ext_id: str
    text: str
    title: str = ""
    meta: str = ""  # JSON text of any other fields


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8", newline="")


def _base_suffix(path: Path) -> str:
    return Path(path.name[: -len(".gz")]).suffix.lower() if path.name.endswith(".gz") else path.suffix.lower()


def _jsonl(path: Path) -> Iterator[Doc]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise CorpusError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{path}:{lineno}: expected a JSON object per line")
            ext = obj.pop("_id", obj.pop("id", None))
            text = obj.pop("text", None)
            if text is None:
                raise CorpusError(f"{path}:{lineno}: no 'text' field")
            title = obj.pop("title", "") or ""
            yield Doc(str(ext if ext is not None else lineno), str(text), str(title), json.dumps(obj) if obj else "")


def _delimited(path: Path, delimiter: str) -> Iterator[Doc]:
    with _open_text(path) as f:
        rows = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        first = next(rows, None)
        if first is None:
            return
        lower = [c.strip().lower() for c in first]
        if "text" in lower:  # a header row names the columns
            ti = lower.index("text")
            ii = next((lower.index(c) for c in ("id", "_id") if c in lower), None)
            hi = lower.index("title") if "title" in lower else None
            data, start = rows, 2
        else:  # no header: id, text[, title] when there are 2+ columns, else text only
            ii, ti, hi = (0, 1, 2 if len(first) > 2 else None) if len(first) > 1 else (None, 0, None)
            data, start = itertools.chain([first], rows), 1
        for lineno, row in enumerate(data, start):
            if not row or not any(c.strip() for c in row):
                continue
            if ti >= len(row):
                raise CorpusError(f"{path}:{lineno}: expected a text column at position {ti + 1}, got {len(row)} columns")
            ext = row[ii] if ii is not None and ii < len(row) else str(lineno)
            title = row[hi] if hi is not None and hi < len(row) else ""
            yield Doc(str(ext), row[ti], title)


def _txt(path: Path) -> Iterator[Doc]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield Doc(str(lineno), line)


def read_corpus(path: str | os.PathLike) -> Iterator[Doc]:
    """Documents of a .txt / .jsonl / .tsv / .csv file (optionally .gz) or a BEIR folder."""
    p = Path(path)
    if not p.exists():
        raise CorpusError(f"input not found: {p}")
    if p.is_dir():
        for name in ("corpus.jsonl", "corpus.jsonl.gz"):
            if (p / name).is_file():
                return _jsonl(p / name)
        raise CorpusError(f"{p} is a folder but not a BEIR dataset (no corpus.jsonl or corpus.jsonl.gz)")
    if not os.access(p, os.R_OK):
        raise CorpusError(f"input not readable: {p}")
    suffix = _base_suffix(p)
    readers = {".jsonl": _jsonl, ".json": _jsonl, ".tsv": lambda q: _delimited(q, "\t"),
               ".csv": lambda q: _delimited(q, ","), ".txt": _txt, ".text": _txt}
    if suffix not in readers:
        raise CorpusError(f"unknown input format {suffix or '(no extension)'!r} for {p}: use .txt, .jsonl, .tsv, .csv or a BEIR folder")
    return readers[suffix](p)
