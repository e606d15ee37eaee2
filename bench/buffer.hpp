#pragma once
// Benchmark input storage: 64-byte aligned float arrays, as engines allocate tensors (a
// std::vector's 16-byte offset would make every 256-byte row span five cache lines). Shared by
// sinkattn_bench and sinkattn_na_paired so that both measure the same buffers.

#include <cstdlib>
#include <memory>
#include <new>

#include "sinkattn/core/types.hpp"

namespace sinkattn_bench {

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float[], AlignedFree>;

// n floats (uninitialised), 64-byte aligned; throws std::bad_alloc.
inline Buffer alloc(sinkattn::index_t n) {
  const std::size_t bytes = (static_cast<std::size_t>(n) * sizeof(float) + 63) / 64 * 64;
  auto* p = static_cast<float*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64));
  if (!p) throw std::bad_alloc();
  return Buffer(p);
}

}  // namespace sinkattn_bench
