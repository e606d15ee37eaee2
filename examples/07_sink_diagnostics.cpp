// 07_sink_diagnostics: find a layer's attention sinks, then calibrate a hidden one away.
//
// SEMANTICS.md section 6 in the fast path. The inputs plant two sinks in the four query heads of
// KV head 0: the first token, and a "hidden" one at key 7 (a delimiter-like token that every
// later query attends to as strongly). KV head 1's heads have none.
//   1. sinkattn::sink_mass gives the mass each key receives and the sink metric alpha of Gu et
//      al. (the mean weight over the rows at or after the key). A head has a sink at key j when
//      alpha_j > 0.3.
//   2. sinkattn::forward_act runs the layer with ACT calibration (Yu et al. 2024): the weights
//      on the hidden sink scaled by beta, the removed mass given back to the other keys.
// Both are checked against the fp64 reference (reference/sinks.hpp) with the tolerance rule
// of the tests, and timed beside a plain forward call.
//
// Usage: 07_sink_diagnostics [tokens]   (default 1024; the fp64 reference holds Hq x S x S
// weights)

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "sinkattn/reference/sinks.hpp"
#include "sinkattn/sinkattn.hpp"

#include "example_inputs.hpp"

namespace {

using sinkattn::index_t;
using sinkattn::TensorView;

// max |ours - ref64| over the values added, and whether each obeys |ours - ref64| <=
// 2 |ref32 - ref64| + 1e-5 * size, size 1 for weights and outputs; a key's mass, a sum over
// up to S rows' weights, uses its own size (max(1, |ref64|)): float sums in another order.
struct Check {
  double max_err = 0;
  bool ok = true;
  void add(double ours, double r64, double r32, double size = 1) {
    const double err = std::abs(ours - r64);
    max_err = std::max(max_err, err);
    ok = ok && err <= 2 * std::abs(r32 - r64) + 1e-5 * size;
  }
};

template <class F>
double time_ms(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

bool report(const char* what, const sinkattn::Status& s) {
  if (!s.ok()) std::fprintf(stderr, "%s: %s\n", what, s.message().c_str());
  return s.ok();
}

}  // namespace

int main(int argc, char** argv) {
  const index_t S = argc > 1 ? std::atoll(argv[1]) : 1024;
  if (S < 16) {
    std::fprintf(stderr, "tokens must be >= 16\n");
    return 2;
  }
  const index_t Hq = 8, Hkv = 2, D = 64, kHidden = 7;
  const sinkattn::Problem p{1, Hq, Hkv, S, S, D, D};
  std::printf("07_sink_diagnostics: causal GQA, %lld tokens, %lld query heads over %lld KV heads, D %lld\n",
              (long long)S, (long long)Hq, (long long)Hkv, (long long)D);

  // Queries lean along u = (1, ..., 1); KV head 0's keys 0 and 7 point along it (logits about
  // 12 against about 0.4 for the others), KV head 1's keys are all random.
  auto q = sinkattn_examples::random_values(static_cast<std::size_t>(S * Hq * D), 1);
  auto k = sinkattn_examples::random_values(static_cast<std::size_t>(S * Hkv * D), 2);
  const auto v = sinkattn_examples::random_values(static_cast<std::size_t>(S * Hkv * D), 3);
  for (float& x : q) x += 0.5f;
  for (const index_t j : {index_t{0}, kHidden})
    for (index_t d = 0; d < D; ++d) k[static_cast<std::size_t>((j * Hkv + 0) * D + d)] = 3.f;
  const auto qv = TensorView<const float>::bshd(q.data(), 1, S, Hq, D);
  const auto kv = TensorView<const float>::bshd(k.data(), 1, S, Hkv, D);
  const auto vv = TensorView<const float>::bshd(v.data(), 1, S, Hkv, D);
  sinkattn::Options opt;
  opt.mask = sinkattn::CausalMask{};
  const sinkattn::Executor ex = sinkattn::Executor::openmp();

  // 1. Where the mass goes.
  const auto n = static_cast<std::size_t>(Hq * S);
  std::vector<float> mass(n), alpha(n);
  const auto mv = TensorView<float>::lse(mass.data(), 1, Hq, S), av = TensorView<float>::lse(alpha.data(), 1, Hq, S);
  const double t_mass = time_ms([&] { report("sink_mass", sinkattn::sink_mass(p, qv, kv, mv, av, opt, ex)); });
  std::vector<double> m64(n), a64(n);
  std::vector<float> m32(n), a32(n);
  if (!report("reference",
              sinkattn::reference::sink_mass<double>(p, qv, kv, opt, TensorView<double>::lse(m64.data(), 1, Hq, S),
                                                     TensorView<double>::lse(a64.data(), 1, Hq, S))) ||
      !report("reference",
              sinkattn::reference::sink_mass<float>(p, qv, kv, opt, TensorView<float>::lse(m32.data(), 1, Hq, S),
                                                    TensorView<float>::lse(a32.data(), 1, Hq, S))))
    return 1;
  Check mass_check;
  for (std::size_t x = 0; x < n; ++x) {
    mass_check.add(mass[x], m64[x], m32[x], std::max(1.0, std::abs(m64[x])));
    mass_check.add(alpha[x], a64[x], a32[x]);
  }
  std::vector<float> frac(static_cast<std::size_t>(S));
  if (!report("sink_head_fraction",
              sinkattn::reference::sink_head_fraction<float>(TensorView<const float>::lse(alpha.data(), 1, Hq, S),
                                                             TensorView<float>::lse(frac.data(), 1, 1, S))))
    return 1;
  std::printf("  sink_mass: %.1f ms, max |ours - ref64| over mass and alpha = %.3g  %s\n", t_mass, mass_check.max_err,
              mass_check.ok ? "OK" : "FAILED");
  std::printf("  head:        ");
  for (index_t h = 0; h < Hq; ++h) std::printf(" %6lld", (long long)h);
  for (const index_t j : {index_t{0}, kHidden, index_t{8}}) {
    std::printf("\n  alpha[%lld]:   ", (long long)j);
    for (index_t h = 0; h < Hq; ++h) std::printf(" %6.3f", alpha[static_cast<std::size_t>(h * S + j)]);
  }
  std::vector<index_t> sinks;
  for (index_t j = 0; j < S; ++j)
    if (frac[static_cast<std::size_t>(j)] > 0.f) sinks.push_back(j);
  std::printf("\n  keys with a sink in some head (alpha > 0.3):");
  for (const index_t j : sinks)
    std::printf(" %lld (%.0f%% of heads)", (long long)j, 100.0 * frac[static_cast<std::size_t>(j)]);
  const bool found = sinks == std::vector<index_t>{0, kHidden} && frac[0] == 0.5f && frac[kHidden] == 0.5f;
  std::printf("  %s\n",
              found ? "OK: the two planted sinks, in KV head 0's four heads" : "FAILED: not the planted sinks");

  // 2. ACT on the hidden sink (never key 0: SEMANTICS section 6), beta 0.3.
  const index_t act_keys[] = {kHidden};
  const sinkattn::ActCalibration act{act_keys, 1, 0.3};
  std::vector<float> o(static_cast<std::size_t>(S * Hq * D)), o_plain(o.size());
  const auto ov = TensorView<float>::bshd(o.data(), 1, S, Hq, D);
  const double t_act = time_ms([&] { report("forward_act", sinkattn::forward_act(p, qv, kv, vv, ov, opt, act, ex)); });
  const double t_fwd = time_ms([&] {
    report("forward", sinkattn::forward(p, qv, kv, vv, TensorView<float>::bshd(o_plain.data(), 1, S, Hq, D), opt, ex));
  });
  std::vector<double> o64(o.size());
  std::vector<float> o32(o.size());
  if (!report("reference", sinkattn::reference::attention_act<double>(
                               p, qv, kv, vv, TensorView<double>::bshd(o64.data(), 1, S, Hq, D), opt, act)) ||
      !report("reference", sinkattn::reference::attention_act<float>(
                               p, qv, kv, vv, TensorView<float>::bshd(o32.data(), 1, S, Hq, D), opt, act)))
    return 1;
  Check act_check;
  double moved = 0;  // how far ACT moved the output of the heads with the hidden sink
  for (std::size_t x = 0; x < o.size(); ++x) {
    act_check.add(o[x], o64[x], o32[x]);
    moved = std::max(moved, double(std::abs(o[x] - o_plain[x])));
  }
  std::printf(
      "  forward_act (beta 0.3 on key %lld): %.1f ms against %.1f ms for forward; max |ours - ref64| = %.3g  %s\n",
      (long long)kHidden, t_act, t_fwd, act_check.max_err, act_check.ok ? "OK" : "FAILED");
  std::printf("  max |O_act - O| = %.3f (the calibrated heads' outputs moved)\n", moved);
  const bool ok = mass_check.ok && found && act_check.ok && moved > 0.01;
  std::printf("  %s\n", ok ? "OK: within the fp32 tolerance rule" : "FAILED");
  return ok ? 0 : 1;
}
