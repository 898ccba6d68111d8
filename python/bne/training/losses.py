"""Training objectives, all computed on the relaxed codes ``tanh(z)`` of the head's logits ``z``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
