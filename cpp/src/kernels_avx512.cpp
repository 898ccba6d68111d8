// AVX-512 VPOPCNTDQ kernels. Built with -mavx512f/bw/vl/vpopcntdq; only called when the
// dispatcher confirmed those features (cpuid + xgetbv). Everything here has internal linkage
// so no AVX-512 instance of an inline function can leak into baseline code (the ODR trap).
//
// Two variants share this file (same flags), chosen per CPU by the dispatcher:
//  * table256: 256-bit VPOPCNTQ (AVX-512VL). Zen 4 splits every 512-bit op into two 256-bit
//    halves, so wider registers buy nothing there while their cross-lane reductions cost more.
//  * table512: 512-bit VPOPCNTQ. Intel (Ice Lake and later) issues VPOPCNTQ on one port, so a
//    512-bit op does twice the work of a 256-bit one; Zen 5 has full-width units too.
// Both scan row-major codes (the file layout), reuse each loaded code chunk for several
// queries, reduce the per-lane counts of several (code, query) pairs together, and compare the
// distances with the per-query bounds in registers (the fused threshold filter): only the rare
// pairs that can still enter a result are stored.
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

// ---- fused scan, 256-bit --------------------------------------------------------------------

constexpr size_t kScanQueries = 8;

// Lanes [0, count) set.
inline __mmask8 first_lanes(size_t count) noexcept { return static_cast<__mmask8>((1u << count) - 1u); }

// Rare path: writes the pairs of `keep` (lane j -> query a_of(j), code i_of(j)) to hits.
template <class AOf, class IOf>
inline size_t emit(unsigned keep, const uint32_t* d, ScanHit* hits, AOf a_of, IOf i_of) noexcept {
    size_t m = 0;
    while (keep) {
        const unsigned j = static_cast<unsigned>(__builtin_ctz(keep));
        hits[m++] = {static_cast<uint32_t>(a_of(j)), static_cast<uint32_t>(i_of(j)), d[j]};
        keep &= keep - 1;
    }
    return m;
}

// Queries in sub-batches of 4 against groups of 4 codes: the group's 4 rows stay in L1 while
// all queries of the batch pass over them.
template <size_t C>
size_t scan256(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words, const uint32_t* thr,
               ScanHit* hits) noexcept {
    const size_t stride = words * 8;
    __m128i vthr[kScanQueries];
    for (size_t a = 0; a < nq; ++a) vthr[a] = _mm_set1_epi32(static_cast<int>(thr[a]));
    size_t m = 0;
    __m128i res[4];
    for (size_t i = 0; i < n; i += 4) {
        const size_t count = n - i < 4 ? n - i : 4;
        const __mmask8 valid = first_lanes(count);
        const uint8_t* c = codes + i * stride;
        size_t a = 0;
        auto check = [&](size_t q, size_t nqs) {
            for (size_t b = 0; b < nqs; ++b) {
                const unsigned keep = _mm_mask_cmplt_epu32_mask(valid, res[b], vthr[q + b]);
                if (keep) [[unlikely]] {
                    alignas(16) uint32_t d[4];
                    _mm_store_si128(reinterpret_cast<__m128i*>(d), res[b]);
                    m += emit(keep, d, hits + m, [&](unsigned) { return q + b; }, [&](unsigned j) { return i + j; });
                }
            }
        };
        for (; a + 4 <= nq; a += 4) {
            group<4, C>(queries + a * stride, words, c, count, res);
            check(a, 4);
        }
        switch (nq - a) {
            case 3: group<3, C>(queries + a * stride, words, c, count, res); check(a, 3); break;
            case 2: group<2, C>(queries + a * stride, words, c, count, res); check(a, 2); break;
            case 1: group<1, C>(queries + a * stride, words, c, count, res); check(a, 1); break;
            default: break;
        }
    }
    return m;
}

size_t scan_below256(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                     const uint32_t* thr, ScanHit* hits) noexcept {
    switch (words) {
        case 16: return scan256<4>(queries, nq, codes, n, words, thr, hits);  // 1024 bits
        case 32: return scan256<8>(queries, nq, codes, n, words, thr, hits);  // 2048 bits
        case 8: return scan256<2>(queries, nq, codes, n, words, thr, hits);   // 512 bits
        default: return scan256<0>(queries, nq, codes, n, words, thr, hits);
    }
}

// ---- fused scan, 512-bit --------------------------------------------------------------------

// Sums the 8 qwords of each of a[0..7]: lane j of the result is the total of a[j].
inline __m512i reduce8(const __m512i* a) noexcept {
    // Pairwise sums within 128-bit lanes, then across lanes in two shuffle-and-add steps.
    const __m512i t01 = _mm512_add_epi64(_mm512_unpacklo_epi64(a[0], a[1]), _mm512_unpackhi_epi64(a[0], a[1]));
    const __m512i t23 = _mm512_add_epi64(_mm512_unpacklo_epi64(a[2], a[3]), _mm512_unpackhi_epi64(a[2], a[3]));
    const __m512i t45 = _mm512_add_epi64(_mm512_unpacklo_epi64(a[4], a[5]), _mm512_unpackhi_epi64(a[4], a[5]));
    const __m512i t67 = _mm512_add_epi64(_mm512_unpacklo_epi64(a[6], a[7]), _mm512_unpackhi_epi64(a[6], a[7]));
    const __m512i u0 = _mm512_add_epi64(_mm512_shuffle_i64x2(t01, t23, 0x88), _mm512_shuffle_i64x2(t01, t23, 0xdd));
    const __m512i u1 = _mm512_add_epi64(_mm512_shuffle_i64x2(t45, t67, 0x88), _mm512_shuffle_i64x2(t45, t67, 0xdd));
    return _mm512_add_epi64(_mm512_shuffle_i64x2(u0, u1, 0x88), _mm512_shuffle_i64x2(u0, u1, 0xdd));
}

// Distances of one code against Q <= 8 queries (lane a = query a; lanes >= Q are 0).
// C > 0: exactly C 64-byte chunks, with the queries held in `qv`; C == 0: any width, queries
// read from memory, a masked tail for the last words % 8 words.
template <size_t Q, size_t C>
inline __m256i one_code512(const __m512i (*qv)[C ? C : 1], const uint8_t* q, size_t words, const uint8_t* c) noexcept {
    __m512i acc[8];
    for (size_t a = 0; a < 8; ++a) acc[a] = _mm512_setzero_si512();
    if constexpr (C > 0) {
        for (size_t w = 0; w < C; ++w) {
            const __m512i cw = _mm512_loadu_si512(c + 64 * w);
            for (size_t a = 0; a < Q; ++a)
                acc[a] = _mm512_add_epi64(acc[a], _mm512_popcnt_epi64(_mm512_xor_si512(qv[a][w], cw)));
        }
    } else {
        const size_t stride = words * 8, chunks = words / 8;
        for (size_t w = 0; w < chunks; ++w) {
            const __m512i cw = _mm512_loadu_si512(c + 64 * w);
            for (size_t a = 0; a < Q; ++a)
                acc[a] = _mm512_add_epi64(acc[a], _mm512_popcnt_epi64(_mm512_xor_si512(
                                                      _mm512_loadu_si512(q + a * stride + 64 * w), cw)));
        }
        if (words % 8) {
            const __mmask8 mk = first_lanes(words % 8);
            const size_t off = 64 * chunks;
            const __m512i cw = _mm512_maskz_loadu_epi64(mk, c + off);
            for (size_t a = 0; a < Q; ++a)
                acc[a] = _mm512_add_epi64(acc[a], _mm512_popcnt_epi64(_mm512_xor_si512(
                                                      _mm512_maskz_loadu_epi64(mk, q + a * stride + off), cw)));
        }
    }
    return _mm512_cvtepi64_epi32(reduce8(acc));
}

template <size_t Q, size_t C>
size_t scan512_q(const uint8_t* queries, const uint8_t* codes, size_t n, size_t words, const uint32_t* thr,
                 ScanHit* hits) noexcept {
    const size_t stride = words * 8;
    alignas(32) uint32_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // bound 0: lanes without a query never report
    for (size_t a = 0; a < Q; ++a) t[a] = thr[a];
    const __m256i vthr = _mm256_load_si256(reinterpret_cast<const __m256i*>(t));
    // Queries copied into locals once: the compiler keeps them in registers (or one stack slot)
    // instead of reloading them for every code, since `hits` stores could alias the input.
    __m512i qv[Q][C ? C : 1];
    if constexpr (C > 0)
        for (size_t a = 0; a < Q; ++a)
            for (size_t w = 0; w < C; ++w) qv[a][w] = _mm512_loadu_si512(queries + a * stride + 64 * w);
    size_t m = 0;
    for (size_t i = 0; i < n; ++i) {
        const __m256i d = one_code512<Q, C>(qv, queries, words, codes + i * stride);
        const unsigned keep = _mm256_cmplt_epu32_mask(d, vthr);
        if (keep) [[unlikely]] {
            alignas(32) uint32_t dd[8];
            _mm256_store_si256(reinterpret_cast<__m256i*>(dd), d);
            m += emit(keep, dd, hits + m, [](unsigned j) { return j; }, [i](unsigned) { return i; });
        }
    }
    return m;
}

template <size_t C>
size_t scan512(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words, const uint32_t* thr,
               ScanHit* hits) noexcept {
    switch (nq) {
        case 8: return scan512_q<8, C>(queries, codes, n, words, thr, hits);
        case 7: return scan512_q<7, C>(queries, codes, n, words, thr, hits);
        case 6: return scan512_q<6, C>(queries, codes, n, words, thr, hits);
        case 5: return scan512_q<5, C>(queries, codes, n, words, thr, hits);
        case 4: return scan512_q<4, C>(queries, codes, n, words, thr, hits);
        case 3: return scan512_q<3, C>(queries, codes, n, words, thr, hits);
        case 2: return scan512_q<2, C>(queries, codes, n, words, thr, hits);
        case 1: return scan512_q<1, C>(queries, codes, n, words, thr, hits);
        default: return 0;
    }
}

size_t scan_below512(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                     const uint32_t* thr, ScanHit* hits) noexcept {
    switch (words) {
        case 16: return scan512<2>(queries, nq, codes, n, words, thr, hits);  // 1024 bits
        case 32: return scan512<4>(queries, nq, codes, n, words, thr, hits);  // 2048 bits
        case 8: return scan512<1>(queries, nq, codes, n, words, thr, hits);   // 512 bits
        default: return scan512<0>(queries, nq, codes, n, words, thr, hits);
    }
}

}  // namespace

const KernelTable table256{"avx512", "avx512-256", kScanQueries, hamming_block, scan_below256};
const KernelTable table512{"avx512", "avx512-512", kScanQueries, hamming_block, scan_below512};

}  // namespace bne::kernels::avx512
