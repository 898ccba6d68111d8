// AVX2 kernels: nibble-lookup popcount (vpshufb) with byte counts summed by vpsadbw. Built with
// -mavx2 -mpopcnt only; called only when cpuid + xgetbv report AVX2. The algorithms are the
// templates of kernel_templates.hpp: hamming_block 2 queries x 4 codes at a time, the fused
// scan one code at a time against 4 queries (the structure of the AVX2 yardstick; on an Intel
// family 6 model 167 as fast as the former scan through an L1 distance buffer, or faster: up
// to 24% at 512 bits and 16 queries).
#include <immintrin.h>

#include "kernel_templates.hpp"

namespace bne::kernels::avx2 {
namespace {

struct Ops {
    using V = __m256i;
    using R = __m128i;
    // Two queries per pass: AVX2 has 16 ymm registers, and 2 x 4 byte counters plus the lookup
    // constants fit.
    static constexpr size_t kQ = 2;
    // Byte counters gain <= 8 per chunk: widened through vpsadbw every 8 chunks, they never overflow.
    static constexpr size_t kFlush = 8;
    // Queries per scan_below call: 4 passes of 4 over each block the caller keeps in L1.
    static constexpr size_t kScanQueries = 16;
    static V zero() noexcept { return _mm256_setzero_si256(); }
    static V load(const uint8_t* p) noexcept { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
    static V load_first(const uint8_t* p, size_t nw) noexcept {  // vpmaskmovq never reads the masked words
        const V m = _mm256_setr_epi64x(-1, nw > 1 ? -1 : 0, nw > 2 ? -1 : 0, 0);
        return _mm256_maskload_epi64(reinterpret_cast<const long long*>(p), m);
    }
    // Per-byte popcount of a XOR b, added to the byte counters.
    static V add_popcount_xor(V acc, V a, V b) noexcept {
        const V x = _mm256_xor_si256(a, b);
        const V lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
        const V low = _mm256_set1_epi8(0x0f);
        const V lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low));
        const V hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
        return _mm256_add_epi8(acc, _mm256_add_epi8(lo, hi));
    }
    static V widen(V bytes) noexcept { return _mm256_sad_epu8(bytes, _mm256_setzero_si256()); }
    static V add64(V a, V b) noexcept { return _mm256_add_epi64(a, b); }
    // Lane j: the sum of the 4 qwords of v[j], as uint64.
    static V sum4(const V* v) noexcept {
        const V t01 = _mm256_add_epi64(_mm256_unpacklo_epi64(v[0], v[1]), _mm256_unpackhi_epi64(v[0], v[1]));
        const V t23 = _mm256_add_epi64(_mm256_unpacklo_epi64(v[2], v[3]), _mm256_unpackhi_epi64(v[2], v[3]));
        return _mm256_add_epi64(_mm256_permute2x128_si256(t01, t23, 0x20), _mm256_permute2x128_si256(t01, t23, 0x31));
    }
    // The same as uint32.
    static R reduce4(const V* v) noexcept {
        return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(sum4(v), _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)));
    }
    static void store4(uint32_t* p, R r) noexcept { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), r); }
    static V bounds4(const uint32_t* thr, size_t q) noexcept {
        return _mm256_setr_epi64x(thr[0], q > 1 ? thr[1] : 0, q > 2 ? thr[2] : 0, q > 3 ? thr[3] : 0);
    }
    // Signed 64-bit compare: distances and bounds are below 2^32, so it is exact.
    static unsigned below4(V d, V bound) noexcept {
        return static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(bound, d))));
    }
    static void store(uint64_t* d, V v) noexcept { _mm256_store_si256(reinterpret_cast<__m256i*>(d), v); }
};

}  // namespace

const KernelTable table{"avx2", "avx2", Ops::kScanQueries, block_hamming<Ops>, scan_below_rows<Ops>};

}  // namespace bne::kernels::avx2
