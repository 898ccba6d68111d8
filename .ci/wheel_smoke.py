"""Smoke test of an installed bne wheel (.ci/wheel; cibuildwheel's test-command).

Run it with the wheel's Python from outside the source tree (``python -I .ci/wheel_smoke.py``). It
fails unless ``bne`` comes from site-packages, and unless a RAM index and an index file give the
same top-k and range results as a numpy brute force, under every instruction set this CPU has.
Then ``bne info`` and ``bne verify`` must describe the file. Needs only numpy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np

import bne

BITS, N, EXTRA, K, RADIUS = 1024, 3000, 500, 10, 480


def fail(msg: str) -> None:
    sys.exit(f"wheel smoke test: FAIL: {msg}")


def reference(queries, codes, ids, live, k, radius):
    """Top-k under the tie rule (distance, then position) and the range lists, by brute force."""
    d = np.bitwise_count(queries[:, None, :] ^ codes[None, :, :]).sum(axis=2, dtype=np.int64)
    d[:, ~live] = np.iinfo(np.int64).max
    order = np.argsort(d, axis=1, kind="stable")[:, :k]  # stable: equal distances keep position order
    ranges = [ids[np.flatnonzero(row <= radius)] for row in d]
    return np.take_along_axis(d, order, axis=1), ids[order], ranges


def check(name, index, queries, ref) -> None:
    D, I = index.search(queries, k=K)
    if not (np.array_equal(D, ref[0]) and np.array_equal(I, ref[1])):
        fail(f"{name}: top-{K} differs from the numpy brute force (kernel {bne.kernel_info()['kernel']})")
    lims, _, RI = index.range_search(queries, RADIUS)
    for q, want in enumerate(ref[2]):
        if not np.array_equal(np.sort(RI[lims[q] : lims[q + 1]]), np.sort(want)):
            fail(f"{name}: range search (radius {RADIUS}) differs for query {q}")


def bne_cli(*args: str) -> str:
    # the console script next to this Python: the one the wheel installed
    exe = os.path.join(os.path.dirname(sys.executable), "bne")
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        fail(f"bne {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()[-300:]}")
    return r.stdout


def main() -> None:
    where = os.path.realpath(os.path.dirname(bne.__file__))
    site = os.path.realpath(sysconfig.get_paths()["platlib"])
    if not where.startswith(site + os.sep):
        fail(f"bne was imported from {where}, not from the installed wheel in {site}")
    info = bne.kernel_info()
    print(f"bne {bne.__version__} from {where}")
    print(f"kernel {info['kernel']} of {info['available']}: {info['reason']}")

    rng = np.random.default_rng(2024)
    codes = rng.integers(0, 256, (N + EXTRA, BITS // 8), dtype=np.uint8)
    codes[N - 50 : N] = codes[:50]  # duplicates: the tie rule decides their order
    queries = np.concatenate([codes[:4], rng.integers(0, 256, (12, BITS // 8), dtype=np.uint8)])
    extra_ids = np.arange(10**12, 10**12 + EXTRA, dtype=np.int64)
    removed = np.array([1, 2, 10**12 + 3])
    ids = np.concatenate([np.arange(N, dtype=np.int64), extra_ids])
    live = ~np.isin(ids, removed)

    ram = bne.Index(BITS)
    ram.add(codes[:N])
    ref_ram = reference(queries, codes[:N], ids[:N], np.ones(N, bool), K, RADIUS)
    ref_file = reference(queries, codes, ids, live, K, RADIUS)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "smoke.bne")
        ram.save(path)
        with bne.open(path, mode="a") as w:  # a second segment, external ids and tombstones
            w.add(codes[N:], ids=extra_ids)
            w.remove(removed)
        mapped = bne.open(path)
        for isa in bne.available_isas():
            bne.set_isa(isa)
            check(f"RAM index, {isa}", ram, queries, ref_ram)
            check(f"index file, {isa}", mapped, queries, ref_file)
            print(f"{isa}: RAM index and index file match numpy ({bne.kernel_info()['kernel']})")

        meta = json.loads(bne_cli("info", "--json", path))
        want = {"bits": BITS, "codes": N + EXTRA, "live": N + EXTRA - len(removed), "tombstones": len(removed)}
        got = {key: meta.get(key) for key in want}
        if got != want:
            fail(f"bne info --json: {got}, expected {want}")
        out = bne_cli("verify", path)
        if not out.startswith("OK:") or f"{N + EXTRA} codes" not in out:
            fail(f"bne verify: unexpected output {out.strip()!r}")
        print(f"bne info: {got}")
        print(out.strip().replace(tmp, "<tmp>"))
    print("wheel smoke test: OK")


if __name__ == "__main__":
    main()
