// FlatIndex: codes held in a 64-byte aligned, growable buffer; exact search over them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "bne/search.hpp"

namespace bne {

class FlatIndex {
public:
    explicit FlatIndex(size_t bits);  // bits: a positive multiple of 64
    FlatIndex(const FlatIndex&) = delete;
    FlatIndex& operator=(const FlatIndex&) = delete;

    size_t bits() const noexcept { return bits_; }
    size_t code_bytes() const noexcept { return bits_ / 8; }
    size_t size() const noexcept { return n_; }
    CodeView view() const noexcept { return {data_.get(), n_, code_bytes()}; }

    // Appends n codes of code_bytes() bytes each.
    void add(const uint8_t* codes, size_t n);
    void reserve(size_t n);
    void reset() noexcept { n_ = 0; }

private:
    struct AlignedFree {
        void operator()(uint8_t* p) const noexcept;
    };
    size_t bits_;
    size_t n_ = 0;
    size_t capacity_ = 0;
    std::unique_ptr<uint8_t[], AlignedFree> data_;
};

// Checks that bits is a positive multiple of 64 (InvalidArgument naming `what` otherwise).
void check_bits(size_t bits, const char* what = "bits");

}  // namespace bne
