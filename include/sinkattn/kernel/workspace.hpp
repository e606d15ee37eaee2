#pragma once
// Per-thread scratch memory, allocated on first use and reused by every later call on that
// thread: the hot path never allocates once a thread has run one call of a given size.

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

#include "sinkattn/tile/simd.hpp"

namespace sinkattn::detail {

// Frees floats from ::operator new(bytes, std::align_val_t(tile::kAlign)).
struct AlignedFree {
  void operator()(float* p) const { ::operator delete(p, std::align_val_t(tile::kAlign)); }
};

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
  std::unique_ptr<float, AlignedFree> buf_;
  std::size_t capacity_ = 0;
};

// The calling thread's workspace.
inline Workspace& thread_workspace() {
  thread_local Workspace ws;
  return ws;
}

// A workspace a thread keeps between calls for large scratch (packed K/V, neighborhood K/V
// copies), and whether a call on this thread is using it: an executor may run another call on
// the waiting caller's thread, which must not take the buffer in use.
struct KeptWorkspace {
  Workspace ws;
  bool busy = false;
};

// One call's scratch of n floats: from `kept` when use_kept and it is free (busy until the
// lease ends), else memory of the call's own, freed with the lease. data() null: no memory.
class ScratchLease {
 public:
  ScratchLease(KeptWorkspace& kept, std::size_t n, bool use_kept) {
    if (use_kept && !kept.busy) data_ = kept.ws.try_floats(n);
    if (data_ != nullptr) {
      kept.busy = true;
      kept_ = &kept;
      return;
    }
    own_.reset(static_cast<float*>(::operator new(n * sizeof(float), std::align_val_t(tile::kAlign), std::nothrow)));
    data_ = own_.get();
  }
  ~ScratchLease() {
    if (kept_ != nullptr) kept_->busy = false;
  }
  ScratchLease(const ScratchLease&) = delete;
  ScratchLease& operator=(const ScratchLease&) = delete;
  float* data() const { return data_; }

 private:
  KeptWorkspace* kept_ = nullptr;
  std::unique_ptr<float, AlignedFree> own_;
  float* data_ = nullptr;
};

}  // namespace sinkattn::detail
