// Hamming kernels: one query against a contiguous block of codes.
// No allocation, validation, threads or Python here; callers check sizes.
// Codes are rows of `words` little-endian uint64 words (bits = 64 * words), read with unaligned
// loads so any numpy buffer or mapping offset works.
#pragma once
#include <cstddef>
#include <cstdint>

namespace bne {

// out[a * n + i] = popcount(query_a XOR codes[i]) for a < nq, i < n. The nq queries are
// consecutive rows of `words` words; kernels reuse each loaded code for several queries.
using HammingBlockFn = void (*)(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n,
                                size_t words, uint32_t* out) noexcept;

// Threshold filter over a distance row still in L1: for every i < n with d[i] < thr, writes
// idx[m] = i and dist[m] = d[i] in increasing i; returns m. idx/dist must hold n entries.
using FilterBelowFn = size_t (*)(const uint32_t* d, size_t n, uint32_t thr, uint32_t* idx,
                                 uint32_t* dist) noexcept;

struct KernelTable {
    const char* isa;  // "serial", "avx2", "avx512"
    HammingBlockFn hamming_block;
    FilterBelowFn filter_below;
};

namespace kernels {
namespace serial { extern const KernelTable table; }
#if defined(BNE_X86)
namespace avx2 { extern const KernelTable table; }
namespace avx512 { extern const KernelTable table; }
#endif
}  // namespace kernels

}  // namespace bne
