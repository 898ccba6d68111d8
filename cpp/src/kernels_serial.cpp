// The oracle: plain std::popcount over 64-bit words. Kept obvious on purpose; every SIMD
// kernel is tested against it. Built with baseline flags only.
#include <bit>
#include <cstring>

#include "bne/kernels.hpp"

namespace bne::kernels::serial {
namespace {

uint32_t distance(const uint8_t* a, const uint8_t* b, size_t words) noexcept {
    uint32_t d = 0;
    for (size_t w = 0; w < words; ++w) {
        uint64_t x, y;
        std::memcpy(&x, a + 8 * w, 8);
        std::memcpy(&y, b + 8 * w, 8);
        d += static_cast<uint32_t>(std::popcount(x ^ y));
    }
    return d;
}

void hamming_block(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                   uint32_t* out) noexcept {
    for (size_t a = 0; a < nq; ++a)
        for (size_t i = 0; i < n; ++i) out[a * n + i] = distance(queries + a * words * 8, codes + i * words * 8, words);
}

size_t scan_below(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                  const uint32_t* thr, ScanHit* hits) noexcept {
    size_t m = 0;
    for (size_t i = 0; i < n; ++i)
        for (size_t a = 0; a < nq; ++a) {
            const uint32_t d = distance(queries + a * words * 8, codes + i * words * 8, words);
            if (d < thr[a]) hits[m++] = {static_cast<uint32_t>(a), static_cast<uint32_t>(i), d};
        }
    return m;
}

}  // namespace

const KernelTable table{"serial", "serial", 16, hamming_block, scan_below};

}  // namespace bne::kernels::serial
