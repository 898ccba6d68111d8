"""Coverage-guided fuzzing of bne.open + search + verify (atheris / libFuzzer).

Bounded run (what the test suite does):   python tests/fuzz/fuzz_open.py -atheris_runs=3000
Longer, on demand:                        python tests/fuzz/fuzz_open.py -max_total_time=3600 corpus/
Any exception other than bne.IndexFormatError is a finding (a crash aborts the process).
"""

import atexit
import os
import shutil
import sys
import tempfile
import warnings

import atheris

with atheris.instrument_imports():
    import numpy as np

    import bne

_DIR = tempfile.mkdtemp(prefix="bne-fuzz-")
atexit.register(shutil.rmtree, _DIR, True)  # libFuzzer exits through exit(): atexit still runs
PATH = os.path.join(_DIR, "f.bne")
SEED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden_v1.bne")


def test_one(data: bytes) -> None:
    # Mostly mutate a valid file (the golden one) so the fuzzer gets past the magic quickly.
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode and os.path.exists(SEED):
        with open(SEED, "rb") as f:
            base = bytearray(f.read())
        for _ in range(fdp.ConsumeIntInRange(1, 8)):
            pos = fdp.ConsumeIntInRange(0, len(base) - 1)
            base[pos] = fdp.ConsumeInt(1) & 0xFF
        if mode == 3:
            base = base[: fdp.ConsumeIntInRange(0, len(base))]
        blob = bytes(base)
    else:
        blob = fdp.ConsumeBytes(fdp.remaining_bytes())
    with open(PATH, "wb") as f:
        f.write(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            idx = bne.open(PATH, verify=bool(mode & 1))
            if len(idx):
                idx.search(np.zeros((2, idx.code_bytes), np.uint8), 3)
                idx.range_search(np.zeros((1, idx.code_bytes), np.uint8), 5)
            idx.close()
        except bne.IndexFormatError:
            pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
