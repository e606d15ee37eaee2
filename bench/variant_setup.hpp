#pragma once
// The variant cases' shapes and parameters, shared by the fused cases (cases_variants.cpp) and
// their Eigen baselines (eigen_variants.cpp) so that both compute exactly the same thing.

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "harness.hpp"
#include "sinkattn/core/helpers.hpp"

namespace sinkattn_bench {

// The shapes the variants run on: prefill S4096 D128 (dense and causal).
inline bool is_variant_shape(const Shape& s) {
  return s.kind == Kind::prefill && s.problem.seq_q == 4096 && s.problem.dim_qk == 128;
}

// Per-shape parameter tensors of the variants (deterministic values, allocated once).
struct VariantData {
  std::vector<float> sinks, ssmax_s, alpha, gate;
  explicit VariantData(const Problem& p) {
    const auto H = static_cast<std::size_t>(p.heads_q);
    sinks.resize(H);
    ssmax_s.assign(H, 0.4f);
    for (std::size_t h = 0; h < H; ++h) sinks[h] = 0.5f * static_cast<float>(h) - 1.f;
    alpha.resize(static_cast<std::size_t>(p.batch * p.seq_q * p.heads_q));
    for (std::size_t x = 0; x < alpha.size(); ++x) alpha[x] = 0.5f + 0.25f * static_cast<float>(x % 3);
    gate.resize(static_cast<std::size_t>(p.batch * p.seq_q * p.heads_q * p.dim_v));
    for (std::size_t x = 0; x < gate.size(); ++x) gate[x] = static_cast<float>(x % 7) - 3.f;
  }

  // alpha, logical [B, Sq, Hq, 1]; the elementwise gate, [B, Sq, Hq, Dv] (BSHD).
  sinkattn::TensorView<const float> alpha_view(const Problem& p) const {
    const index_t B = p.batch, S = p.seq_q, H = p.heads_q;
    return sinkattn::TensorView<const float>(alpha.data(), {B, S, H, 1}, {S * H, H, 1, 1});
  }
  sinkattn::TensorView<const float> gate_view(const Problem& p) const {
    return sinkattn::TensorView<const float>::bshd(gate.data(), p.batch, p.seq_q, p.heads_q, p.dim_v);
  }
};

// The normalizations of the variant cases, by case name (the gate case, "v_gate", is softmax
// with SigmoidGate{vd.gate_view(p)}). The specs borrow vd's storage.
inline std::vector<std::pair<std::string, sinkattn::NormSpec>> variant_norms(const Problem& p, const VariantData& vd) {
  using namespace sinkattn;
  return {
      {"v_sinks", SinkSoftmax{vd.sinks.data()}},
      {"v_sigmoid", Sigmoid{sigmoid_bias_for_length(p.seq_kv)}},
      {"v_sigmoid_norm", Sigmoid{sigmoid_bias_for_length(p.seq_kv), nullptr, true, 1e-6f}},
      {"v_softpick", Softpick{}},
      {"v_ssmax", ScalableSoftmax{vd.ssmax_s.data()}},
      {"v_affine", AffineScaled{vd.alpha_view(p), {}, 1.f, false}},
  };
}

}  // namespace sinkattn_bench
