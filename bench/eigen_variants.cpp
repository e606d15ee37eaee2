// Eigen baselines of the attention variants (issue 4: each variant "beside plain softmax and
// beside an Eigen baseline of the same variant"), on the shapes and with the parameters of
// cases_variants.cpp (variant_setup.hpp):
//
//   BM_eigen_<variant>/<shape>   materialised scores, the variant's row normalization, P V, gate
//                                (eigen_variants.hpp); <variant> = sinks, sigmoid, sigmoid_norm,
//                                softpick, ssmax, affine, gate, paired with BM_v_<variant>
//
// Start-up self-check: each baseline against sinkattn::reference::attention<double> on small
// shapes (dense and causal, GQA, Sq != Skv, fully masked rows); aborts on a max abs error > 1e-4.

// First: it silences GCC 12's false positives in the intrinsic headers it brings in.
#include "eigen_core.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "eigen_variants.hpp"
#include "harness.hpp"
#include "sinkattn/reference/attention.hpp"
#include "variant_setup.hpp"

namespace sinkattn_bench {
namespace {

// The variants by baseline name ("eigen_<variant>"), with the options the kernels get.
std::vector<std::pair<std::string, sinkattn::Options>> eigen_variants(const Problem& p, const VariantData& vd,
                                                                      bool causal) {
  sinkattn::Options base;
  if (causal) base.mask = sinkattn::CausalMask{};
  std::vector<std::pair<std::string, sinkattn::Options>> out;
  for (const auto& [name, norm] : variant_norms(p, vd)) {
    sinkattn::Options o = base;
    o.norm = norm;
    out.emplace_back("eigen_" + name.substr(2), o);  // "v_sinks" -> "eigen_sinks"
  }
  sinkattn::Options gated = base;
  gated.gate = sinkattn::SigmoidGate{vd.gate_view(p)};
  out.emplace_back("eigen_gate", gated);
  return out;
}

std::vector<float> uniform(sinkattn::index_t n, std::uint64_t seed) {
  std::vector<float> x(static_cast<std::size_t>(n));
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& e : x) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    e = static_cast<float>(s >> 40) * (2.f / 16777216.f) - 1.f;  // [-1, 1)
  }
  return x;
}

// Every Eigen variant against the fp64 reference; exits on failure so that a wrong baseline
// never produces numbers.
void eigen_variants_self_check() {
  using sinkattn::TensorView;
  const Problem problems[] = {{1, 2, 2, 33, 33, 16, 16},   // the bench layout, tiny
                              {2, 4, 2, 33, 47, 16, 24},   // GQA, Sq < Skv
                              {1, 2, 1, 40, 19, 16, 16}};  // Sq > Skv: fully masked rows when causal
  for (const Problem& p : problems) {
    const std::vector<float> q = uniform(p.batch * p.seq_q * p.heads_q * p.dim_qk, 11);
    const std::vector<float> k = uniform(p.batch * p.seq_kv * p.heads_kv * p.dim_qk, 12);
    const std::vector<float> v = uniform(p.batch * p.seq_kv * p.heads_kv * p.dim_v, 13);
    const auto qv = TensorView<const float>::bshd(q.data(), p.batch, p.seq_q, p.heads_q, p.dim_qk);
    const auto kv = TensorView<const float>::bshd(k.data(), p.batch, p.seq_kv, p.heads_kv, p.dim_qk);
    const auto vv = TensorView<const float>::bshd(v.data(), p.batch, p.seq_kv, p.heads_kv, p.dim_v);
    const auto n_out = static_cast<std::size_t>(p.batch * p.seq_q * p.heads_q * p.dim_v);
    const VariantData vd(p);
    for (const bool causal : {false, true}) {
      for (const auto& [name, opt] : eigen_variants(p, vd, causal)) {
        std::vector<double> want(n_out);
        std::vector<float> got(n_out, NAN);
        const sinkattn::Status st = sinkattn::reference::attention<double>(
            p, qv, kv, vv, TensorView<double>::bshd(want.data(), p.batch, p.seq_q, p.heads_q, p.dim_v), opt);
        if (!st) {
          std::fprintf(stderr, "self-check FAILED: reference rejected %s: %s\n", name.c_str(), st.message().c_str());
          std::exit(2);
        }
        EigenVariantAttention eig;
        eig(p, causal, q.data(), k.data(), v.data(), got.data(), opt);
        double err = 0;
        for (std::size_t x = 0; x < n_out; ++x)
          err = std::max(err, std::isnan(got[x]) ? INFINITY : std::abs(double(got[x]) - want[x]));
        if (!(err <= 1e-4)) {
          std::fprintf(
              stderr,
              "self-check FAILED: Eigen baseline %s (%s, B%lld Hq%lld Hkv%lld Sq%lld Skv%lld) max abs error %g\n",
              name.c_str(), causal ? "causal" : "dense", (long long)p.batch, (long long)p.heads_q,
              (long long)p.heads_kv, (long long)p.seq_q, (long long)p.seq_kv, err);
          std::exit(2);
        }
      }
    }
  }
}

}  // namespace

SINKATTN_BENCH_CASES(eigen_variant_cases) {
  eigen_variants_self_check();
  for (const Shape& s : shapes()) {
    if (!is_variant_shape(s)) continue;
    auto vd = std::make_shared<VariantData>(s.problem);
    for (const auto& [name, opt] : eigen_variants(s.problem, *vd, s.mask == Mask::causal)) {
      auto eig = std::make_shared<EigenVariantAttention>();
      register_case(
          name, s,
          [vd, eig, opt = opt](const Shape& s, Data& d) {
            (*eig)(s.problem, s.mask == Mask::causal, d.q.data, d.k.data, d.v.data, d.o.data, opt);
          },
          [eig](const Shape& s, Data&) { eig->reserve(s.problem); });
    }
  }
}

}  // namespace sinkattn_bench
