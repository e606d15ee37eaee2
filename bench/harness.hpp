#pragma once
// The benchmark harness: a table of shapes, one shared data set per shape, and a one-line way
// to register an implementation on a shape. Every case reports the same counters:
//
//   GFLOPS    = 4 * Dqk * visible_pairs * B * Hq / time     (exact count of visible (i, j))
//   peak_frac = GFLOPS / measured single-thread FMA peak
//   GBps      = K + V bytes per call / time                  (decode shapes only)
//   bw_frac   = GBps / measured single-thread read bandwidth (decode shapes only)
//
// Adding an implementation (e.g. in bench/cases_sinkattn.cpp):
//
//   SINKATTN_BENCH_CASES(sinkattn_cases) {
//     for (const Shape& s : shapes())
//       register_case("sinkattn", s, [](const Shape& s, Data& d) {
//         sinkattn::check(sinkattn::forward(s.problem, d.q, d.k, d.v, d.o, s.options()));
//       });
//   }
//
// The function is called once per benchmark iteration; it must compute O for the whole shape.
// Cases appear as BM_<impl>/<shape>, grouped per shape beside BM_eigen/<shape>, and in the
// summary table printed after the run.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "buffer.hpp"
#include "sinkattn/sinkattn.hpp"

namespace sinkattn_bench {

using sinkattn::index_t;
using sinkattn::Problem;

enum class Mask { full, causal };
enum class Kind { prefill, decode };

// One benchmark shape: the problem, its mask, and whether it is a decode (memory-bound) case.
struct Shape {
  std::string name;  // e.g. "B1_H8_S1024_D64_causal"
  Problem problem;
  Mask mask = Mask::full;
  Kind kind = Kind::prefill;

  sinkattn::Options options() const {
    sinkattn::Options o;
    if (mask == Mask::causal) o.mask = sinkattn::CausalMask{};
    return o;
  }
};

// ---- Visible pairs --------------------------------------------------------------------------

// Generic count of visible (i, j) for any predicate visible(i, j): O(Sq * Skv), for masks
// without a closed form (sliding window, block, neighborhood, ...).
template <class Visible>
index_t count_visible(index_t sq, index_t skv, Visible&& visible) {
  index_t n = 0;
  for (index_t i = 0; i < sq; ++i)
    for (index_t j = 0; j < skv; ++j) n += visible(i, j) ? 1 : 0;
  return n;
}

// Causal, bottom-right aligned: row i sees j <= p_i = i + (Skv - Sq) + offset, i.e.
// clamp(i + d, 0, Skv) keys with d = Skv - Sq + offset + 1. Closed form over the rows.
inline index_t count_visible_causal(index_t sq, index_t skv, index_t offset = 0) {
  const index_t d = skv - sq + offset + 1;
  const index_t a = std::clamp<index_t>(1 - d, 0, sq);              // first row seeing >= 1 key
  const index_t b = std::clamp<index_t>(skv - d, a, sq);            // first row seeing every key
  return (b - a) * d + (a + b - 1) * (b - a) / 2 + (sq - b) * skv;  // sum_{i=a}^{b-1} (i + d)
}

inline index_t visible_pairs(const Shape& s) {
  const Problem& p = s.problem;
  return s.mask == Mask::causal ? count_visible_causal(p.seq_q, p.seq_kv) : p.seq_q * p.seq_kv;
}

// Useful flops of one call: 2 * Dqk (Q.K^T) + 2 * Dv (P.V) per visible pair, per (b, h).
inline double flops(const Shape& s) {
  const Problem& p = s.problem;
  return 2.0 * static_cast<double>(p.dim_qk + p.dim_v) * static_cast<double>(visible_pairs(s)) *
         static_cast<double>(p.batch * p.heads_q);
}

// Compulsory K + V bytes of one call (each KV head read once).
inline double kv_bytes(const Shape& s) {
  const Problem& p = s.problem;
  return static_cast<double>(sizeof(float)) * static_cast<double>(p.batch * p.seq_kv * p.heads_kv) *
         static_cast<double>(p.dim_qk + p.dim_v);
}

// ---- Shared data ----------------------------------------------------------------------------

// Q, K, V, O for one shape, BSHD, 64-byte aligned, seeded uniform [-1, 1) inputs. Allocated
// once per shape and shared by every implementation (same inputs for all).
struct Data {
  Buffer q_buf, k_buf, v_buf, o_buf;
  sinkattn::TensorView<const float> q, k, v;  // [B, S, H, D] each
  sinkattn::TensorView<float> o;              // [B, Sq, Hq, Dv]
};

// The data of `s` (created on first use).
Data& data_for(const Shape& s);

// ---- Registration ---------------------------------------------------------------------------

using KernelFn = std::function<void(const Shape&, Data&)>;

// The shape table (prefill and decode shapes, in report order).
const std::vector<Shape>& shapes();

// Registers BM_<impl>/<shape.name>. Call from a SINKATTN_BENCH_CASES block (or from main
// before the run); cases are registered with Google Benchmark grouped by shape, "eigen" first.
// `setup`, if given, runs before each timed loop (untimed): allocate scratch, warm a pool, ...
void register_case(const std::string& impl, const Shape& shape, KernelFn fn, KernelFn setup = {});

// Blocks of registrations, run by main() after the machine limits are measured.
using CaseRegistrar = void (*)();
int add_registrar(CaseRegistrar r);

}  // namespace sinkattn_bench

#define SINKATTN_BENCH_CASES(id)                                                            \
  static void id();                                                                         \
  [[maybe_unused]] static const int id##_registered = ::sinkattn_bench::add_registrar(&id); \
  static void id()
