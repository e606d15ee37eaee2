#pragma once
// The machine's limits, measured at start-up so benchmark numbers read as a fraction of
// what this core can do: the single-thread FMA peak (register-only) and the single-thread
// streaming read bandwidth.

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <utility>
#include <vector>

namespace sinkattn_bench {

struct FmaPeak {
  double gflops = 0;         // best chunk
  double gflops_median = 0;  // median chunk
  const char* arch = "";
  int lanes = 0;
  int accumulators = 0;
};

struct ReadBandwidth {
  double gbps = 0;  // best repetition
  double gbps_median = 0;
  std::size_t bytes = 0;
  int reps = 0;
};

namespace detail {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// An empty asm that "reads and writes" x in its register: the compiler must keep every
// chain and cannot fold the loop into a closed form, yet no instruction or memory traffic is added.
template <class B>
inline void opaque(B& x) {
  asm volatile("" : "+v"(x.data));
}

// `iters` rounds of kAcc independent FMA chains, all in registers. The chains are independent
// so the core can overlap them: 2 FMA ports x 4 cycles latency needs >= 8 in flight. The
// chains, a and b must all fit in the vector registers: 16 + 2 of 32 zmm with AVX-512, 12 + 2
// of 16 ymm with AVX2 (16 chains there spill to the stack and measure a third of the peak:
// 33.5 instead of 103 GFLOP/s on a Zen 3).
template <class B, std::size_t... I>
float fma_chains(std::int64_t iters, float a0, float b0, std::index_sequence<I...>) {
  const B a(a0), b(b0);
  B acc[sizeof...(I)] = {B(static_cast<float>(I) * 1e-3f)...};
  for (std::int64_t n = 0; n < iters; ++n) {
    ((acc[I] = xsimd::fma(acc[I], a, b)), ...);
    (opaque(acc[I]), ...);
  }
  B sum(0.f);
  ((sum += acc[I]), ...);
  return xsimd::hadd(sum);
}

}  // namespace detail

// Single-thread FMA peak in GFLOP/s (2 flops per lane per FMA), timed over ~`seconds` in
// chunks of ~1 ms; the best chunk is the peak: a chunk shorter than a scheduler time slice often
// runs undisturbed even when the machine is shared, so the best one is robust to preemption.
inline FmaPeak measure_fma_peak(double seconds = 0.2) {
  using B = xsimd::batch<float>;
  // 32 vector registers come with 16-lane floats (AVX-512), 16 otherwise (AVX2, SSE).
  constexpr std::size_t kAcc = B::size >= 16 ? 16 : 12;
  // volatile: the compiler must not know a and b (nor prove the chains constant).
  volatile float va = 0.9999999f, vb = 1e-7f;
  volatile float sink = 0;

  auto run = [&](std::int64_t iters) {
    sink = sink + detail::fma_chains<B>(iters, va, vb, std::make_index_sequence<kAcc>{});
  };

  // Calibrate a chunk of ~1 ms.
  std::int64_t chunk = 1 << 14;
  for (;;) {
    const auto t0 = detail::Clock::now();
    run(chunk);
    const double t = detail::seconds_since(t0);
    if (t > 0.0005) {
      chunk = static_cast<std::int64_t>(static_cast<double>(chunk) * 0.001 / t) + 1;
      break;
    }
    chunk *= 2;
  }
  const double flops_per_chunk = 2.0 * static_cast<double>(B::size) * kAcc * static_cast<double>(chunk);
  std::vector<double> rates;
  const auto start = detail::Clock::now();
  while (detail::seconds_since(start) < seconds || rates.size() < 5) {
    const auto t0 = detail::Clock::now();
    run(chunk);
    rates.push_back(flops_per_chunk / detail::seconds_since(t0) * 1e-9);
  }
  FmaPeak r;
  r.gflops = *std::max_element(rates.begin(), rates.end());
  r.gflops_median = detail::median(rates);
  r.arch = xsimd::default_arch::name();
  r.lanes = static_cast<int>(B::size);
  r.accumulators = static_cast<int>(kAcc);
  return r;
}

// Single-thread read bandwidth in GB/s (1e9 bytes/s): sums a `bytes` float buffer with aligned
// vector loads into 8 independent accumulators (so the add latency never limits), `reps` times.
inline ReadBandwidth measure_read_bandwidth(std::size_t bytes = std::size_t(256) << 20, int reps = 5) {
  using B = xsimd::batch<float>;
  constexpr std::size_t kAcc = 8;
  constexpr std::size_t kAlign = 64;
  const std::size_t n = bytes / sizeof(float) / (kAcc * B::size) * (kAcc * B::size);
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> buf(static_cast<float*>(std::aligned_alloc(kAlign, n * sizeof(float))));
  if (!buf) throw std::bad_alloc();
  float* p = buf.get();
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<float>(i & 7) * 0.125f;  // touch every page

  volatile float sink = 0;
  std::vector<double> rates;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = detail::Clock::now();
    B acc[kAcc];
    for (auto& a : acc) a = B(0.f);
    for (std::size_t i = 0; i < n; i += kAcc * B::size) {
      for (std::size_t k = 0; k < kAcc; ++k) acc[k] += B::load_aligned(p + i + k * B::size);
    }
    for (std::size_t k = 1; k < kAcc; ++k) acc[0] += acc[k];
    sink = sink + xsimd::hadd(acc[0]);
    const double t = detail::seconds_since(t0);
    rates.push_back(static_cast<double>(n * sizeof(float)) / t * 1e-9);
  }
  ReadBandwidth r;
  r.gbps = *std::max_element(rates.begin(), rates.end());
  r.gbps_median = detail::median(rates);
  r.bytes = n * sizeof(float);
  r.reps = reps;
  return r;
}

}  // namespace sinkattn_bench
