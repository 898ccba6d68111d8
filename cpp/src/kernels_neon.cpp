// NEON (Advanced SIMD) kernels for aarch64: vcntq_u8 byte popcounts summed by widening
// pairwise adds (vpadalq_u8 into 16-bit lanes), several queries per pass so each loaded code
// chunk serves every query, and the threshold filter of the fused scan done in registers.
// NEON is part of the aarch64 baseline; this file is still built with its own flags
// (-march=armv8-a+simd, see CMakeLists.txt) and keeps internal linkage like the x86 files.
// Its loops are not the templates of kernel_templates.hpp: 16-bit counters over pairs of
// 16-byte vectors and an 8-byte tail fit them badly, and with only qemu to run it a rewrite
// could not be shown to be no slower on a real Arm core.
#include <arm_neon.h>

#include "bne/kernels.hpp"

namespace bne::kernels::neon {
namespace {

constexpr size_t kQ = 4;  // queries per pass
// Codes per pass: 16 accumulators + 8 query + 2 code vectors fill the 32 registers (GCC 12 spills
// a few accumulators; a step is ~96 SIMD ops, so those loads should not bound it - untimed).
constexpr size_t kJ = 4;
// 32-byte steps per 16-bit flush: a step adds at most 2 * 16 = 32 to a 16-bit lane, so
// 2047 steps (65504 bytes, 524032 bits of code) never overflow it.
constexpr size_t kStepsPerFlush = 2047;

// Lane j of the result: the sum of every lane of acc[j] (j < 4), widened to 32 bits first.
inline uint32x4_t reduce4(const uint16x8_t* acc) noexcept {
    const uint32x4_t s01 = vpaddq_u32(vpaddlq_u16(acc[0]), vpaddlq_u16(acc[1]));
    const uint32x4_t s23 = vpaddq_u32(vpaddlq_u16(acc[2]), vpaddlq_u16(acc[3]));
    return vpaddq_u32(s01, s23);
}

// Distances of Q queries (rows of `stride` bytes at q) against `count` <= 4 codes at c:
// res[a] lane j = popcount(query a XOR code j); lanes j >= count repeat code 0 and are ignored by
// the callers. Reads only whole rows of the given codes, never past code count-1.
template <size_t Q>
inline void group(const uint8_t* q, const uint8_t* c, size_t count, size_t words, uint32x4_t* res) noexcept {
    const size_t stride = words * 8, steps = stride / 32;
    const uint8_t* cj[kJ];
    for (size_t j = 0; j < kJ; ++j) cj[j] = c + (j < count ? j : 0) * stride;  // unused lanes re-read code 0
    for (size_t a = 0; a < Q; ++a) res[a] = vdupq_n_u32(0);
    for (size_t s0 = 0; s0 < steps; s0 += kStepsPerFlush) {
        const size_t s1 = steps - s0 < kStepsPerFlush ? steps : s0 + kStepsPerFlush;
        uint16x8_t acc[Q][kJ];
        for (size_t a = 0; a < Q; ++a)
            for (size_t j = 0; j < kJ; ++j) acc[a][j] = vdupq_n_u16(0);
        for (size_t s = s0; s < s1; ++s) {
            const size_t off = 32 * s;
            uint8x16_t q0[Q], q1[Q];
            for (size_t a = 0; a < Q; ++a) {
                q0[a] = vld1q_u8(q + a * stride + off);
                q1[a] = vld1q_u8(q + a * stride + off + 16);
            }
            for (size_t j = 0; j < kJ; ++j) {
                const uint8x16_t c0 = vld1q_u8(cj[j] + off), c1 = vld1q_u8(cj[j] + off + 16);
                for (size_t a = 0; a < Q; ++a) {
                    // Two byte counts (<= 8 each) added as bytes, then one widening add.
                    const uint8x16_t b = vaddq_u8(vcntq_u8(veorq_u8(q0[a], c0)), vcntq_u8(veorq_u8(q1[a], c1)));
                    acc[a][j] = vpadalq_u8(acc[a][j], b);
                }
            }
        }
        for (size_t a = 0; a < Q; ++a) res[a] = vaddq_u32(res[a], reduce4(acc[a]));
    }
    // Tail of 8, 16 or 24 bytes.
    const size_t done = 32 * steps;
    if (done < stride) {
        uint32_t t[Q][kJ] = {};
        for (size_t j = 0; j < kJ; ++j)
            for (size_t a = 0; a < Q; ++a)
                for (size_t off = done; off < stride; off += 8)
                    t[a][j] += vaddv_u8(vcnt_u8(veor_u8(vld1_u8(q + a * stride + off), vld1_u8(cj[j] + off))));
        for (size_t a = 0; a < Q; ++a) res[a] = vaddq_u32(res[a], vld1q_u32(t[a]));
    }
}

// Q queries against every code: the distance rows out[a * n + i].
template <size_t Q>
void rows(const uint8_t* q, const uint8_t* codes, size_t n, size_t words, uint32_t* out) noexcept {
    const size_t stride = words * 8;
    uint32x4_t res[Q];
    for (size_t i = 0; i < n; i += kJ) {
        const size_t cnt = n - i < kJ ? n - i : kJ;
        group<Q>(q, codes + i * stride, cnt, words, res);
        for (size_t a = 0; a < Q; ++a) {
            if (cnt == kJ) {
                vst1q_u32(out + a * n + i, res[a]);
            } else {
                uint32_t tmp[kJ];
                vst1q_u32(tmp, res[a]);
                for (size_t j = 0; j < cnt; ++j) out[a * n + i + j] = tmp[j];
            }
        }
    }
}

void hamming_block(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                   uint32_t* out) noexcept {
    const size_t stride = words * 8;
    size_t a = 0;
    for (; a + 4 <= nq; a += 4) rows<4>(queries + a * stride, codes, n, words, out + a * n);
    if (nq - a >= 2) rows<2>(queries + a * stride, codes, n, words, out + a * n), a += 2;
    if (a < nq) rows<1>(queries + a * stride, codes, n, words, out + a * n);
}

// The fused scan: Q queries against a group of 4 codes, then one vector compare per query with
// its bound; only pairs below it are written (rare once a top-k bound has settled).
template <size_t Q>
size_t scan_rows(const uint8_t* q, size_t a0, const uint8_t* codes, size_t n, size_t words, const uint32_t* thr,
                 ScanHit* hits) noexcept {
    const size_t stride = words * 8;
    uint32x4_t bound[Q], res[Q];
    for (size_t a = 0; a < Q; ++a) bound[a] = vdupq_n_u32(thr[a]);
    size_t m = 0;
    for (size_t i = 0; i < n; i += kJ) {
        const size_t cnt = n - i < kJ ? n - i : kJ;
        group<Q>(q, codes + i * stride, cnt, words, res);
        for (size_t a = 0; a < Q; ++a) {
            const uint32x4_t below = vcltq_u32(res[a], bound[a]);
            if (vmaxvq_u32(below) == 0) continue;
            uint32_t d[kJ], lt[kJ];
            vst1q_u32(d, res[a]);
            vst1q_u32(lt, below);
            for (size_t j = 0; j < cnt; ++j)
                if (lt[j]) hits[m++] = {static_cast<uint32_t>(a0 + a), static_cast<uint32_t>(i + j), d[j]};
        }
    }
    return m;
}

constexpr size_t kScanQueries = 8;  // two passes of 4 queries per scan_below call

size_t scan_below(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                  const uint32_t* thr, ScanHit* hits) noexcept {
    const size_t stride = words * 8;
    size_t m = 0, a = 0;
    for (; a + 4 <= nq; a += 4) m += scan_rows<4>(queries + a * stride, a, codes, n, words, thr + a, hits + m);
    if (nq - a >= 2) m += scan_rows<2>(queries + a * stride, a, codes, n, words, thr + a, hits + m), a += 2;
    if (a < nq) m += scan_rows<1>(queries + a * stride, a, codes, n, words, thr + a, hits + m);
    return m;
}

}  // namespace

const KernelTable table{"neon", "neon", kScanQueries, hamming_block, scan_below};

}  // namespace bne::kernels::neon
