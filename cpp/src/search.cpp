// Exact top-k / range search: the database is cut into cache-sized blocks; each block is
// compared with every query of the batch while it sits in L2, through the fused-threshold
// kernel, so only codes that can still enter a query's top-k reach the heap.
// Threads take contiguous slices of the database (so one query uses every core), or slices
// of the queries when the database is too small to split; partial results are merged under
// the (distance, position) tie rule.
#include "bne/search.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "bne/dispatch.hpp"
#include "bne/errors.hpp"

namespace bne {
namespace {

std::atomic<int> g_default_threads{0};

struct Hit {
    uint32_t d;
    int64_t pos;
};
// The tie rule: a ranks before b.
inline bool before(const Hit& a, const Hit& b) noexcept { return a.d != b.d ? a.d < b.d : a.pos < b.pos; }

// Bounded max-heap keeping the k best hits (the worst on top, where it is replaced).
class TopK {
public:
    explicit TopK(size_t k) : k_(k) { heap_.reserve(k); }
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
    return requested > 0 ? requested : default_threads();
}

// Splits the work into at most `threads` tasks: over the database when it is big enough
// (so a single query uses every core), otherwise over the queries.
std::vector<Task> plan(size_t n, size_t nq, size_t words, int threads) {
    constexpr size_t kMinRowsPerThread = 16384;
    constexpr double kMinWorkPerThread = 1 << 23;  // word-ops (~0.5 ms of scan) below which a thread costs more than it saves
    size_t t = static_cast<size_t>(threads);
    const double work = static_cast<double>(n) * static_cast<double>(nq) * static_cast<double>(words);
    t = std::min<size_t>(t, std::max<size_t>(1, static_cast<size_t>(work / kMinWorkPerThread)));
    std::vector<Task> tasks;
    if (t <= 1 || n == 0 || nq == 0) {
        tasks.push_back({0, nq, 0, n});
    } else if (n >= t * kMinRowsPerThread || nq < t) {
        t = std::min(t, n);
        for (size_t i = 0; i < t; ++i) tasks.push_back({0, nq, n * i / t, n * (i + 1) / t});
    } else {
        for (size_t i = 0; i < t; ++i) tasks.push_back({nq * i / t, nq * (i + 1) / t, 0, n});
    }
    return tasks;
}

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

constexpr size_t kQueryBatch = 4;  // queries per kernel call: each loaded code serves all of them

// Scans task t: for each database block (kept in L2), the task's queries in batches through the
// block kernel, then each distance row (still in L1) through the threshold filter, so only codes
// that can still enter a query's top-k reach `sink(q, distance, position)`.
template <class Threshold, class Sink>
void scan(const CodeView& db, const uint8_t* queries, const Task& t, const KernelTable& kt,
          const PositionFilter& filter, Poller& poller, Threshold threshold, Sink sink) {
    const size_t cb = db.code_bytes, words = cb / 8, rows = block_rows(cb);
    std::vector<uint32_t> dbuf(kQueryBatch * rows), idx(rows), dist(rows);
    for (size_t p = t.p0; p < t.p1; p += rows) {
        if (poller.should_stop()) return;
        const size_t nb = std::min(rows, t.p1 - p);
        const uint8_t* block = db.data + p * cb;
        for (size_t q = t.q0; q < t.q1; q += kQueryBatch) {
            const size_t nqb = std::min(kQueryBatch, t.q1 - q);
            kt.hamming_block(queries + q * cb, nqb, block, nb, words, dbuf.data());
            for (size_t a = 0; a < nqb; ++a) {
                const size_t m = kt.filter_below(dbuf.data() + a * nb, nb, threshold(q + a), idx.data(), dist.data());
                for (size_t j = 0; j < m; ++j) {
                    const size_t pos = p + idx[j];
                    if (filter.allows(pos)) sink(q + a, dist[j], static_cast<int64_t>(pos));
                }
            }
        }
    }
}

void check_widths(const CodeView& db, const char* what) {
    if (db.code_bytes == 0 || db.code_bytes % 8 != 0)
        throw InvalidArgument(std::string(what) + ": code width must be a positive multiple of 8 bytes (64 bits), got " +
                              std::to_string(db.code_bytes) + " bytes");
    if (db.n > 0 && db.data == nullptr) throw InvalidArgument(std::string(what) + ": null code pointer");
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

int default_threads() {
    int t = g_default_threads.load();
    if (t > 0) return t;
    unsigned hw = std::thread::hardware_concurrency();
    return hw > 0 ? static_cast<int>(hw) : 1;
}

void set_default_threads(int threads) {
    if (threads < 0) throw InvalidArgument("threads must be >= 0 (0 = all cores), got " + std::to_string(threads));
    g_default_threads = threads;
}

void knn_search(const CodeView& db, const uint8_t* queries, size_t nq, size_t k, int32_t* distances,
                int64_t* positions, const SearchOptions& opt) {
    check_widths(db, "database");
    if (k < 1) throw InvalidArgument("k must be >= 1, got " + std::to_string(k));
    if (nq > 0 && queries == nullptr) throw InvalidArgument("queries: null pointer");
    const KernelTable& kt = opt.kernels ? *opt.kernels : active_kernels();
    const auto tasks = plan(db.n, nq, db.code_bytes / 8, resolve_threads(opt.threads));
    const size_t kk = std::min(k, std::max<size_t>(db.n, 1));  // never reserve more than can be found

    // heaps[t][q - q0]: task t's top-k for each of its queries.
    std::vector<std::vector<TopK>> heaps(tasks.size());
    for (size_t t = 0; t < tasks.size(); ++t) heaps[t].assign(tasks[t].q1 - tasks[t].q0, TopK(kk));

    std::atomic<bool> stop{false};
    run_tasks(tasks.size(), opt.interrupted, stop, [&](size_t t) {
        Poller poller(opt.interrupted, stop, t == 0);
        auto& h = heaps[t];
        const size_t q0 = tasks[t].q0;
        scan(db, queries, tasks[t], kt, opt.filter, poller,
             [&](size_t q) { return h[q - q0].threshold(); },
             [&](size_t q, uint32_t d, int64_t pos) { h[q - q0].push({d, pos}); });
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

RangeResult range_search(const CodeView& db, const uint8_t* queries, size_t nq, uint32_t radius,
                         const SearchOptions& opt) {
    check_widths(db, "database");
    if (nq > 0 && queries == nullptr) throw InvalidArgument("queries: null pointer");
    const KernelTable& kt = opt.kernels ? *opt.kernels : active_kernels();
    const auto tasks = plan(db.n, nq, db.code_bytes / 8, resolve_threads(opt.threads));
    const uint32_t thr = radius == UINT32_MAX ? UINT32_MAX : radius + 1;  // distances never reach 2^32-1

    std::vector<std::vector<std::vector<Hit>>> found(tasks.size());
    for (size_t t = 0; t < tasks.size(); ++t) found[t].resize(tasks[t].q1 - tasks[t].q0);
    std::atomic<bool> stop{false};
    run_tasks(tasks.size(), opt.interrupted, stop, [&](size_t t) {
        Poller poller(opt.interrupted, stop, t == 0);
        auto& f = found[t];
        const size_t q0 = tasks[t].q0;
        scan(db, queries, tasks[t], kt, opt.filter, poller, [&](size_t) { return thr; },
             [&](size_t q, uint32_t d, int64_t pos) { f[q - q0].push_back({d, pos}); });
    });

    RangeResult r;
    r.lims.assign(nq + 1, 0);
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
    const auto tasks = plan(b.n, a.n, words, resolve_threads(opt.threads));
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
