// CPU detection and kernel choice. Baseline flags only: this file must run on any x86-64 (or,
// on Arm, any aarch64 CPU).
#include "bne/dispatch.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "bne/errors.hpp"

#if defined(BNE_X86)
#include <cpuid.h>
#endif
#if defined(BNE_ARM) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_SVE
#define HWCAP_SVE (1UL << 22)
#endif
#endif
#if defined(BNE_ARM) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace bne {
namespace {

struct CpuFeatures {
    bool avx2 = false;
    bool avx512 = false;  // F + BW + VL + VPOPCNTDQ, with ZMM state enabled by the OS
    bool neon = false;    // aarch64: Advanced SIMD (always there; the baseline)
    bool sve = false;     // aarch64: SVE, reported by the kernel (getauxval(AT_HWCAP) & HWCAP_SVE)
    std::string vendor, brand;
    unsigned family = 0, model = 0;
};

#if defined(BNE_ARM)
// Vendor and core names from the Linux MIDR_EL1 register file (implementer, part number).
void describe_arm(CpuFeatures& f) {
    f.vendor = "aarch64";
#if defined(__APPLE__)
    char s[128] = {0};
    size_t len = sizeof s - 1;
    if (sysctlbyname("machdep.cpu.brand_string", s, &len, nullptr, 0) == 0) f.brand = s;
    f.vendor = "Apple";
#elif defined(__linux__)
    std::FILE* fp = std::fopen("/sys/devices/system/cpu/cpu0/regs/identification/midr_el1", "r");
    unsigned long long midr = 0;
    const bool ok = fp && std::fscanf(fp, "%llx", &midr) == 1;
    if (fp) std::fclose(fp);
    if (!ok) return;
    f.family = static_cast<unsigned>(midr >> 24) & 0xffu;  // implementer
    f.model = static_cast<unsigned>(midr >> 4) & 0xfffu;   // part number
    static const struct { unsigned code; const char* name; } vendors[] = {
        {0x41, "ARM"}, {0x42, "Broadcom"}, {0x43, "Cavium"}, {0x46, "Fujitsu"}, {0x48, "HiSilicon"},
        {0x4e, "NVIDIA"}, {0x51, "Qualcomm"}, {0x61, "Apple"}, {0x6d, "Microsoft"}, {0xc0, "Ampere"}};
    for (const auto& v : vendors)
        if (v.code == f.family) f.vendor = v.name;
    static const struct { unsigned part; const char* name; } arm_parts[] = {
        {0xd08, "Cortex-A72"}, {0xd0b, "Cortex-A76"}, {0xd0c, "Neoverse N1"}, {0xd40, "Neoverse V1"},
        {0xd49, "Neoverse N2"}, {0xd4f, "Neoverse V2"}, {0xd8e, "Neoverse N3"}, {0xd84, "Neoverse V3"}};
    if (f.family == 0x41)
        for (const auto& p : arm_parts)
            if (p.part == f.model) f.brand = p.name;
#endif
}
#endif

CpuFeatures detect() noexcept {
    CpuFeatures f;
#if defined(BNE_X86)
    unsigned a, b, c, d;
    if (__get_cpuid(0, &a, &b, &c, &d)) {
        char v[13];
        std::memcpy(v, &b, 4);
        std::memcpy(v + 4, &d, 4);
        std::memcpy(v + 8, &c, 4);
        v[12] = 0;
        f.vendor = v;
    }
    if (__get_cpuid(0x80000000u, &a, &b, &c, &d) && a >= 0x80000004u) {
        char s[49] = {0};
        for (unsigned i = 0; i < 3; ++i) {
            unsigned r[4];
            __get_cpuid(0x80000002u + i, &r[0], &r[1], &r[2], &r[3]);
            std::memcpy(s + 16 * i, r, 16);
        }
        f.brand = s;
        while (!f.brand.empty() && f.brand.back() == ' ') f.brand.pop_back();
        while (!f.brand.empty() && f.brand.front() == ' ') f.brand.erase(f.brand.begin());
    }
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const unsigned base_family = (a >> 8) & 0xf, ext_family = (a >> 20) & 0xff;
    const unsigned base_model = (a >> 4) & 0xf, ext_model = (a >> 16) & 0xf;
    f.family = base_family == 0xf ? base_family + ext_family : base_family;
    f.model = (base_family == 0x6 || base_family == 0xf) ? (ext_model << 4) + base_model : base_model;
    const bool osxsave = c & (1u << 27), popcnt = c & (1u << 23);
    if (!osxsave || !popcnt) return f;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    const bool ymm_state = (xcr0_lo & 0x6u) == 0x6u;           // SSE + AVX state
    const bool zmm_state = (xcr0_lo & 0xe6u) == 0xe6u;         // + opmask, ZMM_Hi256, Hi16_ZMM
    if (__get_cpuid_max(0, nullptr) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    const bool avx2 = b & (1u << 5);
    const bool avx512f = b & (1u << 16), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
    const bool vpopcntdq = c & (1u << 14);
    f.avx2 = ymm_state && avx2;
    f.avx512 = f.avx2 && zmm_state && avx512f && avx512bw && avx512vl && vpopcntdq;
#endif
#if defined(BNE_ARM)
    f.neon = true;  // Advanced SIMD is mandatory in the aarch64 ABI the core is built for
#if defined(BNE_HAVE_SVE) && defined(__linux__)
    f.sve = (getauxval(AT_HWCAP) & HWCAP_SVE) != 0;
#endif
    describe_arm(f);
#endif
    return f;
}

const CpuFeatures& features() noexcept {
    static const CpuFeatures f = detect();
    return f;
}

// The AVX-512 variant for this CPU, and why. The prior comes from the CPU family: AMD before
// family 0x1a (Zen 4) runs 512-bit ops as two 256-bit halves, where 256-bit kernels used to
// win; Intel (Ice Lake and later: one VPOPCNTQ port doing 512 bits) and Zen 5 (full-width
// units) favour 512-bit. Then a quick calibration (both kernels on the same small in-cache
// block, best of several tries, well under a millisecond) overrules the prior only when the
// other variant is clearly (15%) faster on this very CPU, so the choice does not flip with
// noise from one process to the next. Measured on Zen 4 (1M x 1024 bits, 16 queries, one
// core): the two are within a few percent; at 2048 bits 256-bit is 13% faster.
struct Choice {
    const KernelTable* table;
    std::string reason;
};

// Best time of a fused scan of 16 queries over 1024 codes of 1024 bits, bounds 0 (no hits).
double calibrate(const KernelTable& kt) {
    const size_t words = 16, n = 1024, nq = 16;
    static const std::vector<uint8_t> data = [] {
        std::vector<uint8_t> d((n + nq) * words * 8);
        uint64_t x = 0x2545f4914f6cdd1dull;
        for (auto& b : d) x = x * 6364136223846793005ull + 1442695040888963407ull, b = static_cast<uint8_t>(x >> 56);
        return d;
    }();
    std::vector<uint32_t> thr(nq, 0);
    std::vector<ScanHit> hits(nq * n);
    double best = 1e30;
    for (int r = 0; r < 7; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        for (size_t a = 0; a < nq; a += kt.max_queries)
            kt.scan_below(data.data() + n * words * 8 + a * words * 8, std::min(kt.max_queries, nq - a), data.data(), n,
                          words, thr.data(), hits.data());
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best / static_cast<double>(n * nq) * 1e9;  // ns per (query, code) pair
}

Choice preferred_avx512() {
#if defined(BNE_X86)
    static const Choice choice = [] {
        const auto& f = features();
        const std::string cpu = f.vendor + " family " + std::to_string(f.family) + " model " + std::to_string(f.model) +
                                (f.brand.empty() ? "" : " (" + f.brand + ")");
        const bool split_units = f.vendor == "AuthenticAMD" && f.family < 0x1a;
        const KernelTable* prior = split_units ? &kernels::avx512::table256 : &kernels::avx512::table512;
        const KernelTable* other = split_units ? &kernels::avx512::table512 : &kernels::avx512::table256;
        const double tp = calibrate(*prior), to = calibrate(*other);
        char nums[160];
        std::snprintf(nums, sizeof nums, "calibration: %s %.3f ns, %s %.3f ns per (query, code) pair at 1024 bits",
                      prior->name, tp, other->name, to);
        const std::string why = split_units ? "Zen 4 class, where 512-bit ops are split in two 256-bit halves"
                                            : "full-width 512-bit VPOPCNTQ (Intel Ice Lake and later, AMD Zen 5)";
        if (to < 0.85 * tp)  // only a clear win overrules the prior: the choice must not flip with noise
            return Choice{other, cpu + ": " + why + ", but " + other->name + " measured faster here; " + nums};
        return Choice{prior, cpu + ": " + why + ", so " + prior->name + "; " + nums};
    }();
    return choice;
#else
    return {nullptr, ""};
#endif
}

// The ISA table: every kernel variant, plainest first (the order of available_isas() and
// available_kernels(), and the last available ISA is the default). Rows of the other
// architecture stay (table nullptr, never available) so their names give "this CPU does not
// support" rather than "unknown". `why` says why naming the ISA picked this variant; an ISA with
// several variants (avx512) picks one with prefer_variant() instead.
struct Variant {
    const char* isa;           // the ISA family, e.g. "avx512"
    const char* name;          // this variant, e.g. "avx512-256"
    const KernelTable* table;  // nullptr where this build has no such kernel
    bool (*available)();       // this CPU and OS run it
    std::string (*why)();
};

#if defined(BNE_X86)
constexpr const KernelTable* kAvx2 = &kernels::avx2::table;
constexpr const KernelTable* kAvx512_256 = &kernels::avx512::table256;
constexpr const KernelTable* kAvx512_512 = &kernels::avx512::table512;
#else
constexpr const KernelTable* kAvx2 = nullptr;
constexpr const KernelTable* kAvx512_256 = nullptr;
constexpr const KernelTable* kAvx512_512 = nullptr;
#endif
#if defined(BNE_ARM)
constexpr const KernelTable* kNeon = &kernels::neon::table;
#else
constexpr const KernelTable* kNeon = nullptr;
#endif
#if defined(BNE_ARM) && defined(BNE_HAVE_SVE)
constexpr const KernelTable* kSve = &kernels::sve::table;
std::string sve_bits() { return std::to_string(kernels::sve::vector_bits()); }
#else
constexpr const KernelTable* kSve = nullptr;
std::string sve_bits() { return "?"; }
#endif

const Variant kVariants[] = {
    {"serial", "serial", &kernels::serial::table, [] { return true; },
     [] { return std::string("the portable scalar kernel (std::popcount)"); }},
    {"avx2", "avx2", kAvx2, [] { return features().avx2; },
     [] { return std::string("AVX2 without AVX-512 VPOPCNTDQ: nibble-lookup popcount"); }},
    {"avx512", "avx512-256", kAvx512_256, [] { return features().avx512; }, nullptr},
    {"avx512", "avx512-512", kAvx512_512, [] { return features().avx512; }, nullptr},
    {"neon", "neon", kNeon, [] { return features().neon; },
     [] {
         return std::string(features().sve ? "NEON (Advanced SIMD): vcntq_u8 popcount; SVE is available too"
                                           : "NEON (Advanced SIMD), no SVE on this CPU: vcntq_u8 popcount");
     }},
    {"sve", "sve", kSve, [] { return features().sve; },
     [] { return "SVE (getauxval(AT_HWCAP) & HWCAP_SVE), " + sve_bits() + "-bit vectors: svcnt + svdot popcount"; }},
};

// The variant of a several-variant ISA for this CPU, and why.
Choice prefer_variant(const std::string& isa) {
    if (isa == "avx512") return preferred_avx512();
    return {nullptr, ""};
}

// nullptr when `name` is unknown or this CPU lacks it. Sets *reason for an ISA name.
const KernelTable* lookup(std::string name, std::string* reason = nullptr) {
    if (name == "avx512vpopcnt") name = "avx512";  // an older name of the ISA
    const Variant* only = nullptr;
    size_t variants = 0;
    for (const Variant& v : kVariants)
        if (name == v.isa && v.available()) only = &v, ++variants;
    if (variants > 1) {
        Choice c = prefer_variant(name);
        if (reason) *reason = c.reason;
        return c.table;
    }
    if (only) {
        if (reason) *reason = only->why();
        return only->table;
    }
    for (const Variant& v : kVariants)
        if (name == v.name && v.available()) return v.table;
    return nullptr;
}

bool known(const std::string& name) {
    if (name == "avx512vpopcnt") return true;
    for (const Variant& v : kVariants)
        if (name == v.isa || name == v.name) return true;
    return false;
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
}

const KernelTable& require(const std::string& name, const char* source, std::string* reason = nullptr) {
    if (const KernelTable* t = lookup(name, reason)) return *t;
    throw InvalidArgument(std::string(source) + ": " +
                          (known(name) ? "this CPU does not support ISA '" : "unknown ISA '") + name +
                          "'; available: " + join(available_isas()) + " (kernels: " + join(available_kernels()) + ")");
}

struct Active {
    std::atomic<const KernelTable*> table{nullptr};
    std::mutex mu;
    std::string reason;  // guarded by mu
};

Active& active() {
    // Function-local static: initialised once, thread-safely, on first use.
    static Active* a = [] {
        std::string reason;
        const KernelTable* t;
        if (const char* env = std::getenv("BNE_KERNEL"); env && *env) {
            t = &require(env, "BNE_KERNEL", &reason);
            reason = std::string("BNE_KERNEL=") + env + (reason.empty() ? "" : "; " + reason);
        } else if (const char* isa = std::getenv("BNE_ISA"); isa && *isa) {
            t = &require(isa, "BNE_ISA", &reason);
            reason = std::string("BNE_ISA=") + isa + "; " + reason;
        } else {
            t = lookup(available_isas().back(), &reason);
        }
        auto* s = new Active;  // never freed: searches may run during interpreter exit
        s->table = t;
        s->reason = reason;
        return s;
    }();
    return *a;
}

}  // namespace

std::vector<std::string> available_isas() {
    std::vector<std::string> out;
    for (const Variant& v : kVariants)
        if (v.available() && (out.empty() || out.back() != v.isa)) out.emplace_back(v.isa);
    return out;
}

std::vector<std::string> available_kernels() {
    std::vector<std::string> out;
    for (const Variant& v : kVariants)
        if (v.available()) out.emplace_back(v.name);
    return out;
}

const KernelTable& active_kernels() { return *active().table.load(std::memory_order_acquire); }

const KernelTable& kernels_for(const std::string& name) { return require(name, "isa"); }

void set_isa(const std::string& name) {
    std::string reason;
    const KernelTable& t = require(name, "isa", &reason);
    Active& a = active();
    std::lock_guard<std::mutex> lock(a.mu);
    a.reason = "set_isa('" + name + "')" + (reason.empty() ? "" : "; " + reason);
    a.table.store(&t, std::memory_order_release);
}

KernelInfo kernel_info() {
    const auto& f = features();
    KernelInfo k;
    k.vendor = f.vendor;
    k.brand = f.brand;
    k.family = f.family;
    k.model = f.model;
    Active& a = active();
    std::lock_guard<std::mutex> lock(a.mu);
    const KernelTable& t = *a.table.load();
    k.isa = t.isa;
    k.kernel = t.name;
    k.reason = a.reason;
    return k;
}

}  // namespace bne
