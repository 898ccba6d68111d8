// Exceptions thrown by the core. The bindings map them to Python:
// InvalidArgument -> ValueError, FormatError -> bne.IndexFormatError (a ValueError),
// IoError -> OSError, Interrupted -> KeyboardInterrupt.
#pragma once
#include <stdexcept>
#include <string>

namespace bne {

struct InvalidArgument : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

struct FormatError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct IoError : std::runtime_error {
    int err;
    IoError(const std::string& what, int err_) : std::runtime_error(what), err(err_) {}
};

// Thrown when the caller's interrupt check asked a long search to stop.
struct Interrupted : std::runtime_error {
    Interrupted() : std::runtime_error("search interrupted") {}
};

}  // namespace bne
