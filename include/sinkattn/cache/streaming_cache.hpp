#pragma once
// StreamingLLM KV cache (Xiao et al. 2023; SEMANTICS.md section 5): one layer's K/V for all KV
// heads, holding the first `sink_tokens` tokens and the most recent `window` tokens, i.e.
// exactly [0, sink_tokens) U [L - window, L) of the L tokens streamed so far
// (StreamingLLM's StartRecentKVCache).
//
//   storage    [B, sink_tokens + window, Hkv, D], token-major (the heads of one token lie
//              together, which the split-KV decode reads as one stream). Rows [0, sink_tokens)
//              hold the sinks; the other `window` rows are a ring: token t >= sink_tokens lives
//              in row sink_tokens + (t - sink_tokens) % window. Appending writes the new rows
//              only; nothing is ever shifted.
//   segments   the kept keys in position order are at most three contiguous pieces (sinks,
//              the older part of the ring, the newer part): the kernels read them in place as
//              KV segments (core/kv_segments.hpp).
//
// attend_and_append(q, k, v, o) is one layer's step for a chunk of c >= 1 new tokens (a prefill
// chunk or a single decode token): the chunk's queries attend to the kept keys plus the chunk
// itself, then the chunk is appended. Query t sees the sinks and the `window` most recent tokens
// up to itself (SlidingWindow{left = window - 1, right = 0, sink_tokens}), so a sequence streamed
// in chunks of any sizes gives the same result as one token at a time.
//
// Positions, two modes:
//   Positions::original      keys are cached as given (after RoPE, rotated by the caller at
//                            their original positions: what most engines do; apply_rope helps);
//   Positions::cache_index   keys are cached before RoPE and rotated while they are loaded at
//                            their index in the cache; the query at min(cache size, t)
//                            (StreamingLLM's position shift, which lets a model trained on
//                            finite lengths stream without positions beyond its range). Pass
//                            queries before RoPE too.
// Every sequence of the batch has streamed the same number of tokens.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "sinkattn/core/executor.hpp"
#include "sinkattn/core/kv_segments.hpp"
#include "sinkattn/core/options.hpp"
#include "sinkattn/core/rope.hpp"
#include "sinkattn/core/status.hpp"
#include "sinkattn/core/tensor_view.hpp"
#include "sinkattn/core/types.hpp"
#include "sinkattn/core/validate.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "sinkattn/kernel/workspace.hpp"

namespace sinkattn {

struct StreamingCacheConfig {
  enum class Positions { original, cache_index };
  index_t batch = 1;
  index_t heads_kv = 1;
  index_t dim_qk = 0;
  index_t dim_v = 0;
  index_t sink_tokens = 4;  // StreamingLLM's default
  index_t window = 0;       // recent tokens kept, >= 1
  Positions positions = Positions::original;
  Rope rope;  // Positions::cache_index only; rope.dim is set to dim_qk
};

class StreamingCache {
 public:
  using Config = StreamingCacheConfig;

  StreamingCache() = default;

  // A cache for `cfg`, or an error naming the bad field (no exceptions).
  static Status create(const Config& cfg, StreamingCache* out) {
    const auto bad = [](const char* f, index_t v, const char* why) {
      return Status(Errc::out_of_range, std::string("config.") + f + " is " + std::to_string(v) + why);
    };
    if (out == nullptr) return Status(Errc::null_data, "out is null");
    if (cfg.batch < 1) return bad("batch", cfg.batch, " (must be >= 1)");
    if (cfg.heads_kv < 1) return bad("heads_kv", cfg.heads_kv, " (must be >= 1)");
    if (cfg.dim_qk < 1) return bad("dim_qk", cfg.dim_qk, " (must be >= 1)");
    if (cfg.dim_v < 1) return bad("dim_v", cfg.dim_v, " (must be >= 1)");
    if (cfg.sink_tokens < 0) return bad("sink_tokens", cfg.sink_tokens, " (must be >= 0)");
    if (cfg.window < 1) return bad("window", cfg.window, " (must be >= 1: a token always sees itself)");
    const char* names[] = {"batch", "heads_kv", "dim_qk", "dim_v", "sink_tokens", "window"};
    const index_t vals[] = {cfg.batch, cfg.heads_kv, cfg.dim_qk, cfg.dim_v, cfg.sink_tokens, cfg.window};
    for (int f = 0; f < 6; ++f) SINKATTN_TRY(detail::check_bound(std::string("config.") + names[f], vals[f]));
    Rope r = cfg.rope;
    r.dim = cfg.dim_qk;
    if (cfg.positions == Config::Positions::cache_index) {
      if (r.rotary_dim < 0 || r.rot() % 2 != 0 || r.rot() > r.dim)
        return bad("rope.rotary_dim", r.rot(), " (must be even and <= dim_qk)");
      if (!(r.theta > 0.f) || !std::isfinite(r.theta))
        return Status(Errc::out_of_range, "config.rope.theta must be finite and > 0");
    }
    StreamingCache c;
    c.cfg_ = cfg;
    if (cfg.positions == Config::Positions::cache_index) c.rope_ = RopeTable(r);
    c.cap_ = cfg.sink_tokens + cfg.window;
    // K/V storage: sizes checked by division (no product may wrap), memory that may not be had
    // an error rather than an exception or an abort.
    const index_t dim = std::max(cfg.dim_qk, cfg.dim_v);
    if (!detail::product_within(cfg.batch, c.cap_, detail::kMaxElements) ||
        !detail::product_within(cfg.batch * c.cap_, cfg.heads_kv, detail::kMaxElements) ||
        !detail::product_within(cfg.batch * c.cap_ * cfg.heads_kv, dim, detail::kMaxElements))
      return Status(Errc::out_of_range, "config: batch * (sink_tokens + window) * heads_kv * dim exceeds 2^60 floats");
    const index_t rows = cfg.batch * c.cap_;
    c.k_floats_ = rows * cfg.heads_kv * cfg.dim_qk;
    c.v_floats_ = rows * cfg.heads_kv * cfg.dim_v;
    c.k_ = detail::alloc_floats_huge(static_cast<std::size_t>(c.k_floats_));  // (decode reads it from DRAM)
    c.v_ = detail::alloc_floats_huge(static_cast<std::size_t>(c.v_floats_));
    if (c.k_ == nullptr || c.v_ == nullptr)
      return detail::no_memory_status(static_cast<std::size_t>(c.k_floats_ + c.v_floats_), "cache (K/V storage)");
    std::fill(c.k_.get(), c.k_.get() + c.k_floats_, 0.f);
    std::fill(c.v_.get(), c.v_.get() + c.v_floats_, 0.f);
    if (cfg.positions == Config::Positions::cache_index && !c.rope_.try_reserve(c.cap_ + 1))
      return detail::no_memory_status(static_cast<std::size_t>((c.cap_ + 1) * c.rope_.config().rot()),
                                      "cache (RoPE table)");
    *out = std::move(c);
    return {};
  }

  const Config& config() const { return cfg_; }
  index_t capacity() const { return cap_; }
  index_t tokens_seen() const { return seen_; }
  // Tokens held: min(L, sink_tokens + window).
  index_t size() const { return sinks_held() + ring_held(); }
  // Bytes of K/V storage (fixed at creation: the cache never grows).
  std::size_t bytes() const { return static_cast<std::size_t>(k_floats_ + v_floats_) * sizeof(float); }

  // The kept keys in position order as up to three segments; returns how many.
  index_t segments(KvSegment out[3]) const {
    index_t n = 0;
    const index_t ns = sinks_held(), nr = ring_held();
    if (ns > 0) out[n++] = rows(0, ns);
    if (nr > 0) {
      const index_t s = cfg_.sink_tokens, w = cfg_.window;
      const index_t first = s + (seen_ - nr - s) % w;  // the oldest ring token's row
      const index_t part1 = std::min(nr, s + w - first);
      out[n++] = rows(first, part1);
      if (part1 < nr) out[n++] = rows(s, nr - part1);
    }
    return n;
  }

  // One layer step for a chunk of c new tokens: q [B, c, Hq, Dqk], k [B, c, Hkv, Dqk],
  // v [B, c, Hkv, Dv], o [B, c, Hq, Dv]. opt chooses scale, softcap, normalization (e.g. learned
  // sink logits), gate and LSE; its mask must be left Full (the cache sets the window) and its
  // rope unset (the cache sets it in cache_index mode).
  Status attend_and_append(const TensorView<const float>& q, const TensorView<const float>& k,
                           const TensorView<const float>& v, const TensorView<float>& o, Options opt = {},
                           const Executor& ex = Executor::serial()) {
    if (cap_ == 0) return Status(Errc::invalid_argument, "cache: not created (use StreamingCache::create)");
    if (!std::holds_alternative<FullMask>(opt.mask))
      return Status(Errc::invalid_argument, "opt.mask: the cache applies its own sliding window; leave it Full");
    if (opt.rope.table != nullptr) return Status(Errc::invalid_argument, "opt.rope: set by the cache, leave it unset");
    SINKATTN_TRY(check_chunk(k, v));
    const index_t c = k.shape[1];
    if (q.shape[0] != cfg_.batch || q.shape[1] != c)
      return Status(Errc::shape_mismatch, "q: shape [" + std::to_string(q.shape[0]) + ", " +
                                              std::to_string(q.shape[1]) + ", ...] expected [batch " +
                                              std::to_string(cfg_.batch) + ", chunk " + std::to_string(c) + ", ...]");
    KvSegment seg[4];
    const index_t n = segments(seg);
    seg[n] = {k, v};
    const index_t kept = size();
    const Problem p{cfg_.batch, q.shape[2], cfg_.heads_kv, c, kept + c, cfg_.dim_qk, cfg_.dim_v};
    opt.mask = SlidingWindowMask{cfg_.window - 1, 0, cfg_.sink_tokens};
    if (cfg_.positions == Config::Positions::cache_index) {
      if (!rope_.try_reserve(kept + c + 1))
        return detail::no_memory_status(static_cast<std::size_t>((kept + c + 1) * rope_.config().rot()),
                                        "cache (RoPE table)");
      // Keys at their index among the kept keys + the chunk, query i at kept + i; the sinks
      // are seen from min(that, capacity - 1): the position query t has in its own cache.
      // (Keys j < sink_tokens are sinks in both frames: when fewer are held, the chunk's first
      // tokens are the rest of them.)
      opt.rope = {&rope_, kept, cfg_.sink_tokens, cap_ - 1};
    }
    SINKATTN_TRY(forward(p, q, seg, n + 1, o, opt, ex));
    return append_unchecked(k, v);
  }

  // Appends a chunk without attending (e.g. K/V computed elsewhere): k [B, c, Hkv, Dqk], v.
  Status append(const TensorView<const float>& k, const TensorView<const float>& v) {
    if (cap_ == 0) return Status(Errc::invalid_argument, "cache: not created (use StreamingCache::create)");
    SINKATTN_TRY(check_chunk(k, v));
    return append_unchecked(k, v);
  }

  // The cache's RoPE table (cache_index mode), e.g. to rotate what a dense check compares with.
  const RopeTable& rope_table() const { return rope_; }

 private:
  index_t sinks_held() const { return std::min(seen_, cfg_.sink_tokens); }
  index_t ring_held() const { return std::min(cfg_.window, std::max<index_t>(0, seen_ - cfg_.sink_tokens)); }

  // Storage rows [r0, r0 + n) as a segment (views of [B, n, Hkv, D] inside [B, cap, Hkv, D]).
  KvSegment rows(index_t r0, index_t n) const {
    const index_t H = cfg_.heads_kv, dk = cfg_.dim_qk, dv = cfg_.dim_v;
    return {TensorView<const float>(k_.get() + r0 * H * dk, {cfg_.batch, n, H, dk}, {cap_ * H * dk, H * dk, dk, 1}),
            TensorView<const float>(v_.get() + r0 * H * dv, {cfg_.batch, n, H, dv}, {cap_ * H * dv, H * dv, dv, 1})};
  }

  Status check_chunk(const TensorView<const float>& k, const TensorView<const float>& v) const {
    const index_t c = k.shape[1];
    if (c < 1)
      return Status(Errc::out_of_range, "k: chunk length (shape[1]) is " + std::to_string(c) + ", must be >= 1");
    SINKATTN_TRY(detail::check_view("k", k, {cfg_.batch, c, cfg_.heads_kv, cfg_.dim_qk}, detail::kBSHD));
    SINKATTN_TRY(detail::check_view("v", v, {cfg_.batch, c, cfg_.heads_kv, cfg_.dim_v}, detail::kBSHD));
    return {};
  }

  Status append_unchecked(const TensorView<const float>& k, const TensorView<const float>& v) {
    const index_t c = k.shape[1], s = cfg_.sink_tokens, w = cfg_.window, H = cfg_.heads_kv;
    for (index_t i = 0; i < c; ++i) {
      const index_t t = seen_ + i;
      if (t >= s && i < c - w) continue;  // overwritten by a later token of this chunk anyway
      const index_t row = t < s ? t : s + (t - s) % w;
      for (index_t b = 0; b < cfg_.batch; ++b)
        for (index_t g = 0; g < H; ++g) {
          float* kd = k_.get() + ((b * cap_ + row) * H + g) * cfg_.dim_qk;
          float* vd = v_.get() + ((b * cap_ + row) * H + g) * cfg_.dim_v;
          for (index_t x = 0; x < cfg_.dim_qk; ++x) kd[x] = k(b, i, g, x);
          for (index_t x = 0; x < cfg_.dim_v; ++x) vd[x] = v(b, i, g, x);
        }
    }
    seen_ += c;
    return {};
  }

  Config cfg_;
  index_t cap_ = 0;
  index_t seen_ = 0;
  index_t k_floats_ = 0, v_floats_ = 0;
  detail::FloatBuffer k_, v_;  // [B, cap, Hkv, Dqk], [B, cap, Hkv, Dv]
  RopeTable rope_;
};

}  // namespace sinkattn
