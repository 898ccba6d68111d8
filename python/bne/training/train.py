"""Training natively binary heads / models (``bne train``).

Two modes:

* ``--head-only`` (default for the all-MiniLM-L6-v2 backbone): the backbone is frozen, its
  mean-pooled features are computed once (optionally cached with ``--cache-dir``), and only the
  ``Linear + LayerNorm`` head is trained. Fast on a CPU. Output: ``OUT.safetensors`` (the
  ``projection.*`` weights) + ``OUT.json``, loadable with ``Encoder.from_head(OUT.safetensors)``.
* ``--full``: end-to-end fine-tuning of a :class:`BinaryEmbedder` (the seed recipe). Output:
  ``OUT.safetensors`` (the whole state dict, the ``bne-binary`` layout) + ``OUT.json``, loadable with
  ``BinaryEmbedder.from_pretrained(OUT.safetensors)``.

Objectives (``--objective``), all computed on the relaxed codes ``tanh(z)``:

* ``contrastive`` - the seed's in-batch InfoNCE over cosine similarities of tanh codes
  (anchor -> positive [+ hard negative]), temperature ``--temperature`` (0.05).
* ``distill`` - KL divergence between the frozen backbone's in-batch similarity distribution
  (softmax of cosine / ``--distill-temperature``) and the codes' one, over every text of the batch.
* ``distill+contrastive`` (default) - ``--distill-weight * distill + contrastive``.

Optimiser: AdamW, ``--lr`` for the backbone (2e-5) and ``--lr * --head-lr-mult`` (50x) for the
projection, linear warm-up (``--warmup``) then cosine decay, gradient clipping 1.0. The same
``--seed`` (and thread count) gives the same model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..console import int_between
from ..encoder.backend import resolve_device
from ..encoder.base import threads_option
from .config import OBJECTIVES, TrainConfig
from .data import RECIPES, read_scored, read_texts, read_training_tsvs
from .features import backbone_features


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bne train",
        allow_abbrev=False,  # a prefix is not an option
        description="Train a natively binary text encoder (head-only on a frozen backbone, or end to end).",
    )
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="TSV",
        help="training TSV(s): anchor<TAB>positive[<TAB>negative], optional header 'anchor...'; .gz ok; "
        "PATH*N repeats a file N times; repeatable",
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=None,
        help="built-in training data from the data folder (minilm-default: trained the shipped heads); adds to --data",
    )
    p.add_argument(
        "--data-root", default=None, metavar="DIR", help="data folder (shared/data) for --recipe (default: $BNE_DATA)"
    )
    p.add_argument(
        "--scored",
        action="append",
        default=[],
        metavar="TSV",
        help="score<TAB>sentence1<TAB>sentence2 pairs for a CoSENT loss (head-only), e.g. stsb-train.tsv.gz",
    )
    p.add_argument("--scored-batch", type=int, default=128, help="scored pairs per step (0: off)")
    p.add_argument("--scored-weight", type=float, default=0.2, help="weight of the CoSENT loss (default 0.2)")
    p.add_argument(
        "--texts",
        action="append",
        default=[],
        metavar="FILE",
        help="extra unlabelled texts for distillation (one per line, or every field of a TSV); head-only; repeatable",
    )
    p.add_argument("--out", required=True, help="output prefix: writes OUT.safetensors and OUT.json")
    p.add_argument("--bits", type=int, default=1024, help="code length, a multiple of 64 (default 1024)")
    p.add_argument(
        "--backbone",
        default="minilm",
        help="'minilm' (all-MiniLM-L6-v2, offline), 'bert-mini' (random init from config), "
        "or a BinaryEmbedder checkpoint path (--full)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--head-only",
        dest="head_only",
        action="store_true",
        default=None,
        help="freeze the backbone, train the head (default for minilm)",
    )
    mode.add_argument(
        "--full", dest="head_only", action="store_false", help="fine-tune the backbone too (the seed recipe)"
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=None,
        help="default: distill+contrastive (head-only) / contrastive (full, the seed recipe)",
    )
    p.add_argument(
        "--distill-weight", type=float, default=1.0, help="weight of distill in distill+contrastive (default 1.0)"
    )
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the pairs; fractions allowed (default 1)")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per step (default 256 head-only, 64 full)")
    p.add_argument(
        "--pool-batch",
        type=int,
        default=256,
        help="unlabelled texts (--texts / recipe pool) added to each distillation batch",
    )
    p.add_argument("--temperature", type=float, default=0.05, help="contrastive temperature")
    p.add_argument(
        "--distill-temperature", type=float, default=0.05, help="softmax temperature of the distill loss (default 0.05)"
    )
    p.add_argument("--lr", type=float, default=2e-5, help="backbone learning rate (the head gets lr * head-lr-mult)")
    p.add_argument("--head-lr-mult", type=float, default=50.0, help="the head learns at lr times this (default 50)")
    p.add_argument(
        "--warmup", type=float, default=None, help="warm-up fraction of the steps (default 0.05 head-only, 0.1 full)"
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per text (default 256 head-only = the inference length, 128 full)",
    )
    p.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="do not L2-normalise pooled features before the head",
    )
    p.add_argument("--max-pairs", type=int_between(1), default=None, help="train on the first N pairs only (N >= 1)")
    p.add_argument(
        "--seed", type=int, default=0, help="random seed: the same seed and threads give the same model (default 0)"
    )
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="cpu", help="cpu (default), cuda, or auto (cuda if usable)"
    )
    p.add_argument("--threads", type=threads_option, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--cache-dir", default=None, help="cache backbone features here (head-only)")
    p.add_argument("--resume", default=None, help="continue from a checkpoint written with --checkpoint-every")
    p.add_argument("--checkpoint-every", type=int, default=0, help="write OUT.ckpt.pt every N steps")
    p.add_argument("--log-every", type=int, default=100, help="log the loss every N steps (default 100)")
    p.add_argument("--quiet", action="store_true", help="no log lines or progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of a ``bne train`` command line (ValueError names a bad value)."""
    head_only = args.head_only if args.head_only is not None else args.backbone == "minilm"
    return TrainConfig(
        bits=args.bits,
        head_only=head_only,
        objective=args.objective,
        distill_weight=args.distill_weight,
        epochs=args.epochs,
        batch_size=args.batch_size,
        temperature=args.temperature,
        distill_temperature=args.distill_temperature,
        lr=args.lr,
        head_lr_mult=args.head_lr_mult,
        warmup=args.warmup,
        max_length=args.max_length,
        normalize=args.normalize,
        seed=args.seed,
        pool_batch=args.pool_batch,
        scored_batch=args.scored_batch,
        scored_weight=args.scored_weight,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        device=resolve_device(args.device),  # ValueError: one line when cuda is not usable
    )


#: TrainConfig fields that do not change the trained weights: they may differ on --resume.
_FREE_ON_RESUME = ("checkpoint_every", "log_every", "device")
_FLAG = {"head_only": "--head-only/--full", "normalize": "--no-normalize", "init": "init"}


def _settings(cfg: TrainConfig, args) -> dict[str, Any]:
    """What shapes the weights, stored in each checkpoint and compared on ``--resume``."""
    free = _FREE_ON_RESUME + (() if cfg.head_only else ("pool_batch", "scored_batch", "scored_weight"))
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in free}  # --full ignores the head-only extras
    return {**d, "backbone": args.backbone}


def _check_resume(saved: dict[str, Any] | None, mine: dict[str, Any], path) -> None:
    """ValueError naming the first flag whose value differs from the checkpoint's run: the
    optimiser state resumes with the old values, so OUT.json would record settings never used."""
    if saved is None:  # written before checkpoints kept their settings: only data and steps are checked
        return
    for k, v in mine.items():
        if k in saved and saved[k] != v:
            flag = _FLAG.get(k, "--" + k.replace("_", "-"))
            raise ValueError(
                f"--resume {path}: {flag} is {v!r} here but {saved[k]!r} in the checkpoint's run "
                "(resume with the same training flags)"
            )


def _record(cfg: TrainConfig, args, argv, rows, scored, texts) -> dict[str, Any]:
    """What OUT.json records about the run, next to the model's own config."""
    return {
        "objective": cfg.objective,
        "distill_weight": cfg.distill_weight,
        "epochs": cfg.epochs,
        "temperature": cfg.temperature,
        "distill_temperature": cfg.distill_temperature,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "lr_backbone": None if cfg.head_only else cfg.lr,
        "lr_head": cfg.head_lr,
        "scored_weight": cfg.scored_weight if cfg.head_only else None,
        "scored_batch": cfg.scored_batch if cfg.head_only else None,
        "pool_batch": cfg.pool_batch if cfg.head_only else None,
        "training_data": ([f"recipe:{args.recipe}"] if args.recipe else [])
        + [os.path.basename(str(d)) for d in args.data + args.scored + args.texts],
        "pairs": len(rows),
        "scored_pairs": len(scored),
        "pool_texts": len(texts),
        "command": "bne train " + " ".join(argv if argv is not None else sys.argv[1:]),
    }


def _train_head_only(cfg: TrainConfig, args, rows, scored, extra_texts, resume, save_ckpt, log) -> tuple[dict, dict]:
    """(state dict of the head as ``projection.*``, its model config) for ``--head-only``."""
    if args.backbone != "minilm":
        raise ValueError("--head-only supports --backbone minilm (all-MiniLM-L6-v2)")
    from ..encoder.encoder import Encoder, load_minilm
    from ..encoder.model import BinaryEmbedder, bert_tokenizer, minilm_dir
    from .recipes import train_head

    assert cfg.max_length is not None  # TrainConfig fills the mode's default
    enc = Encoder(
        BinaryEmbedder(cfg.bits, encoder=load_minilm(), normalize=cfg.normalize),
        bert_tokenizer(minilm_dir() / "vocab.txt"),
        max_length=cfg.max_length,
        device=cfg.device,
    )
    enc.info["backbone"] = "all-MiniLM-L6-v2"
    texts = list(dict.fromkeys([t for r in rows for t in r] + [t for sc in scored for t in sc[:2]] + extra_texts))
    pos = {t: i for i, t in enumerate(texts)}
    pair_index = (
        np.array([[pos[t] for t in r] for r in rows], dtype=np.int64)
        if len({len(r) for r in rows}) == 1
        else np.array([[pos[r[0]], pos[r[1]]] for r in rows], dtype=np.int64)
    )
    log(f"{len(rows)} pairs, {len(scored)} scored pairs, {len(texts)} distinct texts: computing backbone features")
    feats = backbone_features(texts, enc, cache_dir=args.cache_dir, show_progress=False if args.quiet else None)
    pool = np.array([pos[t] for t in extra_texts], dtype=np.int64) if extra_texts else None
    sc_arr = np.array([[pos[a], pos[b], g] for a, b, g in scored], dtype=np.float64) if scored else None
    head = train_head(pair_index, feats, cfg, pool=pool, scored=sc_arr, resume=resume, checkpoint_fn=save_ckpt, log=log)
    sd = {"projection." + k: v.detach().contiguous() for k, v in head.state_dict().items()}
    model_cfg = {
        "bits": cfg.bits,
        "backbone": "all-MiniLM-L6-v2",
        "pooling": "mean",
        "normalize": cfg.normalize,
        "max_length": 256,
        "train_max_length": cfg.max_length,
    }
    return sd, model_cfg


def _train_full(cfg: TrainConfig, args, rows, scored, extra_texts, resume, save_ckpt, log) -> tuple[dict, dict]:
    """(state dict, model config) of an end-to-end trained BinaryEmbedder (``--full``)."""
    from ..encoder.model import BinaryEmbedder, default_tokenizer
    from .recipes import lsh_init, set_seed, train_full

    if scored or extra_texts:
        log(
            "--full trains on the pairs only: scored pairs (CoSENT) and distillation pool texts "
            "are head-only features, ignored"
        )
    set_seed(cfg.seed)
    if args.backbone == "bert-mini":
        model = BinaryEmbedder(cfg.bits)  # the seed layout: no normalisation before the head
    elif args.backbone == "minilm":
        from ..encoder.encoder import load_minilm

        model = BinaryEmbedder(cfg.bits, encoder=load_minilm(), normalize=cfg.normalize)
    else:
        model = BinaryEmbedder.from_pretrained(args.backbone)
        if model.binary_dim != cfg.bits:
            raise ValueError(f"{args.backbone} has {model.binary_dim} bits, --bits is {cfg.bits}")
    if args.backbone in ("bert-mini", "minilm"):
        lsh_init(model.projection, cfg.seed)
    model = train_full(model, default_tokenizer(), rows, cfg, resume=resume, checkpoint_fn=save_ckpt, log=log)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    model_cfg = {
        "bits": cfg.bits,
        "binary_dim": cfg.bits,
        "backbone": model.backbone_config(),
        "backbone_name": args.backbone,
        "pooling": "mean",
        "normalize": model.normalize,
        "max_length": cfg.max_length,
    }
    return sd, model_cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch  # after parsing: `bne train --help` does not wait for torch

    cfg = config_from_args(args)  # a ValueError names the bad value; bne's main prints it as one line
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    from .checkpoint import load_checkpoint, save_checkpoint  # imports torch: not for --help

    settings = _settings(cfg, args)
    resume = load_checkpoint(args.resume) if args.resume else None  # typed: never unpickles code
    if resume is not None:  # before the data is read: a changed flag is refused at once
        _check_resume(resume.pop("config", None), settings, args.resume)
    rows = read_training_tsvs(args.data)
    scored = read_scored(args.scored)
    extra_texts = read_texts(args.texts)
    if args.recipe:
        r_rows, r_scored, r_pool = RECIPES[args.recipe](args.data_root)
        rows += r_rows
        scored += r_scored
        extra_texts = list(dict.fromkeys(extra_texts + r_pool))
    if args.max_pairs:
        rows = rows[: args.max_pairs]
    if not rows:  # each --data file has pairs (read_training_tsvs): none given and no recipe
        raise ValueError("no training pairs: pass --data TSV and/or --recipe")
    out = Path(args.out)
    if out.suffix in (".safetensors", ".json"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = out.with_name(out.name + ".ckpt.pt")

    def save_ckpt(state):
        save_checkpoint({**state, "config": settings}, ckpt_path)
        log(f"checkpoint -> {ckpt_path}")

    record = _record(cfg, args, argv, rows, scored, extra_texts)
    t0 = time.time()
    run = _train_head_only if cfg.head_only else _train_full
    sd, model_cfg = run(cfg, args, rows, scored, extra_texts, resume, save_ckpt, log)
    from ..encoder.model import save_safetensors

    save_safetensors(sd, out.with_suffix(".safetensors"))
    info = {**model_cfg, **record, "train_seconds": round(time.time() - t0, 1)}
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"wrote {out.with_suffix('.safetensors')} and {out.with_suffix('.json')} in {info['train_seconds']}s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
