#pragma once
// Error reporting that works with and without exceptions: every entry point returns a
// Status; `check()` turns a bad one into an exception (or an abort under -fno-exceptions).

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#define SINKATTN_HAS_EXCEPTIONS 1
#include <stdexcept>
#else
#define SINKATTN_HAS_EXCEPTIONS 0
#endif

namespace sinkattn {

enum class Errc {
  ok = 0,
  null_data,            // a view with non-zero extent has no data
  negative_size,        // a size or stride-derived extent below zero
  shape_mismatch,       // a view's shape disagrees with the Problem
  heads_not_divisible,  // Hq % Hkv != 0
  aliasing,             // an output overlaps an input
  out_of_range,         // a window, kernel, block, offset... outside its legal range
  invalid_argument,     // anything else the caller got wrong
  unsupported,          // legal, but not implemented by this entry point
  out_of_memory,        // scratch memory the call needs could not be had (outputs then unspecified)
};

inline const char* to_string(Errc e) {
  switch (e) {
    case Errc::ok:
      return "ok";
    case Errc::null_data:
      return "null data";
    case Errc::negative_size:
      return "negative size";
    case Errc::shape_mismatch:
      return "shape mismatch";
    case Errc::heads_not_divisible:
      return "heads not divisible";
    case Errc::aliasing:
      return "aliasing";
    case Errc::out_of_range:
      return "out of range";
    case Errc::invalid_argument:
      return "invalid argument";
    case Errc::unsupported:
      return "unsupported";
    case Errc::out_of_memory:
      return "out of memory";
  }
  return "unknown";
}

// The result of a call. The message names the offending argument, e.g.
// "k: shape[2] (heads) is 3, expected Problem.heads_kv = 2".
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Errc code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status success() { return {}; }
  bool ok() const { return code_ == Errc::ok; }
  explicit operator bool() const { return ok(); }
  Errc code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  Errc code_ = Errc::ok;
  std::string message_;
};

#if SINKATTN_HAS_EXCEPTIONS
// Thrown by check(); carries the Status.
class Error : public std::invalid_argument {
 public:
  explicit Error(Status s) : std::invalid_argument(s.message()), status_(std::move(s)) {}
  const Status& status() const { return status_; }

 private:
  Status status_;
};
#endif

// Throwing convenience: check(forward(...)). Without exceptions a bad status aborts with
// its message, which is still better than a silent wrong answer.
inline void check(const Status& s) {
  if (s.ok()) return;
#if SINKATTN_HAS_EXCEPTIONS
  throw Error(s);
#else
  std::fprintf(stderr, "sinkattn: %s: %s\n", to_string(s.code()), s.message().c_str());
  std::abort();
#endif
}

}  // namespace sinkattn

// Early return of a bad Status from a function that returns Status.
#define SINKATTN_TRY(expr)                     \
  do {                                         \
    ::sinkattn::Status sinkattn_s_ = (expr);   \
    if (!sinkattn_s_.ok()) return sinkattn_s_; \
  } while (0)
