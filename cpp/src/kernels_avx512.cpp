// AVX-512 VPOPCNTDQ kernels. Built with -mavx512f/bw/vl/vpopcntdq; only called when the
// dispatcher confirmed those features (cpuid + xgetbv). Everything here has internal linkage
// so no AVX-512 instance of an inline function can leak into baseline code (the ODR trap).
//
// Measured on Zen 4 (this project's machine): the scan is bound by vector ALU throughput, and
// 256-bit VPOPCNTQ (AVX-512VL) beats 512-bit ops; each loaded code chunk is reused for up to
// 4 queries so loads never limit, and 4 codes' per-lane counts are reduced together.
#include <immintrin.h>

#include "bne/kernels.hpp"

namespace bne::kernels::avx512 {
namespace {

constexpr size_t kQ = 4;  // queries per pass over a group of codes

inline __m256i load(const uint8_t* p) noexcept { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// The four uint32 sums of the 4 qwords of each of v[0..3].
inline __m128i reduce4(const __m256i* v) noexcept {
    __m256i t01 = _mm256_add_epi64(_mm256_unpacklo_epi64(v[0], v[1]), _mm256_unpackhi_epi64(v[0], v[1]));
    __m256i t23 = _mm256_add_epi64(_mm256_unpacklo_epi64(v[2], v[3]), _mm256_unpackhi_epi64(v[2], v[3]));
    __m256i r = _mm256_add_epi64(_mm256_permute2x128_si256(t01, t23, 0x20), _mm256_permute2x128_si256(t01, t23, 0x31));
    return _mm256_cvtepi64_epi32(r);
}

// Q queries against `count` (<= 4) codes. C > 0: codes of exactly C 32-byte chunks (unrolled);
// C == 0: any width, full chunks then a masked tail (masked loads never touch bytes past it).
template <size_t Q, size_t C>
inline void group(const uint8_t* q, size_t words, const uint8_t* c, size_t count, __m128i* res) noexcept {
    const size_t stride = words * 8;
    const size_t chunks = C ? C : words / 4;
    __m256i acc[Q][4];
    for (size_t a = 0; a < Q; ++a)
        for (size_t j = 0; j < 4; ++j) acc[a][j] = _mm256_setzero_si256();
    if (Q == 1) {  // one query: walk each code front to back, the order the prefetcher expects
        for (size_t j = 0; j < 4; ++j) {
            if (j >= count) break;
            for (size_t w = 0; w < chunks; ++w)
                acc[0][j] = _mm256_add_epi64(acc[0][j], _mm256_popcnt_epi64(_mm256_xor_si256(
                                                            load(q + 32 * w), load(c + j * stride + 32 * w))));
        }
    } else {
        for (size_t w = 0; w < chunks; ++w) {
            __m256i qa[Q];
            for (size_t a = 0; a < Q; ++a) qa[a] = load(q + a * stride + 32 * w);
            for (size_t j = 0; j < 4; ++j) {
                if (j >= count) break;
                const __m256i cw = load(c + j * stride + 32 * w);
                for (size_t a = 0; a < Q; ++a)
                    acc[a][j] = _mm256_add_epi64(acc[a][j], _mm256_popcnt_epi64(_mm256_xor_si256(qa[a], cw)));
            }
        }
    }
    if (C == 0 && words % 4) {
        const __mmask8 m = static_cast<__mmask8>((1u << (words % 4)) - 1u);
        const size_t off = 32 * chunks;
        for (size_t j = 0; j < count; ++j) {
            const __m256i cw = _mm256_maskz_loadu_epi64(m, c + j * stride + off);
            for (size_t a = 0; a < Q; ++a) {
                const __m256i qw = _mm256_maskz_loadu_epi64(m, q + a * stride + off);
                acc[a][j] = _mm256_add_epi64(acc[a][j], _mm256_popcnt_epi64(_mm256_xor_si256(qw, cw)));
            }
        }
    }
    for (size_t a = 0; a < Q; ++a) res[a] = reduce4(acc[a]);
}

template <size_t Q, size_t C>
void rows(const uint8_t* q, const uint8_t* codes, size_t n, size_t words, uint32_t* out) noexcept {
    const size_t stride = words * 8;
    __m128i res[Q];
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        group<Q, C>(q, words, codes + i * stride, 4, res);
        for (size_t a = 0; a < Q; ++a) _mm_storeu_si128(reinterpret_cast<__m128i*>(out + a * n + i), res[a]);
    }
    if (i < n) {
        group<Q, C>(q, words, codes + i * stride, n - i, res);
        const __mmask8 m = static_cast<__mmask8>((1u << (n - i)) - 1u);
        for (size_t a = 0; a < Q; ++a) _mm_mask_storeu_epi32(out + a * n + i, m, res[a]);
    }
}

template <size_t C>
void block_fixed(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                 uint32_t* out) noexcept {
    const size_t stride = words * 8;
    size_t a = 0;
    for (; a + kQ <= nq; a += kQ) rows<kQ, C>(queries + a * stride, codes, n, words, out + a * n);
    switch (nq - a) {
        case 3: rows<3, C>(queries + a * stride, codes, n, words, out + a * n); break;
        case 2: rows<2, C>(queries + a * stride, codes, n, words, out + a * n); break;
        case 1: rows<1, C>(queries + a * stride, codes, n, words, out + a * n); break;
        default: break;
    }
}

void hamming_block(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                   uint32_t* out) noexcept {
    switch (words) {
        case 16: return block_fixed<4>(queries, nq, codes, n, words, out);  // 1024 bits
        case 32: return block_fixed<8>(queries, nq, codes, n, words, out);  // 2048 bits
        case 8: return block_fixed<2>(queries, nq, codes, n, words, out);   // 512 bits
        default: return block_fixed<0>(queries, nq, codes, n, words, out);
    }
}

size_t filter_below(const uint32_t* d, size_t n, uint32_t thr, uint32_t* idx, uint32_t* dist) noexcept {
    const __m512i vthr = _mm512_set1_epi32(static_cast<int>(thr));
    const __m512i step = _mm512_set1_epi32(16);
    __m512i vidx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    size_t m = 0;
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 valid = n - i >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (n - i)) - 1u);
        const __m512i v = _mm512_maskz_loadu_epi32(valid, d + i);
        const __mmask16 keep = _mm512_mask_cmplt_epu32_mask(valid, v, vthr);
        if (keep) {  // rare once a top-k threshold has settled
            _mm512_mask_compressstoreu_epi32(idx + m, keep, vidx);
            _mm512_mask_compressstoreu_epi32(dist + m, keep, v);
            m += static_cast<size_t>(__builtin_popcount(keep));
        }
        vidx = _mm512_add_epi32(vidx, step);
    }
    return m;
}

}  // namespace

const KernelTable table{"avx512", hamming_block, filter_below};

}  // namespace bne::kernels::avx512
