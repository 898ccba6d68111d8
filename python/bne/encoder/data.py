"""Readers for the evaluation / training data under ``shared/data`` (see its README.md).

All TSVs are tab-separated with no quoting, so they are split on ``\\t`` by hand.
The data root is, in order: an explicit path, the ``BNE_DATA`` environment variable,
``<repo>/../shared/data``, ``<repo>/shared/data``, ``./shared/data``, ``../shared/data``.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np

#: STS sets the evaluator knows: name -> (relative path, column of sentence1, of sentence2, of score).
STS_SETS = {
    "stsb-train": ("stsbenchmark/stsb-train.tsv.gz", 1, 2, 0),
    "stsb-dev": ("stsbenchmark/stsb-dev.tsv.gz", 1, 2, 0),
    "stsb-test": ("stsbenchmark/stsb-test.tsv.gz", 1, 2, 0),
    "sick-test": ("sick/sick-test.tsv.gz", 1, 2, 3),
    "sts12": ("sts12-16/sts12.tsv.gz", 2, 3, 1),
    "sts13": ("sts12-16/sts13.tsv.gz", 2, 3, 1),
    "sts14": ("sts12-16/sts14.tsv.gz", 2, 3, 1),
    "sts15": ("sts12-16/sts15.tsv.gz", 2, 3, 1),
    "sts16": ("sts12-16/sts16.tsv.gz", 2, 3, 1),
}

#: Sets that are held out: evaluated and reported, never trained or tuned on.
HELD_OUT = ("sick-test", "sts12", "sts13", "sts14", "sts15", "sts16", "cisi", "cranfield")


def _repo_root() -> Path:
    # python/bne/encoder/data.py -> repo root is 3 levels above python/
    return Path(__file__).resolve().parents[3]


def data_root(path: str | os.PathLike | None = None, *, required: bool = True) -> Path | None:
    """The ``shared/data`` folder: ``path`` if given, else ``$BNE_DATA``, else the first of the
    usual places that exists. Raises FileNotFoundError (or returns None with ``required=False``)."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            return p.resolve()
        if required:
            raise FileNotFoundError(f"data folder {p} does not exist")
        return None
    env = os.environ.get("BNE_DATA")
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            return p.resolve()
        if required:
            raise FileNotFoundError(f"BNE_DATA={env} is not a folder")
        return None
    root = _repo_root()
    for c in (
        root.parent / "shared" / "data",
        root / "shared" / "data",
        Path.cwd() / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
    ):
        if c.is_dir():
            return c.resolve()
    if required:
        raise FileNotFoundError("shared/data not found: pass --data PATH or set BNE_DATA")
    return None


def _open_text(path: Path):
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def read_tsv(path: str | os.PathLike, *, header: bool = True) -> tuple[list[str] | None, list[list[str]]]:
    """(header fields or None, rows) of a tab-separated file (optionally .gz), no quoting."""
    rows: list[list[str]] = []
    head = None
    with _open_text(Path(path)) as f:
        for i, line in enumerate(f):
            line = line.rstrip("\n").rstrip("\r")
            if not line:
                continue
            fields = line.split("\t")
            if i == 0 and header:
                head = fields
                continue
            rows.append(fields)
    return head, rows


def load_sts(name: str, root: str | os.PathLike | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """(sentences1, sentences2, gold scores) of an STS set named in :data:`STS_SETS`."""
    if name not in STS_SETS:
        raise ValueError(f"unknown STS set {name!r}; known: {', '.join(STS_SETS)}")
    rel, c1, c2, cs = STS_SETS[name]
    base = data_root(root)
    assert base is not None  # required=True raises instead of returning None
    _, rows = read_tsv(base / rel)
    s1 = [r[c1] for r in rows]
    s2 = [r[c2] for r in rows]
    scores = np.array([float(r[cs]) for r in rows], dtype=np.float64)
    return s1, s2, scores


def load_pairs(path: str | os.PathLike) -> list[tuple[str, ...]]:
    """Rows of a training TSV: (anchor, positive[, negative]). A header line whose first field
    is ``anchor`` is skipped."""
    out: list[tuple[str, ...]] = []
    with _open_text(Path(path)) as f:
        for i, line in enumerate(f):
            fields = line.rstrip("\n").rstrip("\r").split("\t")
            if i == 0 and fields and fields[0].strip().lower() == "anchor":
                continue
            if len(fields) < 2 or not fields[0] or not fields[1]:
                continue
            out.append(tuple(fields[:3]))
    return out


def beir_doc_text(doc: dict) -> str:
    """The text a document is encoded as: ``title + " " + text`` (the BEIR/sentence-transformers convention)."""
    return ((doc.get("title") or "") + " " + (doc.get("text") or "")).strip()


def load_beir(name: str, split: str = "test", root: str | os.PathLike | None = None):
    """(corpus {id: text}, queries {id: text}, qrels {qid: {docid: score}}) of ``beir/<name>``,
    restricted to the queries judged in ``qrels/<split>.tsv``."""
    droot = data_root(root)
    assert droot is not None
    base = droot / "beir" / name
    corpus: dict[str, str] = {}
    with _open_text(base / "corpus.jsonl.gz") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                corpus[str(d["_id"])] = beir_doc_text(d)
    qrels: dict[str, dict[str, int]] = {}
    _, rows = read_tsv(base / "qrels" / f"{split}.tsv")
    for r in rows:
        if int(r[2]) > 0:
            qrels.setdefault(r[0], {})[r[1]] = int(r[2])
    queries: dict[str, str] = {}
    with _open_text(base / "queries.jsonl") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                if str(d["_id"]) in qrels:
                    queries[str(d["_id"])] = d["text"]
    qrels = {q: v for q, v in qrels.items() if q in queries}
    return corpus, queries, qrels
