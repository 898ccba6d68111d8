// Run-time choice of kernels: detect the CPU once (cpuid + xgetbv), honour BNE_ISA, allow a
// forced ISA for tests and benchmarks.
#pragma once
#include <string>
#include <vector>

#include "bne/kernels.hpp"

namespace bne {

// ISAs this CPU and OS can run, from the plainest ("serial") to the best.
std::vector<std::string> available_isas();

// The kernel table in use. The first call picks the best available ISA, or BNE_ISA if set
// (throws InvalidArgument if BNE_ISA names an unknown ISA or one this CPU lacks).
const KernelTable& active_kernels();

// Forces an ISA for every later search in this process (InvalidArgument if unavailable).
void set_isa(const std::string& isa);

// The table for a named ISA, without changing the active one (InvalidArgument if unavailable).
const KernelTable& kernels_for(const std::string& isa);

}  // namespace bne
