#include "bne/flat_index.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "bne/errors.hpp"

namespace bne {

void check_bits(size_t bits, const char* what) {
    if (bits == 0 || bits % 64 != 0)
        throw InvalidArgument(std::string(what) + " must be a positive multiple of 64, got " + std::to_string(bits));
}

void FlatIndex::AlignedFree::operator()(uint8_t* p) const noexcept { std::free(p); }

FlatIndex::FlatIndex(size_t bits) : bits_(bits) { check_bits(bits); }

void FlatIndex::reserve(size_t n) {
    if (n <= capacity_) return;
    const size_t cb = code_bytes();
    if (n > SIZE_MAX / cb) throw std::bad_alloc();
    size_t bytes = (n * cb + 63) & ~size_t{63};  // aligned_alloc wants a multiple of the alignment
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    if (n_) std::memcpy(p, data_.get(), n_ * cb);
    data_.reset(p);
    capacity_ = n;
}

void FlatIndex::add(const uint8_t* codes, size_t n) {
    if (n == 0) return;
    if (!codes) throw InvalidArgument("codes: null pointer");
    if (n_ + n > capacity_) reserve(std::max(n_ + n, capacity_ + capacity_ / 2));
    std::memcpy(data_.get() + n_ * code_bytes(), codes, n * code_bytes());
    n_ += n;
}

}  // namespace bne
