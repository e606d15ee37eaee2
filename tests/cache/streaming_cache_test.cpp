// The StreamingLLM cache streamed through 10,000+ tokens in mixed chunk sizes: every query of
// every chunk equals dense fp64 attention over exactly the keys the cache must keep for it
// ([0, sinks) U [t - window + 1, t]), in both position modes; 1 and 2 threads agree bit for
// bit; eviction bookkeeping and argument errors.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "harness.hpp"
#include "sinkattn/cache/streaming_cache.hpp"
#include "threads.hpp"

namespace sinkattn {
namespace {

using Positions = StreamingCacheConfig::Positions;

struct Stream {
  index_t B = 1, Hq = 4, Hkv = 2, Dqk = 32, Dv = 16;
  index_t tokens = 0;
  std::vector<float> q, k, v;  // [B, T, H, D] token-major, the whole stream
  float at_q(index_t b, index_t t, index_t h, index_t x) const { return q[(((b * tokens) + t) * Hq + h) * Dqk + x]; }
  float at_k(index_t b, index_t t, index_t g, index_t x) const { return k[(((b * tokens) + t) * Hkv + g) * Dqk + x]; }
  float at_v(index_t b, index_t t, index_t g, index_t x) const { return v[(((b * tokens) + t) * Hkv + g) * Dv + x]; }
};

Stream make_stream(index_t tokens, index_t B, index_t Hq, index_t Hkv, index_t Dqk, index_t Dv, std::uint64_t seed) {
  Stream s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Dqk = Dqk, s.Dv = Dv, s.tokens = tokens;
  s.q = test::random_vector(static_cast<std::size_t>(B * tokens * Hq * Dqk), seed, -1.f, 1.f);
  s.k = test::random_vector(static_cast<std::size_t>(B * tokens * Hkv * Dqk), seed + 1, -1.f, 1.f);
  s.v = test::random_vector(static_cast<std::size_t>(B * tokens * Hkv * Dv), seed + 2, -1.f, 1.f);
  return s;
}

// RoPE in fp64 from a table of angles computed here (positions < capacity; faster than the
// reference's per-call trigonometry over 10,000 streamed queries).
struct Rotor {
  Rope cfg;
  std::vector<double> cs;  // [pos][half]: cos, then [pos][half]: sin
  index_t half = 0;
  Rotor(const Rope& r, index_t positions) : cfg(r), half(r.rot() / 2) {
    cs.resize(static_cast<std::size_t>(positions * 2 * half));
    for (index_t p = 0; p < positions; ++p)
      for (index_t i = 0; i < half; ++i) {
        const double a = double(p) / std::pow(double(r.theta), double(2 * i) / double(2 * half));
        cs[(p * 2 + 0) * half + i] = std::cos(a);
        cs[(p * 2 + 1) * half + i] = std::sin(a);
      }
  }
  void rotate(double* x, index_t pos) const {
    for (index_t i = 0; i < half; ++i) {
      const double c = cs[(pos * 2 + 0) * half + i], s = cs[(pos * 2 + 1) * half + i];
      const index_t ia = cfg.pairing == RopePairing::neox ? i : 2 * i;
      const index_t ib = cfg.pairing == RopePairing::neox ? i + half : 2 * i + 1;
      const double a = x[ia], b = x[ib];
      x[ia] = a * c - b * s;
      x[ib] = b * c + a * s;
    }
  }
};

// Dense fp64 attention of query t over the keys kept for it, positions by mode; sink logits
// (raw, per head) join the denominator when given.
std::vector<double> dense_kept(const Stream& s, index_t b, index_t h, index_t t, index_t sinks, index_t window,
                               Positions mode, const Rotor& rope, const float* sink_logits) {
  std::vector<index_t> kept;
  for (index_t j = 0; j <= t; ++j)
    if (j < sinks || j >= t - window + 1) kept.push_back(j);
  const index_t n = static_cast<index_t>(kept.size()), g = h / (s.Hq / s.Hkv);
  std::vector<double> qv(static_cast<std::size_t>(s.Dqk)), kv(static_cast<std::size_t>(s.Dqk));
  for (index_t x = 0; x < s.Dqk; ++x) qv[x] = s.at_q(b, t, h, x);
  if (mode == Positions::cache_index) rope.rotate(qv.data(), n - 1);
  std::vector<double> logit(static_cast<std::size_t>(n));
  double m = -INFINITY;
  for (index_t idx = 0; idx < n; ++idx) {
    for (index_t x = 0; x < s.Dqk; ++x) kv[x] = s.at_k(b, kept[idx], g, x);
    if (mode == Positions::cache_index) rope.rotate(kv.data(), idx);
    double dot = 0;
    for (index_t x = 0; x < s.Dqk; ++x) dot += qv[x] * kv[x];
    logit[idx] = dot / std::sqrt(double(s.Dqk));
    m = std::max(m, logit[idx]);
  }
  double den = 0;
  std::vector<double> out(static_cast<std::size_t>(s.Dv), 0.0);
  if (sink_logits) m = std::max(m, double(sink_logits[h]));
  for (index_t idx = 0; idx < n; ++idx) {
    const double w = std::exp(logit[idx] - m);
    den += w;
    for (index_t x = 0; x < s.Dv; ++x) out[x] += w * s.at_v(b, kept[idx], g, x);
  }
  if (sink_logits) den += std::exp(double(sink_logits[h]) - m);
  for (double& x : out) x /= den;
  return out;
}

// Mixed chunk sizes: single decode steps between prefill chunks of all kinds of lengths
// (longer than the window, than the capacity, odd, one).
std::vector<index_t> chunk_plan(index_t tokens) {
  const index_t pattern[] = {1, 3, 64, 1, 1, 129, 7, 300, 1, 2, 65, 1, 17, 1, 1, 1, 250, 5, 1, 33};
  std::vector<index_t> plan;
  index_t done = 0;
  for (std::size_t i = 0; done < tokens; ++i) {
    const index_t c = std::min(pattern[i % (sizeof pattern / sizeof pattern[0])], tokens - done);
    plan.push_back(c);
    done += c;
  }
  return plan;
}

// Streams s through a cache, returns all outputs [B, T, Hq, Dv].
std::vector<float> stream_through(const Stream& s, const StreamingCacheConfig& cfg, const Options& opt,
                                  const Executor& ex, std::vector<index_t>* sizes_seen = nullptr) {
  StreamingCache cache;
  EXPECT_TRUE(StreamingCache::create(cfg, &cache).ok());
  std::vector<float> out(static_cast<std::size_t>(s.B * s.tokens * s.Hq * s.Dv), NAN);
  index_t t0 = 0;
  for (index_t c : chunk_plan(s.tokens)) {
    const std::array<index_t, 4> st_q{s.tokens * s.Hq * s.Dqk, s.Hq * s.Dqk, s.Dqk, 1};
    const std::array<index_t, 4> st_k{s.tokens * s.Hkv * s.Dqk, s.Hkv * s.Dqk, s.Dqk, 1};
    const std::array<index_t, 4> st_v{s.tokens * s.Hkv * s.Dv, s.Hkv * s.Dv, s.Dv, 1};
    const std::array<index_t, 4> st_o{s.tokens * s.Hq * s.Dv, s.Hq * s.Dv, s.Dv, 1};
    const TensorView<const float> q(s.q.data() + t0 * s.Hq * s.Dqk, {s.B, c, s.Hq, s.Dqk}, st_q);
    const TensorView<const float> k(s.k.data() + t0 * s.Hkv * s.Dqk, {s.B, c, s.Hkv, s.Dqk}, st_k);
    const TensorView<const float> v(s.v.data() + t0 * s.Hkv * s.Dv, {s.B, c, s.Hkv, s.Dv}, st_v);
    const TensorView<float> o(out.data() + t0 * s.Hq * s.Dv, {s.B, c, s.Hq, s.Dv}, st_o);
    const Status st = cache.attend_and_append(q, k, v, o, opt, ex);
    EXPECT_TRUE(st.ok()) << st.message();
    t0 += c;
    EXPECT_EQ(cache.tokens_seen(), t0);
    EXPECT_EQ(cache.size(), std::min(t0, cfg.sink_tokens + cfg.window));
    if (sizes_seen) sizes_seen->push_back(cache.size());
  }
  return out;
}

void expect_dense_over_kept(const Stream& s, const StreamingCacheConfig& cfg, const std::vector<float>& out,
                            const float* sink_logits) {
  double max_err = 0;
  index_t bad = 0;
  Rope r = cfg.rope;
  r.dim = cfg.dim_qk;
  const Rotor rotor(r, cfg.sink_tokens + cfg.window + 1);
  for (index_t b = 0; b < s.B; ++b)
    for (index_t t = 0; t < s.tokens; ++t)
      for (index_t h = 0; h < s.Hq; ++h) {
        const auto ref = dense_kept(s, b, h, t, cfg.sink_tokens, cfg.window, cfg.positions, rotor, sink_logits);
        for (index_t x = 0; x < s.Dv; ++x) {
          const double e = std::abs(double(out[(((b * s.tokens) + t) * s.Hq + h) * s.Dv + x]) - ref[x]);
          if (!(e <= 2e-5)) ++bad;
          if (e > max_err || std::isnan(e)) max_err = e;
        }
      }
  EXPECT_EQ(bad, 0) << "max |ours - dense fp64 over kept keys| = " << max_err;
}

StreamingCacheConfig config(const Stream& s, index_t sinks, index_t window, Positions mode, RopePairing pairing) {
  StreamingCacheConfig cfg;
  cfg.batch = s.B;
  cfg.heads_kv = s.Hkv;
  cfg.dim_qk = s.Dqk;
  cfg.dim_v = s.Dv;
  cfg.sink_tokens = sinks;
  cfg.window = window;
  cfg.positions = mode;
  cfg.rope.theta = 10000.f;
  cfg.rope.dim = s.Dqk;
  cfg.rope.pairing = pairing;
  return cfg;
}

TEST(StreamingCache, TenThousandTokensEqualDenseOverKeptKeys_OriginalPositions) {
  const Stream s = make_stream(10240, 1, 4, 2, 32, 16, 21);
  const auto cfg = config(s, 4, 100, Positions::original, RopePairing::neox);
  expect_dense_over_kept(s, cfg, stream_through(s, cfg, {}, Executor::serial()), nullptr);
}

TEST(StreamingCache, TenThousandTokensEqualDenseOverKeptKeys_CacheIndexPositions) {
  for (RopePairing pairing : {RopePairing::neox, RopePairing::interleaved}) {
    const Stream s = make_stream(10240, 1, 4, 2, 32, 16, 22);
    const auto cfg = config(s, 4, 100, Positions::cache_index, pairing);
    expect_dense_over_kept(s, cfg, stream_through(s, cfg, {}, Executor::serial()), nullptr);
  }
}

TEST(StreamingCache, LearnedSinkLogitsBatchAndOddDims) {
  // gpt-oss style: learned sink logits on top of sink tokens; B = 2, Hq = 8 over Hkv = 2
  // (decode rows 4 per KV head), odd head dims, no sink tokens at all in the second config.
  const Stream s = make_stream(3000, 2, 8, 2, 20, 12, 23);
  std::vector<float> sinks(8);
  for (index_t h = 0; h < 8; ++h) sinks[static_cast<std::size_t>(h)] = 0.5f * static_cast<float>(h) - 2.f;
  Options opt;
  opt.norm = SinkSoftmax{sinks.data()};
  for (index_t n_sink : {4, 0}) {
    const auto cfg = config(s, n_sink, 77, Positions::cache_index, RopePairing::neox);
    expect_dense_over_kept(s, cfg, stream_through(s, cfg, opt, Executor::serial()), sinks.data());
  }
}

TEST(StreamingCache, WindowLargerThanTheStreamAndSinksBeyondIt) {
  const Stream s = make_stream(500, 1, 2, 1, 16, 16, 24);
  auto cfg = config(s, 4, 1000, Positions::cache_index, RopePairing::interleaved);
  expect_dense_over_kept(s, cfg, stream_through(s, cfg, {}, Executor::serial()), nullptr);
  cfg = config(s, 600, 10, Positions::original, RopePairing::neox);  // sink_tokens > tokens
  expect_dense_over_kept(s, cfg, stream_through(s, cfg, {}, Executor::serial()), nullptr);
}

TEST(StreamingCache, OneAndTwoThreadsAgreeBitForBit) {
  const Stream s = make_stream(4000, 1, 8, 2, 64, 64, 25);
  for (Positions mode : {Positions::original, Positions::cache_index}) {
    const auto cfg = config(s, 4, 1500, mode, RopePairing::neox);  // decode steps span 2 key splits
    const auto a = stream_through(s, cfg, {}, Executor::serial());
    const auto b = stream_through(s, cfg, {}, test::thread_executor(2));
    EXPECT_TRUE(test::bit_identical(a, b)) << "mode " << int(mode);
  }
}

TEST(StreamingCache, SegmentsFollowTheRing) {
  const Stream s = make_stream(40, 1, 1, 1, 4, 4, 26);
  const auto cfg = config(s, 2, 5, Positions::original, RopePairing::neox);
  StreamingCache cache;
  ASSERT_TRUE(StreamingCache::create(cfg, &cache).ok());
  EXPECT_EQ(cache.capacity(), 7);
  EXPECT_EQ(cache.bytes(), std::size_t(7 * 4 * 2 * sizeof(float)));
  for (index_t t = 0; t < 40; ++t) {
    const TensorView<const float> k(s.k.data() + t * 4, {1, 1, 1, 4}, {160, 4, 4, 1});
    const TensorView<const float> v(s.v.data() + t * 4, {1, 1, 1, 4}, {160, 4, 4, 1});
    ASSERT_TRUE(cache.append(k, v).ok());
    // The segments, concatenated, are the kept tokens in order: check by the first K element.
    KvSegment seg[3];
    const index_t n = cache.segments(seg);
    std::vector<float> got, want;
    for (index_t i = 0; i < n; ++i)
      for (index_t r = 0; r < seg[i].k.shape[1]; ++r) got.push_back(seg[i].k(0, r, 0, 0));
    for (index_t j = 0; j <= t; ++j)
      if (j < 2 || j >= t - 4) want.push_back(s.at_k(0, j, 0, 0));
    EXPECT_EQ(got, want) << "after token " << t;
    EXPECT_LE(n, 3);
  }
}

TEST(StreamingCache, BadArgumentsAreClearErrors) {
  StreamingCache cache;
  StreamingCacheConfig cfg;
  cfg.dim_qk = cfg.dim_v = 8;
  cfg.window = 0;
  Status st = StreamingCache::create(cfg, &cache);
  EXPECT_EQ(st.code(), Errc::out_of_range);
  EXPECT_NE(st.message().find("config.window"), std::string::npos) << st.message();
  cfg.window = 16;
  cfg.sink_tokens = -1;
  EXPECT_NE(StreamingCache::create(cfg, &cache).message().find("config.sink_tokens"), std::string::npos);
  cfg.sink_tokens = 4;
  cfg.positions = Positions::cache_index;
  cfg.rope.rotary_dim = 3;
  EXPECT_NE(StreamingCache::create(cfg, &cache).message().find("rope.rotary_dim"), std::string::npos);
  cfg.rope.rotary_dim = 0;
  cfg.rope.theta = std::numeric_limits<float>::infinity();  // once accepted, then every call failed
  st = StreamingCache::create(cfg, &cache);
  EXPECT_EQ(st.code(), Errc::out_of_range);
  EXPECT_NE(st.message().find("config.rope.theta"), std::string::npos) << st.message();
  cfg.rope.theta = 10000.f;
  ASSERT_TRUE(StreamingCache::create(cfg, &cache).ok());

  std::vector<float> buf(64, 0.f), obuf(64);
  const auto view = [&](index_t c, index_t h, index_t d) {
    return TensorView<const float>::bshd(buf.data(), 1, c, h, d);
  };
  const auto o = TensorView<float>::bshd(obuf.data(), 1, 1, 2, 8);
  st = cache.attend_and_append(view(1, 2, 8), view(1, 1, 7), view(1, 1, 8), o);
  EXPECT_EQ(st.code(), Errc::shape_mismatch);
  EXPECT_NE(st.message().find("k:"), std::string::npos) << st.message();
  st = cache.attend_and_append(view(2, 2, 8), view(1, 1, 8), view(1, 1, 8), o);
  EXPECT_EQ(st.code(), Errc::shape_mismatch);
  EXPECT_NE(st.message().find("q:"), std::string::npos) << st.message();
  Options causal;
  causal.mask = CausalMask{};
  EXPECT_EQ(cache.attend_and_append(view(1, 2, 8), view(1, 1, 8), view(1, 1, 8), o, causal).code(),
            Errc::invalid_argument);
  EXPECT_EQ(cache.tokens_seen(), 0);  // nothing failed half-way
  ASSERT_TRUE(cache.attend_and_append(view(1, 2, 8), view(1, 1, 8), view(1, 1, 8), o).ok());
  EXPECT_EQ(cache.tokens_seen(), 1);
  StreamingCache none;
  EXPECT_EQ(none.append(view(1, 1, 8), view(1, 1, 8)).code(), Errc::invalid_argument);
}

}  // namespace
}  // namespace sinkattn
