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

namespace sinkattn::detail {

// Alignment of every block: a cache line, and a whole number of the widest SIMD vector.
inline constexpr std::size_t kMemoryAlign = 64;

// The largest block, in bytes, the library asks the allocator for (default: no limit). A
// larger request fails as an allocator out of memory would: the call then takes a path that
// needs less (packed K/V, neighborhood copies: read in place instead) or returns
// Errc::out_of_memory. Tests lower it to take those paths; an engine may, to bound the
// library's memory.
inline std::atomic<std::size_t> scratch_limit{std::numeric_limits<std::size_t>::max()};

// Frees floats from alloc_floats.
struct AlignedFree {
  void operator()(float* p) const { ::operator delete(p, std::align_val_t(kMemoryAlign)); }
};
using FloatBuffer = std::unique_ptr<float, AlignedFree>;

// At least n floats aligned to kMemoryAlign (*got: how many, a whole number of kMemoryAlign
// bytes), or null when the allocator has no memory or the request exceeds scratch_limit or
// size_t. The callers turn null into a Status or a path that needs less memory.
inline float* alloc_floats(std::size_t n, std::size_t* got = nullptr) noexcept {
  if (n > (std::numeric_limits<std::size_t>::max() - kMemoryAlign) / sizeof(float)) return nullptr;
  const std::size_t bytes = (n * sizeof(float) + kMemoryAlign - 1) / kMemoryAlign * kMemoryAlign;
  if (bytes > scratch_limit.load(std::memory_order_relaxed)) return nullptr;
  auto* p = static_cast<float*>(::operator new(bytes, std::align_val_t(kMemoryAlign), std::nothrow));
  if (p != nullptr && got != nullptr) *got = bytes / sizeof(float);
  return p;
}

// The error of a call that could not get n floats for `what`.
inline Status no_memory_status(std::size_t n, const char* what) {
  return Status(Errc::out_of_memory,
                std::string(what) + ": " + std::to_string(n) + " floats of memory could not be allocated");
}

}  // namespace sinkattn::detail
