// Exact BM25 top-k over posting lists (bne.lexical_postings): accumulate, MaxScore pruning,
// candidate completion and top-k in one pass per term, without Python. Plain C++ (no ISA flags).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bne::bm25 {

// One segment's postings of a term, as lexical_postings._pack writes them: docs = int32 ids, or
// the first id as int32 then uint16 gaps; tfs = uint8 or uint16 (told apart by length against df).
struct PostingList {
    int32_t seg = 0;
    int64_t df = 0;
    const uint8_t* docs = nullptr;
    size_t docs_len = 0;
    const uint8_t* tfs = nullptr;
    size_t tfs_len = 0;
};

// A query term: its bound idf * (k1 + 1) (which is also its weight) and its lists. A query's terms
// come sorted by bound, largest (rarest) first, and each term's lists hold each live id once.
struct Term {
    double weight = 0;
    std::vector<PostingList> lists;
};

// Per-id data shared by every query of one index state (read only here).
struct Index {
    const double* knorm = nullptr;  // k1 (1 - b + b dl / avgdl) per id
    uint64_t knorm_key = 0;  // names this knorm's content (0: none); a worker reuses its copy of the same key
    size_t n = 0;                   // ids are < n
    const int32_t* seg_of = nullptr;  // live segment of each id; null when nothing is deleted
    const uint8_t* allowed = nullptr;  // nonzero = may be returned; null = all; ids >= allowed_n are not
    size_t allowed_n = 0;
};

struct Result {
    std::vector<int64_t> ids;  // best first, ties by id
    std::vector<double> scores;
    int cut = 0;  // terms scored fully (the rest only for MaxScore's candidates)
};

struct Options {
    size_t limit = 10;
    bool prune = true;
    int64_t prune_min_postings = 2048;  // MaxScore checks only before terms with this many postings left
};

// Throws std::invalid_argument on a damaged list (bad lengths, ids out of range).
Result search(const std::vector<Term>& query, const Index& index, const Options& opt);

// Each query as search() would answer it, on up to `threads` threads (0: bne::default_threads()).
std::vector<Result> search_many(const std::vector<std::vector<Term>>& queries, const Index& index, const Options& opt,
                                int threads);

}  // namespace bne::bm25
