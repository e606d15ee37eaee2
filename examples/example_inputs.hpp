#pragma once
// Inputs shared by the examples: deterministic values in [-1, 1) from a tiny LCG, so every
// example prints the same numbers on every machine.

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sinkattn_examples {

inline std::vector<float> random_values(std::size_t n, std::uint32_t seed) {
  std::vector<float> x(n);
  for (auto& e : x) {
    seed = seed * 1664525u + 1013904223u;
    e = static_cast<float>(seed >> 8) / static_cast<float>(1u << 23) - 1.f;
  }
  return x;
}

}  // namespace sinkattn_examples
