// 01_softmax: one gpt-oss-style attention layer (prefill).
//
// GQA (8 query heads share 2 KV heads), causal, and a learned "sink" logit per query head:
// the row's softmax gets one extra term exp(S_h) in its denominator, so a head can put its
// attention nowhere (SEMANTICS.md section 3). Computed here with the fp64 reference; the sink
// identity O_sink = O_softmax * sigmoid(LSE - S_h) checks the result.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "sinkattn/reference/attention.hpp"
#include "sinkattn/sinkattn.hpp"

#include "example_inputs.hpp"

using sinkattn_examples::random_values;

int main() {
  using sinkattn::TensorView;
  // batch, query heads, KV heads, query tokens, key tokens, head dims (gpt-oss: 64 / 8 GQA).
  const sinkattn::Problem p{1, 8, 2, 96, 96, 64, 64};
  const auto B = p.batch, Hq = p.heads_q, Hkv = p.heads_kv, Sq = p.seq_q, Skv = p.seq_kv, D = p.dim_qk;

  // Activations as an engine holds them: [B, S, H, D], token-major.
  const std::vector<float> q = random_values(static_cast<std::size_t>(B * Sq * Hq * D), 1);
  const std::vector<float> k = random_values(static_cast<std::size_t>(B * Skv * Hkv * D), 2);
  const std::vector<float> v = random_values(static_cast<std::size_t>(B * Skv * Hkv * D), 3);
  // One learned sink logit per query head (raw, not multiplied by the softmax scale).
  const std::vector<float> sinks{0.5f, -1.f, 2.f, 0.f, -3.f, 1.5f, 4.f, -0.25f};

  const auto qv = TensorView<const float>::bshd(q.data(), B, Sq, Hq, D);
  const auto kv = TensorView<const float>::bshd(k.data(), B, Skv, Hkv, D);
  const auto vv = TensorView<const float>::bshd(v.data(), B, Skv, Hkv, D);

  std::vector<double> o_sink(static_cast<std::size_t>(B * Sq * Hq * D)), o_soft(o_sink.size());
  std::vector<double> lse_sink(static_cast<std::size_t>(B * Hq * Sq)), lse_soft(lse_sink.size());
  const auto os = TensorView<double>::bshd(o_sink.data(), B, Sq, Hq, D);
  const auto of = TensorView<double>::bshd(o_soft.data(), B, Sq, Hq, D);
  const auto ls = TensorView<double>::lse(lse_sink.data(), B, Hq, Sq);
  const auto lf = TensorView<double>::lse(lse_soft.data(), B, Hq, Sq);

  sinkattn::Options opt;
  opt.mask = sinkattn::CausalMask{};
  opt.norm = sinkattn::SinkSoftmax{sinks.data()};
  sinkattn::Status s = sinkattn::reference::attention<double>(p, qv, kv, vv, os, opt, ls);
  if (!s.ok()) {
    std::fprintf(stderr, "sink attention: %s\n", s.message().c_str());
    return 1;
  }
  opt.norm = sinkattn::Softmax{};  // the same layer without sinks
  s = sinkattn::reference::attention<double>(p, qv, kv, vv, of, opt, lf);
  if (!s.ok()) {
    std::fprintf(stderr, "softmax attention: %s\n", s.message().c_str());
    return 1;
  }

  // The sink only rescales each row: O_sink = O_softmax * sigmoid(LSE_softmax - S_h), and
  // LSE_sink = logaddexp(LSE_softmax, S_h).
  double checksum = 0, max_err = 0, mass_on_sink = 0;
  for (sinkattn::index_t b = 0; b < B; ++b)
    for (sinkattn::index_t h = 0; h < Hq; ++h)
      for (sinkattn::index_t i = 0; i < Sq; ++i) {
        const double l = lf(b, h, i, 0), sh = sinks[static_cast<std::size_t>(h)];
        const double keep = 1.0 / (1.0 + std::exp(sh - l));  // sigmoid(l - sh)
        mass_on_sink += 1.0 - keep;
        const double m = std::max(l, sh);
        max_err = std::max(max_err, std::abs(ls(b, h, i, 0) - (m + std::log(std::exp(l - m) + std::exp(sh - m)))));
        for (sinkattn::index_t d = 0; d < D; ++d) {
          checksum += os(b, i, h, d);
          max_err = std::max(max_err, std::abs(os(b, i, h, d) - of(b, i, h, d) * keep));
        }
      }

  std::printf("01_softmax: gpt-oss-style causal GQA with learned sinks (fp64 reference)\n");
  std::printf("  shape  B=%lld Hq=%lld Hkv=%lld Sq=%lld Skv=%lld D=%lld\n", (long long)B, (long long)Hq, (long long)Hkv,
              (long long)Sq, (long long)Skv, (long long)D);
  std::printf("  checksum sum(O)                    = %.12f\n", checksum);
  std::printf("  mean attention mass on the sink    = %.4f\n", mass_on_sink / static_cast<double>(B * Hq * Sq));
  std::printf("  sink identity max |error|          = %.3g\n", max_err);
  const bool ok = max_err < 1e-12;
  std::printf("  %s\n", ok ? "OK" : "FAILED: the sink identity does not hold");
  return ok ? 0 : 1;
}
