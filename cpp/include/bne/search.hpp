// Exact top-k and range search over a contiguous array of packed codes.
//
// Tie rule (everywhere): results are ordered by (distance, position); among equal distances the
// smaller position comes first, so the top-k set is unique.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "bne/kernels.hpp"

namespace bne {

// Read-only view of n codes of code_bytes bytes each (owned buffer or memory mapping).
struct CodeView {
    const uint8_t* data = nullptr;
    size_t n = 0;
    size_t code_bytes = 0;
};

// Optional filter: position i is searchable iff bit (i % 64) of words[i / 64] is set.
struct PositionFilter {
    const uint64_t* words = nullptr;  // nullptr: every position is searchable
    bool allows(size_t i) const noexcept {
        return words == nullptr || ((words[i >> 6] >> (i & 63)) & 1u);
    }
};

struct SearchOptions {
    int threads = 0;  // 0: every hardware thread
    // Called by the calling thread every few milliseconds while workers scan; returning true
    // stops the search and throws Interrupted. May be empty.
    std::function<bool()> interrupted;
    PositionFilter filter;
    const KernelTable* kernels = nullptr;  // nullptr: active_kernels()
};

// Writes distances[nq*k] and positions[nq*k]; rows with fewer than k hits are padded with
// position -1 and distance INT32_MAX.
void knn_search(const CodeView& db, const uint8_t* queries, size_t nq, size_t k, int32_t* distances,
                int64_t* positions, const SearchOptions& opt = {});

// Every code with distance <= radius, per query sorted by (distance, position).
// lims has nq+1 entries: the hits of query q are [lims[q], lims[q+1]).
struct RangeResult {
    std::vector<size_t> lims;
    std::vector<int32_t> distances;
    std::vector<int64_t> positions;
};
RangeResult range_search(const CodeView& db, const uint8_t* queries, size_t nq, uint32_t radius,
                         const SearchOptions& opt = {});

// Full distance matrix out[na*nb] between two code arrays of the same width.
void pairwise_hamming(const CodeView& a, const CodeView& b, int32_t* out,
                      const SearchOptions& opt = {});

// Reads every byte of the codes once (XOR of all words): the memory-bandwidth floor a
// single-query scan is compared with in the benchmarks.
uint64_t stream_xor(const CodeView& db);

// Default thread count (hardware threads, at least 1), and the process-wide setting used
// when SearchOptions::threads is 0.
int default_threads();
void set_default_threads(int threads);  // 0 restores "all hardware threads"

}  // namespace bne
