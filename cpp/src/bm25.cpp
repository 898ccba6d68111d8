// Exact BM25 top-k with MaxScore (see bne/bm25.hpp and python/bne/lexical_postings.py).
//
// Scores are summed per document in the query's term order, each term's part computed as
// w * tf / (tf + knorm[id]) in double: bit for bit what the numpy reference computes (this file is
// built with -ffp-contract=off, so no fused multiply-add changes a rounding on any target).
#include "bne/bm25.hpp"

#include <algorithm>
#include <atomic>
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
// An allow-list of at most this many ids is scored by looking each id up in every list (skipping
// the rest of the list) rather than by scanning every posting: with fewer allowed documents than
// the limit MaxScore never prunes. Measured (docs/HYBRID_RESEARCH.md section 10): never slower up
// to 256 ids at 100k and 1M documents, 2-8x faster below 50 at 1M; slower past ~300 (100k) and
// ~800 (1M). Keep equal to lexical_postings.FEW_ALLOWED (which reads only those ids' segments).
constexpr size_t kFewAllowed = 256;

// Per-thread scratch, reused across queries: acc is all zeros between uses (only the touched
// entries are reset), bits likewise, so a query never clears an array of the index's size.
struct Slot {
    double acc;    // the document's score so far
    double knorm;  // a copy of Index::knorm beside it: one cache miss a posting, not two
};

struct Workspace {
    std::vector<Slot> slots;
    uint64_t knorm_key = 0;  // Index::knorm_key of the knorm copied into slots
    size_t knorm_n = 0;
    std::vector<uint64_t> bits, in_heap;
    std::vector<int32_t> touched, cand;
    std::vector<double> tmp;
    std::vector<std::pair<double, int32_t>> heap;  // see Query::offer
};

std::mutex pool_mutex;
std::vector<std::unique_ptr<Workspace>> pool;

struct Lease {
    std::unique_ptr<Workspace> ws;
    size_t n;
    explicit Lease(const Index& ix) : n(ix.n) {
        {
            std::lock_guard<std::mutex> g(pool_mutex);
            if (!pool.empty()) {
                ws = std::move(pool.back());
                pool.pop_back();
            }
        }
        if (!ws) ws = std::make_unique<Workspace>();
        // room to grow: a collection being appended to adds ids with every commit, and moving 16
        // bytes an id to a new block each time costs more than the query
        if (ws->slots.capacity() < n) ws->slots.reserve(n + n / 8);
        if (ws->slots.size() < n) ws->slots.resize(n, Slot{0.0, 0.0});
        if (ws->knorm_key != ix.knorm_key || ws->knorm_n != n || ix.knorm_key == 0) {
            for (size_t i = 0; i < n; ++i) ws->slots[i].knorm = ix.knorm[i];
            ws->knorm_key = ix.knorm_key;
            ws->knorm_n = n;
        }
        if (ws->bits.size() < (n + 63) / 64) ws->bits.resize((n + 63) / 64, 0);
        if (ws->in_heap.size() < (n + 63) / 64) ws->in_heap.resize((n + 63) / 64, 0);
    }
    ~Lease() {
        auto& sl = ws->slots;  // also after an exception
        if (ws->touched.size() > n / 4) {  // a random line each vs every 16-byte slot
            for (size_t i = 0; i < n; ++i) sl[i].acc = 0.0;  // sequential: cheaper than that many random lines
        } else {
            for (int32_t d : ws->touched) sl[static_cast<size_t>(d)].acc = 0.0;
        }
        ws->touched.clear();
        for (const auto& e : ws->heap) ws->in_heap[static_cast<size_t>(e.second) >> 6] = 0;
        ws->heap.clear();
        std::fill(ws->bits.begin(), ws->bits.end(), 0);  // only non-zero if an exception cut a scan short
        std::lock_guard<std::mutex> g(pool_mutex);
        if (pool.size() < 4) pool.push_back(std::move(ws));  // more are freed: 16 bytes an id each
    }
};

inline int ctz64(uint64_t b) {  // b != 0; plain C++17 (no <bit>)
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctzll(b);
#else
    int n = 0;
    while (!(b & 1)) {
        b >>= 1;
        ++n;
    }
    return n;
#endif
}

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

    double heap_min = 0;  // the smallest entry of a full heap (0 until it is full)
    double max_acc = 0;

    void add(int64_t d, double w, double tf) {
        Slot& s = ws.slots[static_cast<size_t>(d)];
        if (s.acc == 0.0) ws.touched.push_back(static_cast<int32_t>(d));
        const double a = s.acc += w * tf / (tf + s.knorm);
        if (a > heap_min) offer(d, a);
    }

    // A lower bound of the limit-th best partial score without a pass over the documents: a
    // min-heap of `limit` distinct documents with a score each had once. Scores only grow, so the
    // heap's smallest entry is at most the limit-th best score now (a document already in the heap
    // keeps its older, smaller entry: the bound is only the looser for it).
    void offer(int64_t d, double a) {
        if (a > max_acc) max_acc = a;
        uint64_t& word = ws.in_heap[static_cast<size_t>(d) >> 6];
        const uint64_t bit = 1ULL << (d & 63);
        if (word & bit) return;
        auto& h = ws.heap;
        auto cmp = [](const std::pair<double, int32_t>& x, const std::pair<double, int32_t>& y) {
            return x.first > y.first;
        };
        if (h.size() == opt.limit) {
            std::pop_heap(h.begin(), h.end(), cmp);
            ws.in_heap[static_cast<size_t>(h.back().second) >> 6] &= ~(1ULL << (h.back().second & 63));
            h.pop_back();
        }
        word |= bit;
        h.emplace_back(a, static_cast<int32_t>(d));
        std::push_heap(h.begin(), h.end(), cmp);
        if (h.size() == opt.limit) heap_min = h.front().first;
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
                Slot& s = ws.slots[static_cast<size_t>(d)];
                const double tf = tf_at(v, k);
                s.acc += w * tf / (tf + s.knorm);
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
                size_t a = lo, b = v.df, step = 1;  // gallop from the last position, then bisect
                while (a + step < v.df && id32_at(v, a + step) < target) {
                    a += step;
                    step *= 2;
                }
                b = std::min(v.df, a + step + 1);
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
        for (size_t i = 0; i < ids.size(); ++i) ws.tmp[i] = ws.slots[static_cast<size_t>(ids[i])].acc;
        std::nth_element(ws.tmp.begin(), ws.tmp.begin() + static_cast<std::ptrdiff_t>(k - 1), ws.tmp.end(),
                         std::greater<double>());
        return ws.tmp[k - 1];
    }

    Result top(std::vector<int32_t> ids) {
        const auto& sl = ws.slots;
        auto better = [&sl](int32_t a, int32_t b) {
            const double x = sl[static_cast<size_t>(a)].acc, y = sl[static_cast<size_t>(b)].acc;
            return x > y || (x == y && a < b);
        };
        const size_t k = std::min(opt.limit, ids.size());
        std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(), better);
        Result r;
        r.ids.assign(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k));
        r.scores.resize(k);
        for (size_t i = 0; i < k; ++i) r.scores[i] = sl[static_cast<size_t>(ids[i])].acc;
        return r;
    }

    // The allowed ids (ascending, < n) looked up in every list, term by term in the query's order
    // (so each sum is the one run() makes, to the last bit), then the best `limit` with a score.
    Result run_few(const std::vector<int32_t>& ids) {
        for (int32_t d : ids) ws.touched.push_back(d);  // reset after the query (Lease)
        for (const auto& t : terms)
            for (const auto& l : t.lists) complete(view_of(l), t.weight, ids);
        std::vector<int32_t> hits;
        for (int32_t d : ids)
            if (ws.slots[static_cast<size_t>(d)].acc > 0.0) hits.push_back(d);
        Result r = top(std::move(hits));
        r.cut = 0;  // no term scored fully: each was looked up for the allowed ids only
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
            if (opt.prune && j > 0 && left[j] >= opt.prune_min_postings && ws.touched.size() >= limit) {
                const double bound = rest[j] * kSlack;
                if (bound < heap_min) {  // no document unseen so far can reach the top `limit`
                    cut = j;
                    theta = heap_min;
                    break;
                }
                // the exact limit-th best costs a pass over the documents seen so far: only when it
                // can pass (the best partial score is above the bound) and the term is that long
                if (bound < max_acc && left[j] - left[j + 1] >= static_cast<int64_t>(ws.touched.size())) {
                    theta = kth(ws.touched, limit);
                    if (bound < theta) {
                        cut = j;
                        break;
                    }
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
            if (ws.slots[static_cast<size_t>(d)].acc >= floor) ws.bits[static_cast<size_t>(d) >> 6] |= 1ULL << (d & 63);
        auto& cand = ws.cand;
        cand.clear();
        for (size_t w = 0; w < ws.bits.size(); ++w) {
            uint64_t b = ws.bits[w];
            if (!b) continue;
            ws.bits[w] = 0;
            while (b) {
                cand.push_back(static_cast<int32_t>(w * 64 + static_cast<size_t>(ctz64(b))));
                b &= b - 1;
            }
        }
        for (size_t j = cut; j < nt; ++j) {  // the common terms, for the candidates only, rarest first
            if (cand.size() > limit) {  // what terms j..end can still add decides who stays a candidate
                const double t = kth(cand, limit) - rest[j] * kSlack;
                cand.erase(std::remove_if(cand.begin(), cand.end(),
                                          [&](int32_t d) { return ws.slots[static_cast<size_t>(d)].acc < t; }),
                           cand.end());
            }
            for (const auto& v : views[j]) complete(v, terms[j].weight, cand);
        }
        Result r = top(cand);
        r.cut = static_cast<int>(cut);
        return r;
    }
};

// The allowed ids below n when there are at most kFewAllowed of them (false: more, or no mask).
// A pass over the mask's bytes, 8 at a time: tens of microseconds at 1M ids.
bool few_allowed(const Index& ix, std::vector<int32_t>& ids) {
    ids.clear();
    if (!ix.allowed) return false;
    const size_t m = std::min(ix.allowed_n, ix.n);
    size_t i = 0;
    for (; i + 8 <= m; i += 8) {
        uint64_t w;
        std::memcpy(&w, ix.allowed + i, 8);
        if (!w) continue;
        for (size_t j = 0; j < 8; ++j)
            if (ix.allowed[i + j]) ids.push_back(static_cast<int32_t>(i + j));
        if (ids.size() > kFewAllowed) return false;
    }
    for (; i < m; ++i)
        if (ix.allowed[i]) ids.push_back(static_cast<int32_t>(i));
    return ids.size() <= kFewAllowed;
}

Result search_in(const std::vector<Term>& query, const Index& index, const Options& opt, const std::vector<int32_t>* few) {
    if (opt.limit < 1 || query.empty() || index.n == 0) return {};
    if (index.n > static_cast<size_t>(INT32_MAX)) throw InvalidArgument("lexical postings: ids must be < 2**31");
    Lease lease(index);
    Query q{query, index, opt, *lease.ws};
    return few ? q.run_few(*few) : q.run();
}

}  // namespace

Result search(const std::vector<Term>& query, const Index& index, const Options& opt) {
    std::vector<int32_t> ids;
    const bool few = index.n <= static_cast<size_t>(INT32_MAX) && few_allowed(index, ids);
    return search_in(query, index, opt, few ? &ids : nullptr);
}

std::vector<Result> search_many(const std::vector<std::vector<Term>>& queries, const Index& index, const Options& opt,
                                int threads) {
    std::vector<Result> out(queries.size());
    std::vector<int32_t> ids;  // one pass over the mask for all the queries
    const bool few = index.n <= static_cast<size_t>(INT32_MAX) && few_allowed(index, ids);
    if (threads <= 0) threads = default_threads();
    const size_t nt = std::min(queries.size(), static_cast<size_t>(std::max(1, threads)));
    std::atomic<size_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto work = [&] {
        for (size_t q; (q = next.fetch_add(1)) < queries.size();) {
            try {
                out[q] = search_in(queries[q], index, opt, few ? &ids : nullptr);
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
