// Exceptions thrown by the core. The bindings map them to Python: InvalidArgument -> ValueError,
// Interrupted -> KeyboardInterrupt. (Index files are read and written in Python: storage.py.)
#pragma once
#include <stdexcept>
#include <string>

namespace bne {

struct InvalidArgument : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// Thrown when the caller's interrupt check asked a long search to stop.
struct Interrupted : std::runtime_error {
    Interrupted() : std::runtime_error("search interrupted") {}
};

}  // namespace bne
