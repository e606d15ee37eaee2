#pragma once
// Small helpers that produce the parameters of some variants the way public systems do.

#include <cmath>
#include <vector>

#include "sinkattn/core/types.hpp"

namespace sinkattn {

// The sigmoid-attention bias recommended for a sequence of n keys (Apple FlashSigmoid):
// b = -log(n), so that sigmoid weights start out summing to about 1 over the row.
inline float sigmoid_bias_for_length(index_t n) { return n > 0 ? -std::log(static_cast<float>(n)) : 0.f; }

// ALiBi slopes of ggml (ggml_soft_max_ext's max_bias): with n_floor = 2^floor(log2(n_head)),
// m0 = 2^(-max_bias / n_floor), m1 = 2^(-max_bias / 2 / n_floor),
//   slope_h = m0^(h + 1)                  for h <  n_floor,
//   slope_h = m1^(2 (h - n_floor) + 1)    otherwise;
// max_bias <= 0 gives slope 1 for every head (ggml's convention: ALiBi off, mask as is).
// For max_bias = 8 and a power-of-two head count these are the ALiBi paper's slopes.
inline std::vector<float> alibi_slopes(index_t n_head, float max_bias) {
  std::vector<float> s(static_cast<std::size_t>(n_head > 0 ? n_head : 0), 1.f);
  if (n_head <= 0 || !(max_bias > 0.f)) return s;
  const index_t n_floor = index_t(1) << static_cast<int>(std::floor(std::log2(static_cast<double>(n_head))));
  const float m0 = std::pow(2.f, -max_bias / static_cast<float>(n_floor));
  const float m1 = std::pow(2.f, -(max_bias / 2.f) / static_cast<float>(n_floor));
  for (index_t h = 0; h < n_head; ++h)
    s[static_cast<std::size_t>(h)] =
        h < n_floor ? std::pow(m0, static_cast<float>(h + 1)) : std::pow(m1, static_cast<float>(2 * (h - n_floor) + 1));
  return s;
}

}  // namespace sinkattn
