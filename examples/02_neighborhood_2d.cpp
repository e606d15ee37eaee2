// 02_neighborhood_2d: neighborhood attention over an image-like 2-D grid (NATTEN semantics).
//
// Tokens are the cells of an H x W grid laid out row-major; each query attends to a
// kernel_h x kernel_w window around itself, shifted at the borders so that it always holds
// exactly kernel_h * kernel_w keys (SEMANTICS.md section 2). Dilation spreads the window.
//
// 1. A small grid (8 x 14, kernel 3x5, dilation 1x2): the fast path against the fp64
//    reference on every row, and the window of a corner query and of an inner one.
// 2. An image-like grid (64 x 64 = 4096 tokens by default, `02_neighborhood_2d <side>` for
//    another size >= 13; ctest runs 32; kernel 13x13, 4 heads, D = 64): the fast path
//    (query tiles of 8x8 pixels over permuted tokens, kernel/permute.hpp) checked against an
//    fp64 computation on a sample of rows, and timed beside the same pattern spelled as dense
//    attention with a -inf bias outside the windows.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

#include "sinkattn/kernel/forward.hpp"
#include "sinkattn/reference/attention.hpp"
#include "sinkattn/reference/visibility.hpp"
#include "sinkattn/sinkattn.hpp"

#include "example_inputs.hpp"

using sinkattn::index_t;
using sinkattn::TensorView;
using sinkattn_examples::random_values;

namespace {

struct Inputs {
  std::vector<float> q, k, v;
  TensorView<const float> qv, kv, vv;
  Inputs(const sinkattn::Problem& p, std::uint32_t seed)
      : q(random_values(static_cast<std::size_t>(p.batch * p.seq_q * p.heads_q * p.dim_qk), seed)),
        k(random_values(static_cast<std::size_t>(p.batch * p.seq_kv * p.heads_kv * p.dim_qk), seed + 1)),
        v(random_values(static_cast<std::size_t>(p.batch * p.seq_kv * p.heads_kv * p.dim_v), seed + 2)),
        qv(TensorView<const float>::bshd(q.data(), p.batch, p.seq_q, p.heads_q, p.dim_qk)),
        kv(TensorView<const float>::bshd(k.data(), p.batch, p.seq_kv, p.heads_kv, p.dim_qk)),
        vv(TensorView<const float>::bshd(v.data(), p.batch, p.seq_kv, p.heads_kv, p.dim_v)) {}
};

// Best of `reps` wall-clock times of f(), in milliseconds.
template <class F>
double best_ms(int reps, F&& f) {
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

bool small_grid() {
  const index_t grid_h = 8, grid_w = 14, n = grid_h * grid_w;
  const sinkattn::Problem p{2, 4, 4, n, n, 32, 32};  // B, Hq, Hkv, Sq, Skv, Dqk, Dv
  sinkattn::NeighborhoodMask nat;
  nat.rank = 2;
  nat.extent = {grid_h, grid_w, 1};
  nat.kernel = {3, 5, 1};
  nat.dilation = {1, 2, 1};  // columns: every other cell (two interleaved groups of 7), the window spans 9 columns
  sinkattn::Options opt;
  opt.mask = nat;
  const Inputs in(p, 11);

  std::vector<double> ref(static_cast<std::size_t>(p.batch * n * p.heads_q * p.dim_v));
  std::vector<float> fast(ref.size());
  sinkattn::Status s = sinkattn::reference::attention<double>(
      p, in.qv, in.kv, in.vv, TensorView<double>::bshd(ref.data(), p.batch, n, p.heads_q, p.dim_v), opt);
  if (s.ok())
    s = sinkattn::forward(p, in.qv, in.kv, in.vv, TensorView<float>::bshd(fast.data(), p.batch, n, p.heads_q, p.dim_v),
                          opt);
  if (!s.ok()) {
    std::fprintf(stderr, "neighborhood attention: %s\n", s.message().c_str());
    return false;
  }
  double max_diff = 0;
  for (std::size_t e = 0; e < ref.size(); ++e) max_diff = std::max(max_diff, std::abs(ref[e] - fast[e]));

  std::printf("02_neighborhood_2d: %lldx%lld grid, kernel 3x5, dilation 1x2, B=%lld H=%lld D=%lld\n", (long long)grid_h,
              (long long)grid_w, (long long)p.batch, (long long)p.heads_q, (long long)p.dim_qk);
  // What query (0, 0) (a corner: its window is shifted inwards) and query (4, 5) see.
  for (const index_t qi : {index_t(0), 4 * grid_w + 5}) {
    std::printf("  query (%lld, %lld):\n", (long long)(qi / grid_w), (long long)(qi % grid_w));
    for (index_t r = 0; r < grid_h; ++r) {
      std::printf("    ");
      for (index_t c = 0; c < grid_w; ++c) {
        const index_t j = r * grid_w + c;
        std::printf("%c", j == qi ? 'q' : sinkattn::reference::visible(p, opt.mask, 0, 0, qi, j) ? '#' : '.');
      }
      std::printf("\n");
    }
  }
  std::printf("  max |fast path - fp64 reference| over every row = %.3g\n", max_diff);
  return max_diff < 1e-5;
}

bool image_grid(index_t side) {
  const index_t n = side * side, kernel = 13;
  const sinkattn::Problem p{1, 4, 4, n, n, 64, 64};
  sinkattn::NeighborhoodMask nat;
  nat.rank = 2;
  nat.extent = {side, side, 1};
  nat.kernel = {kernel, kernel, 1};
  sinkattn::Options opt;
  opt.mask = nat;
  const Inputs in(p, 21);
  std::vector<float> o(static_cast<std::size_t>(n * p.heads_q * p.dim_v)), o_dense(o.size());
  const auto ov = TensorView<float>::bshd(o.data(), 1, n, p.heads_q, p.dim_v);
  const auto odv = TensorView<float>::bshd(o_dense.data(), 1, n, p.heads_q, p.dim_v);

  sinkattn::Status s;
  const double t_fast = best_ms(5, [&] { s = sinkattn::forward(p, in.qv, in.kv, in.vv, ov, opt); });
  if (!s.ok()) {
    std::fprintf(stderr, "neighborhood attention: %s\n", s.message().c_str());
    return false;
  }

  // fp64 on a sample of rows (the corners, the borders, inner pixels), every head.
  double max_diff = 0;
  const float scale = 1.f / std::sqrt(static_cast<float>(p.dim_qk));
  std::vector<double> w(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; i += 37) {
    for (index_t h = 0; h < p.heads_q; ++h) {
      double m = -std::numeric_limits<double>::infinity(), l = 0;
      for (index_t j = 0; j < n; ++j) {
        w[static_cast<std::size_t>(j)] = -std::numeric_limits<double>::infinity();
        if (!sinkattn::reference::visible(p, opt.mask, 0, h, i, j)) continue;
        double dot = 0;
        for (index_t x = 0; x < p.dim_qk; ++x) dot += double(in.qv(0, i, h, x)) * double(in.kv(0, j, h, x));
        w[static_cast<std::size_t>(j)] = dot * scale;
        m = std::max(m, w[static_cast<std::size_t>(j)]);
      }
      for (index_t j = 0; j < n; ++j) l += std::exp(w[static_cast<std::size_t>(j)] - m);
      for (index_t x = 0; x < p.dim_v; ++x) {
        double acc = 0;
        for (index_t j = 0; j < n; ++j)
          if (w[static_cast<std::size_t>(j)] > -std::numeric_limits<double>::infinity())
            acc += std::exp(w[static_cast<std::size_t>(j)] - m) / l * double(in.vv(0, j, h, x));
        max_diff = std::max(max_diff, std::abs(acc - double(ov(0, i, h, x))));
      }
    }
  }

  // The same pattern as dense attention + a [Sq, Skv] bias of 0 / -inf (64 MiB for 64x64,
  // shared by the heads with a zero stride): every one of the n x n pairs is computed.
  std::vector<float> bias(static_cast<std::size_t>(n * n));
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j)
      bias[static_cast<std::size_t>(i * n + j)] =
          sinkattn::reference::visible(p, opt.mask, 0, 0, i, j) ? 0.f : -std::numeric_limits<float>::infinity();
  sinkattn::Options dense;
  dense.score.bias = TensorView<const float>(bias.data(), {1, p.heads_q, n, n}, {0, 0, n, 1});
  const double t_dense = best_ms(2, [&] { s = sinkattn::forward(p, in.qv, in.kv, in.vv, odv, dense); });
  if (!s.ok()) {
    std::fprintf(stderr, "dense attention with bias: %s\n", s.message().c_str());
    return false;
  }
  double max_dd = 0;
  for (std::size_t e = 0; e < o.size(); ++e) max_dd = std::max(max_dd, double(std::abs(o[e] - o_dense[e])));

  const double gflop = 4.0 * double(p.dim_qk) * double(n) * double(kernel * kernel) * double(p.heads_q) * 1e-9;
  std::printf("02_neighborhood_2d: %lldx%lld image, kernel %lldx%lld, B=1 H=%lld D=%lld (one thread)\n",
              (long long)side, (long long)side, (long long)kernel, (long long)kernel, (long long)p.heads_q,
              (long long)p.dim_qk);
  std::printf("  fast path (8x8 query tiles)     %8.2f ms  %6.1f GFLOP/s over visible pairs\n", t_fast,
              gflop / t_fast * 1e3);
  std::printf("  dense attention + -inf bias     %8.2f ms  (%.1fx slower)\n", t_dense, t_dense / t_fast);
  std::printf("  max |fast - fp64| on sampled rows = %.3g, max |fast - dense masked| = %.3g\n", max_diff, max_dd);
  return max_diff < 1e-4 && max_dd < 1e-4;
}

}  // namespace

int main(int argc, char** argv) {
  const long side = argc > 1 ? std::atol(argv[1]) : 64;
  if (side < 13 || side > 64) {  // the dense comparison holds a side^4 bias (64 MiB at 64)
    std::fprintf(stderr, "usage: 02_neighborhood_2d [side of the image grid, 13..64; default 64]\n");
    return 2;
  }
  const bool ok = small_grid() && image_grid(static_cast<index_t>(side));
  std::printf("  %s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
