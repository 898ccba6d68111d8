// Exact BM25 top-k with MaxScore (see bne/bm25.hpp and python/bne/lexical_postings.py).
//
// Scores are summed per document in the query's term order, each term's part computed as
// w * tf / (tf + knorm[id]) in double: bit for bit what the numpy reference computes (this file is
// built with -ffp-contract=off, so no fused multiply-add changes a rounding on any target).
#include "bne/bm25.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "bne/errors.hpp"
#include "bne/search.hpp"

namespace bne::bm25 {
namespace {

constexpr double kSlack = 1 + 1e-9;  // sums rounded in another order: bounds are compared with this margin
constexpr size_t kSkip = 32;         // gaps summed at once to skip past a list's ids below the next candidate

// Per-thread scratch, reused across queries: acc is all zeros between uses (only the touched
// entries are reset), bits likewise, so a query never clears an array of the index's size.
struct Workspace {
    std::vector<double> acc;
    std::vector<uint64_t> bits;
    std::vector<int32_t> touched, cand;
    std::vector<double> tmp;
};

std::mutex pool_mutex;
std::vector<std::unique_ptr<Workspace>> pool;

struct Lease {
    std::unique_ptr<Workspace> ws;
    explicit Lease(size_t n) {
        {
            std::lock_guard<std::mutex> g(pool_mutex);
            if (!pool.empty()) {
                ws = std::move(pool.back());
                pool.pop_back();
            }
        }
        if (!ws) ws = std::make_unique<Workspace>();
        if (ws->acc.size() < n) ws->acc.resize(n, 0.0);
        if (ws->bits.size() < (n + 63) / 64) ws->bits.resize((n + 63) / 64, 0);
    }
    ~Lease() {
        for (int32_t d : ws->touched) ws->acc[static_cast<size_t>(d)] = 0.0;  // also after an exception
        ws->touched.clear();
        std::fill(ws->bits.begin(), ws->bits.end(), 0);  // only non-zero if an exception cut a scan short
        std::lock_guard<std::mutex> g(pool_mutex);
        if (pool.size() < 16) pool.push_back(std::move(ws));
    }
};

struct View {
    int32_t seg;
    size_t df;
    const uint8_t* docs;
    const uint8_t* tfs;
    bool gaps, tf8;
    int64_t first;
};

[[noreturn]] void damaged(const std::string& why) {
    throw InvalidArgument("lexical postings: damaged posting list (" + why + "); rebuild the lexical index");
}

View view_of(const PostingList& l) {
    if (l.df < 1) damaged("df < 1");
    View v{};
    v.seg = l.seg;
    v.df = static_cast<size_t>(l.df);
    v.docs = l.docs;
    v.tfs = l.tfs;
    if (l.docs_len == 4 * v.df)
        v.gaps = false;
    else if (v.df > 1 && l.docs_len == 4 + 2 * (v.df - 1))
        v.gaps = true;
    else
        damaged("ids length");
    if (l.tfs_len == v.df)
        v.tf8 = true;
    else if (l.tfs_len == 2 * v.df)
        v.tf8 = false;
    else
        damaged("tfs length");
    int32_t f;
    std::memcpy(&f, l.docs, 4);
    v.first = f;
    return v;
}

inline double tf_at(const View& v, size_t k) {
    if (v.tf8) return static_cast<double>(v.tfs[k]);
    uint16_t t;
    std::memcpy(&t, v.tfs + 2 * k, 2);
    return static_cast<double>(t);
}
inline int64_t gap_at(const View& v, size_t k) {  // gap from id k-1 to id k (k >= 1)
    uint16_t g;
    std::memcpy(&g, v.docs + 4 + 2 * (k - 1), 2);
    return g;
}
inline int64_t id32_at(const View& v, size_t k) {
    int32_t d;
    std::memcpy(&d, v.docs + 4 * k, 4);
    return d;
}
inline uint32_t gap_block_sum(const View& v, size_t k) {  // gaps k .. k + kSkip - 1
    uint16_t g[kSkip];
    std::memcpy(g, v.docs + 4 + 2 * (k - 1), sizeof g);
    uint32_t s = 0;
    for (size_t i = 0; i < kSkip; ++i) s += g[i];
    return s;
}

struct Query {
    const std::vector<Term>& terms;
    const Index& ix;
    const Options& opt;
    Workspace& ws;

    bool admitted(int64_t d) const {
        return !ix.allowed || (static_cast<size_t>(d) < ix.allowed_n && ix.allowed[d] != 0);
    }
    bool live(int64_t d, int32_t seg) const { return !ix.seg_of || ix.seg_of[d] == seg; }

    void add(int64_t d, double w, double tf) {
        double& a = ws.acc[static_cast<size_t>(d)];
        if (a == 0.0) ws.touched.push_back(static_cast<int32_t>(d));
        a += w * tf / (tf + ix.knorm[d]);
    }

    // Every live, admitted posting of the list into the accumulator.
    void accumulate(const View& v, double w) {
        const int64_t n = static_cast<int64_t>(ix.n);
        int64_t d = v.first;
        for (size_t k = 0; k < v.df; ++k) {
            if (k) d = v.gaps ? d + gap_at(v, k) : id32_at(v, k);
            if (d < 0 || d >= n) damaged("id out of range");
            if (live(d, v.seg) && admitted(d)) add(d, w, tf_at(v, k));
        }
    }

    // The list's postings of the (ascending) candidates only.
    void complete(const View& v, double w, const std::vector<int32_t>& cand) {
        const size_t nc = cand.size();
        auto hit = [&](int64_t d, size_t k) {
            if (live(d, v.seg)) {
                double& a = ws.acc[static_cast<size_t>(d)];
                const double tf = tf_at(v, k);
                a += w * tf / (tf + ix.knorm[d]);
            }
        };
        if (v.gaps) {
            size_t k = 0;
            int64_t d = v.first;
            for (size_t ci = 0; ci < nc; ++ci) {
                const int64_t target = cand[ci];
                while (d < target) {
                    if (k + 1 >= v.df) return;
                    if (v.df - (k + 1) >= kSkip) {
                        const int64_t s = gap_block_sum(v, k + 1);
                        if (d + s < target) {
                            d += s;
                            k += kSkip;
                            continue;
                        }
                    }
                    ++k;
                    d += gap_at(v, k);
                }
                if (d == target) hit(d, k);
            }
        } else if (16 * nc < v.df) {  // few candidates: binary search each in the rest of the list
            size_t lo = 0;
            for (size_t ci = 0; ci < nc && lo < v.df; ++ci) {
                const int64_t target = cand[ci];
                size_t a = lo, b = v.df;
                while (a < b) {
                    const size_t m = a + (b - a) / 2;
                    if (id32_at(v, m) < target)
                        a = m + 1;
                    else
                        b = m;
                }
                lo = a;
                if (a < v.df && id32_at(v, a) == target) hit(target, a);
            }
        } else {
            size_t ci = 0;
            for (size_t k = 0; k < v.df && ci < nc; ++k) {
                const int64_t d = id32_at(v, k);
                while (ci < nc && cand[ci] < d) ++ci;
                if (ci < nc && cand[ci] == d) hit(d, k);
            }
        }
    }

    // The k-th largest accumulator value over ids (k <= ids.size()).
    double kth(const std::vector<int32_t>& ids, size_t k) {
        ws.tmp.resize(ids.size());
        for (size_t i = 0; i < ids.size(); ++i) ws.tmp[i] = ws.acc[static_cast<size_t>(ids[i])];
        std::nth_element(ws.tmp.begin(), ws.tmp.begin() + static_cast<std::ptrdiff_t>(k - 1), ws.tmp.end(),
                         std::greater<double>());
        return ws.tmp[k - 1];
    }

    Result top(std::vector<int32_t> ids) {
        const auto& acc = ws.acc;
        auto better = [&acc](int32_t a, int32_t b) {
            const double x = acc[static_cast<size_t>(a)], y = acc[static_cast<size_t>(b)];
            return x > y || (x == y && a < b);
        };
        const size_t k = std::min(opt.limit, ids.size());
        std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(), better);
        Result r;
        r.ids.assign(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k));
        r.scores.resize(k);
        for (size_t i = 0; i < k; ++i) r.scores[i] = acc[static_cast<size_t>(ids[i])];
        return r;
    }

    Result run() {
        const size_t nt = terms.size();
        std::vector<std::vector<View>> views(nt);
        std::vector<double> rest(nt + 1, 0.0);   // rest[j]: bound of terms j..end
        std::vector<int64_t> left(nt + 1, 0);    // postings of terms j..end
        for (size_t j = nt; j-- > 0;) {
            int64_t s = 0;
            for (const auto& l : terms[j].lists) {
                views[j].push_back(view_of(l));
                s += l.df;
            }
            rest[j] = j + 1 < nt ? rest[j + 1] + terms[j].weight : terms[j].weight;
            left[j] = left[j + 1] + s;
        }
        const size_t limit = opt.limit;
        size_t cut = nt;
        double theta = 0;
        for (size_t j = 0; j < nt; ++j) {
            // a check costs a pass over the documents seen so far: only before many postings
            if (opt.prune && j > 0 && left[j] >= opt.prune_min_postings && ws.touched.size() >= limit) {
                theta = kth(ws.touched, limit);  // the limit-th best partial score
                if (rest[j] * kSlack < theta) {  // no document unseen so far can reach the top `limit`
                    cut = j;
                    break;
                }
            }
            for (const auto& v : views[j]) accumulate(v, terms[j].weight);
        }
        if (cut == nt) {
            Result r = top(ws.touched);
            r.cut = static_cast<int>(nt);
            return r;
        }
        // candidates: the documents whose partial score plus what the rest can add reaches theta,
        // in id order (through a bitmap: no sort)
        const double floor = theta - rest[cut] * kSlack;
        for (int32_t d : ws.touched)
            if (ws.acc[static_cast<size_t>(d)] >= floor) ws.bits[static_cast<size_t>(d) >> 6] |= 1ULL << (d & 63);
        auto& cand = ws.cand;
        cand.clear();
        for (size_t w = 0; w < ws.bits.size(); ++w) {
            uint64_t b = ws.bits[w];
            if (!b) continue;
            ws.bits[w] = 0;
            while (b) {
                cand.push_back(static_cast<int32_t>(w * 64 + static_cast<size_t>(std::countr_zero(b))));
                b &= b - 1;
            }
        }
        for (size_t j = cut; j < nt; ++j) {  // the common terms, for the candidates only, rarest first
            if (cand.size() > limit) {  // what terms j..end can still add decides who stays a candidate
                const double t = kth(cand, limit) - rest[j] * kSlack;
                cand.erase(std::remove_if(cand.begin(), cand.end(),
                                          [&](int32_t d) { return ws.acc[static_cast<size_t>(d)] < t; }),
                           cand.end());
            }
            for (const auto& v : views[j]) complete(v, terms[j].weight, cand);
        }
        Result r = top(cand);
        r.cut = static_cast<int>(cut);
        return r;
    }
};

}  // namespace

Result search(const std::vector<Term>& query, const Index& index, const Options& opt) {
    if (opt.limit < 1 || query.empty() || index.n == 0) return {};
    if (index.n > static_cast<size_t>(INT32_MAX)) throw InvalidArgument("lexical postings: ids must be < 2**31");
    Lease lease(index.n);
    return Query{query, index, opt, *lease.ws}.run();
}

std::vector<Result> search_many(const std::vector<std::vector<Term>>& queries, const Index& index, const Options& opt,
                                int threads) {
    std::vector<Result> out(queries.size());
    if (threads <= 0) threads = default_threads();
    const size_t nt = std::min(queries.size(), static_cast<size_t>(std::max(1, threads)));
    std::atomic<size_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto work = [&] {
        for (size_t q; (q = next.fetch_add(1)) < queries.size();) {
            try {
                out[q] = search(queries[q], index, opt);
            } catch (...) {
                std::lock_guard<std::mutex> g(error_mutex);
                if (!error) error = std::current_exception();
            }
        }
    };
    std::vector<std::thread> pool_threads;
    for (size_t t = 1; t < nt; ++t) pool_threads.emplace_back(work);
    work();
    for (auto& t : pool_threads) t.join();
    if (error) std::rethrow_exception(error);
    return out;
}

}  // namespace bne::bm25
