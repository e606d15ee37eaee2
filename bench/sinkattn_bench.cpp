// sinkattn_bench: fused attention kernels beside an Eigen GEMM + softmax baseline, reported
// as GFLOP/s over the exact visible pairs and as a fraction of this machine's measured
// single-thread FMA peak (and read bandwidth for decode). See harness.hpp to add a case.

// First: it silences GCC 12's false positives in the intrinsic headers it brings in.
#include "eigen_core.hpp"

#include <unistd.h>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "eigen_baseline.hpp"
#include "harness.hpp"
#include "machine_limits.hpp"

namespace sinkattn_bench {
namespace {

FmaPeak g_peak;
ReadBandwidth g_bw;

Shape prefill(index_t s, index_t d, Mask m) {
  Shape sh;
  sh.problem = Problem{1, 8, 8, s, s, d, d};
  sh.mask = m;
  sh.kind = Kind::prefill;
  sh.name =
      "prefill_B1_H8_S" + std::to_string(s) + "_D" + std::to_string(d) + (m == Mask::causal ? "_causal" : "_dense");
  return sh;
}

Shape decode(index_t skv, index_t hq = 32, index_t hkv = 8, index_t d = 128) {
  Shape sh;
  sh.problem = Problem{1, hq, hkv, 1, skv, d, d};
  sh.mask = Mask::full;
  sh.kind = Kind::decode;
  sh.name = "decode_B1_Hq" + std::to_string(hq) + "_Hkv" + std::to_string(hkv) + "_D" + std::to_string(d) + "_Skv" +
            std::to_string(skv);
  return sh;
}

// ---- Data -----------------------------------------------------------------------------------

// splitmix64: fast, seedable, good enough for benchmark inputs.
struct Rng {
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>(next() >> 40) * (2.f / 16777216.f) - 1.f; }  // [-1, 1)
};

Buffer random_buffer(index_t n, std::uint64_t seed) {
  Buffer b = alloc(n);
  Rng r{seed};
  for (index_t i = 0; i < n; ++i) b[i] = r.uniform();
  return b;
}

std::map<std::string, std::unique_ptr<Data>>& data_cache() {
  static std::map<std::string, std::unique_ptr<Data>> m;
  return m;
}

// ---- Registration ---------------------------------------------------------------------------

struct PendingCase {
  std::string impl;
  Shape shape;
  KernelFn fn;
  KernelFn setup;
};

std::vector<PendingCase>& pending() {
  static std::vector<PendingCase> v;
  return v;
}

std::vector<CaseRegistrar>& registrars() {
  static std::vector<CaseRegistrar> v;
  return v;
}

void run_case(benchmark::State& st, const PendingCase& c) {
  Data& d = data_for(c.shape);
  if (c.setup) c.setup(c.shape, d);
  for (auto _ : st) {
    c.fn(c.shape, d);
    benchmark::DoNotOptimize(d.o.data);
    benchmark::ClobberMemory();
  }
  using benchmark::Counter;
  const double gflop = flops(c.shape) * 1e-9;
  st.counters["GFLOPS"] = Counter(gflop, Counter::kIsIterationInvariantRate);
  if (g_peak.gflops > 0) st.counters["peak_frac"] = Counter(gflop / g_peak.gflops, Counter::kIsIterationInvariantRate);
  if (c.shape.kind == Kind::decode) {
    const double gb = kv_bytes(c.shape) * 1e-9;
    st.counters["GBps"] = Counter(gb, Counter::kIsIterationInvariantRate);
    if (g_bw.gbps > 0) st.counters["bw_frac"] = Counter(gb / g_bw.gbps, Counter::kIsIterationInvariantRate);
  }
}

// Registers the pending cases with Google Benchmark: shape table order, then "eigen" first,
// then the other implementations in order of first registration.
void register_pending() {
  std::vector<std::string> impls{"eigen"};
  for (const auto& c : pending())
    if (std::find(impls.begin(), impls.end(), c.impl) == impls.end()) impls.push_back(c.impl);
  auto shape_rank = [](const std::string& name) {
    const auto& s = shapes();
    for (std::size_t i = 0; i < s.size(); ++i)
      if (s[i].name == name) return i;
    return s.size();
  };
  auto impl_rank = [&](const std::string& impl) {
    return static_cast<std::size_t>(std::find(impls.begin(), impls.end(), impl) - impls.begin());
  };
  std::stable_sort(pending().begin(), pending().end(), [&](const PendingCase& a, const PendingCase& b) {
    const auto ra = shape_rank(a.shape.name), rb = shape_rank(b.shape.name);
    return ra != rb ? ra < rb : impl_rank(a.impl) < impl_rank(b.impl);
  });
  // Rates use wall time (right for threaded kernels too). SINKATTN_BENCH_CPU_TIME=1 switches to
  // the benchmark thread's CPU time: single-thread figures then suffer less from time-slicing
  // when the machine is shared (cache and memory contention remain).
  const char* cpu = std::getenv("SINKATTN_BENCH_CPU_TIME");
  const bool real_time = !(cpu && std::strcmp(cpu, "1") == 0);
  for (const auto& c : pending()) {
    const std::string name = "BM_" + c.impl + "/" + c.shape.name;
    auto* b = benchmark::RegisterBenchmark(name.c_str(), [&c](benchmark::State& st) { run_case(st, c); });
    b->Unit(benchmark::kMillisecond);
    if (real_time) b->UseRealTime();
  }
}

// ---- The Eigen baseline on every shape -------------------------------------------------------

SINKATTN_BENCH_CASES(eigen_cases) {
  for (const Shape& s : shapes()) {
    auto eig = std::make_shared<EigenAttention>();
    register_case(
        "eigen", s,
        [eig](const Shape& s, Data& d) {
          (*eig)(s.problem, s.mask == Mask::causal, d.q.data, d.k.data, d.v.data, d.o.data);
        },
        // Size the score matrix outside the timed loop (no page faults in the first iteration).
        [eig](const Shape& s, Data&) { eig->reserve(s.problem); });
  }
}

// ---- Start-up self-check ----------------------------------------------------------------------

// The baseline against a naive fp64 loop on small awkward shapes (GQA, Sq != Skv, causal with
// fully masked rows), and the causal closed form against the generic counter. Cheap; aborts
// on failure so that a wrong baseline never produces numbers.
void self_check() {
  struct Case {
    Problem p;
    bool causal;
  };
  const Case cases[] = {{{2, 4, 2, 37, 53, 16, 24}, false},
                        {{2, 4, 2, 37, 53, 16, 24}, true},
                        {{1, 6, 2, 61, 19, 8, 8}, true},  // Sq > Skv: fully masked rows
                        {{1, 4, 1, 1, 100, 32, 32}, false}};
  for (const Case& c : cases) {
    const Problem& p = c.p;
    Buffer q = random_buffer(p.batch * p.seq_q * p.heads_q * p.dim_qk, 1);
    Buffer k = random_buffer(p.batch * p.seq_kv * p.heads_kv * p.dim_qk, 2);
    Buffer v = random_buffer(p.batch * p.seq_kv * p.heads_kv * p.dim_v, 3);
    Buffer o = alloc(p.batch * p.seq_q * p.heads_q * p.dim_v);
    EigenAttention eig;
    eig(p, c.causal, q.get(), k.get(), v.get(), o.get());
    double err = 0;
    const double scale = 1.0 / std::sqrt(static_cast<double>(p.dim_qk));
    for (index_t b = 0; b < p.batch; ++b)
      for (index_t h = 0; h < p.heads_q; ++h)
        for (index_t i = 0; i < p.seq_q; ++i) {
          const index_t g = p.kv_head(h);
          std::vector<double> w(p.seq_kv, 0.0);
          double m = -INFINITY, l = 0;
          for (index_t j = 0; j < p.seq_kv; ++j) {
            if (c.causal && j > p.query_pos(i)) continue;
            double x = 0;
            for (index_t e = 0; e < p.dim_qk; ++e)
              x += double(q[((b * p.seq_q + i) * p.heads_q + h) * p.dim_qk + e]) *
                   k[((b * p.seq_kv + j) * p.heads_kv + g) * p.dim_qk + e];
            w[j] = x * scale;
            m = std::max(m, w[j]);
          }
          for (index_t j = 0; j < p.seq_kv; ++j) {
            const bool vis = !(c.causal && j > p.query_pos(i));
            w[j] = vis ? std::exp(w[j] - m) : 0.0;
            l += w[j];
          }
          for (index_t e = 0; e < p.dim_v; ++e) {
            double acc = 0;
            for (index_t j = 0; j < p.seq_kv; ++j) acc += w[j] * v[((b * p.seq_kv + j) * p.heads_kv + g) * p.dim_v + e];
            const double want = l > 0 ? acc / l : 0.0;
            const double got = o[((b * p.seq_q + i) * p.heads_q + h) * p.dim_v + e];
            err = std::max(err, std::isnan(got) ? INFINITY : std::abs(got - want));
          }
        }
    if (!(err < 1e-5)) {
      std::fprintf(stderr, "self-check FAILED: Eigen baseline max abs error %g\n", err);
      std::exit(2);
    }
  }
  for (index_t sq : {1, 2, 7, 64})
    for (index_t skv : {1, 3, 7, 64, 100})
      for (index_t off : {-70, -5, 0, 3, 90}) {
        const index_t want = count_visible(sq, skv, [&](index_t i, index_t j) { return j <= i + (skv - sq) + off; });
        if (count_visible_causal(sq, skv, off) != want) {
          std::fprintf(stderr, "self-check FAILED: causal pair count (%lld, %lld, %lld)\n", (long long)sq,
                       (long long)skv, (long long)off);
          std::exit(2);
        }
      }
}

// ---- Reporting --------------------------------------------------------------------------------

struct Figures {
  double gflops = 0, peak_frac = 0, gbps = 0, bw_frac = 0;
};

// Forwards everything to the display reporter and keeps each case's figures (the median
// aggregate when repetitions are on, else the median of the runs) for the summary table.
class SummaryReporter : public benchmark::BenchmarkReporter {
 public:
  explicit SummaryReporter(std::unique_ptr<benchmark::BenchmarkReporter> inner) : inner_(std::move(inner)) {}

  bool ReportContext(const Context& context) override { return inner_->ReportContext(context); }

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.error_occurred) continue;
      const std::string& name = r.run_name.function_name;
      const Figures f = figures(r);
      if (r.run_type == Run::RT_Aggregate) {
        if (r.aggregate_name == "median") medians_[name] = f;
      } else {
        samples_[name].push_back(f);
      }
    }
    inner_->ReportRuns(runs);
  }

  void Finalize() override { inner_->Finalize(); }

  void print_summary(std::ostream& os) const;

 private:
  static Figures figures(const Run& r) {
    auto get = [&](const char* key) {
      const auto it = r.counters.find(key);
      return it == r.counters.end() ? 0.0 : it->second.value;
    };
    return {get("GFLOPS"), get("peak_frac"), get("GBps"), get("bw_frac")};
  }

  bool lookup(const std::string& name, Figures* out) const {
    if (const auto it = medians_.find(name); it != medians_.end()) {
      *out = it->second;
      return true;
    }
    const auto it = samples_.find(name);
    if (it == samples_.end() || it->second.empty()) return false;
    std::vector<Figures> v = it->second;
    std::sort(v.begin(), v.end(), [](const Figures& a, const Figures& b) { return a.gflops < b.gflops; });
    *out = v[(v.size() - 1) / 2];  // lower median: a real run's figures
    return true;
  }

  std::unique_ptr<benchmark::BenchmarkReporter> inner_;
  std::map<std::string, Figures> medians_;
  std::map<std::string, std::vector<Figures>> samples_;
};

void SummaryReporter::print_summary(std::ostream& os) const {
  std::vector<std::string> impls{"eigen"};
  for (const auto& c : pending())
    if (std::find(impls.begin(), impls.end(), c.impl) == impls.end()) impls.push_back(c.impl);

  char line[512];
  auto emit = [&](const std::string& s) { os << s << '\n'; };
  emit("");
  std::snprintf(line, sizeof line,
                "Summary (median; single-thread FMA peak %.1f GFLOP/s [%s], read bandwidth %.1f GB/s)", g_peak.gflops,
                g_peak.arch, g_bw.gbps);
  emit(line);
  std::string head;
  std::snprintf(line, sizeof line, "%-40s", "shape");
  head = line;
  for (const auto& impl : impls) {
    std::snprintf(line, sizeof line, " %12s %7s", (impl + " GF/s").c_str(), "%peak");
    head += line;
    if (impl != "eigen") {
      std::snprintf(line, sizeof line, " %8s", "x eigen");
      head += line;
    }
  }
  std::snprintf(line, sizeof line, " %10s %6s", "GB/s", "%bw");
  head += line;
  emit(head);
  emit(std::string(head.size(), '-'));

  bool any = false;
  for (const Shape& s : shapes()) {
    Figures base;
    const bool has_base = lookup("BM_eigen/" + s.name, &base);
    std::string row;
    bool has_row = false;
    Figures best_bw;
    std::snprintf(line, sizeof line, "%-40s", s.name.c_str());
    row = line;
    for (const auto& impl : impls) {
      Figures f;
      if (lookup("BM_" + impl + "/" + s.name, &f)) {
        has_row = true;
        std::snprintf(line, sizeof line, " %12.2f %6.1f%%", f.gflops, 100.0 * f.peak_frac);
        row += line;
        if (impl != "eigen") {
          if (has_base && base.gflops > 0)
            std::snprintf(line, sizeof line, " %7.2fx", f.gflops / base.gflops);
          else
            std::snprintf(line, sizeof line, " %8s", "-");
          row += line;
        }
        if (f.gbps > best_bw.gbps) best_bw = f;
      } else {
        std::snprintf(line, sizeof line, " %12s %7s", "-", "-");
        row += line;
        if (impl != "eigen") {
          std::snprintf(line, sizeof line, " %8s", "-");
          row += line;
        }
      }
    }
    if (s.kind == Kind::decode && best_bw.gbps > 0)
      std::snprintf(line, sizeof line, " %10.2f %5.1f%%", best_bw.gbps, 100.0 * best_bw.bw_frac);
    else
      std::snprintf(line, sizeof line, " %10s %6s", "", "");
    row += line;
    if (has_row) {
      emit(row);
      any = true;
    }
  }
  if (!any) emit("(no results)");
  emit("GB/s, %bw: decode only, best implementation; K+V bytes read once per call.");
}

}  // namespace

// ---- harness.hpp definitions ------------------------------------------------------------------

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> table = [] {
    std::vector<Shape> t;
    for (index_t s : {1024, 4096})
      for (index_t d : {64, 128})
        for (Mask m : {Mask::full, Mask::causal}) t.push_back(prefill(s, d, m));
    // The causal-skipping target compares causal and dense GFLOP/s at S2048 D128.
    for (Mask m : {Mask::full, Mask::causal}) t.push_back(prefill(2048, 128, m));
    for (index_t skv : {4096, 32768}) t.push_back(decode(skv));
    // Small head rows: 16 KV heads of D64 make a 4 KiB token row, which a task reads whole.
    t.push_back(decode(32768, 64, 16, 64));
    // gpt-oss (64 query heads over 8 KV heads of D64): 2 KiB token rows, twice the FMAs per
    // byte of the shapes above (bench/RESULTS.md, runs AN and AQ).
    t.push_back(decode(32768, 64, 8, 64));
    return t;
  }();
  return table;
}

Data& data_for(const Shape& s) {
  auto& slot = data_cache()[s.name];
  if (!slot) {
    const Problem& p = s.problem;
    auto d = std::make_unique<Data>();
    const std::uint64_t seed = std::hash<std::string>{}(s.name);
    d->q_buf = random_buffer(p.batch * p.seq_q * p.heads_q * p.dim_qk, seed + 1);
    d->k_buf = random_buffer(p.batch * p.seq_kv * p.heads_kv * p.dim_qk, seed + 2);
    d->v_buf = random_buffer(p.batch * p.seq_kv * p.heads_kv * p.dim_v, seed + 3);
    d->o_buf = alloc(p.batch * p.seq_q * p.heads_q * p.dim_v);
    std::fill_n(d->o_buf.get(), p.batch * p.seq_q * p.heads_q * p.dim_v, 0.f);
    using CV = sinkattn::TensorView<const float>;
    d->q = CV::bshd(d->q_buf.get(), p.batch, p.seq_q, p.heads_q, p.dim_qk);
    d->k = CV::bshd(d->k_buf.get(), p.batch, p.seq_kv, p.heads_kv, p.dim_qk);
    d->v = CV::bshd(d->v_buf.get(), p.batch, p.seq_kv, p.heads_kv, p.dim_v);
    d->o = sinkattn::TensorView<float>::bshd(d->o_buf.get(), p.batch, p.seq_q, p.heads_q, p.dim_v);
    slot = std::move(d);
  }
  return *slot;
}

void register_case(const std::string& impl, const Shape& shape, KernelFn fn, KernelFn setup) {
  pending().push_back({impl, shape, std::move(fn), std::move(setup)});
}

int add_registrar(CaseRegistrar r) {
  registrars().push_back(r);
  return static_cast<int>(registrars().size());
}

}  // namespace sinkattn_bench

int main(int argc, char** argv) {
  using namespace sinkattn_bench;
  // The display options Google Benchmark would derive from its flags (read before Initialize
  // consumes them), so that our wrapping reporter behaves like the default one.
  std::string format = "console";
  bool color = isatty(STDOUT_FILENO) != 0, tabular = false, list_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      const std::size_t n = std::strlen(flag);
      return a.compare(0, n, flag) == 0 ? a.c_str() + n : nullptr;
    };
    if (const char* v = value("--benchmark_format=")) format = v;
    if (const char* v = value("--benchmark_color=")) {
      const std::string s = v;
      if (s != "auto") color = (s == "true" || s == "yes" || s == "1");
    }
    if (const char* v = value("--benchmark_counters_tabular=")) tabular = std::string(v) == "true";
    if (a == "--benchmark_list_tests" || a == "--benchmark_list_tests=true") list_only = true;
  }

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  Eigen::setNbThreads(1);  // single-thread baseline even when OpenMP is linked in

  if (!list_only) {
    self_check();
    g_peak = measure_fma_peak(0.2);
    g_bw = measure_read_bandwidth();
    std::fprintf(stderr,
                 "sinkattn_bench: single-thread FMA peak %.1f GFLOP/s (median chunk %.1f; %s, %d lanes x %d chains)\n"
                 "sinkattn_bench: single-thread read bandwidth %.1f GB/s (median %.1f; %zu MiB x %d reps)\n",
                 g_peak.gflops, g_peak.gflops_median, g_peak.arch, g_peak.lanes, g_peak.accumulators, g_bw.gbps,
                 g_bw.gbps_median, g_bw.bytes >> 20, g_bw.reps);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.2f", g_peak.gflops);
    benchmark::AddCustomContext("fma_peak_gflops", buf);
    std::snprintf(buf, sizeof buf, "%.2f", g_peak.gflops_median);
    benchmark::AddCustomContext("fma_peak_gflops_median", buf);
    benchmark::AddCustomContext("fma_peak_arch", g_peak.arch);
    std::snprintf(buf, sizeof buf, "%.2f", g_bw.gbps);
    benchmark::AddCustomContext("read_bw_gbps", buf);
    std::snprintf(buf, sizeof buf, "%.2f", g_bw.gbps_median);
    benchmark::AddCustomContext("read_bw_gbps_median", buf);
  }

  for (CaseRegistrar r : registrars()) r();
  register_pending();

  if (format != "console" && format != "json") {  // csv (deprecated): Google Benchmark's own reporter
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
  }
  std::unique_ptr<benchmark::BenchmarkReporter> inner;
  if (format == "json") {
    inner = std::make_unique<benchmark::JSONReporter>();
  } else {
    int opts = benchmark::ConsoleReporter::OO_None;
    if (color) opts |= benchmark::ConsoleReporter::OO_Color;
    if (tabular) opts |= benchmark::ConsoleReporter::OO_Tabular;
    inner = std::make_unique<benchmark::ConsoleReporter>(static_cast<benchmark::ConsoleReporter::OutputOptions>(opts));
  }
  SummaryReporter reporter(std::move(inner));
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  // The summary goes to stdout beside the console table, to stderr when stdout carries JSON.
  if (!list_only) reporter.print_summary(format == "console" ? std::cout : std::cerr);
  return 0;
}
