// The kernel algorithms, each written once, over a small "ops" struct per ISA (load, XOR +
// popcount-accumulate, reduce, compare). A kernels_<isa>.cpp file, built with that ISA's flags,
// defines its ops and instantiates the templates it uses into its KernelTable(s).
//
// Everything here sits in an unnamed namespace on purpose: each ISA file gets its own copies
// with internal linkage, so the linker can never pick an AVX-512 instance of a template for
// baseline code (the ODR trap). Include this file only from kernels_<isa>.cpp files.
//
// Algorithms:
//   block_hamming<Ops>      the full distance matrix (hamming_block): Q queries x 4 codes per
//                           group, one counter vector per pair, reduced per code at the end.
//   scan_below_transposed<Ops>  the fused scan in registers: a group of Ops::kLanes codes is
//                           transposed so that one vector holds the same word of every code;
//                           each query word is broadcast against it, the accumulator lanes are
//                           the group's distances, compared with the bounds in registers.
//   scan_below_rows<Ops>    the fused scan for ISAs whose popcount counts bytes (AVX2): one
//                           code at a time against 4 queries, the 4 distances in one vector
//                           compared with the 4 bounds at once.
// The serial kernel (kernels_serial.cpp) stays a plain loop: it is the oracle.
#pragma once
#include <cstddef>
#include <cstdint>

#include "bne/kernels.hpp"

namespace bne::kernels {
namespace {

// Software prefetch of the codes kPrefetchBytes ahead of the bytes [pos, pos + len) being read,
// never past `end`. The fused scans read each group's rows in an order the hardware prefetcher
// follows late (a group's rows chunk by chunk, or row after row at the 4-query AVX2 pace): on
// an Intel family 6 model 167 (200k codes, 16 queries, top-10) this took the 512-bit scan from
// 1.2-1.7x the yardstick (shared/tools/hamlimit.cpp) to 0.8-0.9x at 1024 and 2048 bits, and
// AVX2 from 1.04-1.10x to 0.99-1.05x. Prefetches never fault, but stay inside the block anyway.
constexpr size_t kPrefetchBytes = 1024;  // 2048 and 3072 measured no better

inline void prefetch_ahead(const uint8_t* codes, size_t pos, size_t len, size_t end) noexcept {
    const size_t from = pos + kPrefetchBytes, to = from + len < end ? from + len : end;
    for (size_t o = from; o < to; o += 64) __builtin_prefetch(codes + o);
}

// ---- hamming_block: Q queries x 4 codes, reduced per code ----------------------------------
//
// Ops: V (4 words), R (4 uint32), kQ (queries per pass), kFlush (0: counters are 64-bit
// lanes; else: narrow counters widened into 64-bit totals every kFlush chunks so they never
// overflow), zero(), load(p), load_first(p, nw) (the first nw words, the rest zero, nothing
// past them read), add_popcount_xor(acc, a, b), widen(counters), add64(a, b),
// reduce4(const V* acc) (lane j: the sum of acc[j]), store4(uint32_t*, R).

// Q queries against `count` (<= 4) codes. C > 0: codes of exactly C 32-byte chunks (unrolled);
// C == 0: any width, full chunks then a masked tail.
template <class Ops, size_t Q, size_t C>
inline void block_group(const uint8_t* q, size_t words, const uint8_t* c, size_t count, typename Ops::R* res) noexcept {
    using V = typename Ops::V;
    const size_t stride = words * 8;
    const size_t chunks = C ? C : words / 4;
    V acc[Q][4];
    [[maybe_unused]] V total[Q][4];  // only with kFlush
    for (size_t a = 0; a < Q; ++a)
        for (size_t j = 0; j < 4; ++j) {
            acc[a][j] = Ops::zero();
            if constexpr (Ops::kFlush != 0) total[a][j] = Ops::zero();
        }
    [[maybe_unused]] auto flush = [&] {
        for (size_t a = 0; a < Q; ++a)
            for (size_t j = 0; j < 4; ++j) {
                total[a][j] = Ops::add64(total[a][j], Ops::widen(acc[a][j]));
                acc[a][j] = Ops::zero();
            }
    };
    if constexpr (Q == 1 && Ops::kFlush == 0) {
        // One query, counters that cannot overflow: walk each code front to back, the order
        // the prefetcher expects.
        for (size_t j = 0; j < 4; ++j) {
            if (j >= count) break;
            for (size_t w = 0; w < chunks; ++w)
                acc[0][j] = Ops::add_popcount_xor(acc[0][j], Ops::load(q + 32 * w), Ops::load(c + j * stride + 32 * w));
        }
    } else {
        for (size_t w = 0; w < chunks; ++w) {
            V qa[Q];
            for (size_t a = 0; a < Q; ++a) qa[a] = Ops::load(q + a * stride + 32 * w);
            for (size_t j = 0; j < 4; ++j) {
                if (j >= count) break;
                const V cw = Ops::load(c + j * stride + 32 * w);
                for (size_t a = 0; a < Q; ++a) acc[a][j] = Ops::add_popcount_xor(acc[a][j], qa[a], cw);
            }
            if constexpr (Ops::kFlush != 0)
                if (w % Ops::kFlush == Ops::kFlush - 1) flush();
        }
    }
    if (C == 0 && words % 4) {
        const size_t off = 32 * chunks, nw = words % 4;
        for (size_t j = 0; j < count; ++j) {
            const V cw = Ops::load_first(c + j * stride + off, nw);
            for (size_t a = 0; a < Q; ++a)
                acc[a][j] = Ops::add_popcount_xor(acc[a][j], Ops::load_first(q + a * stride + off, nw), cw);
        }
    }
    if constexpr (Ops::kFlush != 0) {
        flush();
        for (size_t a = 0; a < Q; ++a) res[a] = Ops::reduce4(total[a]);
    } else {
        for (size_t a = 0; a < Q; ++a) res[a] = Ops::reduce4(acc[a]);
    }
}

template <class Ops, size_t Q, size_t C>
void block_rows(const uint8_t* q, const uint8_t* codes, size_t n, size_t words, uint32_t* out) noexcept {
    const size_t stride = words * 8;
    typename Ops::R res[Q];
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        block_group<Ops, Q, C>(q, words, codes + i * stride, 4, res);
        for (size_t a = 0; a < Q; ++a) Ops::store4(out + a * n + i, res[a]);
    }
    if (i < n) {
        block_group<Ops, Q, C>(q, words, codes + i * stride, n - i, res);
        for (size_t a = 0; a < Q; ++a) {
            alignas(16) uint32_t tmp[4];
            Ops::store4(tmp, res[a]);
            for (size_t j = 0; i + j < n; ++j) out[a * n + i + j] = tmp[j];
        }
    }
}

// The last nq < kQ queries: one pass of exactly that many.
template <class Ops, size_t Q, size_t C>
void block_rest(const uint8_t* q, size_t nq, const uint8_t* codes, size_t n, size_t words, uint32_t* out) noexcept {
    if constexpr (Q > 0) {
        if (nq == Q) return block_rows<Ops, Q, C>(q, codes, n, words, out);
        block_rest<Ops, Q - 1, C>(q, nq, codes, n, words, out);
    }
}

template <class Ops, size_t C>
void block_fixed(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                 uint32_t* out) noexcept {
    const size_t stride = words * 8;
    size_t a = 0;
    for (; a + Ops::kQ <= nq; a += Ops::kQ)
        block_rows<Ops, Ops::kQ, C>(queries + a * stride, codes, n, words, out + a * n);
    block_rest<Ops, Ops::kQ - 1, C>(queries + a * stride, nq - a, codes, n, words, out + a * n);
}

template <class Ops>
void block_hamming(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                   uint32_t* out) noexcept {
    switch (words) {
        case 16: return block_fixed<Ops, 4>(queries, nq, codes, n, words, out);  // 1024 bits
        case 32: return block_fixed<Ops, 8>(queries, nq, codes, n, words, out);  // 2048 bits
        case 8: return block_fixed<Ops, 2>(queries, nq, codes, n, words, out);   // 512 bits
        default: return block_fixed<Ops, 0>(queries, nq, codes, n, words, out);
    }
}

// ---- fused scan, transposed groups in registers --------------------------------------------
//
// Ops: V (kLanes words), kLanes, zero(), load(p), load_first(p, nw), transpose(V* v) (in
// place: v[j] lane r = word j of row r), add_popcount_xor(acc, v, qword) (acc + popcount(v XOR
// the broadcast uint64 at qword)), below(count, acc, bound) (bit r: lane r < count and
// acc lane r < bound), store(uint64_t*, V) (aligned to 64).

constexpr size_t kTransposedQueries = 16;  // queries per pass: each transposed chunk serves all

// Q queries against `count` (<= kLanes) codes: acc[a] lane r = distance of query a and code r.
// C > 0: exactly C chunks of kLanes words; C == 0: any width (the last chunk masked, and only
// its real words are broadcast, so no query or code byte past a row is read).
template <class Ops, size_t Q, size_t C>
inline void transposed_group(const uint8_t* q, size_t words, const uint8_t* c, size_t count,
                             typename Ops::V* acc) noexcept {
    using V = typename Ops::V;
    constexpr size_t L = Ops::kLanes, chunk = 8 * L;
    const size_t stride = C ? C * chunk : words * 8;  // a constant for the unrolled widths: immediate offsets
    const size_t chunks = C ? C : (words + L - 1) / L;
#pragma GCC unroll 16
    for (size_t a = 0; a < Q; ++a) acc[a] = Ops::zero();
#pragma GCC unroll 2
    for (size_t w = 0; w < chunks; ++w) {
        const size_t nw = C ? L : (words - L * w < L ? words - L * w : L);
        V v[L];
#pragma GCC unroll 8
        for (size_t r = 0; r < L; ++r)
            v[r] = r < count ? (C ? Ops::load(c + r * stride + chunk * w)
                                  : Ops::load_first(c + r * stride + chunk * w, nw))
                             : Ops::zero();
        Ops::transpose(v);
        const uint8_t* qw = q + chunk * w;
        // Fully unrolled, so the accumulators stay in registers; each query word is a broadcast
        // load folded into the XOR.
#pragma GCC unroll 16
        for (size_t a = 0; a < Q; ++a)
#pragma GCC unroll 8
            for (size_t j = 0; j < L; ++j) {
                if (!C && j >= nw) break;
                acc[a] = Ops::add_popcount_xor(acc[a], v[j], qw + a * stride + 8 * j);
            }
    }
}

template <class Ops, size_t Q, size_t C>
size_t transposed_scan_q(const uint8_t* queries, const uint8_t* codes, size_t n, size_t words, const uint32_t* thr,
                         ScanHit* hits) noexcept {
    constexpr size_t L = Ops::kLanes;
    const size_t stride = C ? C * 8 * L : words * 8;
    // Bounds as 64-bit words, broadcast from memory at each compare (registers are all taken
    // by the accumulators and the transposed codes).
    alignas(64) uint64_t thr64[Q];
    for (size_t a = 0; a < Q; ++a) thr64[a] = thr[a];
    size_t m = 0;
    typename Ops::V acc[Q];
    for (size_t i = 0; i < n; i += L) {
        const size_t count = n - i < L ? n - i : L;
        prefetch_ahead(codes, i * stride, L * stride, n * stride);
        transposed_group<Ops, Q, C>(queries, words, codes + i * stride, count, acc);
#pragma GCC unroll 16
        for (size_t a = 0; a < Q; ++a) {
            const unsigned keep = Ops::below(count, acc[a], thr64[a]);
            if (keep) [[unlikely]] {
                alignas(64) uint64_t d[L];
                Ops::store(d, acc[a]);
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

template <class Ops, size_t C>
size_t transposed_scan(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                       const uint32_t* thr, ScanHit* hits) noexcept {
    // Batches of 16, 8, 4, 2, 1 queries; hits of later batches get their query index shifted.
    size_t m = 0, a = 0;
    auto run = [&](auto fn, size_t nqs) {
        const size_t got = fn(queries + a * words * 8, codes, n, words, thr + a, hits + m);
        for (size_t j = m; j < m + got; ++j) hits[j].query += static_cast<uint32_t>(a);
        m += got;
        a += nqs;
    };
    while (nq - a >= 16) run(transposed_scan_q<Ops, 16, C>, 16);
    if (nq - a >= 8) run(transposed_scan_q<Ops, 8, C>, 8);
    if (nq - a >= 4) run(transposed_scan_q<Ops, 4, C>, 4);
    if (nq - a >= 2) run(transposed_scan_q<Ops, 2, C>, 2);
    if (nq - a >= 1) run(transposed_scan_q<Ops, 1, C>, 1);
    return m;
}

template <class Ops>
size_t scan_below_transposed(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                             const uint32_t* thr, ScanHit* hits) noexcept {
    constexpr size_t L = Ops::kLanes;
    switch (words) {
        case 16: return transposed_scan<Ops, 16 / L>(queries, nq, codes, n, words, thr, hits);  // 1024 bits
        case 32: return transposed_scan<Ops, 32 / L>(queries, nq, codes, n, words, thr, hits);  // 2048 bits
        case 8: return transposed_scan<Ops, 8 / L>(queries, nq, codes, n, words, thr, hits);    // 512 bits
        default: return transposed_scan<Ops, 0>(queries, nq, codes, n, words, thr, hits);
    }
}

// ---- fused scan, one code at a time against up to 4 queries ---------------------------------
//
// For a popcount that only counts bytes (AVX2's nibble lookup): each code chunk is loaded once
// and XORed with the same chunk of 4 queries (loads from L1); the 4 sums reduce to one vector
// whose lane a is the distance of query a, compared with the 4 bounds at once. Ops: the
// block_hamming ops plus sum4(const V* v) (lane a: the 64-bit sum of v[a]), bounds4(thr, q)
// (lanes a < q: thr[a]; the rest 0, so they never report) and below4(sums, bounds) (bit a:
// lane a of sums < lane a of bounds).

template <class Ops, size_t Q, size_t C>
size_t rows_scan_q(const uint8_t* q, size_t a0, const uint8_t* codes, size_t n, size_t words, const uint32_t* thr,
                   ScanHit* hits) noexcept {
    const bool first_pass = a0 == 0;  // later passes find the block in L1: no prefetch
    using V = typename Ops::V;
    const size_t stride = C ? C * 32 : words * 8;
    const size_t chunks = C ? C : words / 4;
    const V bound = Ops::bounds4(thr, Q);
    size_t m = 0;
    for (size_t i = 0; i < n; ++i) {
        const uint8_t* c = codes + i * stride;
        if (first_pass) prefetch_ahead(codes, i * stride, stride, n * stride);
        V cnt[4], tot[4];
#pragma GCC unroll 4
        for (size_t a = 0; a < 4; ++a) cnt[a] = tot[a] = Ops::zero();
#pragma GCC unroll 8
        for (size_t w = 0; w < chunks; ++w) {
            const V cw = Ops::load(c + 32 * w);
#pragma GCC unroll 4
            for (size_t a = 0; a < Q; ++a)
                cnt[a] = Ops::add_popcount_xor(cnt[a], cw, Ops::load(q + a * stride + 32 * w));
            if constexpr (Ops::kFlush != 0)
                if (w % Ops::kFlush == Ops::kFlush - 1)
                    for (size_t a = 0; a < Q; ++a) {
                        tot[a] = Ops::add64(tot[a], Ops::widen(cnt[a]));
                        cnt[a] = Ops::zero();
                    }
        }
        if (C == 0 && words % 4) {
            const size_t off = 32 * chunks, nw = words % 4;
            const V cw = Ops::load_first(c + off, nw);
            for (size_t a = 0; a < Q; ++a)
                cnt[a] = Ops::add_popcount_xor(cnt[a], cw, Ops::load_first(q + a * stride + off, nw));
        }
        for (size_t a = 0; a < Q; ++a) tot[a] = Ops::add64(tot[a], Ops::widen(cnt[a]));
        const V d = Ops::sum4(tot);
        if (const unsigned keep = Ops::below4(d, bound)) [[unlikely]] {
            alignas(32) uint64_t dd[4];
            Ops::store(dd, d);
            for (unsigned k = keep; k; k &= k - 1) {
                const unsigned a = static_cast<unsigned>(__builtin_ctz(k));
                hits[m++] = {static_cast<uint32_t>(a0 + a), static_cast<uint32_t>(i), static_cast<uint32_t>(dd[a])};
            }
        }
    }
    return m;
}

// Passes of 4 queries over the block (which the caller keeps small enough for L1).
template <class Ops, size_t C>
size_t rows_scan(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words, const uint32_t* thr,
                 ScanHit* hits) noexcept {
    const size_t stride = words * 8;
    size_t m = 0, a = 0;
    for (; a + 4 <= nq; a += 4)
        m += rows_scan_q<Ops, 4, C>(queries + a * stride, a, codes, n, words, thr + a, hits + m);
    switch (nq - a) {
        case 3: m += rows_scan_q<Ops, 3, C>(queries + a * stride, a, codes, n, words, thr + a, hits + m); break;
        case 2: m += rows_scan_q<Ops, 2, C>(queries + a * stride, a, codes, n, words, thr + a, hits + m); break;
        case 1: m += rows_scan_q<Ops, 1, C>(queries + a * stride, a, codes, n, words, thr + a, hits + m); break;
        default: break;
    }
    return m;
}

template <class Ops>
size_t scan_below_rows(const uint8_t* queries, size_t nq, const uint8_t* codes, size_t n, size_t words,
                       const uint32_t* thr, ScanHit* hits) noexcept {
    switch (words) {
        case 16: return rows_scan<Ops, 4>(queries, nq, codes, n, words, thr, hits);  // 1024 bits
        case 32: return rows_scan<Ops, 8>(queries, nq, codes, n, words, thr, hits);  // 2048 bits
        case 8: return rows_scan<Ops, 2>(queries, nq, codes, n, words, thr, hits);   // 512 bits
        default: return rows_scan<Ops, 0>(queries, nq, codes, n, words, thr, hits);
    }
}

}  // namespace
}  // namespace bne::kernels
