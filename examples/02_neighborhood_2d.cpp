// 02_neighborhood_2d: neighborhood attention over an image-like 2-D grid (NATTEN semantics).
//
// Tokens are the cells of an H x W grid laid out row-major; each query attends to a
// kernel_h x kernel_w window around itself, shifted at the borders so that it always holds
// exactly kernel_h * kernel_w keys (SEMANTICS.md section 2). Dilation spreads the window.
// Computed with the fp64 reference; checked against dense attention with a -inf bias on
// every pair outside the window, which must give the same numbers.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "sinkattn/reference/attention.hpp"
#include "sinkattn/reference/visibility.hpp"
#include "sinkattn/sinkattn.hpp"

#include "example_inputs.hpp"

using sinkattn_examples::random_values;

int main() {
  using sinkattn::index_t;
  using sinkattn::TensorView;
  const index_t grid_h = 8, grid_w = 14, n = grid_h * grid_w;
  const sinkattn::Problem p{2, 4, 4, n, n, 32, 32};  // B, Hq, Hkv, Sq, Skv, Dqk, Dv
  const auto B = p.batch, H = p.heads_q, D = p.dim_qk;

  sinkattn::NeighborhoodMask nat;
  nat.rank = 2;
  nat.extent = {grid_h, grid_w, 1};
  nat.kernel = {3, 5, 1};
  nat.dilation = {1, 2, 1};  // columns: every other cell (two interleaved groups of 7), the window spans 9 columns

  const std::vector<float> q = random_values(static_cast<std::size_t>(B * n * H * D), 11);
  const std::vector<float> k = random_values(static_cast<std::size_t>(B * n * H * D), 12);
  const std::vector<float> v = random_values(static_cast<std::size_t>(B * n * H * D), 13);
  const auto qv = TensorView<const float>::bshd(q.data(), B, n, H, D);
  const auto kv = TensorView<const float>::bshd(k.data(), B, n, H, D);
  const auto vv = TensorView<const float>::bshd(v.data(), B, n, H, D);

  std::vector<double> o_nat(static_cast<std::size_t>(B * n * H * D)), o_dense(o_nat.size());
  const auto on = TensorView<double>::bshd(o_nat.data(), B, n, H, D);
  const auto od = TensorView<double>::bshd(o_dense.data(), B, n, H, D);

  sinkattn::Options opt;
  opt.mask = nat;
  sinkattn::Status s = sinkattn::reference::attention<double>(p, qv, kv, vv, on, opt);
  if (!s.ok()) {
    std::fprintf(stderr, "neighborhood attention: %s\n", s.message().c_str());
    return 1;
  }

  // The same thing spelled as dense attention plus a [Sq, Skv] bias of 0 / -inf, broadcast
  // over batch and heads with zero strides.
  std::vector<float> bias(static_cast<std::size_t>(n * n));
  index_t min_keys = n, max_keys = 0;
  for (index_t i = 0; i < n; ++i) {
    index_t keys = 0;
    for (index_t j = 0; j < n; ++j) {
      const bool vis = sinkattn::reference::visible(p, opt.mask, 0, 0, i, j);
      keys += vis;
      bias[static_cast<std::size_t>(i * n + j)] = vis ? 0.f : -std::numeric_limits<float>::infinity();
    }
    min_keys = std::min(min_keys, keys);
    max_keys = std::max(max_keys, keys);
  }
  sinkattn::Options dense;
  dense.score.bias = TensorView<const float>(bias.data(), {B, H, n, n}, {0, 0, n, 1});
  s = sinkattn::reference::attention<double>(p, qv, kv, vv, od, dense);
  if (!s.ok()) {
    std::fprintf(stderr, "dense attention with bias: %s\n", s.message().c_str());
    return 1;
  }

  double checksum = 0, max_diff = 0;
  for (std::size_t e = 0; e < o_nat.size(); ++e) {
    checksum += o_nat[e];
    max_diff = std::max(max_diff, std::abs(o_nat[e] - o_dense[e]));
  }

  std::printf("02_neighborhood_2d: %lldx%lld grid, kernel 3x5, dilation 1x2 (fp64 reference)\n", (long long)grid_h,
              (long long)grid_w);
  std::printf("  shape  B=%lld H=%lld S=%lld D=%lld\n", (long long)B, (long long)H, (long long)n, (long long)D);
  std::printf("  keys per query: min %lld, max %lld (kernel holds %lld)\n", (long long)min_keys, (long long)max_keys,
              (long long)(nat.kernel[0] * nat.kernel[1]));
  // What query (0, 0) (a corner: its window is shifted inwards) and query (4, 5) see.
  for (const index_t qi : {index_t(0), 4 * grid_w + 5}) {
    std::printf("  query (%lld, %lld):\n", (long long)(qi / grid_w), (long long)(qi % grid_w));
    for (index_t r = 0; r < grid_h; ++r) {
      std::printf("    ");
      for (index_t c = 0; c < grid_w; ++c) {
        const index_t j = r * grid_w + c;
        std::printf("%c", j == qi ? 'q' : bias[static_cast<std::size_t>(qi * n + j)] == 0.f ? '#' : '.');
      }
      std::printf("\n");
    }
  }
  std::printf("  checksum sum(O)                       = %.12f\n", checksum);
  std::printf("  max |neighborhood - dense with bias|  = %.3g\n", max_diff);
  const bool ok = max_diff < 1e-12 && min_keys == 15 && max_keys == 15;
  std::printf("  %s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
