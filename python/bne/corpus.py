"""Reading documents for ``bne build``: .txt, .jsonl, .tsv/.csv, or a BEIR folder.

Every reader yields :class:`Doc` records; ``ext_id`` is the document's own id as text. A .txt
line has no id of its own, so its ``ext_id`` is a hash of its text (``txt:`` + 16 hex digits, with
``-2``, ``-3``... for repeats of the same line in one file) and its file name and line number go
to ``meta``. ``bne build --append`` skips documents whose ``ext_id`` is already stored, so
appending a new file adds its lines, and resuming an interrupted build of the same file adds
nothing twice (keying by line number made a new file's line 1 look like the old file's line 1).

Input must be UTF-8 (a BOM is allowed); a bad byte is reported with its file and line.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import itertools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from .errors import CorpusError


@dataclasses.dataclass
class Doc:
    ext_id: str
    text: str
    title: str = ""
    meta: str = ""  # JSON text of any other fields


def doc_text(title: str, text: str) -> str:
    """The text that is encoded for a document: ``bne build`` and ``bne eval`` both use this:
    ``title + " " + text`` (the BEIR / sentence-transformers convention), or the text alone without
    a title. Chosen over ``"title. text"`` by SciFact train R@10 (docs/ENCODER.md)."""
    return f"{title} {text}" if title else text


def _open_binary(path: Path) -> gzip.GzipFile | io.BufferedReader:
    return gzip.GzipFile(path, "rb") if path.suffix == ".gz" else path.open("rb")


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its ending) of a UTF-8 file; the ending is kept, as ``newline=""``
    would, so csv sees quoted newlines. Decoded line by line to name the line of a bad byte."""
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                    f"{e.start + 1}); convert the file to UTF-8"
                ) from None
            except (OSError, EOFError) as e:  # a damaged .gz
                raise CorpusError(f"{path}:{lineno}: cannot read: {e}") from None


def txt_key(text: str, occurrence: int = 1) -> str:
    """The ext_id of a .txt line: its content, so the same line of the same file keeps its key."""
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()
    return f"txt:{h}" if occurrence == 1 else f"txt:{h}-{occurrence}"


def _base_suffix(path: Path) -> str:
    return Path(path.name[: -len(".gz")]).suffix.lower() if path.name.endswith(".gz") else path.suffix.lower()


def json_error_detail(e: ValueError) -> str:
    """What json.loads found wrong, without the position it repeats."""
    return e.msg if isinstance(e, json.JSONDecodeError) else str(e)


def json_lines(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSON Lines file; bad JSON names its line."""
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as e:  # also a plain ValueError: an integer with more than 4300 digits
            raise CorpusError(f"{path}:{lineno}: not valid JSON ({json_error_detail(e)})") from None
        except RecursionError:
            raise CorpusError(f"{path}:{lineno}: JSON nested too deeply") from None
        if _SURROGATE_ESCAPE.search(line):  # only an escape can put one in: the line itself is UTF-8
            bad = _lone_surrogate(value)
            if bad is not None:
                raise CorpusError(
                    f"{path}:{lineno}: a lone surrogate \\u{bad:04x} in a JSON string is not Unicode text "
                    "(half of a \\ud8xx\\udcxx pair?)"
                )
        yield lineno, value


#: a JSON escape of a UTF-16 surrogate (a pair is fine, one alone decodes to a str nothing can encode)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: object) -> int | None:
    """The code point of the first lone surrogate in a decoded JSON value's strings, or None."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                return ord(v[e.start])
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def _jsonl(path: Path) -> Iterator[Doc]:
    for lineno, obj in json_lines(path):
        if not isinstance(obj, dict):
            raise CorpusError(f"{path}:{lineno}: expected a JSON object per line")
        ext = obj.pop("_id", obj.pop("id", None))
        text = obj.pop("text", None)
        if text is None:
            raise CorpusError(f"{path}:{lineno}: no 'text' field")
        title = obj.pop("title", "") or ""
        yield Doc(str(ext if ext is not None else lineno), str(text), str(title), json.dumps(obj) if obj else "")


def _delimited(path: Path, delimiter: str) -> Iterator[Doc]:
    reader = csv.reader(
        (line for _, line in read_lines(path)),
        delimiter=delimiter,
        quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL,
    )

    def checked() -> Iterator[list[str]]:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # a NUL byte, a field over the size limit, an unclosed quote
                raise CorpusError(f"{path}:{reader.line_num}: {e}") from None
            yield row

    rows = checked()
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
    seen: dict[str, int] = {}  # occurrences by key, not by line: the lines themselves are not kept
    for lineno, line in read_lines(path):
        line = line.rstrip("\r\n")
        if line.strip():
            key = txt_key(line)
            n = seen[key] = seen.get(key, 0) + 1
            yield Doc(key if n == 1 else f"{key}-{n}", line, meta=json.dumps({"file": path.name, "line": lineno}))


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
    readers = {
        ".jsonl": _jsonl,
        ".json": _jsonl,
        ".tsv": lambda q: _delimited(q, "\t"),
        ".csv": lambda q: _delimited(q, ","),
        ".txt": _txt,
        ".text": _txt,
    }
    if suffix not in readers:
        raise CorpusError(
            f"unknown input format {suffix or '(no extension)'!r} for {p}: "
            "use .txt, .jsonl, .tsv, .csv or a BEIR folder"
        )
    return readers[suffix](p)


def read_query_file(path: str | os.PathLike) -> list[tuple[str, str | None]]:
    """(text, query id or None) per query of a file: one query per line, or for .jsonl a JSON
    object per line with "text" (or "query") and "_id"/"id" (BEIR's queries.jsonl), or a JSON string."""
    p = Path(path)
    if p.is_dir() or not p.exists():
        raise CorpusError(f"{path}: {'a folder' if p.is_dir() else 'no such file'}")
    if not p.name.lower().endswith((".jsonl", ".jsonl.gz", ".json")):
        return [(line.strip(), None) for _, line in read_lines(p) if line.strip()]
    queries: list[tuple[str, str | None]] = []
    for lineno, obj in json_lines(p):
        if isinstance(obj, str):
            queries.append((obj, None))
            continue
        text = obj.get("text", obj.get("query")) if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or not isinstance(text, str):
            raise CorpusError(f'{path}:{lineno}: expected a JSON object with a "text" string (or a JSON string)')
        qid = obj.get("_id", obj.get("id"))
        queries.append((text, None if qid is None else str(qid)))
    return queries
