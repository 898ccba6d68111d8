#!/usr/bin/env bash
# The C++ kernel tests (tests/cpp/test_kernels.cpp): every kernel table against the scalar
# oracle, and top-k / range search with each table against brute force.
#
#   tests/cpp/run.sh native   build for this machine and run (x86: serial, avx2, avx512 variants)
#   tests/cpp/run.sh arm      cross-compile for aarch64 and run under qemu-aarch64:
#                               -cpu max         SVE at 128/256/512/2048-bit vectors, SVE chosen
#                               -cpu cortex-a72  NEON only, NEON chosen
#                             plus the BNE_ISA / BNE_KERNEL overrides and their errors.
#   tests/cpp/run.sh          both
#
# Emulation proves correctness, not speed: qemu timings say nothing about an Arm CPU.
# Needs cmake and a C++20 compiler; `arm` also needs aarch64-linux-gnu-g++ and qemu-aarch64
# (Debian/Ubuntu: apt-get install qemu-user g++-aarch64-linux-gnu). Exit 77: tools missing.
# Builds go to build/cpp-native and build/cpp-aarch64 (incremental on later runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
what="${1:-all}"
jobs="${BNE_BUILD_JOBS:-2}"
gen=()
mkdir -p build
if command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi

need() {
    for t in "$@"; do
        if ! command -v "$t" >/dev/null 2>&1; then
            echo "run.sh: '$t' not found (see the header of tests/cpp/run.sh)" >&2
            exit 77
        fi
    done
}

native() {
    need cmake
    local b=build/cpp-native
    cmake -S . -B "$b" "${gen[@]}" -DBNE_PYTHON=OFF -DBNE_TESTS=ON -DCMAKE_BUILD_TYPE=Release >"$b.log" 2>&1 ||
        { cat "$b.log"; exit 1; }
    cmake --build "$b" --parallel "$jobs" >>"$b.log" 2>&1 || { cat "$b.log"; exit 1; }
    echo "== native ($(uname -m))"
    "$b/bne_test_kernels" ${BNE_TEST_ARGS:-}
}

# qemu-aarch64 <cpu> <expected output fragment> [test args...]: runs the test and checks its
# output holds the fragment (the dispatcher's choice, or the override's error).
emulate() {
    local cpu="$1" want="$2" out rc=0
    shift 2
    out=$(qemu-aarch64 -cpu "$cpu" build/cpp-aarch64/bne_test_kernels "$@" 2>&1) || rc=$?
    echo "-- ${BNE_ISA:+BNE_ISA=$BNE_ISA }${BNE_KERNEL:+BNE_KERNEL=$BNE_KERNEL }qemu-aarch64 -cpu $cpu bne_test_kernels $*"
    echo "$out" | sed 's/^/   /'
    if ! grep -qF -- "$want" <<<"$out"; then
        echo "run.sh: expected '$want' in the output above" >&2
        exit 1
    fi
    if [[ "$want" != error:* && $rc -ne 0 ]]; then exit "$rc"; fi
}

arm() {
    need cmake aarch64-linux-gnu-g++ qemu-aarch64
    local b=build/cpp-aarch64
    # A static binary: qemu needs no aarch64 sysroot to run it.
    cmake -S . -B "$b" "${gen[@]}" -DBNE_PYTHON=OFF -DBNE_TESTS=ON -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
        -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DCMAKE_EXE_LINKER_FLAGS=-static >"$b.log" 2>&1 ||
        { cat "$b.log"; exit 1; }
    cmake --build "$b" --parallel "$jobs" >>"$b.log" 2>&1 || { cat "$b.log"; exit 1; }
    echo "== aarch64 under $(qemu-aarch64 --version | head -1)"
    # Every kernel against the oracle; the default choice on each CPU.
    emulate max "active: sve" --expect-kernels serial,neon,sve --expect-active sve
    emulate cortex-a72 "active: neon" --expect-kernels serial,neon --expect-active neon
    # The SVE kernel is vector-length agnostic: check the smallest, a middle and the largest length.
    for bytes in 16 32 256; do
        emulate "max,sve-default-vector-length=$bytes" "$((bytes * 8))-bit vectors" --expect-active sve
    done
    # Overrides and their errors (dispatch checks only).
    BNE_ISA=neon emulate max "active: neon" --dispatch-only --expect-active neon
    BNE_KERNEL=serial emulate max "active: serial" --dispatch-only --expect-active serial
    BNE_ISA=sve emulate cortex-a72 "error: BNE_ISA: this CPU does not support ISA 'sve'; available: serial, neon" \
        --dispatch-only
    BNE_ISA=avx2 emulate max "error: BNE_ISA: this CPU does not support ISA 'avx2'" --dispatch-only
    echo "OK: aarch64 NEON and SVE kernels match the scalar oracle under emulation"
}

case "$what" in
    native) native ;;
    arm) arm ;;
    all) native && arm ;;
    *) echo "usage: tests/cpp/run.sh [native|arm]" >&2; exit 2 ;;
esac
