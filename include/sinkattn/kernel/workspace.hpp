#pragma once
// Per-thread scratch memory, allocated on first use and reused by every later call on that
// thread: the hot path never allocates once a thread has run one call of a given size.

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

#include "sinkattn/tile/simd.hpp"

namespace sinkattn::detail {

class Workspace {
 public:
  // At least n floats, aligned to tile::kAlign. Contents are unspecified.
  float* floats(std::size_t n) {
    if (n > capacity_) {
      const std::size_t bytes = (n * sizeof(float) + tile::kAlign - 1) / tile::kAlign * tile::kAlign;
      buf_.reset(static_cast<float*>(::operator new(bytes, std::align_val_t(tile::kAlign))));
      capacity_ = bytes / sizeof(float);
    }
    return buf_.get();
  }
  std::size_t capacity() const { return capacity_; }  // floats
  // The same, or null (the buffer unchanged) when the memory cannot be had.
  float* try_floats(std::size_t n) {
    if (n > capacity_) {
      const std::size_t bytes = (n * sizeof(float) + tile::kAlign - 1) / tile::kAlign * tile::kAlign;
      float* p = static_cast<float*>(::operator new(bytes, std::align_val_t(tile::kAlign), std::nothrow));
      if (p == nullptr) return nullptr;
      buf_.reset(p);
      capacity_ = bytes / sizeof(float);
    }
    return buf_.get();
  }

 private:
  struct Free {
    void operator()(float* p) const { ::operator delete(p, std::align_val_t(tile::kAlign)); }
  };
  std::unique_ptr<float, Free> buf_;
  std::size_t capacity_ = 0;
};

// The calling thread's workspace.
inline Workspace& thread_workspace() {
  thread_local Workspace ws;
  return ws;
}

}  // namespace sinkattn::detail
