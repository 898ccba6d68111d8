// Every kernel table this CPU can run against the scalar oracle, and the core's top-k and range
// search (with and without a position filter, over one or several segments) against a brute-force
// reference, for each table. Runs natively (x86: avx2 / avx512 variants) and under qemu-aarch64
// (neon / sve); tests/cpp/run_arm.sh and tests/test_cpp.py drive it.
//
//   bne_test_kernels [--full | --dispatch-only] [--expect-kernels serial,neon,sve] [--expect-active sve]
//
// --full: every (size, query count) pair instead of a rotating sample (native runs; too slow
// under emulation). --expect-*: also check what the dispatcher detected and chose (exit 3 with
// "error: ..." when BNE_KERNEL / BNE_ISA name something unavailable). --dispatch-only: only that.
// Codes and queries are placed so their last byte is the last readable byte before a
// PROT_NONE page, so a kernel that reads past row n-1 crashes the test instead of passing.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "bne/dispatch.hpp"
#include "bne/errors.hpp"
#include "bne/kernels.hpp"
#include "bne/search.hpp"

namespace {

int failures = 0;
long checks = 0;

#define CHECK(cond, ...)                                              \
    do {                                                              \
        ++checks;                                                     \
        if (!(cond)) {                                                \
            if (++failures <= 20) {                                   \
                std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
                std::fprintf(stderr, __VA_ARGS__);                    \
                std::fputc('\n', stderr);                             \
            }                                                         \
        }                                                             \
    } while (0)

struct Rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    size_t below(size_t n) { return n ? static_cast<size_t>(next() % n) : 0; }
};

// `bytes` bytes that end `slack` bytes before a PROT_NONE page (slack 0: any read past the end
// faults). A slack that is not a multiple of 8 also makes the start unaligned.
class Guarded {
public:
    Guarded(size_t bytes, size_t slack) {
        const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        map_ = ((bytes + slack + page - 1) / page + 1) * page;
        void* p = mmap(nullptr, map_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) std::perror("mmap"), std::exit(2);
        base_ = static_cast<uint8_t*>(p);
        if (mprotect(base_ + map_ - page, page, PROT_NONE) != 0) std::perror("mprotect"), std::exit(2);
        data_ = base_ + map_ - page - slack - bytes;
    }
    ~Guarded() { munmap(base_, map_); }
    Guarded(const Guarded&) = delete;
    Guarded& operator=(const Guarded&) = delete;
    uint8_t* data() { return data_; }

private:
    uint8_t* base_;
    uint8_t* data_;
    size_t map_;
};

uint32_t ref_distance(const uint8_t* a, const uint8_t* b, size_t words) {
    uint32_t d = 0;
    for (size_t w = 0; w < words; ++w) {
        uint64_t x, y;
        std::memcpy(&x, a + 8 * w, 8);
        std::memcpy(&y, b + 8 * w, 8);
        d += static_cast<uint32_t>(std::popcount(x ^ y));
    }
    return d;
}

enum Pattern { kRandom, kZero, kDuplicates, kConstant, kComplement, kNear, kPatterns };
const char* const pattern_names[] = {"random", "all-zero", "duplicates", "constant", "complement", "near-query"};

// Fills n codes and nq queries of `words` words with a tie pattern.
void fill(Pattern p, Rng& rng, uint8_t* codes, size_t n, uint8_t* queries, size_t nq, size_t words) {
    const size_t cb = words * 8;
    std::vector<uint8_t> pool(3 * cb);
    for (auto& b : pool) b = static_cast<uint8_t>(rng.next());
    for (size_t a = 0; a < nq; ++a)
        for (size_t j = 0; j < cb; ++j) queries[a * cb + j] = static_cast<uint8_t>(rng.next());
    for (size_t i = 0; i < n; ++i) {
        uint8_t* c = codes + i * cb;
        switch (p) {
            case kRandom:
                for (size_t j = 0; j < cb; ++j) c[j] = static_cast<uint8_t>(rng.next());
                break;
            case kZero:
                std::memset(c, 0, cb);
                break;
            case kDuplicates:  // three distinct codes repeated: many equal distances
                std::memcpy(c, pool.data() + rng.below(3) * cb, cb);
                break;
            case kConstant:
                std::memcpy(c, pool.data(), cb);
                break;
            case kComplement:  // all ones against all-zero queries: the largest distance
                std::memset(c, 0xff, cb);
                break;
            case kNear:  // query 0 with a few bits flipped: small distances, many ties
                std::memcpy(c, queries, cb);
                for (size_t f = rng.below(4); f > 0; --f) c[rng.below(cb)] ^= static_cast<uint8_t>(1u << rng.below(8));
                break;
            default:
                break;
        }
    }
    if (p == kZero || p == kComplement) std::memset(queries, 0, nq * cb);
    if (p == kDuplicates && nq > 1) std::memcpy(queries + cb, pool.data() + cb, cb);  // a query equal to codes
}

bool hit_less(const bne::ScanHit& x, const bne::ScanHit& y) {
    return x.query != y.query ? x.query < y.query : x.code != y.code ? x.code < y.code : x.dist < y.dist;
}

// hamming_block and scan_below of `kt` against the serial oracle on one data set.
void check_kernels(const bne::KernelTable& kt, Pattern p, size_t words, size_t n, size_t nq, Rng& rng, size_t slack) {
    const bne::KernelTable& oracle = bne::kernels::serial::table;
    const size_t cb = words * 8;
    Guarded codes(n * cb, slack), queries(nq * cb, slack);
    fill(p, rng, codes.data(), n, queries.data(), nq, words);
    const std::string what = std::string(kt.name) + " " + pattern_names[p] + " bits=" + std::to_string(64 * words) +
                             " n=" + std::to_string(n) + " nq=" + std::to_string(nq) + " slack=" + std::to_string(slack);

    // Every distance, and nothing written past out[nq * n - 1].
    std::vector<uint32_t> want(nq * n), got(nq * n + 4, 0xdeadbeefu);
    oracle.hamming_block(queries.data(), nq, codes.data(), n, words, want.data());
    kt.hamming_block(queries.data(), nq, codes.data(), n, words, got.data());
    size_t bad = 0;
    for (size_t i = 0; i < nq * n; ++i) bad += got[i] != want[i];
    for (size_t i = nq * n; i < got.size(); ++i) bad += got[i] != 0xdeadbeefu;
    CHECK(bad == 0, "%s: hamming_block differs from the oracle in %zu entries", what.c_str(), bad);
    if (p == kComplement && n > 0) CHECK(want[0] == 64 * words, "%s: oracle distance %u", what.c_str(), want[0]);

    // The fused scan over the queries in batches of at most max_queries, with bounds at ties
    // (exactly a distance that occurs: strictly-below must exclude it), 0, 1 and huge values.
    for (size_t a0 = 0; a0 < nq; a0 += kt.max_queries) {
        const size_t qb = std::min(kt.max_queries, nq - a0);
        for (int mode = 0; mode < 4; ++mode) {
            std::vector<uint32_t> thr(qb);
            for (size_t a = 0; a < qb; ++a) {
                const uint32_t some = n ? want[(a0 + a) * n + rng.below(n)] : 7;
                const uint32_t choices[] = {some, some + 1, 0, 1, static_cast<uint32_t>(64 * words),
                                            static_cast<uint32_t>(64 * words + 1), UINT32_MAX, 0x80000000u,
                                            static_cast<uint32_t>(rng.below(64 * words + 2))};
                thr[a] = mode == 0 ? some : mode == 1 ? UINT32_MAX : choices[rng.below(9)];
            }
            const uint8_t* q = queries.data() + a0 * cb;
            // The hit buffer holds exactly qb * n entries and ends before a PROT_NONE page.
            Guarded wbuf(qb * n * sizeof(bne::ScanHit), 0), gbuf(qb * n * sizeof(bne::ScanHit), 0);
            auto* wh = reinterpret_cast<bne::ScanHit*>(wbuf.data());
            auto* gh = reinterpret_cast<bne::ScanHit*>(gbuf.data());
            const size_t wm = oracle.scan_below(q, qb, codes.data(), n, words, thr.data(), wh);
            const size_t gm = kt.scan_below(q, qb, codes.data(), n, words, thr.data(), gh);
            CHECK(gm == wm, "%s: scan_below a0=%zu mode=%d returned %zu hits, oracle %zu", what.c_str(), a0, mode, gm, wm);
            if (gm != wm) continue;
            std::sort(wh, wh + wm, hit_less);
            std::sort(gh, gh + gm, hit_less);
            size_t diff = 0;
            for (size_t j = 0; j < wm; ++j)
                diff += wh[j].query != gh[j].query || wh[j].code != gh[j].code || wh[j].dist != gh[j].dist;
            CHECK(diff == 0, "%s: scan_below a0=%zu mode=%d: %zu hits differ", what.c_str(), a0, mode, diff);
        }
    }
}

// knn_search / range_search with table `kt` against brute force, over `nseg` segments and an
// optional filter keeping about `keep_pct` percent of the positions (100: no filter).
void check_search(const bne::KernelTable& kt, Pattern p, size_t words, size_t n, size_t nq, size_t k, size_t nseg,
                  int keep_pct, int threads, Rng& rng) {
    const size_t cb = words * 8;
    std::vector<uint8_t> codes(n * cb + 1), queries(nq * cb + 1);
    fill(p, rng, codes.data(), n, queries.data(), nq, words);
    std::vector<uint64_t> fw(n / 64 + 1, 0);
    for (size_t i = 0; i < n; ++i)
        if (keep_pct >= 100 || static_cast<int>(rng.below(100)) < keep_pct) fw[i / 64] |= 1ull << (i % 64);
    bne::SearchOptions opt;
    opt.kernels = &kt;
    opt.threads = threads;
    if (keep_pct < 100) opt.filter.words = fw.data();
    // Segment s gets a random share (possibly empty) of the positions, in order.
    bne::Segments db(cb);
    size_t done = 0;
    for (size_t s = 0; s < nseg; ++s) {
        const size_t take = s + 1 == nseg ? n - done : rng.below(n - done + 1);
        db.add(codes.data() + done * cb, take);
        done += take;
    }
    const std::string what = std::string(kt.name) + " " + pattern_names[p] + " bits=" + std::to_string(64 * words) +
                             " n=" + std::to_string(n) + " nq=" + std::to_string(nq) + " k=" + std::to_string(k) +
                             " segments=" + std::to_string(nseg) + " keep=" + std::to_string(keep_pct) + "%";

    std::vector<std::vector<std::pair<uint32_t, int64_t>>> all(nq);  // (distance, position), tie rule order
    for (size_t a = 0; a < nq; ++a) {
        for (size_t i = 0; i < n; ++i)
            if (keep_pct >= 100 || ((fw[i / 64] >> (i % 64)) & 1u))
                all[a].emplace_back(ref_distance(queries.data() + a * cb, codes.data() + i * cb, words),
                                    static_cast<int64_t>(i));
        std::sort(all[a].begin(), all[a].end());
    }

    std::vector<int32_t> dist(nq * k);
    std::vector<int64_t> pos(nq * k);
    bne::knn_search(db, queries.data(), nq, k, dist.data(), pos.data(), opt);
    size_t bad = 0;
    for (size_t a = 0; a < nq; ++a)
        for (size_t j = 0; j < k; ++j) {
            const bool have = j < all[a].size();
            const int32_t wd = have ? static_cast<int32_t>(all[a][j].first) : INT32_MAX;
            const int64_t wp = have ? all[a][j].second : -1;
            bad += dist[a * k + j] != wd || pos[a * k + j] != wp;
        }
    CHECK(bad == 0, "%s: knn_search differs from brute force in %zu entries", what.c_str(), bad);

    const uint32_t radii[] = {0, n && nq ? all[0].empty() ? 3u : all[0][all[0].size() / 2].first : 3u,
                              static_cast<uint32_t>(64 * words)};
    for (uint32_t radius : radii) {
        const bne::RangeResult r = bne::range_search(db, queries.data(), nq, radius, opt);
        bad = r.lims.size() != nq + 1;
        for (size_t a = 0; a < nq && !bad; ++a) {
            size_t j = r.lims[a];
            for (const auto& [d, i] : all[a]) {
                if (d > radius) break;
                bad += j >= r.lims[a + 1] || r.distances[j] != static_cast<int32_t>(d) || r.positions[j] != i;
                ++j;
            }
            bad += j != r.lims[a + 1];
        }
        CHECK(bad == 0, "%s: range_search radius=%u differs from brute force", what.c_str(), radius);
    }
}

std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> out;
    size_t b = 0;
    while (b <= s.size()) {
        const size_t e = std::min(s.find(',', b), s.size());
        if (e > b) out.push_back(s.substr(b, e - b));
        b = e + 1;
    }
    return out;
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
    return s;
}

}  // namespace

int main(int argc, char** argv) {
    bool full = false, dispatch_only = false;
    std::string expect_kernels, expect_active;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--full") {
            full = true;
        } else if (a == "--dispatch-only") {
            dispatch_only = true;
        } else if (a == "--expect-kernels" && i + 1 < argc) {
            expect_kernels = argv[++i];
        } else if (a == "--expect-active" && i + 1 < argc) {
            expect_active = argv[++i];
        } else {
            std::fprintf(stderr, "usage: %s [--full | --dispatch-only] [--expect-kernels a,b,c] [--expect-active name]\n", argv[0]);
            return 2;
        }
    }

    // What the dispatcher detected and chose.
    const std::vector<std::string> kernels = bne::available_kernels();
    bne::KernelInfo info;
    try {
        info = bne::kernel_info();  // the first use reads BNE_KERNEL / BNE_ISA
    } catch (const bne::InvalidArgument& e) {
        std::printf("error: %s\n", e.what());
        return 3;
    }
    std::printf("cpu: %s %s; available: %s; active: %s (%s)\n", info.vendor.c_str(), info.brand.c_str(),
                join(kernels).c_str(), info.kernel.c_str(), info.reason.c_str());
    if (!expect_kernels.empty())
        CHECK(join(kernels) == expect_kernels, "available kernels %s, expected %s", join(kernels).c_str(),
              expect_kernels.c_str());
    if (!expect_active.empty())
        CHECK(info.kernel == expect_active, "active kernel %s, expected %s", info.kernel.c_str(), expect_active.c_str());
    CHECK(kernels.front() == "serial", "serial must come first");
    for (const char* name : {"serial", "avx2", "avx512", "avx512-256", "avx512-512", "neon", "sve"}) {
        const bool listed = std::find(kernels.begin(), kernels.end(), name) != kernels.end();
        const bool isa_listed = listed || (std::string(name) == "avx512" &&
                                           std::find(kernels.begin(), kernels.end(), "avx512-512") != kernels.end());
        try {
            const bne::KernelTable& t = bne::kernels_for(name);
            CHECK(isa_listed, "kernels_for(%s) returned %s though it is not available", name, t.name);
        } catch (const bne::InvalidArgument& e) {
            CHECK(!isa_listed, "kernels_for(%s) refused an available kernel: %s", name, e.what());
            CHECK(std::string(e.what()).find("does not support") != std::string::npos, "unclear error: %s", e.what());
        }
    }
    try {
        bne::kernels_for("avx9000");
        CHECK(false, "kernels_for(avx9000) accepted an unknown name");
    } catch (const bne::InvalidArgument& e) {
        CHECK(std::string(e.what()).find("unknown ISA 'avx9000'") != std::string::npos, "unclear error: %s", e.what());
    }

    if (dispatch_only) {
        std::printf(failures ? "FAILED\n" : "OK: dispatch checks\n");
        return failures ? 1 : 0;
    }

    const size_t widths[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33, 48, 63, 64};  // x 64 bits
    const size_t sizes[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 255, 257, 300};
    const size_t nsizes = sizeof sizes / sizeof sizes[0];
    for (const std::string& name : kernels) {
        const bne::KernelTable& kt = bne::kernels_for(name);
        const long before = checks;
        const int failed_before = failures;
        Rng rng{0x1234 + std::hash<std::string>{}(name)};
        const size_t maxq = kt.max_queries + 3;
        size_t turn = 0;
        for (size_t w = 0; w < sizeof widths / sizeof widths[0]; ++w)
            for (int p = 0; p < kPatterns; ++p) {
                if (full) {
                    for (size_t s = 0; s < nsizes; ++s)
                        for (size_t nq = 1; nq <= maxq; nq += (s % 3) + 1)
                            check_kernels(kt, static_cast<Pattern>(p), widths[w], sizes[s], nq, rng, 8 * (s % 2));
                } else {
                    // A rotating sample: over the loop every size and every query count occurs.
                    for (int r = 0; r < 3; ++r, ++turn)
                        check_kernels(kt, static_cast<Pattern>(p), widths[w], sizes[(turn * 7) % nsizes],
                                      1 + turn % maxq, rng, (turn % 3) * 3);
                }
            }
        // Wider than the NEON kernel's 16-bit flush interval (524032 bits), all ones.
        check_kernels(kt, kComplement, 8200, 5, 3, rng, 0);
        check_kernels(kt, kRandom, 8200, 3, 2, rng, 8);

        // Top-k and range search through the core with this table.
        const size_t swidths[] = {1, 3, 16, 17, 32};
        const size_t big = kt.max_queries * 2 + 1;  // several query batches
        for (size_t w : swidths)
            for (int p = 0; p < kPatterns; ++p)
                for (int r = 0; r < (full ? 4 : 2); ++r) {
                    const size_t n = 1 + rng.below(r ? 300 : 40);
                    const size_t nq = r % 2 ? big : 1 + rng.below(3);
                    const size_t ks[] = {1, 3, 10, n, n + 2};
                    const int keep[] = {100, 50, 3};
                    check_search(kt, static_cast<Pattern>(p), w, n, nq, ks[rng.below(5)], 1 + rng.below(3),
                                 keep[rng.below(3)], 1 + static_cast<int>(rng.below(2)), rng);
                }
        check_search(kt, kRandom, 16, 0, 2, 4, 1, 100, 1, rng);  // empty database
        std::printf("%-11s max_queries=%-2zu %ld checks, %s\n", kt.name, kt.max_queries, checks - before,
                    failures == failed_before ? "all match the oracle" : "FAILED");
    }
    if (failures) {
        std::printf("FAILED: %d of %ld checks\n", failures, checks);
        return 1;
    }
    std::printf("OK: %ld checks, every kernel matches the scalar oracle\n", checks);
    return 0;
}
