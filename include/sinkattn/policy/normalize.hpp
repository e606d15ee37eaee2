#pragma once
// Normalization policies. The loop calls, per KV block of a query tile:
//   bool rescale = Norm::update(state, tile, alpha);   // logits -> weights in place
//   if (Norm::kRescales && rescale) O *= alpha (lane-wise)
// and at the end Norm::finalize(state, extra_logit2, out) for 1/l and the LSE. kRescales is
// false for normalizations without a running max (sigmoid), so the rescale compiles away.

#include <cmath>
#include <limits>

#include "sinkattn/kernel/args.hpp"
#include "sinkattn/tile/ops.hpp"

namespace sinkattn::policy {

// What finalize hands to the epilogue, per query lane.
struct RowFinal {
  float out_scale[tile::kQRows];  // O_row = acc_row * out_scale
  float lse[tile::kQRows];        // natural log; -inf for a fully masked row
};

// Online softmax (FlashAttention): running max m and sum l per query lane, in log2 units.
struct OnlineSoftmax {
  static constexpr bool kRescales = true;

  struct State {
    tile::Lanes m = tile::Lanes::fill(-std::numeric_limits<float>::infinity());
    tile::Lanes l = tile::Lanes::fill(0.f);
  };

  static bool update(State& s, float* st, index_t ld, index_t nk, int vecs, tile::Lanes& alpha) {
    using tile::vf;
    tile::Lanes m_new = s.m;
    tile::col_max(m_new, st, ld, nk, vecs);
    tile::Lanes m_safe;
    bool changed = false;
    for (int c = 0; c < vecs; ++c) {
      // A lane that has seen only masked keys keeps m = -inf; exponentiating against 0
      // instead keeps exp2(-inf - m) = 0 rather than NaN. The state keeps the true max.
      m_safe.v[c] = xsimd::select(m_new.v[c] == vf(-std::numeric_limits<float>::infinity()), vf(0.f), m_new.v[c]);
      alpha.v[c] = tile::exp2(s.m.v[c] - m_safe.v[c]);
      changed = changed || xsimd::any(m_new.v[c] != s.m.v[c]);
    }
    tile::Lanes sum = tile::Lanes::fill(0.f);
    tile::exp2_sub_colsum(st, ld, nk, vecs, m_safe, sum);
    for (int c = 0; c < vecs; ++c) {
      s.l.v[c] = xsimd::fma(s.l.v[c], alpha.v[c], sum.v[c]);
      s.m.v[c] = m_new.v[c];
    }
    return changed;
  }

  // Decode orientation: one query row with its keys on the lanes.
  struct RowState {
    float m = -std::numeric_limits<float>::infinity();
    float l = 0.f;
  };

  // row: nvec vectors of logits (log2 units; -inf for masked keys and padding) -> weights in
  // place. Returns the factor the row's O accumulator must be multiplied by.
  static float update_row(RowState& s, float* row, int nvec) {
    using tile::vf;
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    vf mv(kNegInf);
    for (int c = 0; c < nvec; ++c) mv = xsimd::max(mv, vf::load_aligned(row + c * tile::kWidth));
    const float m_new = std::fmax(s.m, tile::hmax(mv));
    const float m_safe = m_new == kNegInf ? 0.f : m_new;
    const float alpha = s.m == kNegInf ? 0.f : std::exp2(s.m - m_safe);
    const vf ms(m_safe);
    vf sum(0.f);
    for (int c = 0; c < nvec; ++c) {
      const vf e = tile::exp2(vf::load_aligned(row + c * tile::kWidth) - ms);
      e.store_aligned(row + c * tile::kWidth);
      sum += e;
    }
    s.l = s.l * alpha + tile::hsum(sum);
    s.m = m_new;
    return alpha;
  }

  // Combines two partial rows over disjoint keys (split-KV); returns the factors for the
  // accumulators of `into` and of `part`.
  static void merge(RowState& into, const RowState& part, float& scale_into, float& scale_part) {
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    const float M = std::fmax(into.m, part.m);
    scale_into = into.m == kNegInf ? 0.f : std::exp2(into.m - M);
    scale_part = part.m == kNegInf ? 0.f : std::exp2(part.m - M);
    into.l = into.l * scale_into + part.l * scale_part;
    into.m = M;
  }

  // One row: m, l in log2 units, extra_logit2 one more logit (log2 units) in the denominator
  // only, e.g. a learned sink; -inf for none.
  // O = acc * 2^(m - M) / (l * 2^(m - M) + 2^(s - M)), M = max(m, s).
  static void finalize_row(float m, float l, float extra_logit2, float& out_scale, float& lse) {
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    const float mr = l > 0.f ? m : kNegInf;  // no visible key (l = 0): nothing to weigh
    const float M = std::fmax(mr, extra_logit2);
    if (M == kNegInf) {
      out_scale = 0.f;
      lse = kNegInf;
      return;
    }
    const float a = mr == kNegInf ? 0.f : std::exp2(mr - M);
    const float denom = l * a + (extra_logit2 == kNegInf ? 0.f : std::exp2(extra_logit2 - M));
    out_scale = a / denom;
    lse = (M + std::log2(denom)) * detail::kLn2;
  }

  static void finalize(const State& s, float extra_logit2, RowFinal& out) {
    alignas(64) float m[tile::kQRows], l[tile::kQRows];
    s.m.store(m);
    s.l.store(l);
    for (index_t r = 0; r < tile::kQRows; ++r) finalize_row(m[r], l[r], extra_logit2, out.out_scale[r], out.lse[r]);
  }
};

}  // namespace sinkattn::policy
