// Hamming kernels: queries against a contiguous block of codes.
//
// The interface every kernel file implements (serial, AVX2, AVX-512; NEON and SVE on aarch64):
//   * no allocation, validation, threads or Python here; callers check sizes;
//   * codes are rows of `words` little-endian uint64 words (bits = 64 * words), read with
//     unaligned loads so any numpy buffer or mapping offset works, and never read past row n-1;
//   * every kernel returns exactly the distances of the scalar oracle (kernels_serial.cpp), so
//     results never depend on the kernel (tests/test_kernels.py checks every table).
// Each ISA lives in its own translation unit built with only its own flags, with internal
// linkage throughout (no inline function compiled with wide-vector flags may leak into baseline
// code), and exports only its KernelTable(s). The algorithms are written once, as templates
// over a small per-ISA ops struct, in cpp/src/kernel_templates.hpp; an ISA file defines its ops
// and instantiates them (NEON and SVE keep their own loops: see their files).
//
// Adding an ISA: a kernels_<isa>.cpp with its ops and KernelTable, its compile flags in
// CMakeLists.txt (set_source_files_properties; never the build machine's own -march flags), a
// declaration below, and a row in the ISA table of dispatch.cpp (kVariants: ISA, variant,
// table, feature test, reason); tests/test_kernels.py then checks it automatically (the `isa`
// fixture runs every available kernel).
#pragma once
#include <cstddef>
#include <cstdint>

namespace bne {

// out[a * n + i] = popcount(query_a XOR codes[i]) for a < nq, i < n. The nq queries are
// consecutive rows of `words` words; kernels reuse each loaded code for several queries.
// Used where every distance is wanted (pairwise matrices).
using HammingBlockFn = void (*)(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n,
                                size_t words, uint32_t* out) noexcept;

// One pair reported by a fused scan: query (index within the batch), code (index within the
// block) and their distance.
struct ScanHit {
    uint32_t query;
    uint32_t code;
    uint32_t dist;
};

// The fused scan used by top-k and range search: distances are computed and compared with the
// per-query bound thr[a] in registers; only pairs with popcount(query_a XOR codes[i]) < thr[a]
// are written to hits (in any order), and their count is returned. nq <= KernelTable::max_queries;
// hits must hold nq * n entries. Nothing else is written: distances that cannot enter a result
// never reach memory.
using ScanBelowFn = size_t (*)(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                               const uint32_t* thr, ScanHit* hits) noexcept;

struct KernelTable {
    const char* isa;     // instruction set family: "serial", "avx2", "avx512", "neon", "sve"
    const char* name;    // this variant: "serial", "avx2", "avx512-256", "avx512-512"
    size_t max_queries;  // queries one scan_below call takes (the batch the caller should form)
    HammingBlockFn hamming_block;
    ScanBelowFn scan_below;
};

namespace kernels {
namespace serial { extern const KernelTable table; }
#if defined(BNE_X86)
namespace avx2 { extern const KernelTable table; }
namespace avx512 {
extern const KernelTable table256;  // 256-bit VPOPCNTQ (AVX-512VL): best where 512-bit ops are split (Zen 4)
extern const KernelTable table512;  // 512-bit VPOPCNTQ: best with full-width units (Ice Lake+, Zen 5)
}  // namespace avx512
#endif
#if defined(BNE_ARM)
namespace neon { extern const KernelTable table; }  // aarch64 baseline (Advanced SIMD)
#if defined(BNE_HAVE_SVE)
namespace sve {
extern const KernelTable table;  // call only where getauxval(AT_HWCAP) reports SVE
size_t vector_bits() noexcept;   // this CPU's SVE vector length
}  // namespace sve
#endif
#endif
}  // namespace kernels

}  // namespace bne
