// 06_streaming_sinks: StreamingLLM with a sinkattn::StreamingCache per layer.
//
// A small attention stack with random weights (4 layers, d_model 256, 4 query heads over 2 KV
// heads of dim 64, residual connections) streams a long synthetic token sequence: a prefill
// chunk, then one token at a time. Each layer keeps 4 sink tokens + a window of 1024 recent
// tokens, keys cached before RoPE and rotated on load at their cache index (StreamingLLM's
// position shift). Printed at intervals: the memory the caches hold (fixed) beside what a full
// KV cache would hold, the time per token, and the error of layer 0's attention output against
// dense fp64 attention over exactly the keys the cache keeps.
//
// Usage: example_06_streaming_sinks [tokens]   (default 20000)

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "sinkattn/cache/streaming_cache.hpp"
#include "sinkattn/reference/attention.hpp"

#include "example_inputs.hpp"

namespace {

using sinkattn::index_t;
using sinkattn::TensorView;

constexpr index_t kModel = 256, kHq = 4, kHkv = 2, kDim = 64, kLayers = 4, kSinks = 4, kWindow = 1024;

std::vector<float> random_values(std::size_t n, std::uint64_t seed, float amp) {
  auto x = sinkattn_examples::random_values(n, static_cast<std::uint32_t>(seed));
  for (float& e : x) e *= amp;
  return x;
}

// y[n] = x[m] . W[m, n]
void matvec(std::vector<float>& y, const std::vector<float>& x, const std::vector<float>& w, index_t n) {
  const index_t m = static_cast<index_t>(x.size());
  y.assign(static_cast<std::size_t>(n), 0.f);
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) y[j] += x[i] * w[i * n + j];
}

struct Layer {
  std::vector<float> wq, wk, wv, wo;
  sinkattn::StreamingCache cache;
};

// Dense fp64 attention of one query (pre-RoPE) over the kept keys (pre-RoPE history of every
// token), positions = cache indices, query at the last one.
double dense_error(const std::vector<float>& q, const std::vector<std::vector<float>>& k_hist,
                   const std::vector<std::vector<float>>& v_hist, index_t t, const std::vector<float>& ours,
                   const sinkattn::Rope& rope) {
  std::vector<index_t> kept;
  for (index_t j = 0; j <= t; ++j)
    if (j < kSinks || j > t - kWindow) kept.push_back(j);
  const index_t n = static_cast<index_t>(kept.size());
  double worst = 0;
  for (index_t h = 0; h < kHq; ++h) {
    const index_t g = h / (kHq / kHkv);
    std::vector<double> qd(q.begin() + h * kDim, q.begin() + (h + 1) * kDim), logits(static_cast<std::size_t>(n));
    sinkattn::reference::detail::rope_rotate(qd.data(), n - 1, rope);
    double m = -INFINITY;
    for (index_t idx = 0; idx < n; ++idx) {
      const auto& kr = k_hist[static_cast<std::size_t>(kept[idx])];
      std::vector<double> kd(kr.begin() + g * kDim, kr.begin() + (g + 1) * kDim);
      sinkattn::reference::detail::rope_rotate(kd.data(), idx, rope);
      double dot = 0;
      for (index_t x = 0; x < kDim; ++x) dot += qd[x] * kd[x];
      logits[idx] = dot / std::sqrt(double(kDim));
      m = std::max(m, logits[idx]);
    }
    std::vector<double> out(static_cast<std::size_t>(kDim), 0.0);
    double den = 0;
    for (index_t idx = 0; idx < n; ++idx) {
      const double w = std::exp(logits[idx] - m);
      den += w;
      const auto& vr = v_hist[static_cast<std::size_t>(kept[idx])];
      for (index_t x = 0; x < kDim; ++x) out[x] += w * vr[g * kDim + x];
    }
    for (index_t x = 0; x < kDim; ++x) worst = std::max(worst, std::abs(out[x] / den - ours[h * kDim + x]));
  }
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  const index_t tokens = argc > 1 ? std::atol(argv[1]) : 20000;
  const index_t prefill = std::min<index_t>(512, tokens);
  const float wscale = 1.f / std::sqrt(float(kModel));

  sinkattn::StreamingCacheConfig cfg;
  cfg.heads_kv = kHkv;
  cfg.dim_qk = cfg.dim_v = kDim;
  cfg.sink_tokens = kSinks;
  cfg.window = kWindow;
  cfg.positions = sinkattn::StreamingCacheConfig::Positions::cache_index;
  cfg.rope.theta = 10000.f;
  cfg.rope.dim = kDim;
  cfg.rope.pairing = sinkattn::RopePairing::neox;

  std::vector<Layer> layers(kLayers);
  for (index_t l = 0; l < kLayers; ++l) {
    auto& L = layers[static_cast<std::size_t>(l)];
    const auto seed = static_cast<std::uint64_t>(100 + 10 * l);
    L.wq = random_values(static_cast<std::size_t>(kModel * kHq * kDim), seed, 2 * wscale);
    L.wk = random_values(static_cast<std::size_t>(kModel * kHkv * kDim), seed + 1, 2 * wscale);
    L.wv = random_values(static_cast<std::size_t>(kModel * kHkv * kDim), seed + 2, 2 * wscale);
    L.wo = random_values(static_cast<std::size_t>(kHq * kDim * kModel), seed + 3, wscale);
    sinkattn::check(sinkattn::StreamingCache::create(cfg, &L.cache));
  }

  // Layer 0's K/V of every token (pre-RoPE), for the dense check only.
  std::vector<std::vector<float>> k_hist, v_hist;
  std::printf("streaming %ld tokens: %ld layers, Hq %ld / Hkv %ld, D %ld, %ld sinks + window %ld, RoPE on load\n",
              static_cast<long>(tokens), static_cast<long>(kLayers), static_cast<long>(kHq), static_cast<long>(kHkv),
              static_cast<long>(kDim), static_cast<long>(kSinks), static_cast<long>(kWindow));
  std::printf("%10s %14s %16s %14s %22s\n", "tokens", "cache MB", "full-cache MB", "us/token", "max |err| layer 0");

  std::vector<float> x, q, k, v, o, y;
  double max_err = 0;
  auto t_start = std::chrono::steady_clock::now();
  index_t t_mark = 0;
  for (index_t t0 = 0; t0 < tokens;) {
    const index_t c = t0 == 0 ? prefill : 1;  // one prefill chunk, then decode steps
    std::vector<std::vector<float>> hidden(static_cast<std::size_t>(c));
    for (index_t i = 0; i < c; ++i)  // synthetic token embeddings (a vocabulary of 1000)
      hidden[static_cast<std::size_t>(i)] =
          random_values(kModel, static_cast<std::uint64_t>((t0 + i) * 7919 % 1000) + 1, 1.f);
    for (index_t l = 0; l < kLayers; ++l) {
      auto& L = layers[static_cast<std::size_t>(l)];
      std::vector<float> qc(static_cast<std::size_t>(c * kHq * kDim)), kc(static_cast<std::size_t>(c * kHkv * kDim)),
          vc(kc.size()), oc(qc.size());
      for (index_t i = 0; i < c; ++i) {
        const auto& h = hidden[static_cast<std::size_t>(i)];
        matvec(q, h, L.wq, kHq * kDim);
        matvec(k, h, L.wk, kHkv * kDim);
        matvec(v, h, L.wv, kHkv * kDim);
        std::copy(q.begin(), q.end(), qc.begin() + i * kHq * kDim);
        std::copy(k.begin(), k.end(), kc.begin() + i * kHkv * kDim);
        std::copy(v.begin(), v.end(), vc.begin() + i * kHkv * kDim);
        if (l == 0) k_hist.push_back(k), v_hist.push_back(v);
      }
      sinkattn::check(L.cache.attend_and_append(TensorView<const float>::bshd(qc.data(), 1, c, kHq, kDim),
                                                TensorView<const float>::bshd(kc.data(), 1, c, kHkv, kDim),
                                                TensorView<const float>::bshd(vc.data(), 1, c, kHkv, kDim),
                                                TensorView<float>::bshd(oc.data(), 1, c, kHq, kDim)));
      const index_t t_last = t0 + c - 1;
      if (l == 0 && (t_last % 1000 == 999 || t_last == tokens - 1 || t0 == 0)) {
        std::vector<float> o_last(oc.end() - kHq * kDim, oc.end()), q_last(qc.end() - kHq * kDim, qc.end());
        max_err = std::max(max_err, dense_error(q_last, k_hist, v_hist, t_last, o_last, L.cache.rope_table().config()));
      }
      for (index_t i = 0; i < c; ++i) {  // residual + RMS normalisation keeps the stream bounded
        o.assign(oc.begin() + i * kHq * kDim, oc.begin() + (i + 1) * kHq * kDim);
        matvec(y, o, L.wo, kModel);
        auto& h = hidden[static_cast<std::size_t>(i)];
        double ss = 0;
        for (index_t j = 0; j < kModel; ++j) ss += double(h[j] + y[j]) * (h[j] + y[j]);
        const float inv = static_cast<float>(1.0 / std::sqrt(ss / kModel + 1e-6));
        for (index_t j = 0; j < kModel; ++j) h[j] = (h[j] + y[j]) * inv;
      }
    }
    t0 += c;
    if (t0 % 5000 == 0 || t0 == tokens || t0 == prefill) {
      const auto now = std::chrono::steady_clock::now();
      const double us = std::chrono::duration<double, std::micro>(now - t_start).count() / double(t0 - t_mark);
      double held = 0;
      for (const auto& L : layers) held += double(L.cache.bytes());
      const double full = double(t0) * kLayers * kHkv * kDim * 2 * sizeof(float);
      std::printf("%10ld %14.2f %16.2f %14.1f %22.3g\n", static_cast<long>(t0), held / 1e6, full / 1e6, us, max_err);
      t_start = now;
      t_mark = t0;
    }
  }
  const bool ok = max_err < 1e-4;
  std::printf("%s: layer 0 matches dense fp64 attention over the kept keys (max |err| %.3g)\n", ok ? "OK" : "FAIL",
              max_err);
  return ok ? 0 : 1;
}
