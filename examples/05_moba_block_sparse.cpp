// 05_moba_block_sparse: MoBA (Mixture of Block Attention, Lu et al. 2025) on the fast path.
//
// moba_select() scores every key block (mean of its keys) against each query block and lists,
// per (batch, head, query block), its own block plus the top-k blocks of the past; forward()
// then visits only the listed blocks (a BlockSparseMask, causal inside the own block). The
// result is checked against the fp64 reference given the same selection, and timed beside
// dense causal attention on the same data (one thread). `05_moba_block_sparse <tokens>` runs
// another length (default 4096; ctest runs 2048).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "sinkattn/policy/moba.hpp"
#include "sinkattn/reference/attention.hpp"
#include "sinkattn/sinkattn.hpp"

#include "example_inputs.hpp"

using sinkattn_examples::random_values;

namespace {

template <class F>
double best_ms(int reps, F&& f) {
  double best = 1e300;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  using sinkattn::index_t;
  using sinkattn::TensorView;
  const long tokens = argc > 1 ? std::atol(argv[1]) : 4096;
  if (tokens < 1 || tokens > 16384) {  // the fp64 check and the dense call are quadratic
    std::fprintf(stderr, "usage: 05_moba_block_sparse [tokens, 1..16384; default 4096]\n");
    return 2;
  }
  const sinkattn::Problem p{1, 4, 2, tokens, tokens, 64, 64};  // GQA: 4 query heads on 2 KV heads
  const index_t B = p.batch, Hq = p.heads_q, Hkv = p.heads_kv, S = p.seq_q, D = p.dim_qk;
  const std::vector<float> q = random_values(static_cast<std::size_t>(B * S * Hq * D), 11);
  const std::vector<float> k = random_values(static_cast<std::size_t>(B * S * Hkv * D), 12);
  const std::vector<float> v = random_values(static_cast<std::size_t>(B * S * Hkv * D), 13);
  const auto qv = TensorView<const float>::bshd(q.data(), B, S, Hq, D);
  const auto kv = TensorView<const float>::bshd(k.data(), B, S, Hkv, D);
  const auto vv = TensorView<const float>::bshd(v.data(), B, S, Hkv, D);
  std::vector<float> o(static_cast<std::size_t>(B * S * Hq * D)), o_dense(o.size());
  const auto ov = TensorView<float>::bshd(o.data(), B, S, Hq, D);
  const auto odv = TensorView<float>::bshd(o_dense.data(), B, S, Hq, D);

  // 1. Select: blocks of 256 tokens, the own block + the 3 best past blocks.
  const sinkattn::MobaOptions mo{256, 3, true};
  sinkattn::MobaSelection sel;
  sinkattn::Status s = sinkattn::moba_select(qv, kv, mo, sel);
  if (!s.ok()) {
    std::fprintf(stderr, "moba_select: %s\n", s.message().c_str());
    return 1;
  }
  sinkattn::Options opt;
  opt.mask = sel.mask();  // borrows sel's lists

  // 2. Run, and time it beside dense causal attention.
  sinkattn::Options causal;
  causal.mask = sinkattn::CausalMask{};
  const double t_sel = best_ms(3, [&] {
    sinkattn::MobaSelection again;
    sinkattn::check(sinkattn::moba_select(qv, kv, mo, again));
  });
  const double t_moba = best_ms(3, [&] { sinkattn::check(sinkattn::forward(p, qv, kv, vv, ov, opt)); });
  const double t_dense = best_ms(3, [&] { sinkattn::check(sinkattn::forward(p, qv, kv, vv, odv, causal)); });

  // 3. Check against the fp64 reference given the same selection.
  std::vector<double> ref(o.size());
  const auto rv = TensorView<double>::bshd(ref.data(), B, S, Hq, D);
  s = sinkattn::reference::attention<double>(p, qv, kv, vv, rv, opt);
  if (!s.ok()) {
    std::fprintf(stderr, "reference: %s\n", s.message().c_str());
    return 1;
  }
  double max_err = 0, listed = 0;
  for (std::size_t e = 0; e < o.size(); ++e) max_err = std::max(max_err, std::abs(double(o[e]) - ref[e]));
  for (std::size_t r = 0; r + 1 < sel.offsets.size(); ++r) listed += double(sel.offsets[r + 1] - sel.offsets[r]);
  const double n_lists = double(sel.offsets.size() - 1);

  std::printf("05_moba_block_sparse: MoBA block %lld, top-%lld past blocks + own block, causal\n", (long long)mo.block,
              (long long)mo.top_k);
  std::printf("  shape  B=%lld Hq=%lld Hkv=%lld S=%lld D=%lld, %lld key blocks\n", (long long)B, (long long)Hq,
              (long long)Hkv, (long long)S, (long long)D, (long long)((S + mo.block - 1) / mo.block));
  std::printf("  blocks listed per query block (mean) = %.2f\n", listed / n_lists);
  std::printf("  selection %.2f ms, MoBA attention %.2f ms, dense causal %.2f ms (x%.2f), one thread\n", t_sel, t_moba,
              t_dense, t_dense / t_moba);
  std::printf("  max |fast - fp64 reference|          = %.3g\n", max_err);
  const bool ok = max_err < 1e-4;
  std::printf("  %s\n", ok ? "OK" : "FAILED: the fast path disagrees with the reference");
  return ok ? 0 : 1;
}
