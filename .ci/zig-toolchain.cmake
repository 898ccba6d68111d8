# CMake toolchain for the manylinux2014 wheels (.ci/wheel): Zig's clang, with Zig's glibc 2.17
# stubs and its libc++ linked statically, so the module needs no glibc symbol newer than 2.17 and
# no libstdc++ at all. .ci/wheel links .ci/zig-tool as cc, c++, ar, ranlib and strip into
# $BNE_ZIG_BIN; the environment, unlike -D values, also reaches CMake's try_compile projects.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR $ENV{BNE_ZIG_ARCH})
set(CMAKE_C_COMPILER $ENV{BNE_ZIG_BIN}/cc)
set(CMAKE_CXX_COMPILER $ENV{BNE_ZIG_BIN}/c++)
set(CMAKE_AR $ENV{BNE_ZIG_BIN}/ar CACHE FILEPATH "zig ar")
set(CMAKE_RANLIB $ENV{BNE_ZIG_BIN}/ranlib CACHE FILEPATH "zig ranlib")
# Zig's objcopy cannot strip an aarch64 module ("unimplemented") and the host's strip cannot read
# one: the module is stripped when it is linked, and the strip that pybind11 and
# `cmake --install --strip` run afterwards is .ci/zig-tool's no-op.
set(CMAKE_MODULE_LINKER_FLAGS_INIT "-s")
set(CMAKE_STRIP $ENV{BNE_ZIG_BIN}/strip CACHE FILEPATH "no-op: stripped at link time")
