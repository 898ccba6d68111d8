import os
import pathlib

import numpy as np
import pytest

import bne

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("BNE_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(params=bne.available_kernels())
def isa(request):
    """Every kernel variant this CPU can run (each ISA and each of its variants); tests pass it
    explicitly to the core, so no global state changes."""
    return request.param
