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
// The normalizations also run on the Skv32768 decode shapes (K/V from DRAM), where each
// should read K and V as fast as softmax does (affine-scaled sums V rows besides).
#if __has_include("sinkattn/kernel/forward.hpp")
#include <memory>
#include <string>
#include <vector>

#include "harness.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "variant_setup.hpp"

namespace sinkattn_bench {
namespace {

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
    if (!is_variant_shape(s)) continue;
    auto vd = std::make_shared<VariantData>(p);
    const TensorView<const float> gate = vd->gate_view(p);

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
    const auto norms = variant_norms(p, *vd);  // shared with the Eigen baselines (eigen_variants.cpp)
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
  for (const Shape& s : shapes()) {
    if (s.kind != Kind::decode || s.problem.seq_kv != 32768) continue;
    auto vd = std::make_shared<VariantData>(s.problem);
    for (const auto& [name, n] : variant_norms(s.problem, *vd))
      register_case(name, s, [vd, n = n](const Shape& s, Data& d) {
        sinkattn::check(forward(s.problem, d.q, d.k, d.v, d.o, with(s, n)));  // single thread (serial)
      });
  }
}

}  // namespace sinkattn_bench
#endif
