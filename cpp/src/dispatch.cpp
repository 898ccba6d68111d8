// CPU detection and kernel choice. Baseline flags only: this file must run on any x86-64.
#include "bne/dispatch.hpp"

#include <atomic>
#include <cstdlib>
#include <string>

#include "bne/errors.hpp"

#if defined(BNE_X86)
#include <cpuid.h>
#endif

namespace bne {
namespace {

struct CpuFeatures {
    bool avx2 = false;
    bool avx512 = false;  // F + BW + VL + VPOPCNTDQ, with ZMM state enabled by the OS
};

CpuFeatures detect() noexcept {
    CpuFeatures f;
#if defined(BNE_X86)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
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
    return f;
}

const CpuFeatures& features() noexcept {
    static const CpuFeatures f = detect();
    return f;
}

const KernelTable* lookup(const std::string& isa) noexcept {
    if (isa == "serial") return &kernels::serial::table;
#if defined(BNE_X86)
    if (isa == "avx2" && features().avx2) return &kernels::avx2::table;
    if ((isa == "avx512" || isa == "avx512vpopcnt") && features().avx512) return &kernels::avx512::table;
#endif
    return nullptr;
}

std::string known_list() {
    std::string s;
    for (auto& name : available_isas()) s += (s.empty() ? "" : ", ") + name;
    return s;
}

const KernelTable& require(const std::string& isa, const char* source) {
    if (const KernelTable* t = lookup(isa)) return *t;
    const bool known = isa == "serial" || isa == "avx2" || isa == "avx512" || isa == "avx512vpopcnt";
    throw InvalidArgument(std::string(source) + ": " +
                          (known ? "this CPU does not support ISA '" : "unknown ISA '") + isa +
                          "'; available: " + known_list());
}

const KernelTable* initial() {
    if (const char* env = std::getenv("BNE_ISA"); env && *env) return &require(env, "BNE_ISA");
    const auto isas = available_isas();
    return lookup(isas.back());
}

std::atomic<const KernelTable*>& active_slot() {
    // Function-local static: initialised once, thread-safely, on first use.
    static std::atomic<const KernelTable*> slot{initial()};
    return slot;
}

}  // namespace

std::vector<std::string> available_isas() {
    std::vector<std::string> out{"serial"};
    if (features().avx2) out.emplace_back("avx2");
    if (features().avx512) out.emplace_back("avx512");
    return out;
}

const KernelTable& active_kernels() { return *active_slot().load(std::memory_order_acquire); }

const KernelTable& kernels_for(const std::string& isa) { return require(isa, "isa"); }

void set_isa(const std::string& isa) {
    const KernelTable& t = require(isa, "isa");
    active_slot().store(&t, std::memory_order_release);
}

}  // namespace bne
