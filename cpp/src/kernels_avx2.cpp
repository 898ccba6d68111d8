// AVX2 kernels: nibble-lookup popcount (vpshufb) with byte counts summed by vpsadbw. Built with
// -mavx2 -mpopcnt only; called only when cpuid + xgetbv report AVX2. Internal linkage throughout
// (see kernels_avx512.cpp on the ODR trap).
#include <immintrin.h>

#include "bne/kernels.hpp"

namespace bne::kernels::avx2 {
namespace {

inline __m256i load(const uint8_t* p) noexcept { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// Per-byte popcount of a 256-bit vector.
inline __m256i popcnt_bytes(__m256i x) noexcept {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low));
    __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
    return _mm256_add_epi8(lo, hi);
}

// Lane j of the result is the sum of the 4 qwords of v[j].
inline __m256i reduce4(const __m256i* v) noexcept {
    __m256i t01 = _mm256_add_epi64(_mm256_unpacklo_epi64(v[0], v[1]), _mm256_unpackhi_epi64(v[0], v[1]));
    __m256i t23 = _mm256_add_epi64(_mm256_unpacklo_epi64(v[2], v[3]), _mm256_unpackhi_epi64(v[2], v[3]));
    return _mm256_add_epi64(_mm256_permute2x128_si256(t01, t23, 0x20), _mm256_permute2x128_si256(t01, t23, 0x31));
}

// Q queries against `count` (<= 4) codes; each loaded code chunk serves every query. Byte
// counters (<= 8 per chunk) are flushed through vpsadbw every 8 chunks, so they never overflow.
// C > 0: exactly C 32-byte chunks (unrolled); C == 0: any width, with a vpmaskmovq tail that
// never reads past the code.
template <size_t Q, size_t C>
inline void group(const uint8_t* q, size_t words, const uint8_t* c, size_t count, __m128i* res) noexcept {
    const size_t stride = words * 8;
    const size_t chunks = C ? C : words / 4;
    const __m256i zero = _mm256_setzero_si256();
    __m256i total[Q][4], bytes[Q][4];
    for (size_t a = 0; a < Q; ++a)
        for (size_t j = 0; j < 4; ++j) total[a][j] = bytes[a][j] = zero;
    auto flush = [&] {
        for (size_t a = 0; a < Q; ++a)
            for (size_t j = 0; j < 4; ++j) {
                total[a][j] = _mm256_add_epi64(total[a][j], _mm256_sad_epu8(bytes[a][j], zero));
                bytes[a][j] = zero;
            }
    };
    for (size_t w = 0; w < chunks; ++w) {
        __m256i qa[Q];
        for (size_t a = 0; a < Q; ++a) qa[a] = load(q + a * stride + 32 * w);
        for (size_t j = 0; j < 4; ++j) {
            if (j >= count) break;
            const __m256i cw = load(c + j * stride + 32 * w);
            for (size_t a = 0; a < Q; ++a)
                bytes[a][j] = _mm256_add_epi8(bytes[a][j], popcnt_bytes(_mm256_xor_si256(qa[a], cw)));
        }
        if (w % 8 == 7) flush();
    }
    if (C == 0 && words % 4) {
        const size_t t = words % 4;
        const __m256i m = _mm256_setr_epi64x(-1, t > 1 ? -1 : 0, t > 2 ? -1 : 0, 0);
        const size_t off = 32 * chunks;
        for (size_t j = 0; j < count; ++j) {
            const __m256i cw = _mm256_maskload_epi64(reinterpret_cast<const long long*>(c + j * stride + off), m);
            for (size_t a = 0; a < Q; ++a) {
                const __m256i qw = _mm256_maskload_epi64(reinterpret_cast<const long long*>(q + a * stride + off), m);
                bytes[a][j] = _mm256_add_epi8(bytes[a][j], popcnt_bytes(_mm256_xor_si256(qw, cw)));
            }
        }
    }
    flush();
    for (size_t a = 0; a < Q; ++a) {
        __m256i r = _mm256_permutevar8x32_epi32(reduce4(total[a]), _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
        res[a] = _mm256_castsi256_si128(r);
    }
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
        for (size_t a = 0; a < Q; ++a) {
            alignas(16) uint32_t tmp[4];
            _mm_store_si128(reinterpret_cast<__m128i*>(tmp), res[a]);
            for (size_t j = 0; i + j < n; ++j) out[a * n + i + j] = tmp[j];
        }
    }
}

// Two queries per pass: AVX2 has 16 ymm registers, and 2 x 4 byte counters plus the lookup
// constants fit without spills.
template <size_t C>
void block_fixed(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                 uint32_t* out) noexcept {
    const size_t stride = words * 8;
    size_t a = 0;
    for (; a + 2 <= nq; a += 2) rows<2, C>(queries + a * stride, codes, n, words, out + a * n);
    if (a < nq) rows<1, C>(queries + a * stride, codes, n, words, out + a * n);
}

void hamming_block(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                   uint32_t* out) noexcept {
    switch (words) {
        case 16: return block_fixed<4>(queries, nq, codes, n, words, out);  // 1024 bits
        case 32: return block_fixed<8>(queries, nq, codes, n, words, out);  // 2048 bits
        default: return block_fixed<0>(queries, nq, codes, n, words, out);
    }
}

// Fused scan on AVX2: distances of a slice of codes go to a small buffer that stays in L1, then
// a vector compare against the query's bound picks the few pairs that are reported.
constexpr size_t kScanQueries = 8;
constexpr size_t kSlice = 256;  // codes per slice: 8 x 256 distances = 8 KiB

size_t scan_below(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                  const uint32_t* thr, ScanHit* hits) noexcept {
    alignas(32) uint32_t buf[kScanQueries * kSlice];
    size_t m = 0;
    for (size_t i0 = 0; i0 < n; i0 += kSlice) {
        const size_t cnt = n - i0 < kSlice ? n - i0 : kSlice;
        hamming_block(queries, nq, codes + i0 * words * 8, cnt, words, buf);
        for (size_t a = 0; a < nq; ++a) {
            // Distances are far below 2^31, so a signed compare against a clamped bound is exact.
            const uint32_t t = thr[a] > 0x7fffffffu ? 0x7fffffffu : thr[a];
            const __m256i vthr = _mm256_set1_epi32(static_cast<int>(t));
            const uint32_t* d = buf + a * cnt;
            size_t i = 0;
            for (; i + 8 <= cnt; i += 8) {
                const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + i));
                unsigned keep = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(vthr, v))));
                while (keep) {  // rare once a top-k bound has settled
                    const unsigned j = static_cast<unsigned>(__builtin_ctz(keep));
                    hits[m++] = {static_cast<uint32_t>(a), static_cast<uint32_t>(i0 + i + j), d[i + j]};
                    keep &= keep - 1;
                }
            }
            for (; i < cnt; ++i)
                if (d[i] < thr[a]) hits[m++] = {static_cast<uint32_t>(a), static_cast<uint32_t>(i0 + i), d[i]};
        }
    }
    return m;
}

}  // namespace

const KernelTable table{"avx2", "avx2", kScanQueries, hamming_block, scan_below};

}  // namespace bne::kernels::avx2
