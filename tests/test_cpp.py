"""The C++ kernel tests (tests/cpp/run.sh): natively for this CPU's kernels, and cross-compiled
for aarch64 under qemu-aarch64 (NEON and SVE) where the cross tools are installed."""

import os
import pathlib
import platform
import re
import shutil
import subprocess

import pytest

SCRIPT = pathlib.Path(__file__).parent / "cpp" / "run.sh"
MISSING_TOOLS = 77  # run.sh's exit status when a tool is not installed


def run(what, timeout):
    out = subprocess.run(["bash", str(SCRIPT), what], capture_output=True, text=True, timeout=timeout)
    if out.returncode == MISSING_TOOLS:
        pytest.skip(out.stderr.strip())
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_native_kernels_match_oracle_and_search_matches_brute_force():
    out = run("native", timeout=900)
    available = out.split("available: ", 1)[1].split(";", 1)[0].split(",")
    assert available[0] == "serial"
    for name in available:  # one line per kernel table, each with its own checks
        line = next(x for x in out.splitlines() if x.startswith(name + " "))
        assert "all match the oracle" in line, line
        assert int(line.split(" checks")[0].split()[-1]) > 1000, line
    assert "OK:" in out
    if platform.machine() in ("x86_64", "AMD64"):
        import bne

        assert available == bne.available_kernels()  # the same dispatcher as the Python module


def test_arm_neon_and_sve_under_emulation():
    tools = shutil.which("qemu-aarch64") and shutil.which("aarch64-linux-gnu-g++")
    if not tools:
        # .ci/run sets BNE_REQUIRE_ARM_TEST once it installed the tools: no silent skip there.
        assert not os.environ.get("BNE_REQUIRE_ARM_TEST"), "qemu-aarch64 / aarch64-linux-gnu-g++ missing"
        pytest.skip("needs qemu-aarch64 and aarch64-linux-gnu-g++ (apt-get install qemu-user g++-aarch64-linux-gnu)")
    out = run("arm", timeout=900)
    # SVE chosen where the CPU has it, NEON otherwise, and both checked against the oracle.
    assert "-cpu max bne_test_kernels --expect-kernels serial,neon,sve --expect-active sve" in out
    assert "active: sve (" in out and "active: neon (" in out
    for bits in (128, 256, 512, 2048):
        assert f"{bits}-bit vectors" in out
    assert out.count("sve         max_queries=") == 4
    assert out.count("neon        max_queries=") == 5
    assert "FAIL" not in out
    assert out.rstrip().endswith("OK: aarch64 NEON and SVE kernels match the scalar oracle under emulation")
    check_sve_stays_in_its_file()


def check_sve_stays_in_its_file():
    """SVE code only in kernels_sve.cpp, which exports nothing but its table: baseline code can
    then run on any aarch64 CPU, and no SVE copy of an inline function can win at link time."""
    objdump, nm = shutil.which("aarch64-linux-gnu-objdump"), shutil.which("aarch64-linux-gnu-nm")
    if not objdump or not nm:
        return
    objects = sorted((SCRIPT.parents[2] / "build" / "cpp-aarch64").glob("**/bne_core.dir/**/*.o"))
    assert any(o.name.startswith("kernels_neon") for o in objects), objects
    sve_reg = re.compile(r"\bz\d+\.[bhsd]\b")
    for obj in objects:
        text = subprocess.run([objdump, "-d", str(obj)], capture_output=True, text=True, check=True).stdout
        uses_sve = bool(sve_reg.search(text))
        assert uses_sve == obj.name.startswith("kernels_sve"), obj
        if uses_sve:
            syms = subprocess.run([nm, "-C", "--defined-only", str(obj)], capture_output=True, text=True, check=True)
            exported = {line.split(" ", 2)[2] for line in syms.stdout.splitlines() if line.split(" ")[1].isupper()}
            exported = {x for x in exported if not x.startswith("DW.ref.")}  # exception-table data, no code
            assert exported == {"bne::kernels::sve::table", "bne::kernels::sve::vector_bits()"}, exported
