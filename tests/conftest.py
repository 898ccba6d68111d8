import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

import bne

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("BNE_DATA", ROOT.parent / "shared" / "data"))

# The tests never touch the user's cache (~/.cache/bne: model exports and the model registry):
# one private cache per test session, inherited by every bne process a test starts.
_OWN_CACHE = None if os.environ.get("BNE_CACHE_DIR") else tempfile.mkdtemp(prefix="bne-test-cache-")
if _OWN_CACHE:
    os.environ["BNE_CACHE_DIR"] = _OWN_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(params=bne.available_kernels())
def isa(request):
    """Every kernel variant this CPU can run (each ISA and each of its variants); tests pass it
    explicitly to the core, so no global state changes."""
    return request.param
