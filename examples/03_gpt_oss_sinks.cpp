// 03_gpt_oss_sinks: a gpt-oss-style attention layer through the fast path.
//
// GQA (16 query heads share 2 KV heads), causal, and one learned sink logit per query head
// (SEMANTICS.md section 3): sinkattn::forward turns these runtime options into the compiled
// policy combination once. The result is checked against the fp64 reference with the
// tolerance rule of the tests; a single-token decode step (the split-KV path) is checked too.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "sinkattn/kernel/forward.hpp"
#include "sinkattn/reference/attention.hpp"
#include "sinkattn/sinkattn.hpp"

#include "example_inputs.hpp"

namespace {

using sinkattn_examples::random_values;

// Runs one layer with the fast path and with the fp64 / naive fp32 references; returns the max
// |ours - ref64| over O and LSE and whether every element obeys |ours - ref64| <=
// 2 |ref32 - ref64| + 1e-5.
bool run(const sinkattn::Problem& p, const std::vector<float>& sinks, const char* what) {
  using sinkattn::TensorView;
  const auto B = p.batch, Hq = p.heads_q, Hkv = p.heads_kv, Sq = p.seq_q, Skv = p.seq_kv, D = p.dim_qk;
  const auto q = random_values(static_cast<std::size_t>(B * Sq * Hq * D), 1);
  const auto k = random_values(static_cast<std::size_t>(B * Skv * Hkv * D), 2);
  const auto v = random_values(static_cast<std::size_t>(B * Skv * Hkv * D), 3);
  const auto qv = TensorView<const float>::bshd(q.data(), B, Sq, Hq, D);
  const auto kv = TensorView<const float>::bshd(k.data(), B, Skv, Hkv, D);
  const auto vv = TensorView<const float>::bshd(v.data(), B, Skv, Hkv, D);

  std::vector<float> o(static_cast<std::size_t>(B * Sq * Hq * D)), lse(static_cast<std::size_t>(B * Hq * Sq));
  sinkattn::Options opt;
  opt.mask = sinkattn::CausalMask{};
  opt.norm = sinkattn::SinkSoftmax{sinks.data()};
  opt.lse = TensorView<float>::lse(lse.data(), B, Hq, Sq);
  const sinkattn::Status s = sinkattn::forward(p, qv, kv, vv, TensorView<float>::bshd(o.data(), B, Sq, Hq, D), opt,
                                               sinkattn::Executor::openmp());
  if (!s.ok()) {
    std::fprintf(stderr, "forward: %s\n", s.message().c_str());
    return false;
  }

  std::vector<double> o64(o.size()), l64(lse.size());
  std::vector<float> o32(o.size()), l32(lse.size());
  const sinkattn::Status r64 =
      sinkattn::reference::attention<double>(p, qv, kv, vv, TensorView<double>::bshd(o64.data(), B, Sq, Hq, D), opt,
                                             TensorView<double>::lse(l64.data(), B, Hq, Sq));
  const sinkattn::Status r32 =
      sinkattn::reference::attention<float>(p, qv, kv, vv, TensorView<float>::bshd(o32.data(), B, Sq, Hq, D), opt,
                                            TensorView<float>::lse(l32.data(), B, Hq, Sq));
  if (!r64.ok() || !r32.ok()) {
    std::fprintf(stderr, "reference: %s\n", (r64.ok() ? r32 : r64).message().c_str());
    return false;
  }
  double max_err = 0;
  bool ok = true;
  auto check = [&](double ours, double r64, double r32) {
    const double err = std::abs(ours - r64);
    max_err = std::max(max_err, err);
    ok = ok && err <= 2 * std::abs(r32 - r64) + 1e-5;
  };
  for (std::size_t x = 0; x < o.size(); ++x) check(o[x], o64[x], o32[x]);
  for (std::size_t x = 0; x < lse.size(); ++x) check(lse[x], l64[x], l32[x]);
  std::printf("  %-34s Sq=%-5lld Skv=%-5lld max |ours - ref64| = %.3g  %s\n", what, (long long)Sq, (long long)Skv,
              max_err, ok ? "OK" : "FAILED");
  return ok;
}

}  // namespace

int main() {
  // gpt-oss: 64 query heads / 8 KV heads, head dim 64; scaled down to 16 / 2 here.
  const std::vector<float> sinks{0.5f, -1.f, 2.f,  0.f, -3.f,  1.5f,  4.f,  -0.25f,
                                 1.f,  0.f,  -2.f, 3.f, 0.25f, -0.5f, 2.5f, -std::numeric_limits<float>::infinity()};
  std::printf("03_gpt_oss_sinks: causal GQA with learned sink logits through sinkattn::forward\n");
  bool ok = run(sinkattn::Problem{1, 16, 2, 300, 300, 64, 64}, sinks, "prefill (fused loop)");
  ok = run(sinkattn::Problem{1, 16, 4, 1, 5000, 64, 64}, sinks, "decode (split-KV, 3 splits)") && ok;
  std::printf("  %s\n", ok ? "OK: within the fp32 tolerance rule" : "FAILED");
  return ok ? 0 : 1;
}
