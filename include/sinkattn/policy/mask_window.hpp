#pragma once
// Sliding window with sink tokens (SEMANTICS.md section 2; FlashAttention window_size and
// sink_token_length, ONNX left/right_window_size, StreamingLLM):
//
//   p_i - left <= j <= p_i + right        (-1 = unbounded side), p_i = i + shift,
//   keys j < sink_tokens are visible whenever j <= p_i + right, even left of the window,
//
// with shift = Skv - Sq + offset (bottom-right aligned, like CausalMaskPolicy).
//
// A query tile visits two key ranges: the sink blocks and the band around the diagonal. Blocks
// inside the band are Full (no masking work), the band's edges are Partial, and the gap between
// sinks and band is never loaded (for_each_block / next_kv, see policy/mask.hpp).

#include <algorithm>

#include "sinkattn/core/types.hpp"
#include "sinkattn/policy/mask.hpp"

namespace sinkattn::policy {

struct SlidingWindowMaskPolicy {
  index_t seq_kv = 0;
  index_t shift = 0;  // p_i = i + shift
  index_t left = -1;  // -1: unbounded
  index_t right = -1;
  index_t sink_tokens = 0;

  // An unbounded side as a finite distance that cannot overflow when added to a position.
  static constexpr index_t kUnbounded = index_t(1) << 40;
  index_t L() const { return left < 0 ? kUnbounded : left; }
  index_t R() const { return right < 0 ? kUnbounded : right; }

  bool visible(index_t i, index_t j) const {
    const index_t p = i + shift;
    return j <= p + R() && (j >= p - L() || j < sink_tokens);
  }

  // Rows [i0, i1) have positions P0..P1; keys [j0, j1).
  BlockKind classify(index_t i0, index_t i1, index_t j0, index_t j1) const {
    const index_t P0 = i0 + shift, P1 = i1 - 1 + shift, l = L(), r = R();
    // Full: every key right-visible to the first row, and every non-sink key left-visible
    // to the last row.
    if (j1 - 1 <= P0 + r && (j1 <= sink_tokens || std::max(j0, sink_tokens) >= P1 - l)) return BlockKind::full;
    // Some row p in [P0, P1] has a band key in the block iff p in [j0 - r, j1 - 1 + l];
    // a sink key j0 < sink_tokens is seen by some row iff j0 <= P1 + r.
    const bool band = std::max(P0, j0 - r) <= std::min(P1, j1 - 1 + l);
    const bool sink = j0 < sink_tokens && j0 <= P1 + r;
    return band || sink ? BlockKind::partial : BlockKind::empty;
  }

  // End of the keys any row of [i0, i1) sees (the right edge of the last row).
  index_t kv_end(index_t, index_t i1) const { return std::clamp<index_t>(i1 - 1 + shift + R() + 1, 0, seq_kv); }
  // End of the sink keys worth visiting for rows [i0, i1).
  index_t sink_end(index_t i0, index_t i1) const { return std::min(sink_tokens, kv_end(i0, i1)); }
  // Start of the band of rows [i0, i1) (the left edge of the first row).
  index_t band_begin(index_t i0, index_t i1) const { return std::clamp<index_t>(i0 + shift - L(), 0, kv_end(i0, i1)); }
  index_t kv_begin(index_t i0, index_t i1) const { return sink_end(i0, i1) > 0 ? 0 : band_begin(i0, i1); }

  // The first key >= j that rows [i0, i1) may see: jumps the gap between sinks and band.
  index_t next_kv(index_t i0, index_t i1, index_t j) const {
    return j >= sink_end(i0, i1) ? std::max(j, band_begin(i0, i1)) : j;
  }

  // Sink blocks, then the band (its first block aligned down to a multiple of bkv, not below
  // the sinks), in ascending key order; Empty blocks are skipped.
  template <class F>
  void for_each_block(index_t i0, index_t i1, index_t bkv, F&& f) const {
    const index_t end = kv_end(i0, i1), se = sink_end(i0, i1);
    const auto visit = [&](index_t lo, index_t hi) {
      for (index_t j0 = lo; j0 < hi; j0 += bkv) {
        const index_t j1 = std::min(j0 + bkv, hi);
        const BlockKind kind = classify(i0, i1, j0, j1);
        if (kind != BlockKind::empty) f(j0, j1, kind);
      }
    };
    const index_t bb = band_begin(i0, i1);
    if (bb <= se) {
      visit(0, end);  // sinks and band touch: one range
      return;
    }
    visit(0, se);
    visit(std::max(se, bb / bkv * bkv), end);
  }

  // Partial tile: per key, the visible lanes are one range (a band key: the rows whose window
  // holds it; a sink key: every row right-visible to it), so masking is two fills per key.
  void apply_tile(const ScoreTile& t) const {
    const index_t base = t.i0 + shift;  // position of lane 0
    for (index_t r = 0; r < t.nk; ++r) {
      const index_t j = t.j0 + r;
      const index_t lo = j - R() - base;                               // p >= j - right
      const index_t hi = j < sink_tokens ? t.nq : j + L() - base + 1;  // p - left <= j
      mask_outside_lanes(t, r, lo, hi);
    }
  }

  index_t count_visible(index_t i) const {
    const index_t p = i + shift;
    const index_t hi = std::clamp<index_t>(p + R() + 1, 0, seq_kv);  // exclusive right edge
    const index_t lo = std::max<index_t>(0, p - L());
    const index_t band = std::max<index_t>(0, hi - lo);
    const index_t sinks_left_of_band = std::max<index_t>(0, std::min({sink_tokens, hi, lo}));
    return band + sinks_left_of_band;
  }
};

}  // namespace sinkattn::policy
