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
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OBJECTIVES = ("contrastive", "distill", "distill+contrastive")


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------
def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def contrastive_loss(za: torch.Tensor, zp: torch.Tensor, zn: torch.Tensor | None = None, *, temperature: float = 0.05,
                     same: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch InfoNCE on tanh codes: row i of ``za`` must pick ``zp[i]`` among all positives (and
    hard negatives ``zn``). ``same`` (B, B) bool marks off-diagonal pairs that are the same text
    (not negatives)."""
    ta, tp = torch.tanh(za), torch.tanh(zp)
    cands = tp if zn is None else torch.cat([tp, torch.tanh(zn)])
    s = _cos(ta, cands) / temperature
    if same is not None:
        b = len(za)
        mask = torch.zeros_like(s, dtype=torch.bool)
        mask[:, :b] = same & ~torch.eye(b, dtype=torch.bool, device=s.device)
        s = s.masked_fill(mask, float("-inf"))
    labels = torch.arange(len(za), device=za.device)
    return F.cross_entropy(s, labels)


def distill_loss(z: torch.Tensor, teacher: torch.Tensor, *, temperature: float = 0.05) -> torch.Tensor:
    """KL(teacher || student) between row-wise softmaxes of in-batch cosine similarities (diagonal
    excluded): teacher = float backbone embeddings, student = tanh codes."""
    n = len(z)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    st = (_cos(teacher, teacher) / temperature).masked_fill(eye, float("-inf"))
    ss = (_cos(torch.tanh(z), torch.tanh(z)) / temperature).masked_fill(eye, float("-inf"))
    pt = F.softmax(st, dim=1)
    logps = F.log_softmax(ss, dim=1).masked_fill(eye, 0.0)
    logpt = F.log_softmax(st, dim=1).masked_fill(eye, 0.0)
    return (pt * (logpt - logps)).sum(1).mean()


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def set_seed(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def lsh_init(head: nn.Sequential, seed: int) -> None:
    """Random-hyperplane initialisation: blocks of orthonormal directions, zero bias, identity LayerNorm."""
    lin: nn.Linear = head[0]
    out_dim, in_dim = lin.weight.shape
    g = torch.Generator().manual_seed(seed + 7919)
    w = torch.empty(out_dim, in_dim)
    for s in range(0, out_dim, in_dim):
        m = torch.randn(in_dim, in_dim, generator=g, dtype=torch.float64)
        q, r = torch.linalg.qr(m)
        q = q * torch.sign(torch.diagonal(r))
        w[s : s + in_dim] = q[: min(in_dim, out_dim - s)].float()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.zero_()
        head[1].weight.fill_(1.0)
        head[1].bias.zero_()


def cosine_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        p = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))

    return f


def read_training_tsvs(paths: Sequence[str], max_pairs: int | None = None) -> list[tuple[str, ...]]:
    from .data import load_pairs

    rows: list[tuple[str, ...]] = []
    for p in paths:
        rows.extend(load_pairs(p))
    if max_pairs:
        rows = rows[:max_pairs]
    if not rows:
        raise ValueError("no training pairs read from " + ", ".join(map(str, paths)))
    return rows


def read_texts(paths: Sequence[str]) -> list[str]:
    """Unlabelled texts for distillation: one per line (.txt[.gz]) or every field of a TSV."""
    from .data import _open_text

    out: list[str] = []
    for p in paths:
        with _open_text(Path(p)) as f:
            for i, line in enumerate(f):
                fields = [x for x in line.rstrip("\n").split("\t") if x.strip()]
                if i == 0 and fields and fields[0].strip().lower() == "anchor":
                    continue
                out.extend(fields)
    return list(dict.fromkeys(out))


def backbone_features(texts: list[str], encoder, *, batch_size: int = 64, cache_dir: str | None = None,
                      show_progress: bool | None = None) -> np.ndarray:
    """Raw (unnormalised) mean-pooled backbone features of ``texts``, cached as .npy in ``cache_dir``."""
    path = None
    if cache_dir:
        h = hashlib.sha256()
        h.update(repr((encoder.info.get("backbone", "minilm"), encoder.max_length)).encode())
        for t in texts:
            h.update(t.encode("utf-8") + b"\0")
        path = Path(cache_dir) / f"feats-{h.hexdigest()[:20]}.npy"
        if path.is_file():
            return np.load(path)
    x = encoder.embed(texts, batch_size=batch_size, show_progress=show_progress, normalize=False)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, x)
        os.replace(tmp, path)
    return x


# ---------------------------------------------------------------------------------------------
# head-only training on precomputed features
# ---------------------------------------------------------------------------------------------
def train_head(
    pair_index: np.ndarray,
    features: np.ndarray,
    *,
    bits: int = 1024,
    objective: str = "distill+contrastive",
    distill_weight: float = 1.0,
    pool: np.ndarray | None = None,
    pool_batch: int = 0,
    epochs: float = 1.0,
    batch_size: int = 256,
    temperature: float = 0.05,
    distill_temperature: float = 0.05,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup: float = 0.05,
    normalize: bool = True,
    seed: int = 0,
    init: str = "lsh",
    resume: dict | None = None,
    checkpoint_every: int = 0,
    checkpoint_fn=None,
    log_every: int = 100,
    log=print,
) -> nn.Sequential:
    """Trains ``Linear(hidden, bits) + LayerNorm`` on frozen features.

    ``features`` (n, hidden) float32 are the backbone features of every text; ``pair_index``
    (m, 2 or 3) int rows (anchor, positive[, negative]) index into it. ``pool`` (indices into
    ``features``) adds ``pool_batch`` unlabelled texts per step to the distillation batch.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    g = set_seed(seed)
    X = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if normalize:
        X = F.normalize(X, dim=-1)
    pairs = torch.as_tensor(np.asarray(pair_index, dtype=np.int64))
    hidden = X.shape[1]
    head = nn.Sequential(nn.Linear(hidden, bits), nn.LayerNorm(bits))
    if init == "lsh":
        lsh_init(head, seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(pairs) // batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(total, int(warmup * total)))
    step = 0
    if resume is not None:
        head.load_state_dict(resume["head"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        step = int(resume["step"])
        g.set_state(resume["generator"])
    pool_t = torch.as_tensor(np.asarray(pool, dtype=np.int64)) if pool is not None and pool_batch > 0 else None
    use_d = objective in ("distill", "distill+contrastive")
    use_c = objective in ("contrastive", "distill+contrastive")
    perm = torch.randperm(len(pairs), generator=g)
    # replay the permutations consumed before a resume
    for _ in range(step // steps_per_epoch):
        perm = torch.randperm(len(pairs), generator=g)
    t0 = time.time()
    run = 0.0
    while step < total:
        e_step = step % steps_per_epoch
        if e_step == 0 and step > 0:
            perm = torch.randperm(len(pairs), generator=g)
        bidx = perm[e_step * batch_size : (e_step + 1) * batch_size]
        b = pairs[bidx]
        ia, ip = b[:, 0], b[:, 1]
        loss = torch.zeros(())
        za, zp = head(X[ia]), head(X[ip])
        zn = head(X[b[:, 2]]) if b.shape[1] > 2 else None
        if use_c:
            same = ia[:, None] == ip[None, :]
            loss = loss + contrastive_loss(za, zp, zn, temperature=temperature, same=same)
        if use_d:
            ids = torch.cat([ia, ip])
            zs = [za, zp]
            if pool_t is not None:
                pi = pool_t[torch.randint(len(pool_t), (pool_batch,), generator=g)]
                ids = torch.cat([ids, pi])
                zs.append(head(X[pi]))
            # one row per distinct text
            uniq, first = _first_occurrence(ids)
            z = torch.cat(zs)[first]
            loss = loss + distill_weight * distill_loss(z, X[uniq], temperature=distill_temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        run = 0.98 * run + 0.02 * float(loss) if step > 1 else float(loss)
        if log and log_every and step % log_every == 0:
            log(f"step {step}/{total} loss {run:.4f} lr {sched.get_last_lr()[0]:.2e} {time.time() - t0:.0f}s")
        if checkpoint_fn is not None and checkpoint_every and step % checkpoint_every == 0 and step < total:
            checkpoint_fn({"head": head.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                           "step": step, "generator": g.get_state()})
    return head.eval()


def _first_occurrence(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct ids, position of each one's first occurrence in ``ids``), in first-occurrence order."""
    seen: dict[int, int] = {}
    for pos, v in enumerate(ids.tolist()):
        if v not in seen:
            seen[v] = pos
    first = torch.tensor(list(seen.values()), dtype=torch.long)
    return ids[first], first


# ---------------------------------------------------------------------------------------------
# full fine-tuning (the seed recipe)
# ---------------------------------------------------------------------------------------------
def train_full(model, tokenizer, rows: list[tuple[str, ...]], *, objective: str = "contrastive", distill_weight: float = 1.0,
               epochs: float = 1.0, batch_size: int = 64, temperature: float = 0.05, distill_temperature: float = 0.05,
               lr: float = 2e-5, head_lr_mult: float = 50.0, warmup: float = 0.1, max_length: int = 128, seed: int = 0,
               device: str = "cpu", resume: dict | None = None, checkpoint_fn=None, checkpoint_every: int = 0,
               log_every: int = 50, log=print):
    """End-to-end training of a :class:`BinaryEmbedder` on (anchor, positive[, negative]) text rows.
    With a distillation objective the teacher is a frozen copy of the initial backbone."""
    import copy

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    g = set_seed(seed)
    model.to(device).train()
    teacher = None
    if objective != "contrastive":
        teacher = copy.deepcopy(model.encoder).eval().requires_grad_(False)
    params = [
        {"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": lr},
        {"params": list(model.projection.parameters()), "lr": lr * head_lr_mult},
    ]
    opt = torch.optim.AdamW(params, weight_decay=0.01)
    steps_per_epoch = max(1, len(rows) // batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(total, int(warmup * total)))
    step = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        step = int(resume["step"])
        g.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
    perm = torch.randperm(len(rows), generator=g)
    for _ in range(step // steps_per_epoch):
        perm = torch.randperm(len(rows), generator=g)
    has_neg = all(len(r) > 2 and r[2] for r in rows)

    def tok(texts):
        b = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return b["input_ids"].to(device), b["attention_mask"].to(device)

    from .model import mean_pool

    t0 = time.time()
    run = 0.0
    while step < total:
        e_step = step % steps_per_epoch
        if e_step == 0 and step > 0:
            perm = torch.randperm(len(rows), generator=g)
        batch = [rows[i] for i in perm[e_step * batch_size : (e_step + 1) * batch_size].tolist()]
        a = [r[0] for r in batch]
        p = [r[1] for r in batch]
        za = model.logits(*tok(a))
        zp = model.logits(*tok(p))
        zn = model.logits(*tok([r[2] for r in batch])) if has_neg else None
        same = torch.tensor([[x == y for y in p] for x in a])
        loss = torch.zeros((), device=device)
        if objective != "distill":
            loss = loss + contrastive_loss(za, zp, zn, temperature=temperature, same=same.to(device))
        if teacher is not None:
            allt = a + p
            firstpos: dict[str, int] = {}
            for i, t in enumerate(allt):
                firstpos.setdefault(t, i)
            texts = list(firstpos)
            first = torch.tensor(list(firstpos.values()), device=device)
            with torch.no_grad():
                ids, mask = tok(texts)
                tfeat = mean_pool(teacher(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
            loss = loss + distill_weight * distill_loss(torch.cat([za, zp])[first], tfeat, temperature=distill_temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        run = 0.98 * run + 0.02 * float(loss) if step > 1 else float(loss)
        if log and log_every and step % log_every == 0:
            log(f"step {step}/{total} loss {run:.4f} {time.time() - t0:.0f}s")
        if checkpoint_fn is not None and checkpoint_every and step % checkpoint_every == 0 and step < total:
            checkpoint_fn({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                           "step": step, "generator": g.get_state(), "torch_rng": torch.get_rng_state()})
    return model.eval()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bne train", description="Train a natively binary text encoder (head-only on a frozen backbone, or end to end).")
    p.add_argument("--data", action="append", required=True, metavar="TSV",
                   help="training TSV(s): anchor<TAB>positive[<TAB>negative], optional header 'anchor...'; .gz ok; repeatable")
    p.add_argument("--texts", action="append", default=[], metavar="FILE",
                   help="extra unlabelled texts for distillation (one per line, or every field of a TSV); head-only; repeatable")
    p.add_argument("--out", required=True, help="output prefix: writes OUT.safetensors and OUT.json")
    p.add_argument("--bits", type=int, default=1024, help="code length, a multiple of 64 (default 1024)")
    p.add_argument("--backbone", default="minilm",
                   help="'minilm' (all-MiniLM-L6-v2, offline), 'bert-mini' (random init from config), or a BinaryEmbedder checkpoint path (--full)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--head-only", dest="head_only", action="store_true", default=None, help="freeze the backbone, train the head (default for minilm)")
    mode.add_argument("--full", dest="head_only", action="store_false", help="fine-tune the backbone too (the seed recipe)")
    p.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="default: distill+contrastive (head-only) / contrastive (full, the seed recipe)")
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=None, help="pairs per step (default 256 head-only, 64 full)")
    p.add_argument("--pool-batch", type=int, default=0, help="unlabelled --texts added to each distillation batch")
    p.add_argument("--temperature", type=float, default=0.05, help="contrastive temperature")
    p.add_argument("--distill-temperature", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=2e-5, help="backbone learning rate (the head gets lr * head-lr-mult)")
    p.add_argument("--head-lr-mult", type=float, default=50.0)
    p.add_argument("--warmup", type=float, default=None, help="warm-up fraction of the steps (default 0.05 head-only, 0.1 full)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per text (default 128 for training TSVs)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false", help="do not L2-normalise pooled features before the head")
    p.add_argument("--max-pairs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--cache-dir", default=None, help="cache backbone features here (head-only)")
    p.add_argument("--resume", default=None, help="continue from a checkpoint written with --checkpoint-every")
    p.add_argument("--checkpoint-every", type=int, default=0, help="write OUT.ckpt.pt every N steps")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..codes import check_bits

    check_bits(args.bits)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    head_only = args.head_only if args.head_only is not None else args.backbone == "minilm"
    objective = args.objective or ("distill+contrastive" if head_only else "contrastive")
    rows = read_training_tsvs(args.data, args.max_pairs)
    out = Path(args.out)
    if out.suffix in (".safetensors", ".json"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = out.with_name(out.name + ".ckpt.pt")
    resume = torch.load(args.resume, map_location="cpu", weights_only=False) if args.resume else None

    def save_ckpt(state):
        torch.save(state, ckpt_path)
        log(f"checkpoint -> {ckpt_path}")

    cfg: dict[str, Any] = {
        "bits": args.bits,
        "objective": objective,
        "distill_weight": args.distill_weight,
        "epochs": args.epochs,
        "temperature": args.temperature,
        "distill_temperature": args.distill_temperature,
        "seed": args.seed,
        "training_data": [os.path.basename(str(d)) for d in args.data] + [os.path.basename(str(t)) for t in args.texts],
        "pairs": len(rows),
        "command": "bne train " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    t0 = time.time()
    from safetensors.torch import save_file

    if head_only:
        if args.backbone != "minilm":
            raise SystemExit("--head-only supports --backbone minilm (all-MiniLM-L6-v2)")
        from .encoder import Encoder, load_minilm
        from .model import BinaryEmbedder, bert_tokenizer, minilm_dir

        max_length = args.max_length or 128
        enc = Encoder(BinaryEmbedder(args.bits, encoder=load_minilm(), normalize=args.normalize),
                      bert_tokenizer(minilm_dir() / "vocab.txt"), max_length=max_length, device=args.device)
        enc.info["backbone"] = "all-MiniLM-L6-v2"
        texts = list(dict.fromkeys([t for r in rows for t in r] + read_texts(args.texts)))
        pos = {t: i for i, t in enumerate(texts)}
        pair_index = np.array([[pos[t] for t in r] for r in rows], dtype=np.int64) if len({len(r) for r in rows}) == 1 else \
            np.array([[pos[r[0]], pos[r[1]]] for r in rows], dtype=np.int64)
        log(f"{len(rows)} pairs, {len(texts)} distinct texts: computing backbone features")
        feats = backbone_features(texts, enc, cache_dir=args.cache_dir, show_progress=not args.quiet and None)
        pool = np.array([pos[t] for t in read_texts(args.texts)], dtype=np.int64) if args.texts else None
        head = train_head(pair_index, feats, bits=args.bits, objective=objective, distill_weight=args.distill_weight,
                          pool=pool, pool_batch=args.pool_batch, epochs=args.epochs, batch_size=args.batch_size or 256,
                          temperature=args.temperature, distill_temperature=args.distill_temperature,
                          lr=args.lr * args.head_lr_mult, warmup=0.05 if args.warmup is None else args.warmup,
                          normalize=args.normalize, seed=args.seed, resume=resume, checkpoint_every=args.checkpoint_every,
                          checkpoint_fn=save_ckpt, log_every=args.log_every, log=log)
        sd = {"projection." + k: v.detach().contiguous() for k, v in head.state_dict().items()}
        save_file(sd, str(out.with_suffix(".safetensors")), metadata={"format": "pt"})
        cfg = {"bits": args.bits, "backbone": "all-MiniLM-L6-v2", "pooling": "mean", "normalize": args.normalize,
               "max_length": 256, "train_max_length": max_length, **{k: v for k, v in cfg.items() if k != "bits"}}
    else:
        from .model import BinaryEmbedder, default_tokenizer

        set_seed(args.seed)
        if args.backbone == "bert-mini":
            model = BinaryEmbedder(args.bits)  # the seed layout: no normalisation before the head
        elif args.backbone == "minilm":
            from .encoder import load_minilm

            model = BinaryEmbedder(args.bits, encoder=load_minilm(), normalize=args.normalize)
        else:
            model = BinaryEmbedder.from_pretrained(args.backbone)
            if model.binary_dim != args.bits:
                raise SystemExit(f"{args.backbone} has {model.binary_dim} bits, --bits is {args.bits}")
        if args.backbone in ("bert-mini", "minilm"):
            lsh_init(model.projection, args.seed)
        tok = default_tokenizer()
        model = train_full(model, tok, rows, objective=objective, distill_weight=args.distill_weight, epochs=args.epochs,
                           batch_size=args.batch_size or 64, temperature=args.temperature,
                           distill_temperature=args.distill_temperature, lr=args.lr, head_lr_mult=args.head_lr_mult,
                           warmup=0.1 if args.warmup is None else args.warmup, max_length=args.max_length or 128,
                           seed=args.seed, device=args.device, resume=resume, checkpoint_fn=save_ckpt,
                           checkpoint_every=args.checkpoint_every, log_every=args.log_every, log=log)
        sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(sd, str(out.with_suffix(".safetensors")), metadata={"format": "pt"})
        bb = model.encoder.config.to_dict()
        from .model import _BERT_KEYS

        cfg = {"bits": args.bits, "binary_dim": args.bits, "backbone": {k: v for k, v in bb.items() if k in _BERT_KEYS},
               "backbone_name": args.backbone, "pooling": "mean", "normalize": model.normalize,
               "max_length": args.max_length or 128, **{k: v for k, v in cfg.items() if k != "bits"}}
    cfg["train_seconds"] = round(time.time() - t0, 1)
    out.with_suffix(".json").write_text(json.dumps(cfg, indent=2) + "\n")
    log(f"wrote {out.with_suffix('.safetensors')} and {out.with_suffix('.json')} in {cfg['train_seconds']}s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
