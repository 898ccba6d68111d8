// Hamming kernels: one query against a contiguous block of codes.
// No allocation, validation, threads or Python here; callers check sizes.
// Codes are rows of `words` little-endian uint64 words (bits = 64 * words), read with unaligned
// loads so any numpy buffer or mapping offset works.
#pragma once
#include <cstddef>
#include <cstdint>

namespace bne {

// out[i] = popcount(q XOR codes[i]) for i < n.
using HammingManyFn = void (*)(const uint8_t* q, const uint8_t* codes, size_t n, size_t words,
                               uint32_t* out) noexcept;

// Fused threshold filter: for every i < n with distance < thr, writes idx[m] = i and
// dist[m] = distance, in increasing i; returns m. idx/dist must hold n entries.
using HammingFilterFn = size_t (*)(const uint8_t* q, const uint8_t* codes, size_t n, size_t words,
                                   uint32_t thr, uint32_t* idx, uint32_t* dist) noexcept;

struct KernelTable {
    const char* isa;  // "serial", "avx2", "avx512"
    HammingManyFn hamming_many;
    HammingFilterFn hamming_filter;
};

namespace kernels {
namespace serial { extern const KernelTable table; }
#if defined(BNE_X86)
namespace avx2 { extern const KernelTable table; }
namespace avx512 { extern const KernelTable table; }
#endif
}  // namespace kernels

}  // namespace bne
