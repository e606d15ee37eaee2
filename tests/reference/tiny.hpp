#pragma once
// Hand-sized problems for the reference's own tests: one batch, one head, Dqk = 1, q = 1,
// k_j = x_j and scale 1, so the logits are exactly the given x_j; V defaults to the identity
// (Dv = Skv, v_j = e_j), so the output row IS the weight vector w_i.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "harness.hpp"
#include "sinkattn/reference/attention.hpp"

namespace sinkattn {
namespace test {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kInfF = std::numeric_limits<float>::infinity();

struct TinyResult {
  Status status;
  std::vector<double> o;  // [Sq * Dv], row-major
  std::vector<double> lse;
};

// Sq query rows that all have q = 1 (so every row sees the logits x, unless masked).
inline TinyResult tiny(const std::vector<float>& x, Options opt, bool with_lse = true, index_t sq = 1,
                       std::vector<float> v = {}, index_t dv = 0) {
  const index_t skv = static_cast<index_t>(x.size());
  if (v.empty()) {
    dv = skv;
    v.assign(static_cast<size_t>(skv * skv), 0.f);
    for (index_t j = 0; j < skv; ++j) v[j * skv + j] = 1.f;
  }
  Problem p{1, 1, 1, sq, skv, 1, dv};
  std::vector<float> q(static_cast<size_t>(sq), 1.f);
  if (!opt.score.scale) opt.score.scale = 1.f;
  TinyResult r;
  r.o.assign(static_cast<size_t>(sq * dv), std::nan(""));
  r.lse.assign(static_cast<size_t>(sq), std::nan(""));
  auto ov = TensorView<double>::bshd(r.o.data(), 1, sq, 1, dv);
  auto lv = with_lse ? TensorView<double>::lse(r.lse.data(), 1, 1, sq) : TensorView<double>{};
  r.status = reference::attention<double>(p, TensorView<const float>::bshd(q.data(), 1, sq, 1, 1),
                                          TensorView<const float>::bshd(x.data(), 1, skv, 1, 1),
                                          TensorView<const float>::bshd(v.data(), 1, skv, 1, dv), ov, opt, lv);
  return r;
}

inline double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace test
}  // namespace sinkattn
