"""The data folder (``shared/data``, see its README.md) and readers for its files.

The folder is named explicitly (``bne eval --data DIR``, ``bne train --data-root DIR``) or by the
``BNE_DATA`` environment variable; it is never looked for relative to the source tree (that is
right only in a source checkout). TSVs are tab-separated with no quoting, split on ``\\t`` by hand.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .. import corpus as documents
from ..corpus import read_lines

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


def data_root(path: str | os.PathLike | None = None, *, option: str = "--data") -> Path:
    """The data folder: ``path`` if given (the command's ``option``), else ``$BNE_DATA``. Raises
    FileNotFoundError with a one-line message naming both when neither names a folder."""
    if path is not None and str(path) != "":
        p = Path(path).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"data folder {p} ({option}) is not a folder")
        return p.resolve()
    env = os.environ.get("BNE_DATA")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"BNE_DATA={env} is not a folder; pass {option} DIR or fix BNE_DATA")
        return p.resolve()
    raise FileNotFoundError(f"no data folder: pass {option} DIR or set BNE_DATA (e.g. to shared/data)")


def text_lines(path: str | os.PathLike) -> Iterator[str]:
    """Lines of a UTF-8 text file (optionally .gz) without their ending; a bad byte raises
    CorpusError naming the file and line (``bne.corpus`` reads documents the same way)."""
    for _, line in read_lines(Path(path)):
        yield line.rstrip("\n").rstrip("\r")


def read_tsv(path: str | os.PathLike, *, header: bool = True) -> tuple[list[str] | None, list[list[str]]]:
    """(header fields or None, rows) of a tab-separated file (optionally .gz), no quoting."""
    rows: list[list[str]] = []
    head = None
    for i, line in enumerate(text_lines(path)):
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
    _, rows = read_tsv(data_root(root) / rel)
    s1 = [r[c1] for r in rows]
    s2 = [r[c2] for r in rows]
    scores = np.array([float(r[cs]) for r in rows], dtype=np.float64)
    return s1, s2, scores


def load_pairs(path: str | os.PathLike) -> list[tuple[str, ...]]:
    """Rows of a training TSV: (anchor, positive[, negative]). A header line whose first field
    is ``anchor`` and blank lines are skipped; any other line without a non-empty anchor and
    positive is bad input: ValueError naming file:line (a pair dropped silently trains on less)."""
    out: list[tuple[str, ...]] = []
    for i, line in enumerate(text_lines(path)):
        fields = line.split("\t")
        if i == 0 and fields[0].strip().lower() == "anchor":
            continue
        if not line.strip():
            continue
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            what = "no tab" if len(fields) < 2 else "an empty anchor or positive"
            raise ValueError(f"{path}:{i + 1}: expected anchor<TAB>positive[<TAB>negative], found {what}")
        out.append(tuple(fields[:3]))
    return out


def _jsonl(path: Path) -> Iterator[dict]:
    for line in text_lines(path):
        if line.strip():
            yield json.loads(line)


def load_beir(name: str, split: str = "test", root: str | os.PathLike | None = None):
    """(corpus {id: text}, queries {id: text}, qrels {qid: {docid: score}}) of ``beir/<name>``,
    restricted to the queries judged in ``qrels/<split>.tsv``. A document's text is
    :func:`bne.corpus.doc_text` of its title and text, as ``bne build`` encodes it."""
    base = data_root(root) / "beir" / name
    corpus = {
        str(d["_id"]): documents.doc_text(d.get("title") or "", d.get("text") or "")
        for d in _jsonl(base / "corpus.jsonl.gz")
    }
    qrels: dict[str, dict[str, int]] = {}
    _, rows = read_tsv(base / "qrels" / f"{split}.tsv")
    for r in rows:
        if int(r[2]) > 0:
            qrels.setdefault(r[0], {})[r[1]] = int(r[2])
    queries = {str(d["_id"]): d["text"] for d in _jsonl(base / "queries.jsonl") if str(d["_id"]) in qrels}
    qrels = {q: v for q, v in qrels.items() if q in queries}
    return corpus, queries, qrels


# -- training inputs ------------------------------------------------------------------------------
def read_training_tsvs(paths: Sequence[str], max_pairs: int | None = None) -> list[tuple[str, ...]]:
    """Rows of the training TSVs. ``PATH*N`` repeats a file's rows N times (up-weights small sets)."""
    rows: list[tuple[str, ...]] = []
    for p in paths:
        m = re.fullmatch(r"(.*)\*(\d+)", str(p))
        path, rep = (m.group(1), int(m.group(2))) if m and not Path(str(p)).exists() else (str(p), 1)
        got = load_pairs(path)
        if not got:  # empty or header-only: training on nothing is never meant
            raise ValueError(f"no training pairs in {path}: expected anchor<TAB>positive[<TAB>negative] lines")
        rows.extend(got * rep)
    if max_pairs:
        rows = rows[:max_pairs]
    return rows


def read_scored(paths: Sequence[str]) -> list[tuple[str, str, float]]:
    """Scored pairs for the CoSENT loss: ``score<TAB>sentence1<TAB>sentence2`` (a header line that
    does not start with a number is skipped), e.g. shared/data/stsbenchmark/stsb-train.tsv.gz."""
    out: list[tuple[str, str, float]] = []
    for p in paths:
        _, rows = read_tsv(p, header=False)
        for r in rows:
            try:
                out.append((r[1], r[2], float(r[0])))
            except (ValueError, IndexError):
                continue
    return out


def read_texts(paths: Sequence[str]) -> list[str]:
    """Unlabelled texts for distillation: one per line (.txt[.gz]) or every field of a TSV."""
    out: list[str] = []
    for p in paths:
        for i, line in enumerate(text_lines(p)):
            fields = [x for x in line.split("\t") if x.strip()]
            if i == 0 and fields and fields[0].strip().lower() == "anchor":
                continue
            out.extend(fields)
    return list(dict.fromkeys(out))


def split_sentences(text: str, min_chars: int = 20) -> list[str]:
    return [x for x in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text) if len(x) > min_chars]


def recipe_minilm_default(root=None, *, sci_repeat: int = 20, sts_min_score: float = 4.0):
    """The training data of the shipped heads, from the data folder (train splits only):

    * pairs: Flickr30k caption pairs (304,685), MRPC train+val positives (2,753), STS-B train pairs
      with gold >= ``sts_min_score``, SciFact train (query, relevant doc) pairs x ``sci_repeat``;
    * scored (CoSENT): all STS-B train pairs with their gold scores;
    * distillation pool: STS-B train + MRPC train sentences, SciFact train queries, their relevant
      docs and those docs' sentences.

    SICK, STS12-16, CISI, Cranfield, STS-B dev/test, SciFact test and the rest of the SciFact corpus
    are not touched. Returns ``(rows, scored, pool)``.
    """
    root = data_root(root, option="--data-root")
    rows: list[tuple[str, ...]] = []
    rows += load_pairs(root / "pairs" / "flickr30k-caption-pairs.tsv.gz")
    rows += load_pairs(root / "pairs" / "mrpc-train-positive-pairs.tsv.gz")
    s1, s2, gold = load_sts("stsb-train", root)
    rows += [(a, b) for a, b, g in zip(s1, s2, gold, strict=True) if g >= sts_min_score]
    corpus, queries, qrels = load_beir("scifact", "train", root)
    sci = [(queries[q], corpus[d]) for q in queries for d in qrels[q] if d in corpus]
    rows += sci * sci_repeat
    scored = [(a, b, float(g)) for a, b, g in zip(s1, s2, gold, strict=True)]
    _, mrpc = read_tsv(root / "mrpc" / "mrpc-train.tsv.gz")
    docs = sorted({d for q in queries for d in qrels[q] if d in corpus})
    pool = list(s1) + list(s2) + [r[3] for r in mrpc] + [r[4] for r in mrpc]
    pool += [x for d in docs for x in split_sentences(corpus[d])]
    pool += list(queries.values()) + [corpus[d] for d in docs]
    return rows, scored, list(dict.fromkeys(pool))


RECIPES = {"minilm-default": recipe_minilm_default}
