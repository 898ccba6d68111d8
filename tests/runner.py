"""The one way tests run bne: the ``bne`` command in a new process (:func:`run_bne`,
:func:`popen_bne`) or in this one (:func:`run_main`, the encoder then loads once per test
session), and Python code in a new process (:func:`run_python`). Every process is offline and
inherits the test session's private cache (conftest.py)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence

import pytest

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def environ(env: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """os.environ, offline, with ``env`` on top (a None value removes that variable)."""
    out = dict(os.environ, **OFFLINE)
    for k, v in (env or {}).items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def bne_argv(*args) -> list[str]:
    return [sys.executable, "-m", "bne.cli", *map(str, args)]


def run_bne(
    *args,
    cwd=None,
    input: str | bytes | None = None,
    env: Mapping[str, str | None] | None = None,
    check: bool = False,
    timeout: float = 300,
    **kw,
) -> subprocess.CompletedProcess:
    """``bne ARGS`` as a user runs it, in a new process; stdout/stderr captured, as text unless
    ``text=False``; other ``kw`` go to subprocess.run (``preexec_fn``). ``check``: the exit code
    must be 0 (the assertion shows stderr)."""
    kw.setdefault("text", True)
    out = subprocess.run(
        bne_argv(*args), cwd=cwd, input=input, capture_output=True, timeout=timeout, env=environ(env), **kw
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


def popen_bne(*args, cwd=None, env: Mapping[str, str | None] | None = None, **kw) -> subprocess.Popen:
    """``bne ARGS`` started in a new process and left running (to signal or kill it); text pipes
    for stdout and stderr unless ``kw`` says otherwise."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(bne_argv(*args), cwd=cwd, env=environ(env), text=True, **kw)


def run_main(*args, cwd=None) -> tuple[int, str, str]:
    """``bne ARGS`` in this process: (exit code, stdout, stderr). argparse errors exit 2 via SystemExit."""
    from bne import cli

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([str(a) for a in args])
            except SystemExit as e:
                code = e.code
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def run_python(
    code: str,
    *args,
    cwd=None,
    input: str | None = None,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 120,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    """``python -c CODE ARGS`` (CODE dedented) in a new process, after ``prefix`` (``unshare -U``);
    text stdout/stderr captured."""
    return subprocess.run(
        [*prefix, sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ(env),
    )


def needs_encoder() -> None:
    """Skips the test where the default 1024-bit model cannot run (no torch, no shipped head)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bne.encoder import available_heads

    if "minilm-l6-1024" not in available_heads():
        pytest.skip("the default 1024-bit head is not shipped in this checkout")
