"""Packaging invariants that the wheel build (.ci/wheel) relies on and cannot see for itself.

A wheel built with the build machine's -march flags, or with ISA flags on a file the dispatcher
does not guard, runs on the build machine and crashes with SIGILL on an older user CPU. So: no
`native` target anywhere, and target flags (-m...) only on the per-ISA kernel files, both in
CMakeLists.txt and in the compile commands of any build here.
"""

from __future__ import annotations

import pathlib
import re
import shlex
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

NATIVE = re.compile(r"-m(arch|tune|cpu)=native")
# the files the dispatcher only calls on a CPU that has their instruction set
ISA_FILES = re.compile(r"(^|/)cpp/src/kernels_(avx2|avx512|neon|sve)\.cpp$")
# a CMake command and its arguments (one level of nested parentheses, as in if() conditions)
CMAKE_COMMAND = re.compile(r"(\w+)\s*\(((?:[^()]|\([^()]*\))*)\)")


def target_flags(args: str) -> list[str]:
    return [t for t in re.split(r"[\s;\"]+", args) if t.startswith("-m")]


def cmake_commands(text: str) -> list[tuple[str, str]]:
    text = re.sub(r"#[^\n]*", "", text)  # comments (no '#' in this file's strings)
    return [(m.group(1).lower(), m.group(2)) for m in CMAKE_COMMAND.finditer(text)]


def isa_flag_violations(text: str) -> list[str]:
    """Commands in a CMakeLists.txt that put target flags (-m...) anywhere but on an ISA file."""
    bad = []
    for name, args in cmake_commands(text):
        if not target_flags(args):
            continue
        words = args.split()
        if name == "set_source_files_properties":
            files = words[: words.index("PROPERTIES")] if "PROPERTIES" in words else words
            if files and all(ISA_FILES.search(f) for f in files):
                continue
        if name in ("set", "unset") and words and words[0] == "CMAKE_REQUIRED_FLAGS":
            continue  # a try-compile's flags (the SVE check), not an object's
        bad.append(f"{name}({' '.join(words)})")
    return bad


def test_no_native_target_in_build_config():
    for path in (ROOT / "CMakeLists.txt", ROOT / "pyproject.toml", ROOT / "tests" / "cpp" / "run.sh"):
        text = re.sub(r"#[^\n]*", "", path.read_text())  # comments may name the flag they forbid
        assert not NATIVE.search(text), f"{path.name}: a native -march/-mtune/-mcpu makes wheels that crash elsewhere"


def test_cmake_target_flags_only_on_isa_kernel_files():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert isa_flag_violations(text) == []
    # the check itself sees a global flag, and a flag on a file the dispatcher does not guard
    assert isa_flag_violations(text + "\nadd_compile_options(-mavx2)\n")
    assert isa_flag_violations(
        text + '\nset_source_files_properties(cpp/src/search.cpp PROPERTIES COMPILE_OPTIONS "-mavx2")\n'
    )
    assert isa_flag_violations(text + '\nset(CMAKE_CXX_FLAGS "${CMAKE_CXX_FLAGS} -msse4.2")\n')


def ninja_compile_flags(text: str) -> dict[str, str]:
    """source file -> FLAGS of its compile edge, from a CMake-generated build.ninja."""
    flags: dict[str, str] = {}
    source = None
    for line in text.splitlines():
        m = re.match(r"build \S+\.o: \S+ (\S+)", line)
        if m:
            source = m.group(1)
        elif source and line.strip().startswith("FLAGS = "):
            flags[source] = line.split("=", 1)[1]
        elif not line.startswith(" "):
            source = None
    return flags


def test_built_objects_get_target_flags_only_on_isa_kernel_files():
    # the real compile commands of the builds here (pip's build/{wheel_tag}, tests/cpp/run.sh's)
    builds = sorted(ROOT.glob("build/*/build.ninja"))
    if not builds:
        pytest.skip("no CMake build with Ninja under build/")
    checked = 0
    for ninja in builds:
        text = ninja.read_text(errors="replace")
        assert not NATIVE.search(text), f"{ninja}: built with a native target"
        for source, flags in ninja_compile_flags(text).items():
            if not ISA_FILES.search(source):
                assert target_flags(flags) == [], f"{ninja}: {source} is built with {flags.strip()}"
            checked += 1
    assert checked, "no compile commands found in build/*/build.ninja"


def test_release_build_and_cibuildwheel_smoke_test():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    skb = config["tool"]["scikit-build"]
    assert skb["cmake"]["build-type"] == "Release"
    # no flags smuggled in through scikit-build's CMake arguments or cibuildwheel's environment
    for value in (skb.get("cmake", {}).get("args", []), skb.get("cmake", {}).get("define", {})):
        assert not any(target_flags(str(v)) for v in (value.values() if isinstance(value, dict) else value))
    cibw = config["tool"]["cibuildwheel"]
    assert not any(target_flags(str(v)) for v in cibw.get("environment", {}).values())
    scripts = re.findall(r"\{project\}/(\S+)", cibw["test-command"])
    assert scripts, "cibuildwheel's test-command runs no smoke test from the project"
    for script in scripts:
        assert (ROOT / script).is_file(), f"cibuildwheel test-command: {script} does not exist"
    assert shlex.split(cibw["test-command"])[:2] == ["python", "-I"], "run the smoke test outside the source tree"


# The manylinux2014 wheels (.ci/wheel) are built with Zig through .ci/zig-tool, which passes every
# flag on except GCC's Arm -march spelling, which Zig would read as a CPU name.
ZIG_TOOL = ROOT / ".ci" / "zig-tool"


def zig_tool_args(tmp_path: pathlib.Path, tool: str, arch: str, *args: str) -> list[str]:
    """The command line .ci/zig-tool, linked as `tool`, hands to zig (a stand-in that prints it)."""
    fake = tmp_path / "zig"
    fake.write_text('#!/bin/sh\nfor a; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    link = tmp_path / tool
    if not link.exists():
        link.symlink_to(ZIG_TOOL)
    env = {"PATH": "/usr/bin:/bin", "BNE_ZIG": str(fake), "BNE_ZIG_ARCH": arch}
    out = subprocess.run([str(link), *args], capture_output=True, text=True, env=env, check=True).stdout
    return out.splitlines()


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_zig_tool_spells_arm_isa_flags_for_zig_and_targets_glibc_2_17(tmp_path):
    got = zig_tool_args(tmp_path, "c++", "aarch64", "-O3", "-march=armv8.2-a+sve", "-c", "sve.cpp")
    assert got == ["c++", "-target", "aarch64-linux-gnu.2.17", "-O3", "-mcpu=generic+v8_2a+sve", "-c", "sve.cpp"]
    got = zig_tool_args(tmp_path, "c++", "aarch64", "-march=armv8-a+simd", "-c", "kernels_neon.cpp")
    assert got[3:] == ["-mcpu=generic+neon", "-c", "kernels_neon.cpp"]
    # x86 ISA flags are Zig's own spelling already: passed on as they are
    flags = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vpopcntdq", "-mpopcnt"]
    assert zig_tool_args(tmp_path, "c++", "x86_64", *flags) == ["c++", "-target", "x86_64-linux-gnu.2.17", *flags]
    assert zig_tool_args(tmp_path, "ar", "x86_64", "qc", "lib.a", "a.o") == ["ar", "qc", "lib.a", "a.o"]
    # every Arm -march of CMakeLists.txt becomes a generic (not the build machine's) CPU with features
    marches = set(re.findall(r"-march=[\w.+-]+", (ROOT / "CMakeLists.txt").read_text()))
    assert marches, "CMakeLists.txt has no Arm -march flags: update this test"
    for march in marches:
        (spelled,) = zig_tool_args(tmp_path, "c++", "aarch64", march)[3:]
        assert re.fullmatch(r"-mcpu=generic(\+\w+)+", spelled), f"{march} -> {spelled}"


def test_zig_toolchain_adds_no_target_flags_and_wheel_asks_for_manylinux2014():
    for path in (ROOT / ".ci" / "zig-toolchain.cmake", ZIG_TOOL, ROOT / ".ci" / "wheel"):
        text = re.sub(r"#[^\n]*", "", path.read_text())
        assert not NATIVE.search(text), f"{path.name}: a native target"
    cmake = (ROOT / ".ci" / "zig-toolchain.cmake").read_text()
    assert isa_flag_violations(cmake) == []
    # link flags only (-s: strip), no compile flags that could reach code outside the ISA files
    assert re.findall(r"CMAKE_\w*FLAGS\w*", re.sub(r"#[^\n]*", "", cmake)) == ["CMAKE_MODULE_LINKER_FLAGS_INIT"]
    wheel = (ROOT / ".ci" / "wheel").read_text()
    # the tag is what auditwheel finds the module consistent with, for both targets
    assert "policy=manylinux_2_17" in wheel and "auditwheel repair --plat" in wheel
    assert re.search(r"archs=\$\{BNE_WHEEL_ARCHS:-x86_64 aarch64\}", wheel)
