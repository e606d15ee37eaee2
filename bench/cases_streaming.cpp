// Streaming with sinks (issue 5), single thread:
//
//   BM_stream_window1024_sink4/prefill_B1_H2_S32768_D128
//       one-shot prefill under SlidingWindow{1023, 0, 4}: GFLOPS over the visible pairs,
//       to compare with BM_mask_dense (cases_masks.cpp, S8192) in the same run (goal >= 90%);
//   BM_stream_cache_chunk2048/prefill_B1_H2_S32768_D128
//       the same 32768 tokens streamed through a StreamingCache (4 sinks + window 1024) in
//       chunks of 2048: attention over the kept keys + chunk, then append (the cache's prefill);
//   BM_stream_decode/L4096, L65536, L1048576
//       one decode token through 32 layers of StreamingCache (4 sinks + window 2048, Hq 32,
//       Hkv 8, D128: 16.8 MB of K+V per layer, 538 MB per token, beyond the last-level cache)
//       after L tokens were streamed into it. The time per token must not depend on L; GBps is
//       the K+V bytes read per second (compare with the read bandwidth printed at start-up).
#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "harness.hpp"
#include "sinkattn/cache/streaming_cache.hpp"
#include "sinkattn/kernel/forward.hpp"

namespace sinkattn_bench {
namespace {

using sinkattn::index_t;
using sinkattn::Problem;

std::vector<float> random_buffer(std::size_t n, std::uint32_t seed) {
  std::vector<float> v(n);
  for (auto& x : v) {
    seed = seed * 1664525u + 1013904223u;
    x = static_cast<float>(seed >> 8) * (2.f / 16777216.f) - 1.f;
  }
  return v;
}

// Visible pairs of SlidingWindow{left, 0, sinks} over Sq == Skv == s.
index_t window_pairs(index_t s, index_t left, index_t sinks) {
  const sinkattn::policy::SlidingWindowMaskPolicy m{s, 0, left, 0, sinks};
  index_t n = 0;
  for (index_t i = 0; i < s; ++i) n += m.count_visible(i);
  return n;
}

void set_gflops(benchmark::State& st, const Problem& p, index_t pairs) {
  const double gflop = 2.0 * static_cast<double>(p.dim_qk + p.dim_v) * static_cast<double>(pairs) *
                       static_cast<double>(p.batch * p.heads_q) * 1e-9;
  st.counters["GFLOPS"] = benchmark::Counter(gflop, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["visible_frac"] = static_cast<double>(pairs) / (static_cast<double>(p.seq_q) * p.seq_kv);
}

struct PrefillData {
  Problem p;
  std::vector<float> q, k, v, o;
};

std::shared_ptr<PrefillData> prefill_data(index_t s, index_t heads, index_t dim) {
  auto d = std::make_shared<PrefillData>();
  d->p = Problem{1, heads, heads, s, s, dim, dim};
  const auto n = static_cast<std::size_t>(s * heads * dim);
  d->q = random_buffer(n, 1);
  d->k = random_buffer(n, 2);
  d->v = random_buffer(n, 3);
  d->o.assign(n, 0.f);
  return d;
}

void bm_window(benchmark::State& st, const std::shared_ptr<PrefillData>& d) {
  using V = sinkattn::TensorView<const float>;
  const Problem& p = d->p;
  sinkattn::Options opt;
  opt.mask = sinkattn::SlidingWindowMask{1023, 0, 4};
  for (auto _ : st) {
    sinkattn::check(sinkattn::forward(
        p, V::bshd(d->q.data(), 1, p.seq_q, p.heads_q, p.dim_qk),
        V::bshd(d->k.data(), 1, p.seq_kv, p.heads_kv, p.dim_qk), V::bshd(d->v.data(), 1, p.seq_kv, p.heads_kv, p.dim_v),
        sinkattn::TensorView<float>::bshd(d->o.data(), 1, p.seq_q, p.heads_q, p.dim_v), opt));
    benchmark::DoNotOptimize(d->o.data());
    benchmark::ClobberMemory();
  }
  set_gflops(st, p, window_pairs(p.seq_q, 1023, 4));
}

void bm_cache_prefill(benchmark::State& st, const std::shared_ptr<PrefillData>& d, index_t chunk) {
  using V = sinkattn::TensorView<const float>;
  const Problem& p = d->p;
  sinkattn::StreamingCacheConfig cfg;
  cfg.batch = 1;
  cfg.heads_kv = p.heads_kv;
  cfg.dim_qk = p.dim_qk;
  cfg.dim_v = p.dim_v;
  cfg.sink_tokens = 4;
  cfg.window = 1024;
  const index_t H = p.heads_q, D = p.dim_qk, S = p.seq_q;
  for (auto _ : st) {
    sinkattn::StreamingCache cache;
    sinkattn::check(sinkattn::StreamingCache::create(cfg, &cache));
    for (index_t t0 = 0; t0 < S; t0 += chunk) {
      const index_t c = std::min(chunk, S - t0);
      sinkattn::check(cache.attend_and_append(V::bshd(d->q.data() + t0 * H * D, 1, c, H, D),
                                              V::bshd(d->k.data() + t0 * H * D, 1, c, H, D),
                                              V::bshd(d->v.data() + t0 * H * D, 1, c, H, D),
                                              sinkattn::TensorView<float>::bshd(d->o.data() + t0 * H * D, 1, c, H, D)));
    }
    benchmark::DoNotOptimize(d->o.data());
    benchmark::ClobberMemory();
  }
  set_gflops(st, p, window_pairs(S, 1023, 4));
}

// Decode through `layers` caches that have each seen `streamed` tokens.
struct DecodeStack {
  index_t hq = 32, hkv = 8, dim = 128, layers = 32;
  std::vector<sinkattn::StreamingCache> caches;
  std::vector<float> q, k, v, o;
};

std::shared_ptr<DecodeStack> decode_stack(index_t streamed, bool rope_on_load) {
  auto s = std::make_shared<DecodeStack>();
  sinkattn::StreamingCacheConfig cfg;
  cfg.batch = 1;
  cfg.heads_kv = s->hkv;
  cfg.dim_qk = cfg.dim_v = s->dim;
  cfg.sink_tokens = 4;
  cfg.window = 2048;
  cfg.positions = rope_on_load ? sinkattn::StreamingCacheConfig::Positions::cache_index
                               : sinkattn::StreamingCacheConfig::Positions::original;
  s->q = random_buffer(static_cast<std::size_t>(s->hq * s->dim), 7);
  s->k = random_buffer(static_cast<std::size_t>(s->hkv * s->dim), 8);
  s->v = random_buffer(static_cast<std::size_t>(s->hkv * s->dim), 9);
  s->o.assign(static_cast<std::size_t>(s->hq * s->dim), 0.f);
  // Streamed history: appended in chunks (only the last window of each chunk is written).
  const index_t chunk = 8192;
  const auto hist_k = random_buffer(static_cast<std::size_t>(chunk * s->hkv * s->dim), 10);
  const auto hist_v = random_buffer(static_cast<std::size_t>(chunk * s->hkv * s->dim), 11);
  s->caches.resize(static_cast<std::size_t>(s->layers));
  using V = sinkattn::TensorView<const float>;
  for (auto& c : s->caches) {
    sinkattn::check(sinkattn::StreamingCache::create(cfg, &c));
    for (index_t t = 0; t < streamed; t += chunk) {
      const index_t n = std::min(chunk, streamed - t);
      sinkattn::check(
          c.append(V::bshd(hist_k.data(), 1, n, s->hkv, s->dim), V::bshd(hist_v.data(), 1, n, s->hkv, s->dim)));
    }
  }
  return s;
}

void bm_decode(benchmark::State& st, const std::shared_ptr<DecodeStack>& s) {
  using V = sinkattn::TensorView<const float>;
  double bytes = 0;
  for (auto _ : st) {
    bytes = 0;
    for (auto& c : s->caches) {
      bytes += static_cast<double>(c.size()) * s->hkv * s->dim * 2 * sizeof(float);
      sinkattn::check(c.attend_and_append(V::bshd(s->q.data(), 1, 1, s->hq, s->dim),
                                          V::bshd(s->k.data(), 1, 1, s->hkv, s->dim),
                                          V::bshd(s->v.data(), 1, 1, s->hkv, s->dim),
                                          sinkattn::TensorView<float>::bshd(s->o.data(), 1, 1, s->hq, s->dim)));
    }
    benchmark::DoNotOptimize(s->o.data());
    benchmark::ClobberMemory();
  }
  st.counters["GBps"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["MB_per_token"] = bytes * 1e-6;
  st.counters["streamed"] = static_cast<double>(s->caches.front().tokens_seen());
  st.counters["cache_MB"] = static_cast<double>(s->caches.front().bytes()) * s->layers * 1e-6;
}

}  // namespace

SINKATTN_BENCH_CASES(streaming_cases) {
  const auto lazy = std::make_shared<std::shared_ptr<PrefillData>>();
  const auto get = [lazy]() {
    if (!*lazy) *lazy = prefill_data(32768, 2, 128);
    return *lazy;
  };
  benchmark::RegisterBenchmark("BM_stream_window1024_sink4/prefill_B1_H2_S32768_D128",
                               [get](benchmark::State& st) { bm_window(st, get()); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->MinTime(1.0);
  benchmark::RegisterBenchmark("BM_stream_cache_chunk2048/prefill_B1_H2_S32768_D128",
                               [get](benchmark::State& st) { bm_cache_prefill(st, get(), 2048); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->MinTime(1.0);
  // Keys cached before RoPE and rotated on load (cache_index, StreamingLLM) at three stream
  // lengths; and once with keys cached after RoPE (original positions) for the cost of rotating.
  struct DecodeCase {
    index_t streamed;
    bool rope_on_load;
  };
  for (const DecodeCase dc : {DecodeCase{4096, true}, DecodeCase{65536, true}, DecodeCase{index_t(1) << 20, true},
                              DecodeCase{65536, false}}) {
    const auto stack = std::make_shared<std::shared_ptr<DecodeStack>>();
    const std::string name = std::string("BM_stream_decode") + (dc.rope_on_load ? "" : "_post_rope") +
                             "/Hq32_Hkv8_D128_x32layers_window2048_L" + std::to_string(dc.streamed);
    benchmark::RegisterBenchmark(name.c_str(),
                                 [stack, dc](benchmark::State& st) {
                                   if (!*stack) *stack = decode_stack(dc.streamed, dc.rope_on_load);
                                   bm_decode(st, *stack);
                                   stack->reset();  // 538 MB: free it before the next case
                                 })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->MinTime(1.0);
  }
}

}  // namespace sinkattn_bench
