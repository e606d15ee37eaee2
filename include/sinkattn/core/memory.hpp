#pragma once
// Memory the library allocates itself (scratch, caches, RoPE tables) comes from alloc_floats,
// which never throws: a call that cannot get its memory returns Errc::out_of_memory, with or
// without exceptions, rather than throwing std::bad_alloc or aborting under -fno-exceptions.

#include <atomic>
#include <cstddef>
#include <limits>
#include <memory>
#include <new>
#include <string>

#include "sinkattn/core/status.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace sinkattn::detail {

// Alignment of every block: a cache line, and a whole number of the widest SIMD vector.
inline constexpr std::size_t kMemoryAlign = 64;

// The largest block, in bytes, the library asks the allocator for (default: no limit). A
// larger request fails as an allocator out of memory would: the call then takes a path that
// needs less (packed K/V, neighborhood copies: read in place instead) or returns
// Errc::out_of_memory. Tests lower it to take those paths; an engine may, to bound the
// library's memory.
inline std::atomic<std::size_t> scratch_limit{std::numeric_limits<std::size_t>::max()};

// Frees floats from alloc_floats (align: kMemoryAlign) or alloc_floats_huge.
struct AlignedFree {
  std::size_t align = kMemoryAlign;
  void operator()(float* p) const { ::operator delete(p, std::align_val_t(align)); }
};
using FloatBuffer = std::unique_ptr<float, AlignedFree>;

// At least n floats aligned to `align` (*got: how many, a whole number of `align` bytes; a
// block from another alignment than kMemoryAlign needs AlignedFree{align}), or null when the allocator has no memory or
// the request exceeds scratch_limit or size_t. The callers turn null into a Status or a path that needs less memory.
inline float* alloc_floats(std::size_t n, std::size_t* got = nullptr, std::size_t align = kMemoryAlign) noexcept {
  if (n > (std::numeric_limits<std::size_t>::max() - align) / sizeof(float)) return nullptr;
  const std::size_t bytes = (n * sizeof(float) + align - 1) / align * align;
  if (bytes > scratch_limit.load(std::memory_order_relaxed)) return nullptr;
  auto* p = static_cast<float*>(::operator new(bytes, std::align_val_t(align), std::nothrow));
  if (p != nullptr && got != nullptr) *got = bytes / sizeof(float);
  return p;
}

// A huge page of the x86-64 and AArch64 Linux defaults.
inline constexpr std::size_t kHugePage = std::size_t{2} << 20;

// n floats (null: no memory, as alloc_floats) for a large block that is read from DRAM over
// and over, a KV cache: from 2 MiB on, aligned to and rounded up to huge pages, which Linux is
// asked to back with transparent huge pages (THP in "madvise" or "always" mode; elsewhere, or
// refused, the pages stay small). One TLB entry then maps 2 MiB instead of 4 KiB: split-KV
// decode from a DRAM-resident cache took 0.84-0.90x the time (Zen 4; bench/RESULTS.md, run AQ).
inline FloatBuffer alloc_floats_huge(std::size_t n) noexcept {
  if (n < kHugePage / sizeof(float)) return FloatBuffer(alloc_floats(n));
  std::size_t got = 0;
  float* p = alloc_floats(n, &got, kHugePage);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p != nullptr) (void)::madvise(p, got * sizeof(float), MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
  return FloatBuffer(p, AlignedFree{kHugePage});
}

// The error of a call that could not get n floats for `what`.
inline Status no_memory_status(std::size_t n, const char* what) {
  return Status(Errc::out_of_memory,
                std::string(what) + ": " + std::to_string(n) + " floats of memory could not be allocated");
}

}  // namespace sinkattn::detail
