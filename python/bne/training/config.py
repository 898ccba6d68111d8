"""Every hyper-parameter of a training run in one dataclass (``bne train`` builds it from its flags)."""

from __future__ import annotations

import dataclasses
import math

OBJECTIVES = ("contrastive", "distill", "distill+contrastive")


@dataclasses.dataclass
class TrainConfig:
    """What :func:`bne.training.recipes.train_head` and ``train_full`` need.

    ``None`` fields take the default of the mode (``head_only``): batch 256 / 64 pairs, warm-up
    0.05 / 0.1 of the steps, max_length 256 (the inference length) / 128, objective
    ``distill+contrastive`` / ``contrastive`` (the seed recipe). The head's learning rate is
    ``lr * head_lr_mult`` in both modes; ``lr`` is the backbone's (``--full`` only).
    """

    bits: int = 1024
    head_only: bool = True
    objective: str | None = None
    distill_weight: float = 1.0
    epochs: float = 1.0
    batch_size: int | None = None
    temperature: float = 0.05
    distill_temperature: float = 0.05
    lr: float = 2e-5
    head_lr_mult: float = 50.0
    weight_decay: float = 0.01
    warmup: float | None = None
    max_length: int | None = None
    normalize: bool = True
    init: str = "lsh"
    seed: int = 0
    # head-only extras: unlabelled texts per distillation batch, CoSENT pairs per step and weight
    pool_batch: int = 256
    scored_batch: int = 128
    scored_weight: float = 0.2
    checkpoint_every: int = 0
    log_every: int = 100
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.objective is None:
            self.objective = "distill+contrastive" if self.head_only else "contrastive"
        if self.batch_size is None:
            self.batch_size = 256 if self.head_only else 64
        if self.warmup is None:
            self.warmup = 0.05 if self.head_only else 0.1
        if self.max_length is None:
            self.max_length = 256 if self.head_only else 128
        self.check()

    def check(self) -> None:
        """Raises ValueError naming the first field out of range."""
        from ..codes import check_bits

        check_bits(self.bits)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.init not in ("lsh", "default"):
            raise ValueError(f"init must be 'lsh' or 'default', got {self.init!r}")
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "temperature": self.temperature,
            "distill_temperature": self.distill_temperature,
            "lr": self.lr,
            "head_lr_mult": self.head_lr_mult,
            "max_length": self.max_length,
        }
        for name, v in positive.items():
            if v is None or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        nonneg = {
            "distill_weight": self.distill_weight,
            "weight_decay": self.weight_decay,
            "scored_weight": self.scored_weight,
            "pool_batch": self.pool_batch,
            "scored_batch": self.scored_batch,
            "checkpoint_every": self.checkpoint_every,
            "log_every": self.log_every,
        }
        for name, v in nonneg.items():
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        assert self.warmup is not None
        if not 0 <= self.warmup <= 1:
            raise ValueError(f"warmup must be a fraction in [0, 1], got {self.warmup}")

    @property
    def head_lr(self) -> float:
        return self.lr * self.head_lr_mult

    @property
    def uses_distill(self) -> bool:
        return self.objective in ("distill", "distill+contrastive")

    @property
    def uses_contrastive(self) -> bool:
        return self.objective in ("contrastive", "distill+contrastive")

    def total_steps(self, n_rows: int) -> tuple[int, int]:
        """(steps per epoch, total steps) for ``n_rows`` training rows."""
        assert self.batch_size is not None
        per_epoch = max(1, n_rows // self.batch_size)
        return per_epoch, max(1, int(round(self.epochs * per_epoch)))
