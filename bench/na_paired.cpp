// The issue-6 neighborhood goals measured in pairs: every round runs the dense call, the
// tiled neighborhood calls and the dense masked calls back to back, and each goal is the
// median over rounds of its ratio within a round. On a shared host whose speed drifts by
// 2x within minutes (bench/RESULTS.md), ratios of benchmarks run minutes apart mean little;
// ratios of calls a second apart do.
//
//   sinkattn_na_paired [rounds = 12]      (one thread: run it under taskset -c N)
//
// Same problem as BM_na_* (B1 H4 S4096 D64, token-major, the same 64-byte aligned buffers:
// bench/buffer.hpp), same masks, same pair counts. The bhsd_ cases read the same buffers
// head-major and are measured against the head-major dense call. Last, a diagnostic that is
// not a goal: k = s = 8 on one head over grids whose tensors fit the L2 and the L3.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "buffer.hpp"
#include "sinkattn/sinkattn.hpp"

namespace {

using namespace sinkattn;

struct Buffers {
  Problem p;
  index_t n;
  sinkattn_bench::Buffer q, k, v, o;
  explicit Buffers(index_t heads = 4, index_t seq = 4096)
      : p{1, heads, heads, seq, seq, 64, 64},
        n(seq * heads * 64),
        q(sinkattn_bench::alloc(n)),
        k(sinkattn_bench::alloc(n)),
        v(sinkattn_bench::alloc(n)),
        o(sinkattn_bench::alloc(n)) {
    std::mt19937 rng(7);
    std::normal_distribution<float> nd;
    for (float* x : {q.get(), k.get(), v.get()})
      for (index_t i = 0; i < n; ++i) x[i] = nd(rng);
  }
  // bhsd: the same buffers read head-major ([B, H, S, D], NATTEN's other layout) instead of
  // token-major ([B, S, H, D]).
  double run(const Options& opt, bool bhsd = false) {
    using CV = TensorView<const float>;
    const auto in = [&](const float* x) {
      return bhsd ? CV::bhsd(x, 1, p.seq_q, p.heads_q, 64) : CV::bshd(x, 1, p.seq_q, p.heads_q, 64);
    };
    const auto out = bhsd ? TensorView<float>::bhsd(o.get(), 1, p.seq_q, p.heads_q, 64)
                          : TensorView<float>::bshd(o.get(), 1, p.seq_q, p.heads_q, 64);
    const auto t0 = std::chrono::steady_clock::now();
    const Status s = forward(p, in(q.get()), in(k.get()), in(v.get()), out, opt);
    if (!s.ok()) {
      std::fprintf(stderr, "forward failed: %s\n", s.message().c_str());
      std::exit(1);
    }
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
};

struct Case {
  std::string name;
  NeighborhoodMask m;
  bool masked_dense = false;  // also time the dense call with a -inf bias outside the windows
  bool bhsd = false;          // head-major tensors (then against the head-major dense call)
  double visible = 0;         // visible pairs per head
  std::vector<float> bias;
  std::vector<double> frac, speedup, ideal;  // per round
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// A call's time over the goal's line, dense time x visible / all pairs / 0.9 (<= 1: within
// 90% of the ideal speedup).
double over_line(double t, double t_dense, double visible, double all) { return t / (t_dense * (visible / all) / 0.9); }

// The pairs a neighborhood mask leaves visible over seq queries.
double visible_pairs(const NeighborhoodMask& m, index_t seq) {
  const policy::NeighborhoodMaskPolicy pol{m.rank, m.extent, m.kernel, m.dilation, m.stride, m.causal};
  double n = 0;
  for (index_t i = 0; i < seq; ++i) n += static_cast<double>(pol.count_visible(i));
  return n;
}

// One call of a case, after a warm-up call: the first call after another mask meets its
// plan and tables out of cache (measured 2-3% slower for k=s=8), which a model calling one
// mask per layer does not.
double median_warm(Buffers& b, const Options& o, bool bhsd) {
  b.run(o, bhsd);
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) t.push_back(b.run(o, bhsd));
  return median(t);
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 12;
  Buffers buf;
  const Problem& p = buf.p;
  auto na = [](int rank, std::array<index_t, 3> e, std::array<index_t, 3> k, std::array<index_t, 3> s) {
    NeighborhoodMask m;
    m.rank = rank;
    m.extent = e;
    m.kernel = k;
    m.stride = s;
    return m;
  };
  std::vector<Case> cases;
  auto add = [&](const char* name, const NeighborhoodMask& m, bool masked_dense, bool bhsd = false) {
    Case c;
    c.name = name;
    c.m = m;
    c.masked_dense = masked_dense;
    c.bhsd = bhsd;
    cases.push_back(std::move(c));
  };
  add("2d_64x64_k13", na(2, {64, 64, 1}, {13, 13, 1}, {1, 1, 1}), true);
  add("3d_16x16x16_k7", na(3, {16, 16, 16}, {7, 7, 7}, {1, 1, 1}), true);
  add("2d_64x64_k16_s16", na(2, {64, 64, 1}, {16, 16, 1}, {16, 16, 1}), false);
  add("2d_64x64_k8_s8", na(2, {64, 64, 1}, {8, 8, 1}, {8, 8, 1}), false);
  add("1d_4096_k256_s256", na(1, {4096, 1, 1}, {256, 1, 1}, {256, 1, 1}), false);
  add("bhsd_2d_k16_s16", na(2, {64, 64, 1}, {16, 16, 1}, {16, 16, 1}), false, true);
  add("bhsd_2d_k8_s8", na(2, {64, 64, 1}, {8, 8, 1}, {8, 8, 1}), false, true);
  for (Case& c : cases) {
    const policy::NeighborhoodMaskPolicy pol{c.m.rank, c.m.extent, c.m.kernel, c.m.dilation, c.m.stride, c.m.causal};
    c.visible = visible_pairs(c.m, p.seq_q);
    if (c.masked_dense) {
      c.bias.resize(static_cast<std::size_t>(p.seq_q * p.seq_kv));
      for (index_t i = 0; i < p.seq_q; ++i)
        for (index_t j = 0; j < p.seq_kv; ++j)
          c.bias[static_cast<std::size_t>(i * p.seq_kv + j)] =
              pol.visible(i, j) ? 0.f : -std::numeric_limits<float>::infinity();
    }
  }
  const double all = static_cast<double>(p.seq_q) * static_cast<double>(p.seq_kv);
  std::vector<double> dense_ms, dense_bhsd_ms;
  for (int r = 0; r < rounds; ++r) {
    const double td_bshd = buf.run(Options{}), td_bhsd = buf.run(Options{}, true);
    dense_ms.push_back(td_bshd);
    dense_bhsd_ms.push_back(td_bhsd);
    for (Case& c : cases) {
      Options opt;
      opt.mask = c.m;
      const double td = c.bhsd ? td_bhsd : td_bshd;
      const double t = median_warm(buf, opt, c.bhsd);
      c.frac.push_back((c.visible / t) / (all / td));  // GFLOP/s over visible pairs / dense
      c.ideal.push_back(over_line(t, td, c.visible, all));
      if (c.masked_dense) {
        Options ob;
        ob.score.bias = TensorView<const float>(c.bias.data(), {1, p.heads_q, p.seq_q, p.seq_kv}, {0, 0, p.seq_kv, 1});
        c.speedup.push_back(buf.run(ob, c.bhsd) / t);
      }
    }
  }
  std::printf("%d rounds, dense call median %.1f ms (min %.1f, max %.1f); head-major (bhsd_ cases) %.1f ms\n", rounds,
              median(dense_ms), *std::min_element(dense_ms.begin(), dense_ms.end()),
              *std::max_element(dense_ms.begin(), dense_ms.end()), median(dense_bhsd_ms));
  std::printf("%-20s %14s %18s %22s\n", "case", "of dense", "x masked dense", "time / (ideal / 0.9)");
  for (const Case& c : cases) {
    std::printf("%-20s %14.3f", c.name.c_str(), median(c.frac));
    if (c.masked_dense)
      std::printf(" %18.1f", median(c.speedup));
    else
      std::printf(" %18s", "-");
    std::printf(" %22.2f\n", median(c.ideal));
  }

  // Where the k = s = 8 line's time goes: the same call on smaller grids of one head, each
  // against its own dense call. A task of one key block reads its 64 KiB (Q, K, V, O rows)
  // once, so its line depends on where the call's tensors live, which dense attention (each
  // K/V row read by 64 query tiles) hides: 1 MiB in all stays about a core's L2 (the kernel's
  // own efficiency), 4 MiB in the L3, and the 16 MiB of the cases above sat at the edge of
  // what a Zen 4 guest kept in its L3 (bench/RESULTS.md, run AO).
  std::printf("k = s = 8 by working set (one head, B1 D64, token-major), time / (ideal / 0.9):\n");
  for (const index_t side : {32, 64}) {
    Buffers small(1, side * side);
    const NeighborhoodMask m = na(2, {side, side, 1}, {8, 8, 1}, {8, 8, 1});
    Options opt;
    opt.mask = m;
    const double visible = visible_pairs(m, side * side);
    const double all = static_cast<double>(side * side) * static_cast<double>(side * side);
    std::vector<double> ideal;
    for (int r = 0; r < rounds; ++r) {
      const double td = median_warm(small, Options{}, false), t = median_warm(small, opt, false);
      ideal.push_back(over_line(t, td, visible, all));
    }
    std::printf("  %2dx%-2d grid, Q+K+V+O %2d MiB %30.2f\n", static_cast<int>(side), static_cast<int>(side),
                static_cast<int>(4 * small.n * static_cast<index_t>(sizeof(float)) >> 20), median(ideal));
  }
}
