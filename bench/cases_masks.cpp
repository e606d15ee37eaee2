// Mask policies that skip KV blocks (issue 5): sliding window + sink tokens at S8192 D128,
// single thread, beside the dense call on the same data. Goal: GFLOP/s over the VISIBLE pairs
// >= 90% of dense GFLOP/s, i.e. the blocks outside sinks + band are skipped for real.
//
//   BM_mask_dense/prefill_B1_H2_S8192_D128          full mask (every pair)
//   BM_mask_window1024_sink4/prefill_B1_H2_S8192_D128  left = 1023, right = 0, 4 sink tokens
//
// These cases are registered directly with Google Benchmark (the shape table of harness.hpp
// holds only dense/causal shapes): GFLOPS = 4 * D * visible pairs * B * Hq / time, with the
// visible pairs counted by harness.hpp's count_visible over the mask's own predicate.
#if __has_include("sinkattn/policy/mask_window.hpp")
#include <memory>
#include <string>

#include "harness.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "sinkattn/reference/visibility.hpp"

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

}  // namespace

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
