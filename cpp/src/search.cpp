// Exact top-k / range search over the segments of an index: positions run across every
// segment, cut into cache-sized blocks; each block is compared with every query of the batch
// while it sits in L1/L2, through the kernel's fused scan, so only codes that can still enter
// a query's top-k reach the heap.
// Threads take contiguous slices of the position range (so one query uses every core, and many
// small segments fall into one slice), or slices of the queries when the codes are too few to
// split; the partial results are merged once under the (distance, position) tie rule.
#include "bne/search.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#endif

#include "bne/dispatch.hpp"
#include "bne/errors.hpp"

namespace bne {
namespace {

std::atomic<int> g_default_threads{0};
std::atomic<int> g_budget{-1};  // -1: as BNE_THREAD_BUDGET says (on unless "0"); 0 off; 1 on

std::atomic<int>& free_cores() {
    static std::atomic<int> f{hardware_threads()};
    return f;
}

bool budget_on() {
    static const bool env = [] {
        const char* e = std::getenv("BNE_THREAD_BUDGET");
        return !(e && std::string(e) == "0");
    }();
    const int v = g_budget.load(std::memory_order_relaxed);
    return v < 0 ? env : v != 0;
}

// Cores taken from the process-wide budget for one search: as many as it wants of those free,
// at least one (its own calling thread, which runs anyway); given back on destruction.
class Lease {
public:
    explicit Lease(size_t want) {
        const int w = static_cast<int>(std::min<size_t>(want, INT_MAX));
        if (!budget_on()) {
            granted_ = w;
            return;
        }
        auto& f = free_cores();
        int cur = f.load();
        do {
            granted_ = std::max(1, std::min(w, cur));
        } while (!f.compare_exchange_weak(cur, cur - granted_));
        counted_ = true;
    }
    ~Lease() {
        if (counted_) free_cores().fetch_add(granted_);
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    size_t granted() const noexcept { return static_cast<size_t>(granted_); }

private:
    int granted_ = 1;
    bool counted_ = false;
};

struct Hit {
    uint32_t d;
    int64_t pos;
};
// The tie rule: a ranks before b.
inline bool before(const Hit& a, const Hit& b) noexcept { return a.d != b.d ? a.d < b.d : a.pos < b.pos; }

// Bounded max-heap keeping the k best hits (the worst on top, where it is replaced).
class TopK {
public:
    explicit TopK(size_t k) : k_(k) { heap_.reserve(std::min<size_t>(k, 4096)); }  // a huge k grows as it fills
    uint32_t threshold() const noexcept { return heap_.size() < k_ ? UINT32_MAX : heap_.front().d; }
    void push(Hit h) {
        if (heap_.size() < k_) {
            heap_.push_back(h);
            std::push_heap(heap_.begin(), heap_.end(), before);
        } else if (before(h, heap_.front())) {
            std::pop_heap(heap_.begin(), heap_.end(), before);
            heap_.back() = h;
            std::push_heap(heap_.begin(), heap_.end(), before);
        }
    }
    const std::vector<Hit>& hits() const noexcept { return heap_; }

private:
    size_t k_;
    std::vector<Hit> heap_;
};

// A rectangle of work: queries [q0, q1) against database positions [p0, p1).
struct Task {
    size_t q0, q1, p0, p1;
};

size_t block_rows(size_t code_bytes) {
    size_t rows = (size_t{32} << 10) / code_bytes;  // ~32 KiB of codes: stays in L1 across query batches
    return std::max<size_t>(64, rows & ~size_t{7});
}

int resolve_threads(int requested) {
    if (requested < 0) throw InvalidArgument("threads must be >= 0 (0 = all cores), got " + std::to_string(requested));
    return std::min(requested > 0 ? requested : default_threads(), hardware_threads());
}

// Splits the work into at most `threads` tasks: over the positions when there are enough of
// them (so a single query uses every core), otherwise over the queries (also when `by_queries`
// and there are enough queries). A thread is only started for a share of work worth several
// times its cost (thread_plan_model()).
std::vector<Task> plan(size_t n, size_t nq, size_t words, int threads, bool by_queries = false) {
    size_t t = static_cast<size_t>(threads);
    if (t > 1 && n > 0 && nq > 0) {
        const double work = static_cast<double>(n) * static_cast<double>(nq) * static_cast<double>(words);
        t = std::min<size_t>(t, std::max<size_t>(1, static_cast<size_t>(work / thread_plan_model().min_work_words)));
    }
    std::vector<Task> tasks;
    const size_t min_rows = 4 * block_rows(words * 8);  // a slice of positions spans a few blocks
    if (t <= 1 || n == 0 || nq == 0) {
        tasks.push_back({0, nq, 0, n});
    } else if ((n >= t * min_rows && !by_queries) || nq < t) {
        t = std::min(t, n);
        for (size_t i = 0; i < t; ++i) tasks.push_back({0, nq, n * i / t, n * (i + 1) / t});
    } else {
        for (size_t i = 0; i < t; ++i) tasks.push_back({nq * i / t, nq * (i + 1) / t, 0, n});
    }
    return tasks;
}

// A plan split over positions hands its slices out on demand: each thread takes the next chunk
// of positions when it is done with one, so a thread the OS does not schedule (a loaded
// machine, other searches) delays the search by one chunk at most, not by a fixed half.
class Chunks {
public:
    Chunks(const std::vector<Task>& tasks, size_t n, size_t nq, size_t words) : n_(n), nq_(nq) {
        on_ = tasks.size() > 1 && tasks[0].q0 == 0 && tasks[0].q1 == nq;
        if (!on_) return;
        const size_t min_rows = 4 * block_rows(words * 8);
        size_ = std::max(min_rows, (n + 8 * tasks.size() - 1) / (8 * tasks.size()));
        count_ = (n + size_ - 1) / size_;
    }
    bool on() const noexcept { return on_; }
    // Calls f(task) for the caller's own task, or for each chunk it claims.
    template <class F>
    void each(const Task& own, const std::atomic<bool>& stop, F f) {
        if (!on_) return f(own);
        for (size_t c; !stop.load(std::memory_order_relaxed) && (c = next_.fetch_add(1)) < count_;)
            f(Task{0, nq_, c * size_, std::min(n_, (c + 1) * size_)});
    }

private:
    size_t n_, nq_, size_ = 0, count_ = 0;
    bool on_ = false;
    std::atomic<size_t> next_{0};
};

// Runs fn(task_index) for every task: tasks 1.. on new threads, task 0 on the calling thread,
// which also polls `interrupted` every ~20 ms until all tasks are done.
template <class Fn>
void run_tasks(size_t ntasks, const std::function<bool()>& interrupted, std::atomic<bool>& stop, Fn fn) {
    std::mutex mu;
    std::condition_variable cv;
    size_t remaining = ntasks - 1;
    std::exception_ptr failure;  // the first exception of any task (e.g. bad_alloc in a range search)
    auto guarded = [&](size_t i) {
        try {
            fn(i);
        } catch (...) {
            std::lock_guard<std::mutex> lock(mu);
            if (!failure) failure = std::current_exception();
            stop = true;
        }
    };
    std::vector<std::thread> workers;
    workers.reserve(ntasks - 1);
    auto join_all = [&] {
        for (auto& w : workers) w.join();
    };
    try {
        for (size_t i = 1; i < ntasks; ++i)
            workers.emplace_back([&, i] {
                guarded(i);
                std::lock_guard<std::mutex> lock(mu);
                if (--remaining == 0) cv.notify_all();
            });
    } catch (...) {
        stop = true;
        join_all();
        throw;
    }
    guarded(0);
    if (interrupted) {
        std::unique_lock<std::mutex> lock(mu);
        while (remaining > 0 && !stop) {
            cv.wait_for(lock, std::chrono::milliseconds(20));
            lock.unlock();
            try {
                if (interrupted()) stop = true;
            } catch (...) {
                stop = true;
                lock.lock();
                if (!failure) failure = std::current_exception();
                break;
            }
            lock.lock();
        }
    }
    join_all();
    if (failure) std::rethrow_exception(failure);
    if (stop) throw Interrupted();
}

// Calls `interrupted` at most every 20 ms from inside the calling thread's own scan.
class Poller {
public:
    Poller(const std::function<bool()>& f, std::atomic<bool>& stop, bool active)
        : f_(f), stop_(stop), active_(active && static_cast<bool>(f)), next_(std::chrono::steady_clock::now()) {}
    bool should_stop() {
        if (active_) {
            auto now = std::chrono::steady_clock::now();
            if (now >= next_) {
                next_ = now + std::chrono::milliseconds(20);
                if (f_()) stop_ = true;
            }
        }
        return stop_.load(std::memory_order_relaxed);
    }

private:
    const std::function<bool()>& f_;
    std::atomic<bool>& stop_;
    bool active_;
    std::chrono::steady_clock::time_point next_;
};

constexpr size_t kQueryBatch = 4;  // queries per hamming_block call in pairwise_hamming

// Scans task t: walks the segments overlapping its positions block by block; each block goes
// through the kernel's fused scan with the task's queries in batches, so only the pairs below
// the current bound (a query's top-k threshold, or radius + 1) reach `sink(q, distance, position)`.
template <class Threshold, class Sink>
void scan(const Segments& db, const uint8_t* queries, const Task& t, const KernelTable& kt,
          const PositionFilter& filter, Poller& poller, Threshold threshold, Sink sink) {
    if (t.p0 >= t.p1 || t.q0 >= t.q1) return;
    const size_t cb = db.code_bytes(), words = cb / 8, rows = block_rows(cb);
    const size_t qb = std::max<size_t>(1, kt.max_queries);
    std::vector<ScanHit> hits(qb * rows);
    std::vector<uint32_t> thr(qb);
    for (size_t s = db.find(t.p0); s < db.count() && db.base(s) < t.p1; ++s) {
        const size_t lo = std::max(t.p0, db.base(s)), hi = std::min(t.p1, db.base(s + 1));
        for (size_t p = lo; p < hi; p += rows) {
            if (poller.should_stop()) return;
            const size_t nb = std::min(rows, hi - p);
            if (filter.words && filter.none_in(p, p + nb)) continue;  // e.g. a sparse allow-list
            const uint8_t* block = db.data(s) + (p - db.base(s)) * cb;
            for (size_t q = t.q0; q < t.q1; q += qb) {
                const size_t nqb = std::min(qb, t.q1 - q);
                for (size_t a = 0; a < nqb; ++a) thr[a] = threshold(q + a);
                const size_t m = kt.scan_below(queries + q * cb, nqb, block, nb, words, thr.data(), hits.data());
                for (size_t j = 0; j < m; ++j) {
                    const size_t pos = p + hits[j].code;
                    if (filter.allows(pos)) sink(q + hits[j].query, hits[j].dist, static_cast<int64_t>(pos));
                }
            }
        }
    }
}

// Code widths must be whole 64-bit words.
void check_widths(size_t code_bytes, const char* what) {
    if (code_bytes == 0 || code_bytes % 8 != 0)
        throw InvalidArgument(std::string(what) + ": code width must be a positive multiple of 8 bytes (64 bits), got " +
                              std::to_string(code_bytes) + " bytes");
}

void check_widths(const CodeView& db, const char* what) {
    check_widths(db.code_bytes, what);
    if (db.n > 0 && db.data == nullptr) throw InvalidArgument(std::string(what) + ": null code pointer");
}

void check_segments(const Segments& db) {
    check_widths(db.code_bytes(), "database");
    for (size_t s = 0; s < db.count(); ++s)
        if (db.data(s) == nullptr) throw InvalidArgument("database: null code pointer in segment " + std::to_string(s));
}

template <class Fn>
double best_time(int reps, Fn fn) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        fn();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

ThreadPlanModel measure_plan_model() {
    ThreadPlanModel m{};
    // Start + join of one thread; the best of a few tries, since other processes only add noise.
    m.thread_cost_s = best_time(7, [] {
        std::thread th([] {});
        th.join();
    });
    // Merging one more thread's partial top-k: the tie-rule sort of its hits (k ~ 10..100 per query).
    {
        std::vector<Hit> hits(256);
        uint64_t x = 88172645463325252ull;
        const double sort_s = best_time(5, [&] {
            for (auto& h : hits) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                h = {static_cast<uint32_t>(x % 1024), static_cast<int64_t>(x >> 20)};
            }
            std::sort(hits.begin(), hits.end(), before);
        });
        m.thread_cost_s += sort_s;
    }
    // Scan rate of the active kernel: 8 queries against 2048 codes of 1024 bits, bounds at 0 so
    // nothing is reported (the steady state of a top-k scan).
    {
        const size_t words = 16, n = 2048, nq = 8;
        std::vector<uint8_t> codes(n * words * 8), q(nq * words * 8);
        uint64_t x = 0x9e3779b97f4a7c15ull;
        for (auto& b : codes) x = x * 6364136223846793005ull + 1442695040888963407ull, b = static_cast<uint8_t>(x >> 56);
        for (auto& b : q) x = x * 6364136223846793005ull + 1442695040888963407ull, b = static_cast<uint8_t>(x >> 56);
        const KernelTable& kt = active_kernels();
        std::vector<uint32_t> thr(nq, 0);
        std::vector<ScanHit> hits(nq * n);
        const size_t qb = std::max<size_t>(1, std::min(nq, kt.max_queries));
        const double s = best_time(5, [&] {
            for (size_t a = 0; a < nq; a += qb)
                kt.scan_below(q.data() + a * words * 8, std::min(qb, nq - a), codes.data(), n, words, thr.data(), hits.data());
        });
        m.scan_s_per_word = std::max(s / static_cast<double>(n * nq * words), 1e-13);
    }
    // A thread's share must take at least 8x its cost, so threads add at most ~12% overhead.
    m.min_work_words = 8.0 * m.thread_cost_s / m.scan_s_per_word;
    return m;
}

}  // namespace

uint64_t stream_xor(const CodeView& db) {
    uint64_t acc[4] = {0, 0, 0, 0};
    const size_t words = db.n * db.code_bytes / 8;
    size_t w = 0;
    for (; w + 4 <= words; w += 4)
        for (size_t j = 0; j < 4; ++j) {
            uint64_t x;
            std::memcpy(&x, db.data + 8 * (w + j), 8);
            acc[j] ^= x;
        }
    for (; w < words; ++w) {
        uint64_t x;
        std::memcpy(&x, db.data + 8 * w, 8);
        acc[0] ^= x;
    }
    return acc[0] ^ acc[1] ^ acc[2] ^ acc[3];
}

size_t Segments::find(size_t pos) const noexcept {
    // The last segment whose base is <= pos.
    auto it = std::upper_bound(base_.begin(), base_.end() - 1, pos);
    return static_cast<size_t>(it - base_.begin()) - 1;
}

bool PositionFilter::none_in(size_t lo, size_t hi) const noexcept {
    if (words == nullptr) return lo >= hi;
    if (lo >= hi) return true;
    const size_t w0 = lo >> 6, w1 = (hi - 1) >> 6;
    for (size_t w = w0; w <= w1; ++w) {
        uint64_t bits = words[w];
        if (w == w0) bits &= ~uint64_t{0} << (lo & 63);
        if (w == w1 && (hi & 63)) bits &= ~(~uint64_t{0} << (hi & 63));
        if (bits) return false;
    }
    return true;
}

int hardware_threads() {
    static const int n = [] {
#if defined(__linux__)
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof(set), &set) == 0) {
            const int c = CPU_COUNT(&set);
            if (c > 0) return c;
        }
#endif
        const unsigned hw = std::thread::hardware_concurrency();
        return hw > 0 ? static_cast<int>(hw) : 1;
    }();
    return n;
}

int default_threads() {
    const int t = g_default_threads.load();
    return t > 0 ? std::min(t, hardware_threads()) : hardware_threads();
}

const ThreadPlanModel& thread_plan_model() {
    static const ThreadPlanModel m = measure_plan_model();
    return m;
}

void set_default_threads(int threads) {
    if (threads < 0) throw InvalidArgument("threads must be >= 0 (0 = all cores), got " + std::to_string(threads));
    g_default_threads = std::min(threads, hardware_threads());
}

void set_thread_budget(bool enabled) { g_budget = enabled ? 1 : 0; }
bool thread_budget_enabled() { return budget_on(); }
int threads_free() { return free_cores().load(); }

void knn_search(const Segments& db, const uint8_t* queries, size_t nq, size_t k, int32_t* distances,
                int64_t* positions, const SearchOptions& opt) {
    check_segments(db);
    if (k < 1) throw InvalidArgument("k must be >= 1, got " + std::to_string(k));
    if (nq > 0 && queries == nullptr) throw InvalidArgument("queries: null pointer");
    const KernelTable& kt = opt.kernels ? *opt.kernels : active_kernels();
    const size_t n = db.size(), words = db.code_bytes() / 8;
    auto tasks = plan(n, nq, words, resolve_threads(opt.threads));
    // Split over positions, every task keeps a top-k per query: with a large k that multiplies
    // the heap memory by the thread count, so many queries with a large k split over queries.
    const size_t kk = std::min(k, std::max<size_t>(n, 1));
    if (tasks.size() > 1 && nq >= tasks.size() && tasks[0].q1 - tasks[0].q0 == nq &&
        nq * kk * sizeof(Hit) > (size_t{64} << 20))
        tasks = plan(n, nq, words, static_cast<int>(tasks.size()), true);
    Lease lease(tasks.size());  // concurrent searches share the cores
    if (lease.granted() < tasks.size())
        tasks = plan(n, nq, words, static_cast<int>(lease.granted()), tasks[0].q1 - tasks[0].q0 < nq);

    // heaps[t][q - q0]: task t's top-k for each of its queries; never larger than what the
    // task's positions can return, so a huge k reserves nothing it cannot fill.
    Chunks chunks(tasks, n, nq, words);
    std::vector<std::vector<TopK>> heaps(tasks.size());
    for (size_t t = 0; t < tasks.size(); ++t)
        heaps[t].assign(tasks[t].q1 - tasks[t].q0, TopK(std::min(k, std::max<size_t>(n, 1))));

    std::atomic<bool> stop{false};
    run_tasks(tasks.size(), opt.interrupted, stop, [&](size_t t) {
        Poller poller(opt.interrupted, stop, t == 0);
        auto& h = heaps[t];
        const size_t q0 = tasks[t].q0;
        // Chunk numbers only grow, so one thread still scans its positions in increasing order:
        // a hit at the worst kept distance never beats the one kept (the tie rule holds).
        chunks.each(tasks[t], stop, [&](const Task& part) {
            scan(db, queries, part, kt, opt.filter, poller,
                 [&](size_t q) { return h[q - q0].threshold(); },
                 [&](size_t q, uint32_t d, int64_t pos) { h[q - q0].push({d, pos}); });
        });
    });

    std::vector<Hit> merged;
    for (size_t q = 0; q < nq; ++q) {
        merged.clear();
        for (size_t t = 0; t < tasks.size(); ++t)
            if (q >= tasks[t].q0 && q < tasks[t].q1) {
                const auto& hs = heaps[t][q - tasks[t].q0].hits();
                merged.insert(merged.end(), hs.begin(), hs.end());
            }
        const size_t take = std::min(k, merged.size());
        std::partial_sort(merged.begin(), merged.begin() + static_cast<std::ptrdiff_t>(take), merged.end(), before);
        for (size_t j = 0; j < k; ++j) {
            distances[q * k + j] = j < take ? static_cast<int32_t>(merged[j].d) : INT32_MAX;
            positions[q * k + j] = j < take ? merged[j].pos : -1;
        }
    }
}

RangeResult range_search(const Segments& db, const uint8_t* queries, size_t nq, uint32_t radius,
                         const SearchOptions& opt) {
    check_segments(db);
    if (nq > 0 && queries == nullptr) throw InvalidArgument("queries: null pointer");
    const KernelTable& kt = opt.kernels ? *opt.kernels : active_kernels();
    auto tasks = plan(db.size(), nq, db.code_bytes() / 8, resolve_threads(opt.threads));
    Lease lease(tasks.size());
    if (lease.granted() < tasks.size())
        tasks = plan(db.size(), nq, db.code_bytes() / 8, static_cast<int>(lease.granted()));
    const uint32_t thr = radius == UINT32_MAX ? UINT32_MAX : radius + 1;  // distances never reach 2^32-1
    // Hits counted across tasks in batches, so the cap costs one atomic add per 1024 hits.
    const size_t cap = opt.max_results;
    std::atomic<size_t> total{0};
    auto count = [&](size_t& local) {
        const size_t before_add = total.fetch_add(local);
        local = 0;
        if (before_add > cap || total.load() > cap) throw TooManyResults(cap);
    };

    Chunks chunks(tasks, db.size(), nq, db.code_bytes() / 8);
    std::vector<std::vector<std::vector<Hit>>> found(tasks.size());
    for (size_t t = 0; t < tasks.size(); ++t) found[t].resize(tasks[t].q1 - tasks[t].q0);
    std::atomic<bool> stop{false};
    run_tasks(tasks.size(), opt.interrupted, stop, [&](size_t t) {
        Poller poller(opt.interrupted, stop, t == 0);
        auto& f = found[t];
        const size_t q0 = tasks[t].q0;
        size_t local = 0;
        chunks.each(tasks[t], stop, [&](const Task& part) {
            scan(db, queries, part, kt, opt.filter, poller, [&](size_t) { return thr; },
                 [&](size_t q, uint32_t d, int64_t pos) {
                     f[q - q0].push_back({d, pos});
                     if (++local == 1024) count(local);
                 });
        });
        count(local);
    });
    if (total.load() > cap) throw TooManyResults(cap);

    RangeResult r;
    r.lims.assign(nq + 1, 0);
    r.distances.reserve(total.load());  // exactly: no doubling of the largest arrays
    r.positions.reserve(total.load());
    std::vector<Hit> merged;
    for (size_t q = 0; q < nq; ++q) {
        merged.clear();
        for (size_t t = 0; t < tasks.size(); ++t)
            if (q >= tasks[t].q0 && q < tasks[t].q1) {
                auto& hs = found[t][q - tasks[t].q0];
                merged.insert(merged.end(), hs.begin(), hs.end());
                std::vector<Hit>().swap(hs);
            }
        std::sort(merged.begin(), merged.end(), before);
        for (const Hit& h : merged) {
            r.distances.push_back(static_cast<int32_t>(h.d));
            r.positions.push_back(h.pos);
        }
        r.lims[q + 1] = r.distances.size();
    }
    return r;
}

void pairwise_hamming(const CodeView& a, const CodeView& b, int32_t* out, const SearchOptions& opt) {
    check_widths(a, "a");
    check_widths(b, "b");
    if (a.code_bytes != b.code_bytes)
        throw InvalidArgument("a and b must have the same code width, got " + std::to_string(a.code_bytes * 8) +
                              " and " + std::to_string(b.code_bytes * 8) + " bits");
    const KernelTable& kt = opt.kernels ? *opt.kernels : active_kernels();
    const size_t words = a.code_bytes / 8;
    // Rows of `a` play the queries; tasks cover rectangles of the output matrix.
    auto tasks = plan(b.n, a.n, words, resolve_threads(opt.threads));
    Lease lease(tasks.size());
    if (lease.granted() < tasks.size()) tasks = plan(b.n, a.n, words, static_cast<int>(lease.granted()));
    std::atomic<bool> stop{false};
    run_tasks(tasks.size(), opt.interrupted, stop, [&](size_t t) {
        Poller poller(opt.interrupted, stop, t == 0);
        const Task& tk = tasks[t];
        const size_t width = tk.p1 - tk.p0;
        std::vector<uint32_t> rowbuf(kQueryBatch * width);
        for (size_t i = tk.q0; i < tk.q1; i += kQueryBatch) {
            if (poller.should_stop()) return;
            const size_t nqb = std::min(kQueryBatch, tk.q1 - i);
            kt.hamming_block(a.data + i * a.code_bytes, nqb, b.data + tk.p0 * b.code_bytes, width, words, rowbuf.data());
            for (size_t r = 0; r < nqb; ++r)
                std::copy(rowbuf.begin() + r * width, rowbuf.begin() + (r + 1) * width, out + (i + r) * b.n + tk.p0);
        }
    });
}

}  // namespace bne
