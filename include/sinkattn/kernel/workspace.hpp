#pragma once
// Per-thread scratch memory, allocated on first use and reused by every later call on that
// thread: the hot path never allocates once a thread has run one call of a given size.
// Its allocations may fail (core/memory.hpp): tasks that find no memory note it in NoMemory.

#include <cstddef>
#include <mutex>

#include "sinkattn/core/memory.hpp"
#include "sinkattn/core/status.hpp"
#include "sinkattn/tile/simd.hpp"

namespace sinkattn::detail {

static_assert(kMemoryAlign % tile::kAlign == 0, "alloc_floats must align blocks for the widest vector");

// What scratch a call's tasks could not get. Tasks run on any thread and cannot return a
// Status: a task that finds no memory notes its request here and ends early (its output rows
// unwritten), and the call returns status() once every task is done.
class NoMemory {
 public:
  // A request of n floats for `what` (a string literal naming the buffer) failed.
  void note(std::size_t n, const char* what) {
    const std::lock_guard<std::mutex> lock(mu_);  // (only ever taken on failure)
    if (what_ == nullptr || n > floats_) floats_ = n, what_ = what;
  }
  bool any() const {
    const std::lock_guard<std::mutex> lock(mu_);
    return what_ != nullptr;
  }
  Status status() const {
    const std::lock_guard<std::mutex> lock(mu_);
    return what_ == nullptr ? Status{} : no_memory_status(floats_, what_);
  }

 private:
  mutable std::mutex mu_;
  std::size_t floats_ = 0;
  const char* what_ = nullptr;
};

class Workspace {
 public:
  // At least n floats, aligned to kMemoryAlign, or null (the buffer unchanged) when the
  // memory cannot be had. Contents are unspecified.
  float* try_floats(std::size_t n) {
    if (n > capacity_) {
      std::size_t got = 0;
      float* p = alloc_floats(n, &got);
      if (p == nullptr) return nullptr;
      buf_.reset(p);
      capacity_ = got;
    }
    return buf_.get();
  }
  // The same, a null result noted in `failures` as a request for `what` (a string literal).
  float* floats(std::size_t n, NoMemory& failures, const char* what) {
    float* p = try_floats(n);
    if (p == nullptr) failures.note(n, what);
    return p;
  }
  std::size_t capacity() const { return capacity_; }  // floats

 private:
  FloatBuffer buf_;
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
    own_.reset(alloc_floats(n));
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
  FloatBuffer own_;
  float* data_ = nullptr;
};

}  // namespace sinkattn::detail
