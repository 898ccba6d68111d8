// Exact top-k and range search over packed codes held in one or more segments.
//
// Tie rule (everywhere): results are ordered by (distance, position); among equal distances the
// smaller position comes first, so the top-k set is unique.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bne/kernels.hpp"

namespace bne {

// Read-only view of n codes of code_bytes bytes each (owned buffer or memory mapping).
struct CodeView {
    const uint8_t* data = nullptr;
    size_t n = 0;
    size_t code_bytes = 0;
};

// The codes of an index as one run of positions: segment s holds positions
// [base[s], base[s + 1]). Segments are read in place (RAM buffers, file mappings); empty ones
// are dropped on construction, so a list of 100,000 empty segments costs nothing to search.
class Segments {
public:
    explicit Segments(size_t code_bytes) : code_bytes_(code_bytes), base_{0} {}
    Segments(const CodeView& one) : Segments(one.code_bytes) { add(one.data, one.n); }  // NOLINT: implicit on purpose
    void add(const uint8_t* data, size_t n) {
        if (n == 0) return;
        data_.push_back(data);
        base_.push_back(base_.back() + n);
    }
    size_t code_bytes() const noexcept { return code_bytes_; }
    size_t size() const noexcept { return base_.back(); }  // positions in all segments
    size_t count() const noexcept { return data_.size(); }
    const uint8_t* data(size_t s) const noexcept { return data_[s]; }
    size_t base(size_t s) const noexcept { return base_[s]; }  // s <= count()
    size_t find(size_t pos) const noexcept;                    // the segment holding pos < size()

private:
    size_t code_bytes_;
    std::vector<const uint8_t*> data_;
    std::vector<size_t> base_;
};

// Optional filter: position i is searchable iff bit (i % 64) of words[i / 64] is set.
struct PositionFilter {
    const uint64_t* words = nullptr;  // nullptr: every position is searchable
    bool allows(size_t i) const noexcept {
        return words == nullptr || ((words[i >> 6] >> (i & 63)) & 1u);
    }
    bool none_in(size_t lo, size_t hi) const noexcept;  // no position of [lo, hi) is searchable
};

struct SearchOptions {
    int threads = 0;  // 0: the default (every core this process may run on); larger: clamped to it
    // Called by the calling thread every few milliseconds while workers scan; returning true
    // stops the search and throws Interrupted. May be empty.
    std::function<bool()> interrupted;
    PositionFilter filter;
    const KernelTable* kernels = nullptr;  // nullptr: active_kernels()
    // range_search only: the most hits (all queries together) it may collect; past it the
    // search stops and throws TooManyResults instead of growing without bound.
    size_t max_results = SIZE_MAX;
};

// A range search found more than SearchOptions::max_results hits.
struct TooManyResults : std::length_error {
    explicit TooManyResults(size_t cap)
        : std::length_error("range search found more than " + std::to_string(cap) + " results"), cap(cap) {}
    size_t cap;
};

// Writes distances[nq*k] and positions[nq*k]; rows with fewer than k hits are padded with
// position -1 and distance INT32_MAX.
// Threads are planned over the union of all segments (one query uses every core; many small
// segments fall into one task), and the partial results are merged once.
void knn_search(const Segments& db, const uint8_t* queries, size_t nq, size_t k, int32_t* distances,
                int64_t* positions, const SearchOptions& opt = {});

// Every code with distance <= radius, per query sorted by (distance, position).
// lims has nq+1 entries: the hits of query q are [lims[q], lims[q+1]).
struct RangeResult {
    std::vector<size_t> lims;
    std::vector<int32_t> distances;
    std::vector<int64_t> positions;
};
RangeResult range_search(const Segments& db, const uint8_t* queries, size_t nq, uint32_t radius,
                         const SearchOptions& opt = {});

// Full distance matrix out[na*nb] between two code arrays of the same width.
void pairwise_hamming(const CodeView& a, const CodeView& b, int32_t* out,
                      const SearchOptions& opt = {});

// Reads every byte of the codes once (XOR of all words): the memory-bandwidth floor a
// single-query scan is compared with in the benchmarks.
uint64_t stream_xor(const CodeView& db);

// Cores this process may run on (its CPU affinity; at least 1). Thread requests are clamped to it.
int hardware_threads();

// Default thread count (hardware_threads()), and the process-wide setting used when
// SearchOptions::threads is 0.
int default_threads();
void set_default_threads(int threads);  // 0 restores "all cores"; larger than the core count: clamped

// Process-wide thread budget: hardware_threads() cores shared by every search running at once.
// A search takes as many of its planned threads as are free (always at least one: its caller)
// and gives them back when it ends, so concurrent searches share the cores instead of each
// starting one thread per core. With one search at a time the plan is unchanged.
// set_thread_budget(false) (or BNE_THREAD_BUDGET=0 in the environment) restores the old
// behaviour, where every search plans with all cores whatever else runs.
void set_thread_budget(bool enabled);
bool thread_budget_enabled();
int threads_free();  // cores not taken by running searches now (negative: callers beyond the cores)

// The thread plan's cost model, measured once per process on first use: the time to start and
// join one thread (plus merging its partial results), and the scan time per word of
// (query, code) pairs of the active kernel. A thread is only started for a slice of work that
// takes several times its own cost.
struct ThreadPlanModel {
    double thread_cost_s;     // start + join of one thread
    double scan_s_per_word;   // scan time per 64-bit word of one (query, code) pair
    double min_work_words;    // least work (nq * rows * words) a thread is given
};
const ThreadPlanModel& thread_plan_model();

}  // namespace bne
