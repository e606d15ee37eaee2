// Sink diagnostics (SEMANTICS section 6): sinkattn::sink_mass, the attention mass each key
// receives, beside the same quantity from Eigen on a materialised score matrix, single thread,
// B1 H8 S4096 D64, dense and causal:
//
//   BM_sink_mass/<shape>        sink_mass(): per query tile one score sweep (max and sum,
//                               the exponentials kept: 64 x Skv floats, 1 MiB here), then the
//                               weights summed per key from them; nothing of Sq x Skv stored
//   BM_eigen_sink_mass/<shape>  per head S = scale Q K^T (GEMM), the causal tail -inf, row
//                               softmax, column sums (Eigen array ops)
//
// GFLOPS counts one pass of scores, 2 * Dqk per visible pair per head: the work that defines
// the mass (sink_mass and Eigen do it once). The time ratio of the two cases is the
// comparison; peak_frac is GFLOPS over the measured FMA peak printed at start-up.
//
//   BM_forward_act/<shape>      forward_act() with 4 sink keys (1..4), beta = 0.5: one fused
//                               pass plus the per-row correction; compare with BM_sinkattn and
//                               BM_eigen on prefill_B1_H8_S4096_D64_* (attention GFLOPS,
//                               4 * D per visible pair)
#if __has_include("sinkattn/kernel/sink_mass.hpp")
// First: it silences GCC 12's false positives in the intrinsic headers it brings in.
#include "eigen_core.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "harness.hpp"
#include "sinkattn/kernel/act.hpp"
#include "sinkattn/kernel/sink_mass.hpp"

namespace sinkattn_bench {
namespace {

// The normalizations the mass benchmarks run: softmax, sigmoid (b = -log Skv, not row
// normalized), softpick.
enum class MassNorm { softmax, sigmoid, softpick };

struct MassData {
  Shape shape;  // never put into the shape table
  MassNorm norm = MassNorm::softmax;
  std::unique_ptr<sinkattn::RopeTable> rope;  // non-null: RoPE on load (NeoX, theta 10^4)
  std::vector<float> key_padding;             // non-empty: a key-padding bias [B, 1, 1, Skv]
  std::vector<index_t> cuts;                  // non-empty: K as segments cut there, read in place
  Data* data = nullptr;
  std::vector<float> mass;
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> s;  // Eigen's scores
};

float sigmoid_bias(const Problem& p) { return -std::log(static_cast<float>(p.seq_kv)); }

sinkattn::Options mass_options(const MassData& md) {
  sinkattn::Options o = md.shape.options();
  if (md.norm == MassNorm::sigmoid) o.norm = sinkattn::Sigmoid{sigmoid_bias(md.shape.problem), nullptr, false, 0.f};
  if (md.norm == MassNorm::softpick) o.norm = sinkattn::Softpick{};
  if (md.rope) o.rope.table = md.rope.get();
  if (!md.key_padding.empty()) {
    const Problem& p = md.shape.problem;
    o.score.bias = sinkattn::TensorView<const float>(md.key_padding.data(), {p.batch, p.heads_q, p.seq_q, p.seq_kv},
                                                     {p.seq_kv, 0, 0, 1});
  }
  return o;
}

// Eigen's mass of head h: S = scale Q_h K_g^T, the row's weights (softmax, sigmoid or
// softpick, as SEMANTICS section 3 defines them), column sums.
void eigen_mass(MassData& md) {
  using Map = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, Eigen::Unaligned,
                         Eigen::OuterStride<>>;
  const Problem& p = md.shape.problem;
  const Data& d = *md.data;
  const index_t sq = p.seq_q, skv = p.seq_kv, hq = p.heads_q, hkv = p.heads_kv, dk = p.dim_qk;
  const float scale = 1.f / std::sqrt(static_cast<float>(dk));
  const bool causal = md.shape.mask == Mask::causal;
  for (index_t h = 0; h < hq; ++h) {
    const Map qh(d.q.data + h * dk, sq, dk, Eigen::OuterStride<>(hq * dk));
    const Map kg(d.k.data + (h / p.group_size()) * dk, skv, dk, Eigen::OuterStride<>(hkv * dk));
    md.s.noalias() = scale * qh * kg.transpose();
    for (index_t i = 0; i < sq; ++i) {
      auto row = md.s.row(i).array();
      const index_t seen = causal ? std::min(skv, i + (skv - sq) + 1) : skv;
      if (md.norm == MassNorm::sigmoid) {
        const float b = sigmoid_bias(p);
        row.head(seen) = 1.f / (1.f + (-(row.head(seen) + b)).exp());
      } else if (md.norm == MassNorm::softpick) {  // ReLU(e^x - 1) / (sum |e^x - 1| + eps), max-stabilised
        const float m = std::max(0.f, row.head(seen).maxCoeff()), off = std::exp(-m);
        row.head(seen) = (row.head(seen) - m).exp() - off;
        const float den = row.head(seen).abs().sum() + 1e-6f * off;
        row.head(seen) = row.head(seen).max(0.f) * (1.f / den);
      } else {
        if (seen < skv) row.tail(skv - seen).setConstant(-std::numeric_limits<float>::infinity());
        row = (row - row.maxCoeff()).exp();
        row *= 1.f / row.sum();
        continue;
      }
      if (seen < skv) row.tail(skv - seen).setZero();
    }
    Eigen::Map<Eigen::RowVectorXf>(md.mass.data() + h * skv, skv) = md.s.colwise().sum();
  }
}

// K/V of md's data as segments between md.cuts, views read in place (none without cuts).
std::vector<sinkattn::KvSegment> segments_of(const MassData& md) {
  const Problem& p = md.shape.problem;
  const Data& d = *md.data;
  std::vector<sinkattn::KvSegment> segs;
  for (std::size_t c = 0; c < md.cuts.size(); ++c) {
    const index_t j0 = md.cuts[c], j1 = c + 1 < md.cuts.size() ? md.cuts[c + 1] : p.seq_kv;
    const auto piece = [&](const sinkattn::TensorView<const float>& x, index_t dim) {
      return sinkattn::TensorView<const float>(x.ptr(0, j0, 0), {p.batch, j1 - j0, p.heads_kv, dim}, x.stride);
    };
    segs.push_back({piece(d.k, p.dim_qk), piece(d.v, p.dim_v)});
  }
  return segs;
}

void run_mass_case(benchmark::State& st, const std::shared_ptr<MassData>& md, bool eigen) {
  const Problem& p = md->shape.problem;
  if (md->data == nullptr) md->data = &data_for(md->shape);
  md->mass.assign(static_cast<std::size_t>(p.heads_q * p.seq_kv), 0.f);
  if (eigen) md->s.setZero(p.seq_q, p.seq_kv);  // sized and touched outside the timed loop
  const auto mass = sinkattn::TensorView<float>::lse(md->mass.data(), 1, p.heads_q, p.seq_kv);
  const std::vector<sinkattn::KvSegment> segs = segments_of(*md);
  const sinkattn::TensorView<const float>& k = md->data->k;
  for (auto _ : st) {
    if (eigen)
      eigen_mass(*md);
    else if (!segs.empty())
      sinkattn::check(sinkattn::sink_mass(p, md->data->q, segs.data(), static_cast<index_t>(segs.size()), mass, {},
                                          mass_options(*md)));
    else
      sinkattn::check(sinkattn::sink_mass(p, md->data->q, k, mass, {}, mass_options(*md)));
    benchmark::DoNotOptimize(md->mass.data());
    benchmark::ClobberMemory();
  }
  const index_t pairs = visible_pairs(md->shape);
  st.counters["GFLOPS"] = benchmark::Counter(2.0 * static_cast<double>(p.dim_qk) * static_cast<double>(pairs) *
                                                 static_cast<double>(p.batch * p.heads_q) * 1e-9,
                                             benchmark::Counter::kIsIterationInvariantRate);
}

void run_act_case(benchmark::State& st, const std::shared_ptr<MassData>& md) {
  const Problem& p = md->shape.problem;
  if (md->data == nullptr) md->data = &data_for(md->shape);
  Data& d = *md->data;
  static const sinkattn::index_t keys[] = {1, 2, 3, 4};
  const std::vector<sinkattn::KvSegment> segs = segments_of(*md);
  for (auto _ : st) {
    if (!segs.empty())
      sinkattn::check(sinkattn::forward_act(p, d.q, segs.data(), static_cast<index_t>(segs.size()), d.o,
                                            mass_options(*md), {keys, 4, 0.5}));
    else
      sinkattn::check(sinkattn::forward_act(p, d.q, d.k, d.v, d.o, mass_options(*md), {keys, 4, 0.5}));
    benchmark::DoNotOptimize(d.o.data);
    benchmark::ClobberMemory();
  }
  st.counters["GFLOPS"] = benchmark::Counter(flops(md->shape) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Every case of this file: milliseconds of real time, 3 iterations (one call is 0.1-0.6 s).
// A mass case runs sink_mass (eigen false) or the Eigen baseline; an ACT case forward_act.
void register_mass(const std::shared_ptr<MassData>& md, bool eigen) {
  benchmark::RegisterBenchmark((std::string(eigen ? "BM_eigen_sink_mass/" : "BM_sink_mass/") + md->shape.name).c_str(),
                               [md, eigen](benchmark::State& st) { run_mass_case(st, md, eigen); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->Iterations(3);
}
void register_act(const std::shared_ptr<MassData>& md) {
  benchmark::RegisterBenchmark(("BM_forward_act/" + md->shape.name).c_str(),
                               [md](benchmark::State& st) { run_act_case(st, md); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->Iterations(3);
}

}  // namespace

SINKATTN_BENCH_CASES(diagnostics_cases) {
  for (const Mask m : {Mask::full, Mask::causal}) {
    auto md = std::make_shared<MassData>();
    md->shape.problem = Problem{1, 8, 8, 4096, 4096, 64, 64};
    md->shape.mask = m;
    md->shape.name = std::string("B1_H8_S4096_D64_") + (m == Mask::causal ? "causal" : "dense");
    for (const bool eigen : {true, false}) register_mass(md, eigen);
    register_act(md);
    for (const MassNorm n : {MassNorm::sigmoid, MassNorm::softpick}) {
      auto mn = std::make_shared<MassData>();
      mn->shape = md->shape;
      mn->shape.name += n == MassNorm::sigmoid ? "_sigmoid" : "_softpick";
      mn->norm = n;
      for (const bool eigen : {true, false}) register_mass(mn, eigen);
    }
  }
  // RoPE on load (sink_mass, forward_act), a key-padding bias (forward_act: the last 96 keys
  // padding) and K/V as segments (a streaming cache's 4 sink keys and a ring window in two
  // pieces), dense: their cost against the plain cases above.
  const auto variant = [](const std::string& suffix) {
    auto md = std::make_shared<MassData>();
    md->shape.problem = Problem{1, 8, 8, 4096, 4096, 64, 64};
    md->shape.name = "B1_H8_S4096_D64_dense_" + suffix;
    return md;
  };
  auto rope = variant("rope");
  rope->rope = std::make_unique<sinkattn::RopeTable>(sinkattn::Rope{10000.f, 64, 0, sinkattn::RopePairing::neox}, 4096);
  auto pad = variant("keypad");
  pad->key_padding.assign(4096, 0.f);
  std::fill(pad->key_padding.end() - 96, pad->key_padding.end(), -std::numeric_limits<float>::infinity());
  auto segments = variant("segments");
  segments->cuts = {0, 4, 1500};
  for (const auto& md : {rope, segments}) register_mass(md, false);
  for (const auto& md : {rope, pad, segments}) register_act(md);
}

}  // namespace sinkattn_bench
#endif
