// Mask policies that skip KV blocks (issue 5): sliding window + sink tokens at S8192 D128,
// single thread, beside the dense call on the same data. Goal: GFLOP/s over the VISIBLE pairs
// >= 90% of dense GFLOP/s, i.e. the blocks outside sinks + band are skipped for real.
//
//   BM_mask_dense/prefill_B1_H2_S8192_D128          full mask (every pair)
//   BM_mask_window1024_sink4/prefill_B1_H2_S8192_D128  left = 1023, right = 0, 4 sink tokens
//
// Issue 6: block-diagonal attention (BlockMask, blocks of 256 and 1024 keys, multiples of the
// 64-key tile), block-sparse lists aligned to the tile (25% of the 64- or 256-key blocks listed
// per query block, chosen per (head, query block)), and MoBA (block 512, top-3 past blocks +
// the own block, causal; selection made once, untimed; BM_moba_select times it alone). Goal
// (GNA's "ideal speedup"): time <= dense time * (visible pairs / all pairs) / 0.9, i.e. the
// same GFLOP/s-over-visible-pairs test as above.
//
//   BM_mask_causal/...                   dense causal, for MoBA's comparison
//   BM_mask_block256/..., BM_mask_block1024/...
//   BM_mask_sparse25_b64/..., BM_mask_sparse25_b256/...
//   BM_mask_moba512_top3/...,  BM_moba_select/...
//
// These cases are registered directly with Google Benchmark (the shape table of harness.hpp
// holds only dense/causal shapes): GFLOPS = 4 * D * visible pairs * B * Hq / time, with the
// visible pairs counted by harness.hpp's count_visible over the mask's own predicate.
#if __has_include("sinkattn/policy/mask_window.hpp")
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "harness.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "sinkattn/reference/visibility.hpp"
#if __has_include("sinkattn/policy/moba.hpp")
#include "sinkattn/policy/moba.hpp"
#define SINKATTN_BENCH_HAVE_MOBA 1
#endif

namespace sinkattn_bench {
namespace {

struct MaskData {
  Shape shape;  // dense shape (for the data), never put into the shape table
  Data* data = nullptr;
};

void run_mask_case(benchmark::State& st, const std::shared_ptr<MaskData>& md, const sinkattn::Options& opt,
                   index_t pairs) {
  const Problem& p = md->shape.problem;
  if (md->data == nullptr) md->data = &data_for(md->shape);
  Data& d = *md->data;
  for (auto _ : st) {
    sinkattn::check(sinkattn::forward(p, d.q, d.k, d.v, d.o, opt));  // single thread (serial)
    benchmark::DoNotOptimize(d.o.data);
    benchmark::ClobberMemory();
  }
  const double gflop = 2.0 * static_cast<double>(p.dim_qk + p.dim_v) * static_cast<double>(pairs) *
                       static_cast<double>(p.batch * p.heads_q) * 1e-9;
  st.counters["GFLOPS"] = benchmark::Counter(gflop, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["visible_frac"] = static_cast<double>(pairs) / static_cast<double>(p.seq_q * p.seq_kv);
}

// Block-sparse lists: per (head, query block) `listed` of the n key blocks, a deterministic
// pseudo-random choice (ascending).
struct Lists {
  std::vector<index_t> offsets{0}, indices;
};

inline Lists random_lists(index_t heads, index_t n, index_t listed) {
  Lists l;
  std::uint64_t state = 12345;
  for (index_t r = 0; r < heads * n; ++r) {
    std::vector<char> on(static_cast<std::size_t>(n), 0);
    for (index_t got = 0; got < listed;) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      const auto kb = static_cast<std::size_t>((state >> 33) % static_cast<std::uint64_t>(n));
      if (!on[kb]) on[kb] = 1, ++got;
    }
    for (index_t kb = 0; kb < n; ++kb)
      if (on[static_cast<std::size_t>(kb)]) l.indices.push_back(kb);
    l.offsets.push_back(static_cast<index_t>(l.indices.size()));
  }
  return l;
}

// Visible pairs per (b, h), averaged over the heads of a head-dependent block-sparse mask.
inline index_t sparse_pairs(const Problem& p, const sinkattn::BlockSparseMask& m) {
  const sinkattn::policy::BlockSparseMaskPolicy pol{
      p.seq_q,    p.seq_kv,  p.heads_q, m.q_block,
      m.kv_block, m.offsets, m.indices, m.element_mask ? &m.element_mask : nullptr};
  index_t n = 0;
  for (index_t h = 0; h < p.heads_q; ++h) {
    const auto v = pol.bind(0, h);
    for (index_t i = 0; i < p.seq_q; ++i) n += v.count_visible(i);
  }
  return n / p.heads_q;
}

}  // namespace

SINKATTN_BENCH_CASES(block_sparse_cases) {
  using namespace sinkattn;
  const index_t s = 8192, dim = 128, heads = 2;
  auto md = std::make_shared<MaskData>();
  md->shape.problem = Problem{1, heads, heads, s, s, dim, dim};
  md->shape.name = "prefill_B1_H2_S8192_D128";
  const std::string suffix = "/" + md->shape.name;
  const auto reg = [&](const std::string& name, const Options& opt, index_t pairs, int iters) {
    benchmark::RegisterBenchmark((name + suffix).c_str(),
                                 [md, opt, pairs](benchmark::State& st) { run_mask_case(st, md, opt, pairs); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Iterations(iters);
  };

  Options causal;
  causal.mask = CausalMask{};
  reg("BM_mask_causal", causal, count_visible_causal(s, s), 2);

  for (index_t blk : {256, 1024}) {
    BlockMask bm;
    bm.block_size = blk;
    Options o;
    o.mask = bm;
    reg("BM_mask_block" + std::to_string(blk), o, s * blk, blk == 256 ? 20 : 6);  // s / blk blocks of blk^2
  }

  for (index_t blk : {64, 256}) {
    const index_t n = s / blk;
    auto lists = std::make_shared<Lists>(random_lists(heads, n, n / 4));
    BlockSparseMask m{blk, blk, lists->offsets.data(), lists->indices.data(), {}};
    Options o;
    o.mask = m;
    const index_t pairs = sparse_pairs(md->shape.problem, m);
    benchmark::RegisterBenchmark(("BM_mask_sparse25_b" + std::to_string(blk) + suffix).c_str(),
                                 [md, o, pairs, lists](benchmark::State& st) { run_mask_case(st, md, o, pairs); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Iterations(4);
  }

#ifdef SINKATTN_BENCH_HAVE_MOBA
  // MoBA: the selection depends on the data, made on the first run of the case (untimed).
  struct Moba {
    MobaSelection sel;
    Options opt;
    index_t pairs = 0;
  };
  auto moba = std::make_shared<Moba>();
  const MobaOptions mo{512, 3, true};
  const auto select = [md, moba, mo] {
    if (!moba->sel.offsets.empty()) return;
    if (md->data == nullptr) md->data = &data_for(md->shape);
    sinkattn::check(moba_select(md->data->q, md->data->k, mo, moba->sel));
    moba->opt.mask = moba->sel.mask();
    moba->pairs = sparse_pairs(md->shape.problem, std::get<BlockSparseMask>(moba->opt.mask));
  };
  benchmark::RegisterBenchmark(("BM_mask_moba512_top3" + suffix).c_str(),
                               [md, moba, select](benchmark::State& st) {
                                 select();
                                 run_mask_case(st, md, moba->opt, moba->pairs);
                               })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->Iterations(4);
  benchmark::RegisterBenchmark(("BM_moba_select" + suffix).c_str(),
                               [md, mo](benchmark::State& st) {
                                 if (md->data == nullptr) md->data = &data_for(md->shape);
                                 for (auto _ : st) {
                                   MobaSelection sel;
                                   sinkattn::check(moba_select(md->data->q, md->data->k, mo, sel));
                                   benchmark::DoNotOptimize(sel.indices.data());
                                 }
                               })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->Iterations(4);
#endif
}

SINKATTN_BENCH_CASES(mask_cases) {
  using namespace sinkattn;
  const index_t s = 8192, dim = 128;
  auto md = std::make_shared<MaskData>();
  md->shape.problem = Problem{1, 2, 2, s, s, dim, dim};
  md->shape.name = "prefill_B1_H2_S8192_D128";
  const std::string suffix = "/" + md->shape.name;

  const Options dense{};
  benchmark::RegisterBenchmark(("BM_mask_dense" + suffix).c_str(),
                               [md, dense](benchmark::State& st) { run_mask_case(st, md, dense, s * s); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->Iterations(2);

  const SlidingWindowMask w{1023, 0, 4, 0};
  Options win;
  win.mask = w;
  // The reference's own predicate (Sq == Skv, offset 0: p_i = i).
  const index_t pairs =
      count_visible(s, s, [&](index_t i, index_t j) { return reference::detail::window_visible(w, i, j); });
  benchmark::RegisterBenchmark(("BM_mask_window1024_sink4" + suffix).c_str(),
                               [md, win, pairs](benchmark::State& st) { run_mask_case(st, md, win, pairs); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->Iterations(10);
}

}  // namespace sinkattn_bench
#endif
