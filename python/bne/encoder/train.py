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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import threads_option

OBJECTIVES = ("contrastive", "distill", "distill+contrastive")


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------
def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def contrastive_loss(
    za: torch.Tensor,
    zp: torch.Tensor,
    zn: torch.Tensor | None = None,
    *,
    temperature: float = 0.05,
    same: torch.Tensor | None = None,
) -> torch.Tensor:
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


def cosent_loss(za: torch.Tensor, zb: torch.Tensor, gold: torch.Tensor, *, temperature: float = 0.05) -> torch.Tensor:
    """CoSENT ranking loss on tanh codes: every pair (i, j) with ``gold[i] > gold[j]`` should have
    ``cos(a_i, b_i) > cos(a_j, b_j)``; ``log(1 + sum exp((cos_j - cos_i) / temperature))``."""
    c = (F.normalize(torch.tanh(za), dim=-1) * F.normalize(torch.tanh(zb), dim=-1)).sum(-1) / temperature
    diff = c[None, :] - c[:, None]  # [i, j] = c_j - c_i
    mask = gold[:, None] > gold[None, :]
    diff = diff.masked_fill(~mask, float("-inf"))
    return torch.logsumexp(torch.cat([torch.zeros(1, device=c.device), diff.flatten()]), dim=0)


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
def save_safetensors(sd: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors.save_file, leaving the file world-readable per the umask (it writes 0600)."""
    from safetensors.torch import save_file

    save_file(sd, str(path), metadata={"format": "pt"})
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


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


def cosine_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        p = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))

    return f


def read_training_tsvs(paths: Sequence[str], max_pairs: int | None = None) -> list[tuple[str, ...]]:
    """Rows of the training TSVs. ``PATH*N`` repeats a file's rows N times (up-weights small sets)."""
    import re

    from .data import load_pairs

    rows: list[tuple[str, ...]] = []
    for p in paths:
        m = re.fullmatch(r"(.*)\*(\d+)", str(p))
        path, rep = (m.group(1), int(m.group(2))) if m and not Path(str(p)).exists() else (str(p), 1)
        rows.extend(load_pairs(path) * rep)
    if max_pairs:
        rows = rows[:max_pairs]
    return rows


def read_scored(paths: Sequence[str]) -> list[tuple[str, str, float]]:
    """Scored pairs for the CoSENT loss: ``score<TAB>sentence1<TAB>sentence2`` (a header line that
    does not start with a number is skipped), e.g. shared/data/stsbenchmark/stsb-train.tsv.gz."""
    from .data import read_tsv

    out: list[tuple[str, str, float]] = []
    for p in paths:
        _, rows = read_tsv(p, header=False)
        for r in rows:
            try:
                out.append((r[1], r[2], float(r[0])))
            except (ValueError, IndexError):
                continue
    return out


def split_sentences(text: str, min_chars: int = 20) -> list[str]:
    import re

    return [x for x in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text) if len(x) > min_chars]


def recipe_minilm_default(root=None, *, sci_repeat: int = 20, sts_min_score: float = 4.0):
    """The training data of the shipped heads, from ``shared/data`` (train splits only):

    * pairs: Flickr30k caption pairs (304,685), MRPC train+val positives (2,753), STS-B train pairs
      with gold >= ``sts_min_score``, SciFact train (query, relevant doc) pairs x ``sci_repeat``;
    * scored (CoSENT): all STS-B train pairs with their gold scores;
    * distillation pool: STS-B train + MRPC train sentences, SciFact train queries, their relevant
      docs and those docs' sentences.

    SICK, STS12-16, CISI, Cranfield, STS-B dev/test, SciFact test and the rest of the SciFact corpus
    are not touched. Returns ``(rows, scored, pool)``.
    """
    from .data import data_root, load_beir, load_pairs, load_sts, read_tsv

    root = data_root(root)
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


def feature_cache_path(texts: list[str], encoder, cache_dir: str | os.PathLike) -> Path:
    h = hashlib.sha256()
    h.update(repr((encoder.info.get("backbone", "minilm"), encoder.max_length)).encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return Path(cache_dir) / f"feats-{h.hexdigest()[:20]}.npy"


def backbone_features(
    texts: list[str], encoder, *, batch_size: int = 64, cache_dir: str | None = None, show_progress: bool | None = None
) -> np.ndarray:
    """Raw (unnormalised) mean-pooled backbone features of ``texts``, cached as .npy in ``cache_dir``."""
    path = feature_cache_path(texts, encoder, cache_dir) if cache_dir else None
    if path is not None and path.is_file():
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
    scored: np.ndarray | None = None,
    scored_batch: int = 0,
    scored_weight: float = 1.0,
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
    ``scored`` (m, 3) float rows (text a, text b, gold score) add a CoSENT loss on ``scored_batch``
    random scored pairs per step (STS-style labels), weighted by ``scored_weight``.
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
    sc_t = torch.as_tensor(np.asarray(scored, dtype=np.float64)) if scored is not None and scored_batch > 0 else None
    use_d = objective in ("distill", "distill+contrastive")
    use_c = objective in ("contrastive", "distill+contrastive")
    perm = resume["perm"] if resume is not None else torch.randperm(len(pairs), generator=g)
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
        if sc_t is not None:
            sb = sc_t[torch.randint(len(sc_t), (scored_batch,), generator=g)]
            sa, sbb = sb[:, 0].long(), sb[:, 1].long()
            loss = loss + scored_weight * cosent_loss(
                head(X[sa]), head(X[sbb]), sb[:, 2].float(), temperature=temperature
            )
        step += 1
        run = _optimizer_step(loss, head, opt, sched, run, step)
        if log and log_every and step % log_every == 0:
            log(f"step {step}/{total} loss {run:.4f} lr {sched.get_last_lr()[0]:.2e} {time.time() - t0:.0f}s")
        if checkpoint_fn is not None and checkpoint_every and step % checkpoint_every == 0 and step < total:
            checkpoint_fn(
                {
                    "head": head.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "step": step,
                    "generator": g.get_state(),
                    "perm": perm,
                }
            )
    return head.eval()


def _optimizer_step(loss: torch.Tensor, module: nn.Module, opt, sched, run: float, step: int) -> float:
    """One update (clip 1.0, as in the seed recipe); returns the running loss for logging."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    opt.step()
    sched.step()
    return 0.98 * run + 0.02 * loss.item() if step > 1 else loss.item()


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
def train_full(
    model,
    tokenizer,
    rows: list[tuple[str, ...]],
    *,
    objective: str = "contrastive",
    distill_weight: float = 1.0,
    epochs: float = 1.0,
    batch_size: int = 64,
    temperature: float = 0.05,
    distill_temperature: float = 0.05,
    lr: float = 2e-5,
    head_lr_mult: float = 50.0,
    warmup: float = 0.1,
    max_length: int = 128,
    seed: int = 0,
    device: str = "cpu",
    resume: dict | None = None,
    checkpoint_fn=None,
    checkpoint_every: int = 0,
    log_every: int = 50,
    log=print,
):
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
    perm = resume["perm"] if resume is not None else torch.randperm(len(rows), generator=g)
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
            loss = loss + distill_weight * distill_loss(
                torch.cat([za, zp])[first], tfeat, temperature=distill_temperature
            )
        step += 1
        run = _optimizer_step(loss, model, opt, sched, run, step)
        if log and log_every and step % log_every == 0:
            log(f"step {step}/{total} loss {run:.4f} {time.time() - t0:.0f}s")
        if checkpoint_fn is not None and checkpoint_every and step % checkpoint_every == 0 and step < total:
            checkpoint_fn(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "step": step,
                    "generator": g.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "perm": perm,
                }
            )
    return model.eval()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bne train",
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
        help="built-in training data from shared/data (minilm-default: what trained the shipped heads); adds to --data",
    )
    p.add_argument(
        "--data-root", default=None, help="shared/data folder for --recipe (default: $BNE_DATA or ../shared/data)"
    )
    p.add_argument(
        "--scored",
        action="append",
        default=[],
        metavar="TSV",
        help="score<TAB>sentence1<TAB>sentence2 pairs for a CoSENT loss (head-only), e.g. stsb-train.tsv.gz",
    )
    p.add_argument("--scored-batch", type=int, default=128, help="scored pairs per step (0: off)")
    p.add_argument("--scored-weight", type=float, default=0.2)
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
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=None, help="pairs per step (default 256 head-only, 64 full)")
    p.add_argument(
        "--pool-batch",
        type=int,
        default=256,
        help="unlabelled texts (--texts / recipe pool) added to each distillation batch",
    )
    p.add_argument("--temperature", type=float, default=0.05, help="contrastive temperature")
    p.add_argument("--distill-temperature", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=2e-5, help="backbone learning rate (the head gets lr * head-lr-mult)")
    p.add_argument("--head-lr-mult", type=float, default=50.0)
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
    p.add_argument("--max-pairs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=threads_option, default=None, help="torch intra-op threads (default: torch's)")
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
    if not rows:
        raise SystemExit("no training pairs: pass --data TSV and/or --recipe")
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
        "batch_size": args.batch_size or (256 if head_only else 64),
        "lr_backbone": None if head_only else args.lr,
        "lr_head": args.lr * args.head_lr_mult,
        "scored_weight": args.scored_weight if head_only else None,
        "scored_batch": args.scored_batch if head_only else None,
        "pool_batch": args.pool_batch if head_only else None,
        "training_data": ([f"recipe:{args.recipe}"] if args.recipe else [])
        + [os.path.basename(str(d)) for d in args.data + args.scored + args.texts],
        "pairs": len(rows),
        "scored_pairs": len(scored),
        "pool_texts": len(extra_texts),
        "command": "bne train " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    t0 = time.time()
    if head_only:
        if args.backbone != "minilm":
            raise SystemExit("--head-only supports --backbone minilm (all-MiniLM-L6-v2)")
        from .encoder import Encoder, load_minilm
        from .model import BinaryEmbedder, bert_tokenizer, minilm_dir

        max_length = args.max_length or 256
        enc = Encoder(
            BinaryEmbedder(args.bits, encoder=load_minilm(), normalize=args.normalize),
            bert_tokenizer(minilm_dir() / "vocab.txt"),
            max_length=max_length,
            device=args.device,
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
        head = train_head(
            pair_index,
            feats,
            bits=args.bits,
            objective=objective,
            distill_weight=args.distill_weight,
            pool=pool,
            pool_batch=args.pool_batch,
            scored=sc_arr,
            scored_batch=args.scored_batch,
            scored_weight=args.scored_weight,
            epochs=args.epochs,
            batch_size=args.batch_size or 256,
            temperature=args.temperature,
            distill_temperature=args.distill_temperature,
            lr=args.lr * args.head_lr_mult,
            warmup=0.05 if args.warmup is None else args.warmup,
            normalize=args.normalize,
            seed=args.seed,
            resume=resume,
            checkpoint_every=args.checkpoint_every,
            checkpoint_fn=save_ckpt,
            log_every=args.log_every,
            log=log,
        )
        sd = {"projection." + k: v.detach().contiguous() for k, v in head.state_dict().items()}
        save_safetensors(sd, out.with_suffix(".safetensors"))
        cfg = {
            "bits": args.bits,
            "backbone": "all-MiniLM-L6-v2",
            "pooling": "mean",
            "normalize": args.normalize,
            "max_length": 256,
            "train_max_length": max_length,
            **{k: v for k, v in cfg.items() if k != "bits"},
        }
    else:
        from .model import BinaryEmbedder, default_tokenizer

        if scored or extra_texts:
            log(
                "--full trains on the pairs only: scored pairs (CoSENT) and distillation pool texts "
                "are head-only features, ignored"
            )
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
        model = train_full(
            model,
            tok,
            rows,
            objective=objective,
            distill_weight=args.distill_weight,
            epochs=args.epochs,
            batch_size=args.batch_size or 64,
            temperature=args.temperature,
            distill_temperature=args.distill_temperature,
            lr=args.lr,
            head_lr_mult=args.head_lr_mult,
            warmup=0.1 if args.warmup is None else args.warmup,
            max_length=args.max_length or 128,
            seed=args.seed,
            device=args.device,
            resume=resume,
            checkpoint_fn=save_ckpt,
            checkpoint_every=args.checkpoint_every,
            log_every=args.log_every,
            log=log,
        )
        sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_safetensors(sd, out.with_suffix(".safetensors"))
        bb = model.bert_config.to_dict()
        from .model import _BERT_KEYS

        cfg = {
            "bits": args.bits,
            "binary_dim": args.bits,
            "backbone": {k: v for k, v in bb.items() if k in _BERT_KEYS},
            "backbone_name": args.backbone,
            "pooling": "mean",
            "normalize": model.normalize,
            "max_length": args.max_length or 128,
            **{k: v for k, v in cfg.items() if k != "bits"},
        }
    cfg["train_seconds"] = round(time.time() - t0, 1)
    out.with_suffix(".json").write_text(json.dumps(cfg, indent=2) + "\n")
    log(f"wrote {out.with_suffix('.safetensors')} and {out.with_suffix('.json')} in {cfg['train_seconds']}s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
