"""The ``bne train --checkpoint-every`` / ``--resume`` file: one typed save / load pair.

A checkpoint holds only tensors, dicts, lists and numbers, so it is read with
``torch.load(weights_only=True)``: a crafted ``.pt`` cannot run code (a full unpickle would run
whatever its ``__reduce__`` names). What is read back is checked key by key, so a foreign or damaged
file is refused with one line naming what is wrong, before training starts.
"""

from __future__ import annotations

import os
import pickle
import re
import stat
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, last_line
from ..fileio import replacing

#: Written into every checkpoint; a file without it (or with another) is not one of ours.
FORMAT = "bne-train-checkpoint-v1"
_GLOBAL = re.compile(r"unsupported GLOBAL ([\w.]+)")
_KEYS = ("module", "optimizer", "scheduler", "step", "generator", "torch_rng", "perm")
#: Optional: the settings of the run that wrote it (``bne train`` compares them on --resume).
_OPTIONAL = ("config",)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Writes a state of :func:`bne.training.recipes._checkpoint` atomically and durably (:mod:`bne.fileio`)."""
    bad = _problem(state)
    if bad:  # pragma: no cover - the loop builds the state; a bug, not a user mistake
        raise CheckpointError(f"refusing to write checkpoint {path}: {bad}")
    with replacing(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The state saved by :func:`save_checkpoint`; CheckpointError (one line) for anything else."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {p}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block the read forever
        raise CheckpointError(f"checkpoint {p} is not a regular file")
    try:
        # weights_only: tensors and plain containers only; any other global is refused, never run
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = _GLOBAL.search(str(e))
        raise CheckpointError(
            f"{p} is not a bne training checkpoint: it holds Python objects other than tensors"
            + (f" ({what.group(1)[:60]})" if what else "")
            + "; refused without running them"
        ) from None
    except Exception as e:  # zip errors, EOF...: all mean "not our checkpoint"
        raise CheckpointError(f"{p} is not a bne training checkpoint ({last_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p} is not a bne training checkpoint (it holds a {type(obj).__name__}, not a dict)")
    fmt = obj.get("format")
    if fmt is not None and fmt != FORMAT:
        raise CheckpointError(f"{p} is a checkpoint of another format ({str(fmt)[:40]!r}); expected {FORMAT!r}")
    state = {k: v for k, v in obj.items() if k != "format"}
    if fmt is None:  # written before the marker: "head" / "model" were the module's keys then
        for old in ("head", "model"):
            if "module" not in state and old in state:
                state["module"] = state.pop(old)
        if "torch_rng" not in state and isinstance(state.get("generator"), torch.Tensor):
            state["torch_rng"] = torch.get_rng_state()  # not saved then: resuming kept the current one
    bad = _problem(state)
    if bad:
        raise CheckpointError(f"{p} is not a bne training checkpoint: {bad}")
    return state


def _problem(state: Any) -> str | None:
    """What is wrong with a checkpoint state, or None."""
    if not isinstance(state, dict):
        return "not a dict"
    missing = [k for k in _KEYS if k not in state]
    if missing:
        return "missing " + ", ".join(missing)
    extra = sorted(str(k) for k in state if k not in _KEYS + _OPTIONAL)
    if extra:
        return "unexpected " + ", ".join(extra[:5])
    mod = state["module"]
    if (
        not isinstance(mod, dict)
        or not mod
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mod.items())
    ):
        return "'module' is not a state dict of named tensors"
    for k in ("optimizer", "scheduler"):
        if not isinstance(state[k], dict):
            return f"{k!r} is not a dict"
    opt = state["optimizer"]
    if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
        return "'optimizer' is not an optimizer state dict"
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"'step' is not a count ({type(step).__name__})"
    for k in ("generator", "torch_rng"):
        v = state[k]
        if not isinstance(v, torch.Tensor) or v.dtype != torch.uint8 or v.dim() != 1:
            return f"{k!r} is not a random generator state"
    perm = state["perm"]
    if not isinstance(perm, torch.Tensor) or perm.dtype != torch.int64 or perm.dim() != 1:
        return "'perm' is not a permutation"
    conf = state.get("config")
    if conf is not None and (
        not isinstance(conf, dict)
        or not all(isinstance(k, str) and isinstance(v, (str, int, float, bool, type(None))) for k, v in conf.items())
    ):
        return "'config' is not a dict of settings"
    return None
