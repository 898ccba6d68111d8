// AVX-512 VPOPCNTDQ kernels. Built with -mavx512f/bw/vl/vpopcntdq; only called when the
// dispatcher confirmed those features (cpuid + xgetbv). The algorithms are the templates of
// kernel_templates.hpp; this file holds only the AVX-512 operations they run on.
//
// Two scan variants (same flags); the dispatcher picks one per CPU:
//  * table256: 256-bit VPOPCNTQ (AVX-512VL), 4 codes per group. Zen 4 splits every 512-bit op
//    into two 256-bit halves, so wider registers buy nothing there.
//  * table512: 512-bit VPOPCNTQ, 8 codes per group. Intel (Ice Lake and later) issues VPOPCNTQ
//    on one port, so a 512-bit op does twice the work of a 256-bit one; Zen 5 has full-width
//    units too.
// Both use the transposed fused scan (distances compared with the bounds in registers, no
// distance array written); hamming_block (the full distance matrix) keeps the simpler
// reduce-per-code scheme with 256-bit vectors.
#include <immintrin.h>

#include "kernel_templates.hpp"

namespace bne::kernels::avx512 {
namespace {

// Lanes [0, count) set.
inline __mmask8 first_lanes(size_t count) noexcept { return static_cast<__mmask8>((1u << count) - 1u); }

inline __m256i broadcast256(const uint8_t* p) noexcept {
    return _mm256_broadcastq_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// Ops shared by hamming_block and the 256-bit scan: 4 words per vector, 64-bit counters.
struct Ymm {
    using V = __m256i;
    using R = __m128i;
    static constexpr size_t kLanes = 4;
    static constexpr size_t kQ = 4;      // queries per hamming_block pass
    static constexpr size_t kFlush = 0;  // VPOPCNTQ counts straight into 64-bit lanes
    static V zero() noexcept { return _mm256_setzero_si256(); }
    static V load(const uint8_t* p) noexcept { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
    static V load_first(const uint8_t* p, size_t nw) noexcept { return _mm256_maskz_loadu_epi64(first_lanes(nw), p); }
    static V add_popcount_xor(V acc, V a, V b) noexcept {
        return _mm256_add_epi64(acc, _mm256_popcnt_epi64(_mm256_xor_si256(a, b)));
    }
    static V add_popcount_xor(V acc, V v, const uint8_t* qword) noexcept {
        return add_popcount_xor(acc, v, broadcast256(qword));
    }
    static V widen(V c) noexcept { return c; }
    static V add64(V a, V b) noexcept { return _mm256_add_epi64(a, b); }
    // Lane j: the sum of the 4 qwords of v[j], as uint32.
    static R reduce4(const V* v) noexcept {
        const V t01 = _mm256_add_epi64(_mm256_unpacklo_epi64(v[0], v[1]), _mm256_unpackhi_epi64(v[0], v[1]));
        const V t23 = _mm256_add_epi64(_mm256_unpacklo_epi64(v[2], v[3]), _mm256_unpackhi_epi64(v[2], v[3]));
        return _mm256_cvtepi64_epi32(
            _mm256_add_epi64(_mm256_permute2x128_si256(t01, t23, 0x20), _mm256_permute2x128_si256(t01, t23, 0x31)));
    }
    static void store4(uint32_t* p, R r) noexcept { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), r); }
    // 4x4 qwords in place: v[j] lane r = word j of row r.
    static void transpose(V* v) noexcept {
        const V t0 = _mm256_unpacklo_epi64(v[0], v[1]), t1 = _mm256_unpackhi_epi64(v[0], v[1]);
        const V t2 = _mm256_unpacklo_epi64(v[2], v[3]), t3 = _mm256_unpackhi_epi64(v[2], v[3]);
        v[0] = _mm256_permute2x128_si256(t0, t2, 0x20);
        v[1] = _mm256_permute2x128_si256(t1, t3, 0x20);
        v[2] = _mm256_permute2x128_si256(t0, t2, 0x31);
        v[3] = _mm256_permute2x128_si256(t1, t3, 0x31);
    }
    static unsigned below(size_t count, V acc, uint64_t bound) noexcept {
        return _mm256_mask_cmplt_epu64_mask(first_lanes(count), acc, _mm256_set1_epi64x(static_cast<long long>(bound)));
    }
    static void store(uint64_t* d, V v) noexcept { _mm256_store_si256(reinterpret_cast<__m256i*>(d), v); }
};

// The 512-bit scan: 8 codes per group.
struct Zmm {
    using V = __m512i;
    static constexpr size_t kLanes = 8;
    static V zero() noexcept { return _mm512_setzero_si512(); }
    static V load(const uint8_t* p) noexcept { return _mm512_loadu_si512(p); }
    static V load_first(const uint8_t* p, size_t nw) noexcept { return _mm512_maskz_loadu_epi64(first_lanes(nw), p); }
    static V add_popcount_xor(V acc, V v, const uint8_t* qword) noexcept {
        const V x = _mm512_broadcastq_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qword)));
        return _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(v, x)));
    }
    // 8x8 qwords in place: v[j] lane r = word j of row r.
    static void transpose(V* v) noexcept {
        V lo[4], hi[4];
        for (size_t p = 0; p < 4; ++p) {
            lo[p] = _mm512_unpacklo_epi64(v[2 * p], v[2 * p + 1]);  // 128-bit lane l: words 2l of rows 2p, 2p+1
            hi[p] = _mm512_unpackhi_epi64(v[2 * p], v[2 * p + 1]);  // words 2l+1
        }
        // x: lanes (w0|w2 of rows 0-1, w0|w2 of rows 2-3); y: the same for rows 4-7; then pick lanes.
        const V xl = _mm512_shuffle_i64x2(lo[0], lo[1], 0x44), yl = _mm512_shuffle_i64x2(lo[2], lo[3], 0x44);
        const V xh = _mm512_shuffle_i64x2(lo[0], lo[1], 0xee), yh = _mm512_shuffle_i64x2(lo[2], lo[3], 0xee);
        const V xl1 = _mm512_shuffle_i64x2(hi[0], hi[1], 0x44), yl1 = _mm512_shuffle_i64x2(hi[2], hi[3], 0x44);
        const V xh1 = _mm512_shuffle_i64x2(hi[0], hi[1], 0xee), yh1 = _mm512_shuffle_i64x2(hi[2], hi[3], 0xee);
        v[0] = _mm512_shuffle_i64x2(xl, yl, 0x88);
        v[2] = _mm512_shuffle_i64x2(xl, yl, 0xdd);
        v[4] = _mm512_shuffle_i64x2(xh, yh, 0x88);
        v[6] = _mm512_shuffle_i64x2(xh, yh, 0xdd);
        v[1] = _mm512_shuffle_i64x2(xl1, yl1, 0x88);
        v[3] = _mm512_shuffle_i64x2(xl1, yl1, 0xdd);
        v[5] = _mm512_shuffle_i64x2(xh1, yh1, 0x88);
        v[7] = _mm512_shuffle_i64x2(xh1, yh1, 0xdd);
    }
    static unsigned below(size_t count, V acc, uint64_t bound) noexcept {
        return _mm512_mask_cmplt_epu64_mask(first_lanes(count), acc, _mm512_set1_epi64(static_cast<long long>(bound)));
    }
    static void store(uint64_t* d, V v) noexcept { _mm512_store_si512(d, v); }
};

}  // namespace

const KernelTable table256{"avx512", "avx512-256", kTransposedQueries, block_hamming<Ymm>, scan_below_transposed<Ymm>};
const KernelTable table512{"avx512", "avx512-512", kTransposedQueries, block_hamming<Ymm>, scan_below_transposed<Zmm>};

}  // namespace bne::kernels::avx512
