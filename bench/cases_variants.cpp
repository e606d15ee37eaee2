// Every normalization / gate variant of the fast path on the S4096 D128 prefill shapes
// (dense and causal), beside plain softmax (BM_sinkattn/<shape>) in the same binary. Goal
// (issue 4): each variant within 5% of softmax's time; sigmoid faster (no max, no rescale).
//
//   BM_v_softmax_ct   softmax through the compile-time API (one fixed Variant): shows that
//                     the runtime entry point's per-tile / per-row branches cost nothing
//   BM_v_sinks        learned sink logits (gpt-oss)
//   BM_v_sigmoid      sigmoid weights, b = -log(n); BM_v_sigmoid_norm: with row normalization
//   BM_v_softpick, BM_v_ssmax, BM_v_affine (beta = (1 - alpha) / N_i)
//   BM_v_gate         softmax + elementwise sigmoid output gate (Qwen3-Next)
#if __has_include("sinkattn/kernel/forward.hpp")
#include <memory>
#include <string>
#include <vector>

#include "harness.hpp"
#include "sinkattn/kernel/forward.hpp"

namespace sinkattn_bench {
namespace {

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
};

sinkattn::Options with(const Shape& s, const sinkattn::NormSpec& n) {
  sinkattn::Options o = s.options();
  o.norm = n;
  return o;
}

}  // namespace

SINKATTN_BENCH_CASES(variant_cases) {
  using namespace sinkattn;
  for (const Shape& s : shapes()) {
    const Problem& p = s.problem;
    if (s.kind != Kind::prefill || p.seq_q != 4096 || p.dim_qk != 128) continue;
    auto vd = std::make_shared<VariantData>(p);
    const index_t B = p.batch, S = p.seq_q, H = p.heads_q;
    const TensorView<const float> alpha(vd->alpha.data(), {B, S, H, 1}, {S * H, H, 1, 1});
    const TensorView<const float> gate = TensorView<const float>::bshd(vd->gate.data(), B, S, H, p.dim_v);

    register_case("v_softmax_ct", s, [](const Shape& s, Data& d) {
      const Options o = s.options();
      if (s.mask == Mask::causal) {
        using V = Variant<policy::Score<false, false, false>, policy::CausalMaskPolicy, policy::OnlineSoftmax,
                          policy::NoSink, policy::NoGate>;
        sinkattn::check(forward<V>(s.problem, d.q, d.k, d.v, d.o, policy::CausalMaskPolicy{s.problem.seq_kv, 0}, o));
      } else {
        using V = Variant<policy::Score<false, false, false>, policy::FullMaskPolicy, policy::OnlineSoftmax,
                          policy::NoSink, policy::NoGate>;
        sinkattn::check(forward<V>(s.problem, d.q, d.k, d.v, d.o, policy::FullMaskPolicy{s.problem.seq_kv}, o));
      }
    });
    const std::vector<std::pair<std::string, NormSpec>> norms = {
        {"v_sinks", SinkSoftmax{vd->sinks.data()}},
        {"v_sigmoid", Sigmoid{sigmoid_bias_for_length(p.seq_kv)}},
        {"v_sigmoid_norm", Sigmoid{sigmoid_bias_for_length(p.seq_kv), nullptr, true, 1e-6f}},
        {"v_softpick", Softpick{}},
        {"v_ssmax", ScalableSoftmax{vd->ssmax_s.data()}},
        {"v_affine", AffineScaled{alpha, {}, 1.f, false}},
    };
    for (const auto& [name, n] : norms)
      register_case(name, s, [vd, n = n](const Shape& s, Data& d) {
        sinkattn::check(forward(s.problem, d.q, d.k, d.v, d.o, with(s, n)));  // single thread (serial)
      });
    register_case("v_gate", s, [vd, gate](const Shape& s, Data& d) {
      Options o = s.options();
      o.gate = SigmoidGate{gate};
      sinkattn::check(forward(s.problem, d.q, d.k, d.v, d.o, o));
    });
  }
}

}  // namespace sinkattn_bench
#endif
