// AVX-512 VPOPCNTDQ kernels. Built with -mavx512f/bw/vl/vpopcntdq; only called when the
// dispatcher confirmed those features (cpuid + xgetbv). Everything here has internal linkage
// so no AVX-512 instance of an inline function can leak into baseline code (the ODR trap).
#include <immintrin.h>

#include "bne/kernels.hpp"

namespace bne::kernels::avx512 {
namespace {

// Horizontal sums of 8 vectors at once: lane j of the result is the sum of the 8 qwords of v[j].
// A transpose-and-add tree costs 14 shuffles for 8 codes instead of 8 full reductions.
inline __m512i reduce8(const __m512i* v) noexcept {
    __m512i t01 = _mm512_add_epi64(_mm512_unpacklo_epi64(v[0], v[1]), _mm512_unpackhi_epi64(v[0], v[1]));
    __m512i t23 = _mm512_add_epi64(_mm512_unpacklo_epi64(v[2], v[3]), _mm512_unpackhi_epi64(v[2], v[3]));
    __m512i t45 = _mm512_add_epi64(_mm512_unpacklo_epi64(v[4], v[5]), _mm512_unpackhi_epi64(v[4], v[5]));
    __m512i t67 = _mm512_add_epi64(_mm512_unpacklo_epi64(v[6], v[7]), _mm512_unpackhi_epi64(v[6], v[7]));
    constexpr int kEven = _MM_SHUFFLE(2, 0, 2, 0), kOdd = _MM_SHUFFLE(3, 1, 3, 1);
    __m512i w0 = _mm512_add_epi64(_mm512_shuffle_i64x2(t01, t23, kEven), _mm512_shuffle_i64x2(t01, t23, kOdd));
    __m512i w1 = _mm512_add_epi64(_mm512_shuffle_i64x2(t45, t67, kEven), _mm512_shuffle_i64x2(t45, t67, kOdd));
    return _mm512_add_epi64(_mm512_shuffle_i64x2(w0, w1, kEven), _mm512_shuffle_i64x2(w0, w1, kOdd));
}

// Per-qword popcounts of (query XOR code) for a code of C full 64-byte chunks, query in registers.
template <int C>
struct FixedAcc {
    __m512i qv[C];
    explicit FixedAcc(const uint8_t* q) noexcept {
        for (int j = 0; j < C; ++j) qv[j] = _mm512_loadu_si512(q + 64 * j);
    }
    __m512i operator()(const uint8_t* c) const noexcept {
        __m512i a = _mm512_popcnt_epi64(_mm512_xor_si512(qv[0], _mm512_loadu_si512(c)));
        for (int j = 1; j < C; ++j)
            a = _mm512_add_epi64(a, _mm512_popcnt_epi64(_mm512_xor_si512(qv[j], _mm512_loadu_si512(c + 64 * j))));
        return a;
    }
};

// Any number of words: full chunks, then a masked tail (masked loads never touch bytes past it).
struct GenericAcc {
    const uint8_t* q;
    size_t chunks;
    __mmask8 tail;
    GenericAcc(const uint8_t* q_, size_t words) noexcept
        : q(q_), chunks(words / 8), tail(static_cast<__mmask8>((1u << (words % 8)) - 1u)) {}
    __m512i operator()(const uint8_t* c) const noexcept {
        __m512i a = _mm512_setzero_si512();
        size_t j = 0;
        for (; j < chunks; ++j)
            a = _mm512_add_epi64(a, _mm512_popcnt_epi64(_mm512_xor_si512(
                                        _mm512_loadu_si512(q + 64 * j), _mm512_loadu_si512(c + 64 * j))));
        if (tail) {
            __m512i x = _mm512_xor_si512(_mm512_maskz_loadu_epi64(tail, q + 64 * j),
                                         _mm512_maskz_loadu_epi64(tail, c + 64 * j));
            a = _mm512_add_epi64(a, _mm512_popcnt_epi64(x));
        }
        return a;
    }
};

// Distances of codes [0, count) of a group of at most 8, as 8 uint32 (missing codes give 0).
template <class Acc>
inline __m256i group8(const Acc& acc, const uint8_t* codes, size_t stride, size_t count) noexcept {
    __m512i v[8];
    for (size_t j = 0; j < 8; ++j) v[j] = j < count ? acc(codes + j * stride) : _mm512_setzero_si512();
    return _mm512_cvtepi64_epi32(reduce8(v));
}

template <class Acc>
void many(const Acc& acc, const uint8_t* codes, size_t n, size_t stride, uint32_t* out) noexcept {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), group8(acc, codes + i * stride, stride, 8));
    if (i < n) {
        __mmask8 m = static_cast<__mmask8>((1u << (n - i)) - 1u);
        _mm256_mask_storeu_epi32(out + i, m, group8(acc, codes + i * stride, stride, n - i));
    }
}

template <class Acc>
size_t filter(const Acc& acc, const uint8_t* codes, size_t n, size_t stride, uint32_t thr, uint32_t* idx,
              uint32_t* dist) noexcept {
    const __m256i vthr = _mm256_set1_epi32(static_cast<int>(thr));
    const __m256i step = _mm256_set1_epi32(8);
    __m256i vidx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    size_t m = 0;
    for (size_t i = 0; i < n; i += 8) {
        size_t count = n - i < 8 ? n - i : 8;
        __m256i d = group8(acc, codes + i * stride, stride, count);
        __mmask8 keep = _mm256_cmplt_epu32_mask(d, vthr) & static_cast<__mmask8>((1u << count) - 1u);
        if (keep) {  // rare once the top-k threshold has settled
            _mm256_mask_compressstoreu_epi32(idx + m, keep, vidx);
            _mm256_mask_compressstoreu_epi32(dist + m, keep, d);
            m += static_cast<size_t>(__builtin_popcount(keep));
        }
        vidx = _mm256_add_epi32(vidx, step);
    }
    return m;
}

void hamming_many(const uint8_t* q, const uint8_t* codes, size_t n, size_t words, uint32_t* out) noexcept {
    const size_t stride = words * 8;
    if (words == 16) return many(FixedAcc<2>(q), codes, n, stride, out);
    if (words == 32) return many(FixedAcc<4>(q), codes, n, stride, out);
    if (words == 8) return many(FixedAcc<1>(q), codes, n, stride, out);
    many(GenericAcc(q, words), codes, n, stride, out);
}

size_t hamming_filter(const uint8_t* q, const uint8_t* codes, size_t n, size_t words, uint32_t thr,
                      uint32_t* idx, uint32_t* dist) noexcept {
    const size_t stride = words * 8;
    if (words == 16) return filter(FixedAcc<2>(q), codes, n, stride, thr, idx, dist);
    if (words == 32) return filter(FixedAcc<4>(q), codes, n, stride, thr, idx, dist);
    if (words == 8) return filter(FixedAcc<1>(q), codes, n, stride, thr, idx, dist);
    return filter(GenericAcc(q, words), codes, n, stride, thr, idx, dist);
}

}  // namespace

const KernelTable table{"avx512", hamming_many, hamming_filter};

}  // namespace bne::kernels::avx512
