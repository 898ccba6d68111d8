// SVE kernels for aarch64 CPUs that have them (Graviton 3/4, Neoverse V1/V2, A64FX): svcnt_u8
// byte popcounts summed into 32-bit lanes by svdot (a dot product with ones), written for any
// vector length (128..2048 bits): full vectors with an all-true predicate, then one predicated
// tail whose zeroing loads never touch bytes past the row. Several queries per pass reuse each
// loaded code vector. Built with -march=armv8.2-a+sve only; called only when getauxval(AT_HWCAP)
// reports SVE. Internal linkage throughout, and no std:: templates, so no SVE instance of an
// inline function can be picked by the linker for baseline code (the ODR trap).
// Not built on kernel_templates.hpp: SVE vectors are sizeless, so they cannot be array
// elements or struct members, which those templates are made of.
#include <arm_sve.h>

#include "bne/kernels.hpp"

namespace bne::kernels::sve {
namespace {

constexpr size_t kQ = 4;  // queries per pass
constexpr size_t kJ = 2;  // codes per pass: 8 accumulators + 2 code vectors + 1 query vector

// d[a][j] = popcount(query a XOR code j) for a < Q, j < count (<= kJ). 32-bit lanes receive at
// most 4 * 8 per vector step, so they cannot overflow for any width a code can have. SVE
// vectors are sizeless (no arrays of them), hence the named accumulators and the macro.
template <size_t Q>
inline void group(const uint8_t* q, const uint8_t* c, size_t count, size_t stride, uint32_t (*d)[kJ]) noexcept {
    const uint8_t* c0 = c;
    const uint8_t* c1 = c + (count > 1 ? stride : 0);  // a spare lane re-reads code 0
    const uint8_t* q0 = q;
    const uint8_t* q1 = q + (Q > 1 ? stride : 0);
    const uint8_t* q2 = q + (Q > 2 ? 2 * stride : 0);
    const uint8_t* q3 = q + (Q > 3 ? 3 * stride : 0);
    svuint32_t a00 = svdup_n_u32(0), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
#define BNE_SVE_STEP(PG, COUNT)                                               \
    {                                                                         \
        const svuint8_t v0 = svld1_u8(PG, c0 + off), v1 = svld1_u8(PG, c1 + off); \
        svuint8_t x = svld1_u8(PG, q0 + off);                                 \
        a00 = svdot_n_u32(a00, COUNT(PG, sveor_u8_x(PG, x, v0)), 1);          \
        a01 = svdot_n_u32(a01, COUNT(PG, sveor_u8_x(PG, x, v1)), 1);          \
        if constexpr (Q > 1) {                                                \
            x = svld1_u8(PG, q1 + off);                                       \
            a10 = svdot_n_u32(a10, COUNT(PG, sveor_u8_x(PG, x, v0)), 1);      \
            a11 = svdot_n_u32(a11, COUNT(PG, sveor_u8_x(PG, x, v1)), 1);      \
        }                                                                     \
        if constexpr (Q > 2) {                                                \
            x = svld1_u8(PG, q2 + off);                                       \
            a20 = svdot_n_u32(a20, COUNT(PG, sveor_u8_x(PG, x, v0)), 1);      \
            a21 = svdot_n_u32(a21, COUNT(PG, sveor_u8_x(PG, x, v1)), 1);      \
        }                                                                     \
        if constexpr (Q > 3) {                                                \
            x = svld1_u8(PG, q3 + off);                                       \
            a30 = svdot_n_u32(a30, COUNT(PG, sveor_u8_x(PG, x, v0)), 1);      \
            a31 = svdot_n_u32(a31, COUNT(PG, sveor_u8_x(PG, x, v1)), 1);      \
        }                                                                     \
    }
    const size_t vl = svcntb();
    const svbool_t all = svptrue_b8();
    size_t off = 0;
    for (; off + vl <= stride; off += vl) BNE_SVE_STEP(all, svcnt_u8_x)
    if (off < stride) {
        // The tail: inactive lanes load as zero and their counts are zeroed (_z), so the
        // unpredicated dot product adds nothing for them; no byte past the row is read.
        const svbool_t pg = svwhilelt_b8_u64(off, stride);
        BNE_SVE_STEP(pg, svcnt_u8_z)
    }
#undef BNE_SVE_STEP
    const svbool_t all32 = svptrue_b32();
    d[0][0] = static_cast<uint32_t>(svaddv_u32(all32, a00));
    d[0][1] = static_cast<uint32_t>(svaddv_u32(all32, a01));
    if constexpr (Q > 1) {
        d[1][0] = static_cast<uint32_t>(svaddv_u32(all32, a10));
        d[1][1] = static_cast<uint32_t>(svaddv_u32(all32, a11));
    }
    if constexpr (Q > 2) {
        d[2][0] = static_cast<uint32_t>(svaddv_u32(all32, a20));
        d[2][1] = static_cast<uint32_t>(svaddv_u32(all32, a21));
    }
    if constexpr (Q > 3) {
        d[3][0] = static_cast<uint32_t>(svaddv_u32(all32, a30));
        d[3][1] = static_cast<uint32_t>(svaddv_u32(all32, a31));
    }
}

template <size_t Q>
void rows(const uint8_t* q, const uint8_t* codes, size_t n, size_t words, uint32_t* out) noexcept {
    const size_t stride = words * 8;
    uint32_t d[Q][kJ];
    for (size_t i = 0; i < n; i += kJ) {
        const size_t cnt = n - i < kJ ? n - i : kJ;
        group<Q>(q, codes + i * stride, cnt, stride, d);
        for (size_t a = 0; a < Q; ++a)
            for (size_t j = 0; j < cnt; ++j) out[a * n + i + j] = d[a][j];
    }
}

void hamming_block(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                   uint32_t* out) noexcept {
    const size_t stride = words * 8;
    size_t a = 0;
    for (; a + kQ <= nq; a += kQ) rows<kQ>(queries + a * stride, codes, n, words, out + a * n);
    if (nq - a >= 2) rows<2>(queries + a * stride, codes, n, words, out + a * n), a += 2;
    if (a < nq) rows<1>(queries + a * stride, codes, n, words, out + a * n);
}

// Fused scan: distances stay in registers / on the stack; only pairs below the bound are written.
template <size_t Q>
size_t scan_rows(const uint8_t* q, size_t a0, const uint8_t* codes, size_t n, size_t words, const uint32_t* thr,
                 ScanHit* hits) noexcept {
    const size_t stride = words * 8;
    uint32_t d[Q][kJ];
    size_t m = 0;
    for (size_t i = 0; i < n; i += kJ) {
        const size_t cnt = n - i < kJ ? n - i : kJ;
        group<Q>(q, codes + i * stride, cnt, stride, d);
        for (size_t a = 0; a < Q; ++a)
            for (size_t j = 0; j < cnt; ++j)
                if (d[a][j] < thr[a]) hits[m++] = {static_cast<uint32_t>(a0 + a), static_cast<uint32_t>(i + j), d[a][j]};
    }
    return m;
}

constexpr size_t kScanQueries = 8;  // two passes of 4 queries per scan_below call

size_t scan_below(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                  const uint32_t* thr, ScanHit* hits) noexcept {
    const size_t stride = words * 8;
    size_t m = 0, a = 0;
    for (; a + kQ <= nq; a += kQ) m += scan_rows<kQ>(queries + a * stride, a, codes, n, words, thr + a, hits + m);
    if (nq - a >= 2) m += scan_rows<2>(queries + a * stride, a, codes, n, words, thr + a, hits + m), a += 2;
    if (a < nq) m += scan_rows<1>(queries + a * stride, a, codes, n, words, thr + a, hits + m);
    return m;
}

}  // namespace

const KernelTable table{"sve", "sve", kScanQueries, hamming_block, scan_below};

size_t vector_bits() noexcept { return svcntb() * 8; }

}  // namespace bne::kernels::sve
