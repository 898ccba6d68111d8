"""Runs the Ray cases (tests/ray_cases) inside a fresh network namespace whose only interface is
loopback: the local ray.init() and the two-node `ray start` cluster then bind to 127.0.0.1 and
cannot reach anything else. (Ray 2.60 ignores --node-ip-address=127.0.0.1 on a machine with an
external interface and listens there too, which these tests must not do.)"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ray")

CASES = Path(__file__).parent / "ray_cases"


def make_head(path: Path) -> bool:
    """A random-hyperplane head for the distributed-build case (any head file works)."""
    try:
        import torch
        from safetensors.torch import save_file
    except ImportError:
        return False
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "projection.0.weight": torch.randn(1024, 384, generator=g),
            "projection.0.bias": torch.zeros(1024),
            "projection.1.weight": torch.ones(1024),
            "projection.1.bias": torch.zeros(1024),
        },
        str(path),
    )
    return True


@pytest.fixture
def loopback_namespace():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to make a loopback-only network namespace")
    name = f"bne-ray-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:  # anything Ray left behind
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_ray_cases_on_loopback(loopback_namespace, tmp_path):
    # A private Ray temp dir: `ray start` records "the latest cluster on this machine" there, and
    # ray.init() without an address would otherwise try a stale one left by another run.
    ray_tmp = tempfile.mkdtemp(prefix="bray", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = dict(
        os.environ, RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_TMPDIR=ray_tmp
    )
    env.pop("RAY_ADDRESS", None)
    head = tmp_path / "head.safetensors"
    if make_head(head):
        env["BNE_TEST_HEAD"] = str(head)
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            loopback_namespace,
            sys.executable,
            "-m",
            "pytest",
            str(CASES),
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "python_files=case_*.py",
            "-W",
            "ignore::DeprecationWarning",
            "--basetemp",
            str(tmp_path / "cases"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    shutil.rmtree(ray_tmp, ignore_errors=True)
    print(out.stdout[-4000:])
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert " passed" in summary
    if "BNE_TEST_HEAD" in env:
        assert "skipped" not in summary, summary  # the distributed build ran too
