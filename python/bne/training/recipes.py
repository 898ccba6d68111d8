"""The two training loops: a head on frozen backbone features (``train_head``) and end-to-end
fine-tuning of a :class:`~bne.encoder.BinaryEmbedder` (``train_full``, the seed recipe).

Both use one optimiser setup (:func:`make_optimizer`: AdamW, linear warm-up then cosine decay),
one update step (gradient clipping 1.0) and one checkpoint / resume format. The same
:class:`TrainConfig` (seed and thread count included) gives the same weights.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .losses import contrastive_loss, cosent_loss, distill_loss

Log = Callable[..., Any]


def set_seed(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def lsh_init(head: nn.Sequential, seed: int) -> None:
    """Random-hyperplane initialisation: blocks of orthonormal directions, zero bias, identity LayerNorm."""
    lin = cast(nn.Linear, head[0])
    ln = cast(nn.LayerNorm, head[1])
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
        ln.weight.fill_(1.0)
        ln.bias.zero_()


def cosine_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        p = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))

    return f


def make_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig, n_rows: int):
    """(AdamW, LambdaLR, steps per epoch, total steps) for ``n_rows`` training rows; each group
    names its own ``lr``."""
    assert cfg.warmup is not None
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    per_epoch, total = cfg.total_steps(n_rows)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(total, int(cfg.warmup * total)))
    return opt, sched, per_epoch, total


def _optimizer_step(loss: torch.Tensor, module: nn.Module, opt, sched, run: float, step: int) -> float:
    """One update (clip 1.0, as in the seed recipe); returns the running loss for logging."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    opt.step()
    sched.step()
    return 0.98 * run + 0.02 * loss.item() if step > 1 else loss.item()


def _checkpoint(module: nn.Module, opt, sched, step: int, g: torch.Generator, perm: torch.Tensor) -> dict[str, Any]:
    return {
        "module": module.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "step": step,
        "generator": g.get_state(),
        "torch_rng": torch.get_rng_state(),
        "perm": perm,
    }


def _restore(state: dict[str, Any], module: nn.Module, opt, sched, g: torch.Generator) -> tuple[int, torch.Tensor]:
    """Loads a :func:`_checkpoint` state; returns (step, permutation of the current epoch).
    ValueError (one line) when the state is of another model or data set than this run's."""
    # "head" / "model": the keys of checkpoints written before the two loops shared one format
    sd = state.get("module") or state.get("head") or state["model"]
    mine = module.state_dict()
    if set(sd) != set(mine) or any(tuple(sd[k].shape) != tuple(mine[k].shape) for k in mine):
        raise ValueError("the --resume checkpoint is of another model (other weights or shapes than this run's)")
    perm = state["perm"]
    try:
        module.load_state_dict(sd)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        g.set_state(state["generator"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        line = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ValueError(f"the --resume checkpoint does not fit this run ({line[:200]})") from None
    return int(state["step"]), perm


def _first_occurrence(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct ids, position of each one's first occurrence in ``ids``), in first-occurrence order."""
    seen: dict[int, int] = {}
    for pos, v in enumerate(ids.tolist()):
        if v not in seen:
            seen[v] = pos
    first = torch.tensor(list(seen.values()), dtype=torch.long)
    return ids[first], first


def _loop(cfg: TrainConfig, n_rows: int, module: nn.Module, groups, g, step_loss, resume, checkpoint_fn, log) -> None:
    """The shared loop: epochs of shuffled batches of row indices, ``step_loss(rows)`` -> loss,
    one update, logging and checkpoints every ``cfg.checkpoint_every`` steps."""
    opt, sched, per_epoch, total = make_optimizer(groups, cfg, n_rows)
    step = 0
    perm = torch.randperm(n_rows, generator=g) if resume is None else None
    if resume is not None:
        step, perm = _restore(resume, module, opt, sched, g)
        if len(perm) != n_rows or step > total:
            raise ValueError(
                f"the --resume checkpoint is of a run over {len(perm)} training rows at step {step}; "
                f"this run has {n_rows} rows and {total} steps (same data and flags are needed)"
            )
    assert perm is not None and cfg.batch_size is not None
    t0 = time.time()
    run = 0.0
    while step < total:
        e_step = step % per_epoch
        if e_step == 0 and step > 0:
            perm = torch.randperm(n_rows, generator=g)
        loss = step_loss(perm[e_step * cfg.batch_size : (e_step + 1) * cfg.batch_size])
        step += 1
        run = _optimizer_step(loss, module, opt, sched, run, step)
        if log and cfg.log_every and step % cfg.log_every == 0:
            log(f"step {step}/{total} loss {run:.4f} lr {sched.get_last_lr()[-1]:.2e} {time.time() - t0:.0f}s")
        if checkpoint_fn is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            checkpoint_fn(_checkpoint(module, opt, sched, step, g, perm))


# ---------------------------------------------------------------------------------------------
# head-only training on precomputed features
# ---------------------------------------------------------------------------------------------
def train_head(
    pair_index: np.ndarray,
    features: np.ndarray,
    cfg: TrainConfig,
    *,
    pool: np.ndarray | None = None,
    scored: np.ndarray | None = None,
    resume: dict | None = None,
    checkpoint_fn: Callable[[dict], None] | None = None,
    log: Log | None = print,
) -> nn.Sequential:
    """Trains ``Linear(hidden, cfg.bits) + LayerNorm`` on frozen features.

    ``features`` (n, hidden) float32 are the backbone features of every text; ``pair_index``
    (m, 2 or 3) int rows (anchor, positive[, negative]) index into it. ``pool`` (indices into
    ``features``) adds ``cfg.pool_batch`` unlabelled texts per step to the distillation batch.
    ``scored`` (m, 3) float rows (text a, text b, gold score) add a CoSENT loss on
    ``cfg.scored_batch`` random scored pairs per step, weighted by ``cfg.scored_weight``.
    """
    g = set_seed(cfg.seed)
    X = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if cfg.normalize:
        X = F.normalize(X, dim=-1)
    pairs = torch.as_tensor(np.asarray(pair_index, dtype=np.int64))
    head = nn.Sequential(nn.Linear(X.shape[1], cfg.bits), nn.LayerNorm(cfg.bits))
    if cfg.init == "lsh":
        lsh_init(head, cfg.seed)
    pool_t = torch.as_tensor(np.asarray(pool, dtype=np.int64)) if pool is not None and cfg.pool_batch > 0 else None
    sc_t = (
        torch.as_tensor(np.asarray(scored, dtype=np.float64)) if scored is not None and cfg.scored_batch > 0 else None
    )

    def step_loss(bidx: torch.Tensor) -> torch.Tensor:
        b = pairs[bidx]
        ia, ip = b[:, 0], b[:, 1]
        loss = torch.zeros(())
        za, zp = head(X[ia]), head(X[ip])
        zn = head(X[b[:, 2]]) if b.shape[1] > 2 else None
        if cfg.uses_contrastive:
            same = ia[:, None] == ip[None, :]
            loss = loss + contrastive_loss(za, zp, zn, temperature=cfg.temperature, same=same)
        if cfg.uses_distill:
            ids = torch.cat([ia, ip])
            zs = [za, zp]
            if pool_t is not None:
                pi = pool_t[torch.randint(len(pool_t), (cfg.pool_batch,), generator=g)]
                ids = torch.cat([ids, pi])
                zs.append(head(X[pi]))
            uniq, first = _first_occurrence(ids)  # one row per distinct text
            z = torch.cat(zs)[first]
            loss = loss + cfg.distill_weight * distill_loss(z, X[uniq], temperature=cfg.distill_temperature)
        if sc_t is not None:
            sb = sc_t[torch.randint(len(sc_t), (cfg.scored_batch,), generator=g)]
            sa, sbb = sb[:, 0].long(), sb[:, 1].long()
            loss = loss + cfg.scored_weight * cosent_loss(
                head(X[sa]), head(X[sbb]), sb[:, 2].float(), temperature=cfg.temperature
            )
        return loss

    groups = [{"params": list(head.parameters()), "lr": cfg.head_lr}]
    _loop(cfg, len(pairs), head, groups, g, step_loss, resume, checkpoint_fn, log)
    return head.eval()


# ---------------------------------------------------------------------------------------------
# full fine-tuning (the seed recipe)
# ---------------------------------------------------------------------------------------------
def train_full(
    model,
    tokenizer,
    rows: list[tuple[str, ...]],
    cfg: TrainConfig,
    *,
    resume: dict | None = None,
    checkpoint_fn: Callable[[dict], None] | None = None,
    log: Log | None = print,
):
    """End-to-end training of a :class:`BinaryEmbedder` on (anchor, positive[, negative]) text rows.
    With a distillation objective the teacher is a frozen copy of the initial backbone."""
    from ..encoder.model import mean_pool

    g = set_seed(cfg.seed)
    device = cfg.device
    model.to(device).train()
    teacher = None
    if cfg.uses_distill:
        teacher = copy.deepcopy(model.encoder).eval().requires_grad_(False)
    has_neg = all(len(r) > 2 and r[2] for r in rows)

    def tok(texts):
        b = tokenizer(list(texts), padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
        return b["input_ids"].to(device), b["attention_mask"].to(device)

    def step_loss(bidx: torch.Tensor) -> torch.Tensor:
        batch = [rows[i] for i in bidx.tolist()]
        a = [r[0] for r in batch]
        p = [r[1] for r in batch]
        za = model.logits(*tok(a))
        zp = model.logits(*tok(p))
        zn = model.logits(*tok([r[2] for r in batch])) if has_neg else None
        loss = torch.zeros((), device=device)
        if cfg.uses_contrastive:
            same = torch.tensor([[x == y for y in p] for x in a])
            loss = loss + contrastive_loss(za, zp, zn, temperature=cfg.temperature, same=same.to(device))
        if teacher is not None:
            firstpos: dict[str, int] = {}
            for i, t in enumerate(a + p):
                firstpos.setdefault(t, i)
            first = torch.tensor(list(firstpos.values()), device=device)
            with torch.no_grad():
                ids, mask = tok(list(firstpos))
                tfeat = mean_pool(teacher(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
            loss = loss + cfg.distill_weight * distill_loss(
                torch.cat([za, zp])[first], tfeat, temperature=cfg.distill_temperature
            )
        return loss

    groups = [
        {"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.lr},
        {"params": list(model.projection.parameters()), "lr": cfg.head_lr},
    ]
    _loop(cfg, len(rows), model, groups, g, step_loss, resume, checkpoint_fn, log)
    return model.eval()
