// AVX-512 VPOPCNTDQ kernels. Built with -mavx512f/bw/vl/vpopcntdq; only called when the
// dispatcher confirmed those features (cpuid + xgetbv). Everything here has internal linkage
// so no AVX-512 instance of an inline function can leak into baseline code (the ODR trap).
//
// Two scan variants share this file (same flags); the dispatcher picks one per CPU:
//  * table256: 256-bit VPOPCNTQ (AVX-512VL), 4 codes per group. Zen 4 splits every 512-bit op
//    into two 256-bit halves, so wider registers buy nothing there.
//  * table512: 512-bit VPOPCNTQ, 8 codes per group. Intel (Ice Lake and later) issues VPOPCNTQ
//    on one port, so a 512-bit op does twice the work of a 256-bit one; Zen 5 has full-width
//    units too.
// Both read row-major codes (the file layout) and transpose each chunk of a code group in
// registers, so that one vector holds the same word of every code of the group. Each query
// word is then broadcast against it: the accumulator lanes are the distances of the group's
// codes, with no horizontal reduction, and one transpose serves up to 16 queries. The
// distances are compared with the per-query bounds in registers (the fused threshold filter):
// only the rare pairs that can still enter a result are stored, so no distance array (of any
// width) is ever written. hamming_block (the full distance matrix) keeps the simpler
// reduce-per-code scheme.
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

// Lanes [0, count) set.
inline __mmask8 first_lanes(size_t count) noexcept { return static_cast<__mmask8>((1u << count) - 1u); }

// ---- fused scan, 512-bit --------------------------------------------------------------------
//
// Eight codes at a time: each 64-byte chunk of the 8 codes is transposed in registers (8x8
// qwords), so that vector j holds word j of all 8 codes. Each query word is then broadcast
// against it, and lane r of the accumulator sums code r's distance directly: no horizontal
// reduction, and the transpose is shared by up to 16 queries.

constexpr size_t kScanQueries = 16;  // queries per pass: each transposed chunk serves all of them

// In place: v[j] lane r = word j of row r, from v[r] lane j = word j of row r.
inline void transpose8(__m512i* v) noexcept {
    __m512i lo[4], hi[4];
    for (size_t p = 0; p < 4; ++p) {
        lo[p] = _mm512_unpacklo_epi64(v[2 * p], v[2 * p + 1]);  // 128-bit lane l: words 2l of rows 2p, 2p+1
        hi[p] = _mm512_unpackhi_epi64(v[2 * p], v[2 * p + 1]);  // words 2l+1
    }
    // x: lanes (w0|w2 of rows 0-1, w0|w2 of rows 2-3); y: the same for rows 4-7; then pick lanes.
    const __m512i xl = _mm512_shuffle_i64x2(lo[0], lo[1], 0x44), yl = _mm512_shuffle_i64x2(lo[2], lo[3], 0x44);
    const __m512i xh = _mm512_shuffle_i64x2(lo[0], lo[1], 0xee), yh = _mm512_shuffle_i64x2(lo[2], lo[3], 0xee);
    const __m512i xl1 = _mm512_shuffle_i64x2(hi[0], hi[1], 0x44), yl1 = _mm512_shuffle_i64x2(hi[2], hi[3], 0x44);
    const __m512i xh1 = _mm512_shuffle_i64x2(hi[0], hi[1], 0xee), yh1 = _mm512_shuffle_i64x2(hi[2], hi[3], 0xee);
    v[0] = _mm512_shuffle_i64x2(xl, yl, 0x88);
    v[2] = _mm512_shuffle_i64x2(xl, yl, 0xdd);
    v[4] = _mm512_shuffle_i64x2(xh, yh, 0x88);
    v[6] = _mm512_shuffle_i64x2(xh, yh, 0xdd);
    v[1] = _mm512_shuffle_i64x2(xl1, yl1, 0x88);
    v[3] = _mm512_shuffle_i64x2(xl1, yl1, 0xdd);
    v[5] = _mm512_shuffle_i64x2(xh1, yh1, 0x88);
    v[7] = _mm512_shuffle_i64x2(xh1, yh1, 0xdd);
}

// Q queries against `count` (<= 8) codes: acc[a] lane r = distance of query a and code r.
// C > 0: exactly C chunks of 8 words; C == 0: any width (the last chunk masked, and only its
// real words are broadcast, so no query or code byte past a row is read).
template <size_t Q, size_t C>
inline void octet(const uint8_t* q, size_t words, const uint8_t* c, size_t count, __m512i* acc) noexcept {
    const size_t stride = C ? C * 64 : words * 8;  // a constant for the unrolled widths: immediate offsets
    const size_t chunks = C ? C : (words + 7) / 8;
#pragma GCC unroll 16
    for (size_t a = 0; a < Q; ++a) acc[a] = _mm512_setzero_si512();
#pragma GCC unroll 2
    for (size_t w = 0; w < chunks; ++w) {
        const size_t nw = C ? 8 : (words - 8 * w < 8 ? words - 8 * w : 8);
        const __mmask8 mk = first_lanes(nw);
        __m512i v[8];
#pragma GCC unroll 8
        for (size_t r = 0; r < 8; ++r)
            v[r] = r < count ? (C ? _mm512_loadu_si512(c + r * stride + 64 * w) : _mm512_maskz_loadu_epi64(mk, c + r * stride + 64 * w))
                             : _mm512_setzero_si512();
        transpose8(v);
        const uint8_t* qw = q + 64 * w;
        // Fully unrolled, so the accumulators stay in registers; each query word is a broadcast
        // load folded into the XOR.
#pragma GCC unroll 16
        for (size_t a = 0; a < Q; ++a)
#pragma GCC unroll 8
            for (size_t j = 0; j < 8; ++j) {
                if (!C && j >= nw) break;
                const __m512i x = _mm512_broadcastq_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qw + a * stride + 8 * j)));
                acc[a] = _mm512_add_epi64(acc[a], _mm512_popcnt_epi64(_mm512_xor_si512(v[j], x)));
            }
    }
}

template <size_t Q, size_t C>
size_t scan512_q(const uint8_t* queries, const uint8_t* codes, size_t n, size_t words, const uint32_t* thr,
                 ScanHit* hits) noexcept {
    const size_t stride = C ? C * 64 : words * 8;
    // Bounds as 64-bit words, broadcast from memory at each compare (registers are all taken
    // by the accumulators and the transposed codes).
    alignas(64) uint64_t thr64[Q];
    for (size_t a = 0; a < Q; ++a) thr64[a] = thr[a];
    size_t m = 0;
    __m512i acc[Q];
    for (size_t i = 0; i < n; i += 8) {
        const size_t count = n - i < 8 ? n - i : 8;
        octet<Q, C>(queries, words, codes + i * stride, count, acc);
        const __mmask8 valid = first_lanes(count);
#pragma GCC unroll 16
        for (size_t a = 0; a < Q; ++a) {
            const __m512i bound = _mm512_set1_epi64(static_cast<long long>(thr64[a]));
            const unsigned keep = _mm512_mask_cmplt_epu64_mask(valid, acc[a], bound);
            if (keep) [[unlikely]] {
                alignas(64) uint64_t d[8];
                _mm512_store_si512(d, acc[a]);
                unsigned k = keep;
                while (k) {
                    const unsigned r = static_cast<unsigned>(__builtin_ctz(k));
                    hits[m++] = {static_cast<uint32_t>(a), static_cast<uint32_t>(i + r), static_cast<uint32_t>(d[r])};
                    k &= k - 1;
                }
            }
        }
    }
    return m;
}

template <size_t C>
size_t scan512(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words, const uint32_t* thr,
               ScanHit* hits) noexcept {
    // Batches of 16, 8, 4, 2, 1 queries; hits of later batches get their query index shifted.
    size_t m = 0, a = 0;
    auto run = [&](auto fn, size_t nqs) {
        const size_t got = fn(queries + a * words * 8, codes, n, words, thr + a, hits + m);
        for (size_t j = m; j < m + got; ++j) hits[j].query += static_cast<uint32_t>(a);
        m += got;
        a += nqs;
    };
    while (nq - a >= 16) run(scan512_q<16, C>, 16);
    if (nq - a >= 8) run(scan512_q<8, C>, 8);
    if (nq - a >= 4) run(scan512_q<4, C>, 4);
    if (nq - a >= 2) run(scan512_q<2, C>, 2);
    if (nq - a >= 1) run(scan512_q<1, C>, 1);
    return m;
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

// ---- fused scan, 256-bit ------------------------------------------------------------
//
// The 512-bit scheme at half width: four codes at a time, each 32-byte chunk transposed 4x4 so
// that vector j holds word j of the four codes, then every query word broadcast against it.

inline void transpose4(__m256i* v) noexcept {
    const __m256i t0 = _mm256_unpacklo_epi64(v[0], v[1]), t1 = _mm256_unpackhi_epi64(v[0], v[1]);
    const __m256i t2 = _mm256_unpacklo_epi64(v[2], v[3]), t3 = _mm256_unpackhi_epi64(v[2], v[3]);
    v[0] = _mm256_permute2x128_si256(t0, t2, 0x20);
    v[1] = _mm256_permute2x128_si256(t1, t3, 0x20);
    v[2] = _mm256_permute2x128_si256(t0, t2, 0x31);
    v[3] = _mm256_permute2x128_si256(t1, t3, 0x31);
}

template <size_t Q, size_t C>
inline void quad(const uint8_t* q, size_t words, const uint8_t* c, size_t count, __m256i* acc) noexcept {
    const size_t stride = C ? C * 32 : words * 8;
    const size_t chunks = C ? C : (words + 3) / 4;
#pragma GCC unroll 16
    for (size_t a = 0; a < Q; ++a) acc[a] = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (size_t w = 0; w < chunks; ++w) {
        const size_t nw = C ? 4 : (words - 4 * w < 4 ? words - 4 * w : 4);
        const __mmask8 mk = first_lanes(nw);
        __m256i v[4];
#pragma GCC unroll 4
        for (size_t r = 0; r < 4; ++r)
            v[r] = r < count ? (C ? load(c + r * stride + 32 * w) : _mm256_maskz_loadu_epi64(mk, c + r * stride + 32 * w))
                             : _mm256_setzero_si256();
        transpose4(v);
        const uint8_t* qw = q + 32 * w;
#pragma GCC unroll 16
        for (size_t a = 0; a < Q; ++a)
#pragma GCC unroll 4
            for (size_t j = 0; j < 4; ++j) {
                if (!C && j >= nw) break;
                const __m256i x = _mm256_broadcastq_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qw + a * stride + 8 * j)));
                acc[a] = _mm256_add_epi64(acc[a], _mm256_popcnt_epi64(_mm256_xor_si256(v[j], x)));
            }
    }
}

template <size_t Q, size_t C>
size_t scan256_q(const uint8_t* queries, const uint8_t* codes, size_t n, size_t words, const uint32_t* thr,
                  ScanHit* hits) noexcept {
    const size_t stride = C ? C * 32 : words * 8;
    alignas(64) uint64_t thr64[Q];
    for (size_t a = 0; a < Q; ++a) thr64[a] = thr[a];
    size_t m = 0;
    __m256i acc[Q];
    for (size_t i = 0; i < n; i += 4) {
        const size_t count = n - i < 4 ? n - i : 4;
        quad<Q, C>(queries, words, codes + i * stride, count, acc);
        const __mmask8 valid = first_lanes(count);
#pragma GCC unroll 16
        for (size_t a = 0; a < Q; ++a) {
            const unsigned keep = _mm256_mask_cmplt_epu64_mask(valid, acc[a], _mm256_set1_epi64x(static_cast<long long>(thr64[a])));
            if (keep) [[unlikely]] {
                alignas(32) uint64_t d[4];
                _mm256_store_si256(reinterpret_cast<__m256i*>(d), acc[a]);
                unsigned k = keep;
                while (k) {
                    const unsigned r = static_cast<unsigned>(__builtin_ctz(k));
                    hits[m++] = {static_cast<uint32_t>(a), static_cast<uint32_t>(i + r), static_cast<uint32_t>(d[r])};
                    k &= k - 1;
                }
            }
        }
    }
    return m;
}

template <size_t C>
size_t scan256(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words, const uint32_t* thr,
                ScanHit* hits) noexcept {
    size_t m = 0, a = 0;
    auto run = [&](auto fn, size_t nqs) {
        const size_t got = fn(queries + a * words * 8, codes, n, words, thr + a, hits + m);
        for (size_t j = m; j < m + got; ++j) hits[j].query += static_cast<uint32_t>(a);
        m += got;
        a += nqs;
    };
    while (nq - a >= 16) run(scan256_q<16, C>, 16);
    if (nq - a >= 8) run(scan256_q<8, C>, 8);
    if (nq - a >= 4) run(scan256_q<4, C>, 4);
    if (nq - a >= 2) run(scan256_q<2, C>, 2);
    if (nq - a >= 1) run(scan256_q<1, C>, 1);
    return m;
}

size_t scan_below256(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                      const uint32_t* thr, ScanHit* hits) noexcept {
    switch (words) {
        case 16: return scan256<4>(queries, nq, codes, n, words, thr, hits);
        case 32: return scan256<8>(queries, nq, codes, n, words, thr, hits);
        case 8: return scan256<2>(queries, nq, codes, n, words, thr, hits);
        default: return scan256<0>(queries, nq, codes, n, words, thr, hits);
    }
}

}  // namespace

const KernelTable table256{"avx512", "avx512-256", kScanQueries, hamming_block, scan_below256};
const KernelTable table512{"avx512", "avx512-512", kScanQueries, hamming_block, scan_below512};

}  // namespace bne::kernels::avx512
