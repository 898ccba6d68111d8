// AVX2 kernels: nibble-lookup popcount (vpshufb) with byte counts summed by vpsadbw. Built with
// -mavx2 -mpopcnt only; called only when cpuid + xgetbv report AVX2. Internal linkage throughout
// (see kernels_avx512.cpp on the ODR trap).
#include <immintrin.h>

#include "bne/kernels.hpp"

namespace bne::kernels::avx2 {
namespace {

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

// Per-qword popcounts of (query XOR code); byte counters are flushed through vpsadbw every
// 8 chunks so they never exceed 64 (no overflow at any width). The tail uses vpmaskmovq, which
// never reads masked-out bytes.
struct Acc {
    const uint8_t* q;
    size_t chunks;
    __m256i tail_mask;
    bool has_tail;
    Acc(const uint8_t* q_, size_t words) noexcept : q(q_), chunks(words / 4), has_tail(words % 4 != 0) {
        const size_t t = words % 4;
        tail_mask = _mm256_setr_epi64x(t > 0 ? -1 : 0, t > 1 ? -1 : 0, t > 2 ? -1 : 0, 0);
    }
    static __m256i load(const uint8_t* p) noexcept { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
    __m256i operator()(const uint8_t* c) const noexcept {
        const __m256i zero = _mm256_setzero_si256();
        __m256i total = zero;
        size_t j = 0;
        while (j < chunks) {
            __m256i bytes = zero;
            size_t end = j + 8 < chunks ? j + 8 : chunks;
            for (; j < end; ++j) bytes = _mm256_add_epi8(bytes, popcnt_bytes(_mm256_xor_si256(load(q + 32 * j), load(c + 32 * j))));
            total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes, zero));
        }
        if (has_tail) {
            auto lq = reinterpret_cast<const long long*>(q + 32 * j);
            auto lc = reinterpret_cast<const long long*>(c + 32 * j);
            __m256i x = _mm256_xor_si256(_mm256_maskload_epi64(lq, tail_mask), _mm256_maskload_epi64(lc, tail_mask));
            total = _mm256_add_epi64(total, _mm256_sad_epu8(popcnt_bytes(x), zero));
        }
        return total;
    }
};

// 1024 bits: 4 chunks held in registers, one vpsadbw per code.
struct Acc1024 {
    __m256i qv[4];
    explicit Acc1024(const uint8_t* q) noexcept {
        for (int j = 0; j < 4; ++j) qv[j] = Acc::load(q + 32 * j);
    }
    __m256i operator()(const uint8_t* c) const noexcept {
        __m256i b = popcnt_bytes(_mm256_xor_si256(qv[0], Acc::load(c)));
        b = _mm256_add_epi8(b, popcnt_bytes(_mm256_xor_si256(qv[1], Acc::load(c + 32))));
        b = _mm256_add_epi8(b, popcnt_bytes(_mm256_xor_si256(qv[2], Acc::load(c + 64))));
        b = _mm256_add_epi8(b, popcnt_bytes(_mm256_xor_si256(qv[3], Acc::load(c + 96))));
        return _mm256_sad_epu8(b, _mm256_setzero_si256());
    }
};

// 2048 bits: 8 chunks from L1, byte counts (<= 64) flushed once per code.
struct Acc2048 {
    const uint8_t* q;
    explicit Acc2048(const uint8_t* q_) noexcept : q(q_) {}
    __m256i operator()(const uint8_t* c) const noexcept {
        __m256i b = popcnt_bytes(_mm256_xor_si256(Acc::load(q), Acc::load(c)));
        for (int j = 1; j < 8; ++j) b = _mm256_add_epi8(b, popcnt_bytes(_mm256_xor_si256(Acc::load(q + 32 * j), Acc::load(c + 32 * j))));
        return _mm256_sad_epu8(b, _mm256_setzero_si256());
    }
};

// Distances of codes [0, count) of a group of at most 4, as 4 uint32 (missing codes give 0).
template <class A>
inline __m128i group4(const A& acc, const uint8_t* codes, size_t stride, size_t count) noexcept {
    __m256i v[4];
    for (size_t j = 0; j < 4; ++j) v[j] = j < count ? acc(codes + j * stride) : _mm256_setzero_si256();
    __m256i r = reduce4(v);  // 4 qwords, each < 2^32
    r = _mm256_permutevar8x32_epi32(r, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
    return _mm256_castsi256_si128(r);
}

template <class A>
void many(const A& acc, const uint8_t* codes, size_t n, size_t stride, uint32_t* out) noexcept {
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), group4(acc, codes + i * stride, stride, 4));
    if (i < n) {
        alignas(16) uint32_t tmp[4];
        _mm_store_si128(reinterpret_cast<__m128i*>(tmp), group4(acc, codes + i * stride, stride, n - i));
        for (size_t j = 0; i + j < n; ++j) out[i + j] = tmp[j];
    }
}

template <class A>
void each_query(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words, uint32_t* out) noexcept {
    for (size_t a = 0; a < nq; ++a) many(A(queries + a * words * 8), codes, n, words * 8, out + a * n);
}

void hamming_block(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                   uint32_t* out) noexcept {
    if (words == 16) return each_query<Acc1024>(queries, nq, codes, n, words, out);
    if (words == 32) return each_query<Acc2048>(queries, nq, codes, n, words, out);
    for (size_t a = 0; a < nq; ++a) many(Acc(queries + a * words * 8, words), codes, n, words * 8, out + a * n);
}

size_t filter_below(const uint32_t* d, size_t n, uint32_t thr, uint32_t* idx, uint32_t* dist) noexcept {
    // Distances are far below 2^31, so a signed compare against a clamped threshold is exact.
    const __m256i vthr = _mm256_set1_epi32(static_cast<int>(thr > 0x7fffffffu ? 0x7fffffffu : thr));
    size_t m = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + i));
        unsigned keep = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(vthr, v))));
        while (keep) {  // rare once a top-k threshold has settled
            const unsigned j = static_cast<unsigned>(__builtin_ctz(keep));
            idx[m] = static_cast<uint32_t>(i + j);
            dist[m] = d[i + j];
            ++m;
            keep &= keep - 1;
        }
    }
    for (; i < n; ++i)
        if (d[i] < thr) {
            idx[m] = static_cast<uint32_t>(i);
            dist[m] = d[i];
            ++m;
        }
    return m;
}

}  // namespace

const KernelTable table{"avx2", hamming_block, filter_below};

}  // namespace bne::kernels::avx2
