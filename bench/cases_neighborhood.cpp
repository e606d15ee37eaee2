// Neighborhood attention (issue 6): multi-dimensional query tiles over permuted tokens
// (kernel/permute.hpp) against the same pattern run other ways, single thread, B1 H4 D64 on
// 4096 tokens (a 64x64 image or a 16x16x16 volume):
//
//   BM_na_dense/<P>          Full mask, every pair (the GFLOP/s ceiling of the fused loop)
//   BM_na_eigen_dense/<P>    Eigen GEMM + softmax + GEMM, every pair (baseline)
//   BM_na_tiled/<mask>       forward() with the NeighborhoodMask (box tiles, permuted)
//   BM_na_flat/<mask>        the same mask on the flat 64-row tiles (the path before issue 6)
//   BM_na_masked_dense/<mask>  dense attention with a -inf bias outside the neighborhoods
//   BM_na_copies/<mask>      the permutation alone: plan, K/V gather (Q, O go through a slot map)
//   BM_na_plan/<mask>        a mask's whole plan with its key lists: what its first call adds
//   BM_na_tiled_extra64/2d_64x64_k13  the 2-D case plus 64 extra (global) keys every query sees
//   BM_na_small/<mask>, BM_na_small_streams/<mask>  a 16x16 grid (Q, K, V, O 1 MiB together):
//                            the call as it runs (no prefetch streams where the tensors fit in
//                            the L2; kernel/config.hpp prefetch_pays), and with the streams kept
//                            on (detail::prefetch_in_l2, as before run AG). With an L2 under
//                            1 MiB both run the streams.
//
// GFLOPS counts the VISIBLE pairs (4 * D per pair, as everywhere in bench/): for the NA cases
// it reads directly as a fraction of BM_na_dense's GFLOPS. Goals: 13x13 (2-D) and 7x7x7 (3-D)
// tiled >= 50% of dense GFLOP/s and >= 10x faster than the dense masked call; the block-aligned
// cases (stride == kernel, a multiple of the tile) time <= dense * visible/all / 0.9.
// Times are CPU time (single thread; the host is shared, and wall time would also count other
// processes' slices); 5 repetitions, median and min.
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "eigen_baseline.hpp"
#include "harness.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "sinkattn/kernel/permute.hpp"
#include "sinkattn/policy/mask_neighborhood.hpp"

namespace sinkattn_bench {
namespace {

using sinkattn::NeighborhoodMask;

struct NaCase {
  std::string name;
  NeighborhoodMask mask;
};

const Problem kNaProblem{1, 4, 4, 4096, 4096, 64, 64};
// The same tokens with 64 extra keys in front of K/V (NeighborhoodMask::extra_keys).
const Problem kNaExtraProblem{1, 4, 4, 4096, 4096 + 64, 64, 64};

Shape na_shape(const char* name, const Problem& p) {
  Shape x;
  x.name = name;
  x.problem = p;
  return x;
}

Data& na_data() {
  static Shape s = na_shape("na_B1_H4_S4096_D64", kNaProblem);
  return data_for(s);
}

// The small-call cases: a 16x16 grid, 256 tokens.
const Problem kNaSmallProblem{1, 4, 4, 256, 256, 64, 64};
Data& na_small_data() {
  static Shape s = na_shape("na_B1_H4_S256_D64", kNaSmallProblem);
  return data_for(s);
}

Data& na_extra_data() {
  static Shape s = na_shape("na_B1_H4_S4096_X64_D64", kNaExtraProblem);
  return data_for(s);
}

index_t na_pairs(const NeighborhoodMask& m, const Problem& p = kNaProblem) {
  const sinkattn::policy::NeighborhoodMaskPolicy pol{m.rank,   m.extent, m.kernel,    m.dilation,
                                                     m.stride, m.causal, m.extra_keys};
  index_t n = 0;
  for (index_t i = 0; i < p.seq_q; ++i) n += pol.count_visible(i);
  return n;
}

void counters(benchmark::State& st, index_t pairs, const Problem& p = kNaProblem) {
  const double gflop = 2.0 * static_cast<double>(p.dim_qk + p.dim_v) * static_cast<double>(pairs) *
                       static_cast<double>(p.batch * p.heads_q) * 1e-9;
  st.counters["GFLOPS"] = benchmark::Counter(gflop, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["visible_frac"] = static_cast<double>(pairs) / static_cast<double>(p.seq_q * p.seq_kv);
}

template <class F>
void reg(const std::string& name, int iters, F fn) {
  benchmark::RegisterBenchmark(name.c_str(), fn)
      ->Unit(benchmark::kMillisecond)
      ->Iterations(iters)
      ->Repetitions(5)
      ->ComputeStatistics("min", [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); });
}

}  // namespace

SINKATTN_BENCH_CASES(neighborhood_cases) {
  using namespace sinkattn;
  const Problem p = kNaProblem;
  const std::string dense_suffix = "/B1_H4_S4096_D64";

  reg("BM_na_dense" + dense_suffix, 2, [p](benchmark::State& st) {
    Data& d = na_data();
    for (auto _ : st) {
      check(forward(p, d.q, d.k, d.v, d.o, Options{}));
      benchmark::ClobberMemory();
    }
    counters(st, p.seq_q * p.seq_kv);
  });
  reg("BM_na_eigen_dense" + dense_suffix, 2, [p](benchmark::State& st) {
    Data& d = na_data();
    EigenAttention eig;
    eig.reserve(p);
    for (auto _ : st) {
      eig(p, false, d.q.data, d.k.data, d.v.data, d.o.data);
      benchmark::ClobberMemory();
    }
    counters(st, p.seq_q * p.seq_kv);
  });

  const std::vector<NaCase> cases = {
      {"2d_64x64_k13", NeighborhoodMask{2, {64, 64, 1}, {13, 13, 1}, {1, 1, 1}, {1, 1, 1}, {false, false, false}}},
      {"3d_16x16x16_k7", NeighborhoodMask{3, {16, 16, 16}, {7, 7, 7}, {1, 1, 1}, {1, 1, 1}, {false, false, false}}},
      // Block-aligned (GNA's "ideal speedup" test): stride == kernel, whole tiles.
      {"2d_64x64_k16_s16",
       NeighborhoodMask{2, {64, 64, 1}, {16, 16, 1}, {1, 1, 1}, {16, 16, 1}, {false, false, false}}},
      {"2d_64x64_k8_s8", NeighborhoodMask{2, {64, 64, 1}, {8, 8, 1}, {1, 1, 1}, {8, 8, 1}, {false, false, false}}},
      {"1d_4096_k256_s256",
       NeighborhoodMask{1, {4096, 1, 1}, {256, 1, 1}, {1, 1, 1}, {256, 1, 1}, {false, false, false}}},
  };
  for (const NaCase& c : cases) {
    const index_t pairs = na_pairs(c.mask);
    const std::string sfx = "/" + c.name;
    Options opt;
    opt.mask = c.mask;
    const bool small = pairs * 16 < p.seq_q * p.seq_kv;
    reg("BM_na_tiled" + sfx, small ? 40 : 10, [p, opt, pairs](benchmark::State& st) {
      Data& d = na_data();
      for (auto _ : st) {
        check(forward(p, d.q, d.k, d.v, d.o, opt));
        benchmark::ClobberMemory();
      }
      counters(st, pairs);
    });
    const NeighborhoodMask m = c.mask;
    reg("BM_na_flat" + sfx, small ? 20 : 4, [p, m, pairs](benchmark::State& st) {
      using V = Variant<policy::RuntimeScore, policy::NeighborhoodMaskPolicy, policy::OnlineSoftmax, policy::NoSink,
                        policy::OptionalSigmoidGate>;
      const policy::NeighborhoodMaskPolicy pol{m.rank, m.extent, m.kernel, m.dilation, m.stride, m.causal};
      Data& d = na_data();
      for (auto _ : st) {
        check(forward<V>(p, d.q, d.k, d.v, d.o, pol, Options{}));
        benchmark::ClobberMemory();
      }
      counters(st, pairs);
    });
    if (c.name == "2d_64x64_k13" || c.name == "3d_16x16x16_k7") {
      reg("BM_na_masked_dense" + sfx, 1, [p, m, pairs](benchmark::State& st) {
        // -inf outside the neighborhoods, shared by the heads (stride 0): the dense loop with
        // an additive bias, the way the pattern runs without a mask policy.
        const policy::NeighborhoodMaskPolicy pol{m.rank, m.extent, m.kernel, m.dilation, m.stride, m.causal};
        std::vector<float> bias(static_cast<std::size_t>(p.seq_q * p.seq_kv));
        for (index_t i = 0; i < p.seq_q; ++i)
          for (index_t j = 0; j < p.seq_kv; ++j)
            bias[static_cast<std::size_t>(i * p.seq_kv + j)] =
                pol.visible(i, j) ? 0.f : -std::numeric_limits<float>::infinity();
        Options o;
        o.score.bias = TensorView<const float>(bias.data(), {1, p.heads_q, p.seq_q, p.seq_kv}, {0, 0, p.seq_kv, 1});
        Data& d = na_data();
        for (auto _ : st) {
          check(forward(p, d.q, d.k, d.v, d.o, o));
          benchmark::ClobberMemory();
        }
        counters(st, pairs);
      });
    }
    if (c.name == "2d_64x64_k13") {
      NeighborhoodMask mx = m;
      mx.extra_keys = kNaExtraProblem.seq_kv - kNaExtraProblem.seq_q;
      Options ox;
      ox.mask = mx;
      reg("BM_na_tiled_extra64" + sfx, 10, [ox, pairs = na_pairs(mx)](benchmark::State& st) {
        Data& d = na_extra_data();
        for (auto _ : st) {
          check(forward(kNaExtraProblem, d.q, d.k, d.v, d.o, ox));
          benchmark::ClobberMemory();
        }
        counters(st, pairs, kNaExtraProblem);
      });
    }
    reg("BM_na_copies" + sfx, 40, [p, opt, m](benchmark::State& st) {
      // What the tiled call adds around the fused loop (included in BM_na_tiled's time): the plan
      // and the permuted K, V copies (Q and O are read and written through the slot map).
      Data& d = na_data();
      const detail::KernelArgs a = detail::make_args(p, d.q, d.k, d.v, d.o, opt);
      for (auto _ : st) {
        detail::NaPlan plan;
        detail::na_build_plan(plan, m, detail::kBlockQ, detail::kBlockKV);
        const detail::NaBuffers buf = detail::na_buffers(a, plan, detail::permute_workspace());
        if (buf.k == nullptr) {
          st.SkipWithError("no memory for the copies");
          break;
        }
        detail::na_gather_inputs(a, plan, buf, Executor::serial());
        benchmark::ClobberMemory();
      }
    });
    reg("BM_na_plan" + sfx, 10, [m](benchmark::State& st) {
      // What a mask's first call adds (later calls take the kept plan: na_plan_for): token
      // orders, window tables, the search over key orders and lane slabs, the key lists.
      for (auto _ : st) {
        detail::NaPlan plan;
        detail::na_build_call_plan(plan, m);
        benchmark::DoNotOptimize(plan.list_keys.data());
      }
    });
  }

  // Small calls: whether the prefetch streams pay where everything sits in the L2 already.
  const std::vector<NaCase> small_cases = {
      {"16x16_dense", NeighborhoodMask{}},
      {"16x16_k13", NeighborhoodMask{2, {16, 16, 1}, {13, 13, 1}, {1, 1, 1}, {1, 1, 1}, {false, false, false}}},
      {"16x16_k8_s8", NeighborhoodMask{2, {16, 16, 1}, {8, 8, 1}, {1, 1, 1}, {8, 8, 1}, {false, false, false}}},
  };
  const Problem ps = kNaSmallProblem;
  for (const NaCase& c : small_cases) {
    const bool dense = c.name == "16x16_dense";  // (its mask unused)
    const index_t pairs = dense ? ps.seq_q * ps.seq_kv : na_pairs(c.mask, ps);
    Options opt;
    if (!dense) opt.mask = c.mask;
    for (const bool streams : {false, true}) {
      reg(std::string(streams ? "BM_na_small_streams/" : "BM_na_small/") + c.name, dense ? 200 : 400,
          [ps, opt, pairs, streams](benchmark::State& st) {
            Data& d = na_small_data();
            detail::prefetch_in_l2 = streams;
            for (auto _ : st) {
              check(forward(ps, d.q, d.k, d.v, d.o, opt));
              benchmark::ClobberMemory();
            }
            detail::prefetch_in_l2 = false;
            counters(st, pairs, ps);
          });
    }
  }
}

}  // namespace sinkattn_bench
