// The only file that sees both pybind11 and bne/*.hpp: numpy arrays in, spans to the core,
// outputs allocated here, the GIL released during scans, C++ exceptions mapped to Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <cstring>
#include <new>
#include <optional>
#include <string>

#include "bne/bm25.hpp"
#include "bne/dispatch.hpp"
#include "bne/errors.hpp"
#include "bne/search.hpp"

namespace py = pybind11;

namespace {

// dtype equality by value: a dtype that arrived by pickling (Ray, multiprocessing) is an equal
// but distinct object, so identity (`is`) is the wrong test.
bool is_uint8(const py::array& a) { return a.dtype().kind() == 'u' && a.dtype().itemsize() == 1; }

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// A C-contiguous 2-D uint8 array with `width` bytes per row (width 0: any), or TypeError/ValueError.
bne::CodeView as_codes(const py::array& a, const char* name, size_t width) {
    if (!is_uint8(a))
        throw py::type_error(std::string(name) + " must have dtype uint8 (packed bits), got " +
                             std::string(py::str(a.dtype())));
    if (a.ndim() != 2)
        throw py::value_error(std::string(name) + " must be a 2-D array (n, bytes_per_code), got shape " + shape_str(a));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + " must be C-contiguous; pass numpy.ascontiguousarray(" + name + ")");
    const size_t cols = static_cast<size_t>(a.shape(1));
    if (width && cols != width)
        throw py::value_error(std::string(name) + " must have " + std::to_string(width) + " bytes per row (" +
                              std::to_string(width * 8) + " bits), got " + std::to_string(cols));
    return {static_cast<const uint8_t*>(a.data()), static_cast<size_t>(a.shape(0)), cols};
}

// Runs a core call without the GIL; Ctrl-C (or any pending signal handler that raises) stops it.
template <class Fn>
void without_gil(bne::SearchOptions& opt, Fn fn) {
    std::optional<py::error_already_set> pending;
    opt.interrupted = [&pending]() {
        py::gil_scoped_acquire gil;
        if (PyErr_CheckSignals() != 0) {
            pending.emplace();  // fetches and holds the Python exception (KeyboardInterrupt)
            return true;
        }
        return false;
    };
    try {
        py::gil_scoped_release release;
        fn();
    } catch (const bne::Interrupted&) {
        if (pending) throw std::move(*pending);
        throw;
    }
}

// Allow-list: a bitmap over positions, bit i of byte i/8 (numpy packbits bitorder="little"),
// padded to whole 64-bit words: exactly the words the core filter reads.
std::vector<uint64_t> read_filter(const std::optional<py::array>& allow, size_t n) {
    std::vector<uint64_t> words;
    if (!allow) return words;
    const py::array& a = *allow;
    const size_t need = (n + 63) / 64 * 8;
    if (!is_uint8(a) || a.ndim() != 1 || static_cast<size_t>(a.shape(0)) != need)
        throw py::value_error("allow must be a uint8 bitmap of " + std::to_string(need) +
                              " bytes (numpy.packbits(mask, bitorder='little'), padded to 64-bit words), got dtype " +
                              std::string(py::str(a.dtype())) + " and shape " + shape_str(a));
    words.resize(need / 8);
    auto c = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(a);
    if (need) std::memcpy(words.data(), c.data(), need);  // little-endian: byte order == bit order
    return words;
}

const bne::KernelTable* table_for(const std::optional<std::string>& isa) {
    return isa ? &bne::kernels_for(*isa) : nullptr;
}

// One search's options: threads, the kernels and the allow-list, whose words `filter_words` keeps
// alive for the search.
bne::SearchOptions search_options(const bne::Segments& db, int threads, const std::optional<py::array>& allow,
                                  const std::optional<std::string>& isa, std::vector<uint64_t>& filter_words) {
    filter_words = read_filter(allow, db.size());
    bne::SearchOptions opt;
    opt.threads = threads;
    opt.kernels = table_for(isa);
    opt.filter.words = allow ? filter_words.data() : nullptr;
    return opt;
}

py::tuple knn(const bne::Segments& db, const py::array& queries, long long k, int threads,
              const std::optional<py::array>& allow, const std::optional<std::string>& isa) {
    if (k < 1) throw py::value_error("k must be >= 1, got " + std::to_string(k));
    auto q = as_codes(queries, "queries", db.code_bytes());
    std::vector<uint64_t> filter_words;
    auto opt = search_options(db, threads, allow, isa, filter_words);
    const auto nq = static_cast<py::ssize_t>(q.n), kk = static_cast<py::ssize_t>(k);
    py::array_t<int32_t> D({nq, kk});
    py::array_t<int64_t> I({nq, kk});
    int32_t* d = D.mutable_data();
    int64_t* ids = I.mutable_data();
    without_gil(opt, [&] { bne::knn_search(db, q.data, q.n, static_cast<size_t>(k), d, ids, opt); });
    return py::make_tuple(D, I);
}

// A list of code arrays (the segments of an index, in position order) as one Segments view.
// `keep` holds a reference to every array while the GIL is released. Empty segments cost one
// check each and are not searched.
bne::Segments as_segments(const py::sequence& segments, size_t width, std::vector<py::array>& keep) {
    bne::Segments db(width);
    const size_t count = static_cast<size_t>(py::len(segments));
    keep.reserve(count);
    for (size_t i = 0; i < count; ++i) {
        py::object item = segments[i];
        if (!py::isinstance<py::array>(item))
            throw py::type_error("segments[" + std::to_string(i) + "] must be a numpy uint8 array, got " +
                                 std::string(py::str(item.get_type().attr("__name__"))));
        py::array a = py::reinterpret_borrow<py::array>(item);
        const std::string name = "segments[" + std::to_string(i) + "]";
        auto v = as_codes(a, name.c_str(), width);
        if (v.n == 0) continue;
        keep.push_back(a);
        db.add(v.data, v.n);
    }
    return db;
}

size_t query_width(const py::array& queries) {
    if (!is_uint8(queries) || queries.ndim() != 2) as_codes(queries, "queries", 0);  // raises the clear error
    return static_cast<size_t>(queries.shape(1));
}

template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
    py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
    if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
    return a;
}

py::tuple range(const bne::Segments& db, const py::array& queries, long long radius, int threads,
                const std::optional<py::array>& allow, const std::optional<std::string>& isa, long long max_results) {
    if (max_results < 0) throw py::value_error("max_results must be >= 0, got " + std::to_string(max_results));
    if (radius < 0) throw py::value_error("radius must be >= 0, got " + std::to_string(radius));
    auto q = as_codes(queries, "queries", db.code_bytes());
    std::vector<uint64_t> filter_words;
    auto opt = search_options(db, threads, allow, isa, filter_words);
    opt.max_results = static_cast<size_t>(max_results);
    const uint32_t r = radius > static_cast<long long>(UINT32_MAX - 1) ? UINT32_MAX - 1 : static_cast<uint32_t>(radius);
    bne::RangeResult res;
    without_gil(opt, [&] { res = bne::range_search(db, q.data, q.n, r, opt); });
    std::vector<int64_t> lims(res.lims.begin(), res.lims.end());
    // Each array is freed once copied, so the peak holds one copy of the hits plus one array.
    auto L = to_numpy(lims);
    auto D = to_numpy(res.distances);
    std::vector<int32_t>().swap(res.distances);
    auto I = to_numpy(res.positions);
    return py::make_tuple(L, D, I);
}


// --- BM25 over lexical postings (bne.lexical_postings) ---------------------------------------------

// A query: a list of (weight, [(seg, df, docs bytes, tfs bytes), ...]) terms, largest weight first.
// The bytes stay owned by the caller's list, which outlives the call.
std::vector<bne::bm25::Term> bm25_query(const py::handle& q) {
    std::vector<bne::bm25::Term> terms;
    for (py::handle t : py::reinterpret_borrow<py::sequence>(q)) {
        auto tt = py::reinterpret_borrow<py::tuple>(t);
        if (tt.size() != 2) throw py::value_error("bm25: a term is (weight, lists)");
        bne::bm25::Term term;
        term.weight = tt[0].cast<double>();
        for (py::handle l : py::reinterpret_borrow<py::sequence>(tt[1])) {
            auto lt = py::reinterpret_borrow<py::tuple>(l);
            if (lt.size() != 4 || !PyBytes_Check(lt[2].ptr()) || !PyBytes_Check(lt[3].ptr()))
                throw py::value_error("bm25: a posting list is (seg, df, docs bytes, tfs bytes)");
            bne::bm25::PostingList pl;
            pl.seg = lt[0].cast<int32_t>();
            pl.df = lt[1].cast<int64_t>();
            pl.docs = reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(lt[2].ptr()));
            pl.docs_len = static_cast<size_t>(PyBytes_GET_SIZE(lt[2].ptr()));
            pl.tfs = reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(lt[3].ptr()));
            pl.tfs_len = static_cast<size_t>(PyBytes_GET_SIZE(lt[3].ptr()));
            term.lists.push_back(pl);
        }
        terms.push_back(std::move(term));
    }
    return terms;
}

py::list bm25_many(const py::sequence& queries, const py::array_t<double, py::array::c_style>& knorm,
                   const std::optional<py::array_t<int32_t, py::array::c_style>>& seg_of,
                   const std::optional<py::array>& allowed, long long limit, bool prune, long long prune_min_postings,
                   int threads, unsigned long long knorm_key) {
    if (limit < 1) throw py::value_error("limit must be >= 1, got " + std::to_string(limit));
    if (knorm.ndim() != 1) throw py::value_error("knorm must be 1-D");
    bne::bm25::Index ix;
    ix.knorm = knorm.data();
    ix.n = static_cast<size_t>(knorm.shape(0));
    ix.knorm_key = knorm_key;
    if (seg_of) {
        if (seg_of->ndim() != 1 || static_cast<size_t>(seg_of->shape(0)) != ix.n)
            throw py::value_error("seg_of must be 1-D int32 with one entry per id, as knorm");
        ix.seg_of = seg_of->data();
    }
    if (allowed) {
        const py::array& a = *allowed;
        if (a.dtype().kind() != 'b' || a.ndim() != 1 || !(a.flags() & py::array::c_style))
            throw py::value_error("allowed must be a 1-D contiguous numpy bool array indexed by id");
        ix.allowed = static_cast<const uint8_t*>(a.data());
        ix.allowed_n = static_cast<size_t>(a.shape(0));
    }
    std::vector<std::vector<bne::bm25::Term>> qs;
    for (py::handle q : queries) qs.push_back(bm25_query(q));
    bne::bm25::Options opt;
    opt.limit = static_cast<size_t>(limit);
    opt.prune = prune;
    opt.prune_min_postings = prune_min_postings;
    std::vector<bne::bm25::Result> res;
    {
        py::gil_scoped_release release;
        res = bne::bm25::search_many(qs, ix, opt, threads);
    }
    py::list out;
    for (auto& r : res) out.append(py::make_tuple(to_numpy(r.ids), to_numpy(r.scores), r.cut));
    return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "bne native core: packed-Hamming kernels (serial / AVX2 / AVX-512) and exact search";
#ifdef BNE_VERSION
    m.attr("__version__") = BNE_VERSION;
#endif
    // InvalidArgument derives from std::invalid_argument, which pybind11 maps to ValueError.
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const bne::Interrupted& e) {
            PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
        } catch (const bne::TooManyResults& e) {
            py::object cls = py::module_::import("bne.errors").attr("ResultTooLargeError");
            PyErr_SetString(cls.ptr(), e.what());
        } catch (const std::bad_alloc&) {
            // Python callers check result sizes first; this is the last line, never a bare MemoryError.
            py::object cls = py::module_::import("bne.errors").attr("ResultTooLargeError");
            PyErr_SetString(cls.ptr(),
                            "not enough memory for this search's results (std::bad_alloc); search fewer queries at "
                            "once, or with a smaller k or radius");
        }
    });

    // Resolve the ISA now, so a bad BNE_ISA fails at import with its message, not mid-search.
    bne::active_kernels();

    m.def("available_isas", &bne::available_isas, "ISAs this CPU can run, plainest first.");
    m.def("active_isa", [] { return std::string(bne::active_kernels().isa); }, "The ISA searches use now.");
    m.def("set_isa", &bne::set_isa, py::arg("isa"), "Force an ISA for every later search (ValueError if unavailable).");
    m.def("available_kernels", &bne::available_kernels, "Kernel variants this CPU can run, plainest first.");
    m.def(
        "kernel_info",
        [] {
            const auto k = bne::kernel_info();
            const auto& plan = bne::thread_plan_model();
            py::dict d;
            d["isa"] = k.isa;
            d["kernel"] = k.kernel;
            d["reason"] = k.reason;
            d["cpu"] = k.brand;
            d["vendor"] = k.vendor;
            d["family"] = k.family;
            d["model"] = k.model;
            d["available"] = bne::available_kernels();
            d["cores"] = bne::hardware_threads();
            d["thread_cost_us"] = plan.thread_cost_s * 1e6;
            d["scan_ns_per_word"] = plan.scan_s_per_word * 1e9;
            d["min_work_per_thread"] = plan.min_work_words;
            return d;
        },
        "The kernel in use and why, the CPU it was chosen for, and the measured thread-plan model.");
    m.def("get_num_threads", &bne::default_threads, "Threads a search uses when threads=0.");
    m.def("set_thread_budget", &bne::set_thread_budget, py::arg("enabled"),
          "Share the cores among concurrent searches (default on; off: every search plans with all cores).");
    m.def(
        "thread_budget",
        [] {
            py::dict d;
            d["enabled"] = bne::thread_budget_enabled();
            d["cores"] = bne::hardware_threads();
            d["free"] = bne::threads_free();
            return d;
        },
        "The process-wide thread budget: on or off, cores, cores not taken by running searches now.");
    m.def("set_num_threads", &bne::set_default_threads, py::arg("threads"),
          "Default thread count for searches; 0 restores all cores.");

    m.def(
        "knn",
        [](const py::array& codes, const py::array& queries, long long k, int threads,
           const std::optional<py::array>& allow, const std::optional<std::string>& isa) {
            return knn(as_codes(codes, "codes", 0), queries, k, threads, allow, isa);
        },
        py::arg("codes"), py::arg("queries"), py::arg("k"), py::arg("threads") = 0, py::arg("allow") = py::none(),
        py::arg("isa") = py::none(), "Exact top-k over a 2-D uint8 array of codes: (D int32, I int64).");
    m.def(
        "range_search",
        [](const py::array& codes, const py::array& queries, long long radius, int threads,
           const std::optional<py::array>& allow, const std::optional<std::string>& isa, long long max_results) {
            return range(as_codes(codes, "codes", 0), queries, radius, threads, allow, isa, max_results);
        },
        py::arg("codes"), py::arg("queries"), py::arg("radius"), py::arg("threads") = 0,
        py::arg("allow") = py::none(), py::arg("isa") = py::none(), py::arg("max_results") = LLONG_MAX,
        "Every code within distance <= radius: (lims int64, D int32, I int64).");
    m.def(
        "search_segments",
        [](const py::sequence& segments, const py::array& queries, long long k, int threads,
           const std::optional<py::array>& allow, const std::optional<std::string>& isa) {
            std::vector<py::array> keep;
            return knn(as_segments(segments, query_width(queries), keep), queries, k, threads, allow, isa);
        },
        py::arg("segments"), py::arg("queries"), py::arg("k"), py::arg("threads") = 0, py::arg("allow") = py::none(),
        py::arg("isa") = py::none(),
        "Exact top-k over the segments of an index (code arrays in position order), in one call: "
        "(D int32, I int64 positions). allow: one bitmap over all positions.");
    m.def(
        "range_segments",
        [](const py::sequence& segments, const py::array& queries, long long radius, int threads,
           const std::optional<py::array>& allow, const std::optional<std::string>& isa, long long max_results) {
            std::vector<py::array> keep;
            return range(as_segments(segments, query_width(queries), keep), queries, radius, threads, allow, isa,
                         max_results);
        },
        py::arg("segments"), py::arg("queries"), py::arg("radius"), py::arg("threads") = 0,
        py::arg("allow") = py::none(), py::arg("isa") = py::none(), py::arg("max_results") = LLONG_MAX,
        "Range search over the segments of an index in one call: (lims int64, D int32, I int64 positions).");
    m.def(
        "hamming",
        [](const py::array& a, const py::array& b, int threads, const std::optional<std::string>& isa) {
            auto va = as_codes(a, "a", 0);
            auto vb = as_codes(b, "b", va.code_bytes);
            if (va.code_bytes % 8 != 0)
                throw py::value_error("a must have a multiple of 8 bytes per row (bits a multiple of 64), got " +
                                      std::to_string(va.code_bytes));
            py::array_t<int32_t> out({static_cast<py::ssize_t>(va.n), static_cast<py::ssize_t>(vb.n)});
            int32_t* o = out.mutable_data();
            bne::SearchOptions opt;
            opt.threads = threads;
            opt.kernels = table_for(isa);
            without_gil(opt, [&] { bne::pairwise_hamming(va, vb, o, opt); });
            return out;
        },
        py::arg("a"), py::arg("b"), py::arg("threads") = 0, py::arg("isa") = py::none(),
        "Pairwise Hamming distances (len(a), len(b)) as int32.");

    m.def(
        "stream_xor",
        [](const py::array& codes) {
            auto v = as_codes(codes, "codes", 0);
            py::gil_scoped_release release;
            return bne::stream_xor(v);
        },
        py::arg("codes"), "XOR of every word: reads the codes once (a memory-bandwidth yardstick for benchmarks).");

    // BM25 over lexical postings (bne.lexical_postings)
    m.def("bm25_search", &bm25_many, py::arg("queries"), py::arg("knorm"), py::arg("seg_of"), py::arg("allowed"),
          py::arg("limit"), py::arg("prune") = true, py::arg("prune_min_postings") = 2048, py::arg("threads") = 1,
          py::arg("knorm_key") = 0,
          "Exact BM25 top `limit` of each query (terms as (weight, posting lists), largest weight first) "
          "with MaxScore, the GIL released: [(ids int64, scores float64, terms scored fully)]. knorm_key: a "
          "number naming knorm's content for as long as it lives (0: none), so workers keep their copy of it.");
}
