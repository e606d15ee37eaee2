// 04_qwen3_next_gated: Qwen3-Next-style gated attention (Gated Attention, Qiu et al. 2025).
//
// The model's q projection emits, per token and query head, [q (D) | gate (D)] in ONE buffer.
// sinkattn reads both in place: q and the gate are two strided views of that buffer (element
// stride 1, head stride 2 D), and O' = O * sigmoid(gate) is fused into the kernel's epilogue
// (SEMANTICS.md section 4). Checked against the fp64 reference; max error printed.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "sinkattn/kernel/forward.hpp"
#include "sinkattn/reference/attention.hpp"
#include "sinkattn/sinkattn.hpp"

#include "example_inputs.hpp"

using sinkattn_examples::random_values;

int main() {
  using sinkattn::index_t;
  using sinkattn::TensorView;
  // Qwen3-Next full-attention layers: 16 query heads, 2 KV heads, head dim 256 (scaled down).
  const sinkattn::Problem p{1, 16, 2, 200, 200, 128, 128};
  const index_t B = p.batch, Hq = p.heads_q, Hkv = p.heads_kv, S = p.seq_q, D = p.dim_qk;

  // The q projection's output [B, S, Hq, 2 D]: per head q then its gate.
  const auto qg = random_values(static_cast<std::size_t>(B * S * Hq * 2 * D), 11);
  const auto k = random_values(static_cast<std::size_t>(B * S * Hkv * D), 12);
  const auto v = random_values(static_cast<std::size_t>(B * S * Hkv * D), 13);
  const std::array<index_t, 4> shape{B, S, Hq, D}, stride{S * Hq * 2 * D, Hq * 2 * D, 2 * D, 1};
  const TensorView<const float> q(qg.data(), shape, stride);         // [.., 0, D) of each head
  const TensorView<const float> gate(qg.data() + D, shape, stride);  // [.., D, 2 D) of each head
  const auto kv = TensorView<const float>::bshd(k.data(), B, S, Hkv, D);
  const auto vv = TensorView<const float>::bshd(v.data(), B, S, Hkv, D);

  sinkattn::Options opt;
  opt.mask = sinkattn::CausalMask{};
  opt.gate = sinkattn::SigmoidGate{gate};
  std::vector<float> o(static_cast<std::size_t>(B * S * Hq * D));
  const sinkattn::Status s = sinkattn::forward(p, q, kv, vv, TensorView<float>::bshd(o.data(), B, S, Hq, D), opt,
                                               sinkattn::Executor::openmp());
  if (!s.ok()) {
    std::fprintf(stderr, "forward: %s\n", s.message().c_str());
    return 1;
  }

  std::vector<double> o64(o.size());
  std::vector<float> o32(o.size());
  const sinkattn::Status r64 =
      sinkattn::reference::attention<double>(p, q, kv, vv, TensorView<double>::bshd(o64.data(), B, S, Hq, D), opt);
  const sinkattn::Status r32 =
      sinkattn::reference::attention<float>(p, q, kv, vv, TensorView<float>::bshd(o32.data(), B, S, Hq, D), opt);
  if (!r64.ok() || !r32.ok()) {
    std::fprintf(stderr, "reference: %s\n", (r64.ok() ? r32 : r64).message().c_str());
    return 1;
  }
  double max_err = 0, mean_gate = 0;
  bool ok = true;
  for (std::size_t x = 0; x < o.size(); ++x) {
    const double err = std::abs(o[x] - o64[x]);
    max_err = std::max(max_err, err);
    ok = ok && err <= 2 * std::abs(double(o32[x]) - o64[x]) + 1e-5;
  }
  for (index_t t = 0; t < S; ++t)
    for (index_t h = 0; h < Hq; ++h)
      for (index_t d = 0; d < D; ++d) mean_gate += 1.0 / (1.0 + std::exp(-double(gate(0, t, h, d))));
  mean_gate /= static_cast<double>(S * Hq * D);

  std::printf("04_qwen3_next_gated: causal GQA, elementwise sigmoid gate read in place from [q | gate]\n");
  std::printf("  shape  B=%lld Hq=%lld Hkv=%lld S=%lld D=%lld, gate stride (head) = %lld floats\n", (long long)B,
              (long long)Hq, (long long)Hkv, (long long)S, (long long)D, (long long)gate.stride[2]);
  std::printf("  mean sigmoid(gate)        = %.4f\n", mean_gate);
  std::printf("  max |ours - ref64|        = %.3g\n", max_err);
  std::printf("  %s\n", ok ? "OK: within the fp32 tolerance rule" : "FAILED");
  return ok ? 0 : 1;
}
