// Uses an installed sinkattn: include the entry header, validate and run a small causal GQA
// call. The C++17 and C++20 builds of this file are the ones that compile forward()'s kernels
// the plain header-only way (our own targets share them: kernel/instantiate.hpp), with the
// compiler's default ISA (x86-64: SSE2).
#include <sinkattn/sinkattn.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const sinkattn::Problem p{1, 4, 2, 3, 5, 8, 8};  // B, Hq, Hkv, Sq, Skv, Dqk, Dv
  // Zero queries: every visible key gets the same weight, so output row i of head h is the
  // mean of V rows 0 .. i + 2 (causal, bottom-right aligned) of KV head h / 2.
  std::vector<float> q(1 * 3 * 4 * 8, 0.f), k(1 * 5 * 2 * 8), v(1 * 5 * 2 * 8), o(1 * 3 * 4 * 8);
  for (std::size_t x = 0; x < k.size(); ++x) {
    k[x] = std::sin(0.7f * static_cast<float>(x));
    v[x] = std::cos(0.3f * static_cast<float>(x));
  }
  sinkattn::Options opt;
  opt.mask = sinkattn::CausalMask{};
  const auto qv = sinkattn::TensorView<const float>::bshd(q.data(), 1, 3, 4, 8);
  const auto kv = sinkattn::TensorView<const float>::bshd(k.data(), 1, 5, 2, 8);
  const auto vv = sinkattn::TensorView<const float>::bshd(v.data(), 1, 5, 2, 8);
  const auto ov = sinkattn::TensorView<float>::bshd(o.data(), 1, 3, 4, 8);
  const sinkattn::Status s = sinkattn::validate(p, qv, kv, vv, ov, opt);
  std::printf("sinkattn %d.%d.%d: validate: %s %s\n", SINKATTN_VERSION_MAJOR, SINKATTN_VERSION_MINOR,
              SINKATTN_VERSION_PATCH, sinkattn::to_string(s.code()), s.message().c_str());
  if (!s.ok()) return 1;
  const sinkattn::Status f = sinkattn::forward(p, qv, kv, vv, ov, opt);
  if (!f.ok()) {
    std::printf("forward: %s\n", f.message().c_str());
    return 1;
  }
  double worst = 0;
  for (int i = 0; i < 3; ++i)
    for (int h = 0; h < 4; ++h)
      for (int d = 0; d < 8; ++d) {
        double mean = 0;
        for (int j = 0; j <= i + 2; ++j) mean += v[static_cast<std::size_t>((j * 2 + h / 2) * 8 + d)];
        mean /= i + 3;
        worst = std::fmax(worst, std::fabs(o[static_cast<std::size_t>((i * 4 + h) * 8 + d)] - mean));
      }
  std::printf("forward: largest error vs the mean of the visible V rows: %.3g\n", worst);
  return worst < 1e-5 ? 0 : 1;
}
