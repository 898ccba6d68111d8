"""A bounded run of the coverage-guided fuzz target (tests/fuzz/fuzz_open.py) in the normal suite."""

import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("atheris")

TARGET = pathlib.Path(__file__).parent / "fuzz" / "fuzz_open.py"


def test_fuzz_open_bounded():
    out = subprocess.run(
        [sys.executable, str(TARGET), "-atheris_runs=4000", "-seed=1"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Done 4000" in out.stderr
