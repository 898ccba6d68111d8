// Run-time choice of kernels: detect the CPU once (cpuid + xgetbv), pick the variant that is
// fastest on it, honour BNE_ISA / BNE_KERNEL, allow a forced choice for tests and benchmarks.
//
// Names: an ISA ("serial", "avx2", "avx512") is an instruction-set family; a kernel is one
// variant of it ("serial", "avx2", "avx512-256", "avx512-512"). Naming an ISA selects its
// preferred variant on this CPU; naming a kernel selects exactly that one. On aarch64 the ISAs
// are "serial", "neon" and "sve" (getauxval(AT_HWCAP)), one kernel each.
#pragma once
#include <string>
#include <vector>

#include "bne/kernels.hpp"

namespace bne {

// ISAs this CPU and OS can run, from the plainest ("serial") to the best.
std::vector<std::string> available_isas();

// Kernel variants this CPU can run, plainest first.
std::vector<std::string> available_kernels();

// The kernel table in use. The first call picks the preferred variant of the best ISA, or
// BNE_KERNEL / BNE_ISA if set (InvalidArgument if they name something unknown or unavailable).
const KernelTable& active_kernels();

// Forces an ISA or kernel for every later search in this process (InvalidArgument if unavailable).
void set_isa(const std::string& isa_or_kernel);

// The table for a named ISA or kernel, without changing the active one (InvalidArgument if unavailable).
const KernelTable& kernels_for(const std::string& isa_or_kernel);

// What the dispatcher saw and decided, for bne.kernel_info().
struct KernelInfo {
    std::string vendor;  // cpuid vendor string, e.g. "AuthenticAMD"
    std::string brand;   // cpuid brand string, e.g. "AMD EPYC 9R14 96-Core Processor"
    unsigned family = 0, model = 0;  // display family / model (extended fields folded in)
    std::string isa, kernel;         // active now
    std::string reason;              // why this kernel was chosen
};
KernelInfo kernel_info();

}  // namespace bne
