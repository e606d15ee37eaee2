#pragma once
// Normalization policies. The loop calls, per KV block of a query tile:
//   bool rescale = Norm::update(state, st, ld, nk, c0, c1, alpha);   // logits -> weights in place
//   if (Norm::kRescales && rescale) O *= alpha (lane-wise)
// over the vectors of lanes [c0, c1) that the block reaches (the others, and their alpha,
// are left as they are: a neighborhood tile's slabs, policy/mask.hpp).
// and at the end Norm::finalize(state, extra_logit2, out) for 1/l and the LSE. kRescales is
// false for normalizations without a running max (sigmoid), so the rescale compiles away.

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "sinkattn/kernel/args.hpp"
#include "sinkattn/kernel/workspace.hpp"
#include "sinkattn/policy/mask.hpp"
#include "sinkattn/tile/gemm.hpp"
#include "sinkattn/tile/ops.hpp"

namespace sinkattn::policy {

// What finalize hands to the epilogue, per query lane.
struct RowFinal {
  float out_scale[tile::kQRows];  // O_row = acc_row * out_scale
  float lse[tile::kQRows];        // natural log; -inf for a fully masked row
  bool want_lse = true;           // set by the caller: false = lse is not read (finalize may skip it)
};

// Online softmax (FlashAttention): running max m and sum l per query lane, in log2 units.
struct OnlineSoftmax {
  static constexpr bool kRescales = true;
  // True for normalizations that also need sum_{visible j} v_j per row (affine-scaled).
  static constexpr bool kSumsV = false;

  struct State {
    tile::Lanes m = tile::Lanes::fill(-std::numeric_limits<float>::infinity());
    tile::Lanes l = tile::Lanes::fill(0.f);
  };

  // The state of query rows [i0, i0 + nq) of head h (prefill), resp. of row i (decode):
  // where a normalization reads its per-head / per-row parameters, once per task.
  template <class Mask>
  static State init(const ::sinkattn::detail::KernelArgs&, const Mask&, index_t /*b*/, index_t /*h*/, index_t /*i0*/,
                    index_t /*nq*/) {
    return {};
  }

  static bool update(State& s, float* st, index_t ld, index_t nk, int c0, int c1, tile::Lanes& alpha) {
    tile::Lanes m_new = s.m;
    tile::col_max(m_new, st, ld, nk, c0, c1);
    return update_from_max(s, st, ld, nk, c0, c1, m_new, alpha);
  }

  // The rest of update() once the new lane max m_new (>= s.m) is known: for normalizations
  // that take the max in a pass of their own (scalable softmax).
  static bool update_from_max(State& s, float* st, index_t ld, index_t nk, int c0, int c1, const tile::Lanes& m_new,
                              tile::Lanes& alpha) {
    using tile::vf;
    tile::Lanes m_safe;
    bool changed = false;
    for (int c = c0; c < c1; ++c) {
      // A lane that has seen only masked keys keeps m = -inf; exponentiating against 0
      // instead keeps exp2(-inf - m) = 0 rather than NaN. The state keeps the true max.
      m_safe.v[c] = xsimd::select(m_new.v[c] == vf(-std::numeric_limits<float>::infinity()), vf(0.f), m_new.v[c]);
      alpha.v[c] = tile::exp2(s.m.v[c] - m_safe.v[c]);
      changed = changed || xsimd::any(m_new.v[c] != s.m.v[c]);
    }
    tile::Lanes sum = tile::Lanes::fill(0.f);
    tile::exp2_sub_colsum(st, ld, nk, c0, c1, m_safe, sum);
    for (int c = c0; c < c1; ++c) {
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

  template <class Mask>
  static RowState init_row(const ::sinkattn::detail::KernelArgs&, const Mask&, index_t /*b*/, index_t /*h*/,
                           index_t /*i*/) {
    return {};
  }

  // row: nvec vectors of logits (log2 units; -inf for masked keys and padding) -> weights in
  // place. Returns the factor the row's O accumulator must be multiplied by.
  static float update_row(RowState& s, float* row, int nvec) {
    using tile::vf;
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    vf mv(kNegInf);
    for (int c = 0; c < nvec; ++c) mv = xsimd::max(mv, vf::load_aligned(row + c * tile::kWidth));
    const float m_new = std::fmax(s.m, tile::hmax(mv));
    const float m_safe = m_new == kNegInf ? 0.f : m_new;
    // (A row's max seldom moves after its first blocks: then alpha is exactly 1 = 2^0, without
    // a call of libm's exp2.)
    const float alpha = s.m == kNegInf ? 0.f : s.m == m_safe ? 1.f : std::exp2(s.m - m_safe);
    const vf ms(m_safe);
    vf sum(0.f);
    for (int c = 0; c < nvec; ++c) {
      const vf e = tile::exp2_nonpositive(vf::load_aligned(row + c * tile::kWidth) - ms);
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
    if (std::isnan(l)) {    // a NaN score reached the sum: NaN out, as the reference gives
      out_scale = lse = l;  // (the test below would take the row for one with no visible key)
      return;
    }
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
    lse = (M + std::log2(denom)) * ::sinkattn::detail::kLn2;
  }

  static void finalize_row(const RowState& s, float extra_logit2, float& out_scale, float& lse) {
    finalize_row(s.m, s.l, extra_logit2, out_scale, lse);
  }

  static void finalize(const State& s, float extra_logit2, RowFinal& out) {
    if (!out.want_lse && extra_logit2 == -std::numeric_limits<float>::infinity()) {
      // No extra logit and no LSE: finalize_row reduces to out_scale = 1 / l (a = 2^0 = 1,
      // denom = l; 0 without a visible key), the same IEEE quotient, in vectors, without
      // the libm exp2/log2 calls per row (~1.5% of a short-task neighborhood call).
      const tile::vf zero(0.f), one(1.f);
      for (int c = 0; c < tile::kQVecs; ++c) {
        const tile::vf l = s.l.v[c];
        xsimd::select(l > zero, one / l, zero).store_unaligned(out.out_scale + c * tile::kWidth);
      }
      return;
    }
    alignas(64) float m[tile::kQRows], l[tile::kQRows];
    s.m.store(m);
    s.l.store(l);
    for (index_t r = 0; r < tile::kQRows; ++r) finalize_row(m[r], l[r], extra_logit2, out.out_scale[r], out.lse[r]);
  }
};

// ---- Sigmoid attention (FlashSigmoid; Gu et al.) ------------------------------------------
// w = sigmoid(x + b) = 1 / (1 + 2^-(x2 + b2)) with x2, b2 in log2 units, b = bias + head_bias[h].
// A masked logit (-inf) gives 2^inf = inf and w = 0 exactly. No max and no row sum are needed,
// so kRescales = false and the O rescale compiles away; l (the sum of the weights) only serves
// the optional row normalization w / (sum w + eps). No LSE (validate() rejects asking for one).
struct SigmoidNorm {
  static constexpr bool kRescales = false;
  static constexpr bool kSumsV = false;

  static float bias2(const ::sinkattn::detail::KernelArgs& a, index_t h) {
    return (a.sigmoid.bias + (a.sigmoid.head_bias != nullptr ? a.sigmoid.head_bias[h] : 0.f)) *
           ::sinkattn::detail::kLog2e;
  }
  // sigmoid(x + b) = 1 / (1 + 2^(nb - x2)) with x2 and nb = -b2 in log2 units.
  static tile::vf weight(const tile::vf& x2, const tile::vf& nb) { return tile::inv_1p_exp2(nb - x2); }
  static void finalize_row(float l, bool normalize, float eps, float& out_scale, float& lse) {
    lse = std::numeric_limits<float>::quiet_NaN();
    const float den = l + eps;
    out_scale = !normalize ? 1.f : den == 0.f ? 0.f : 1.f / den;  // no visible key and eps = 0: 0
  }

  struct State {
    tile::Lanes l = tile::Lanes::fill(0.f);
    float bias2 = 0.f;
    bool normalize = false;
    float eps = 0.f;
  };
  template <class Mask>
  static State init(const ::sinkattn::detail::KernelArgs& a, const Mask&, index_t, index_t h, index_t, index_t) {
    State s;
    s.bias2 = bias2(a, h);
    s.normalize = a.sigmoid.normalize;
    s.eps = a.sigmoid.eps;
    return s;
  }
  static bool update(State& s, float* st, index_t ld, index_t nk, int c0, int c1, tile::Lanes&) {
    using tile::vf;
    const vf nb(-s.bias2);
    auto pass = [&](auto with_sum) {
      for (int c = c0; c < c1; ++c) {
        vf sum(0.f);
        for (index_t j = 0; j < nk; ++j) {
          float* p = st + j * ld + c * tile::kWidth;
          const vf w = weight(vf::load_aligned(p), nb);
          w.store_aligned(p);
          if constexpr (decltype(with_sum)::value) sum += w;
        }
        s.l.v[c] += sum;
      }
    };
    // The row sum only serves the optional normalization: not computed without it.
    if (s.normalize)
      pass(std::true_type{});
    else
      pass(std::false_type{});
    return false;
  }
  static void finalize(const State& s, float, RowFinal& out) {
    alignas(64) float l[tile::kQRows];
    s.l.store(l);
    for (index_t r = 0; r < tile::kQRows; ++r) finalize_row(l[r], s.normalize, s.eps, out.out_scale[r], out.lse[r]);
  }

  struct RowState {
    float m = 0.f;  // unused (kept for the split-KV partial layout)
    float l = 0.f;
    float bias2 = 0.f;
    bool normalize = false;
    float eps = 0.f;
  };
  template <class Mask>
  static RowState init_row(const ::sinkattn::detail::KernelArgs& a, const Mask&, index_t, index_t h, index_t) {
    RowState s;
    s.bias2 = bias2(a, h);
    s.normalize = a.sigmoid.normalize;
    s.eps = a.sigmoid.eps;
    return s;
  }
  static float update_row(RowState& s, float* row, int nvec) {
    using tile::vf;
    const vf nb(-s.bias2);
    vf sum(0.f);
    for (int c = 0; c < nvec; ++c) {
      const vf w = weight(vf::load_aligned(row + c * tile::kWidth), nb);
      w.store_aligned(row + c * tile::kWidth);
      sum += w;
    }
    s.l += tile::hsum(sum);
    return 1.f;
  }
  static void merge(RowState& into, const RowState& part, float& scale_into, float& scale_part) {
    into.l += part.l;
    scale_into = scale_part = 1.f;
  }
  static void finalize_row(const RowState& s, float, float& out_scale, float& lse) {
    finalize_row(s.l, s.normalize, s.eps, out_scale, lse);
  }
};

// ---- Softpick (2504.20966) ----------------------------------------------------------------
// w_j = ReLU(e^x_j - 1) / (sum_j |e^x_j - 1| + eps). Stable form: with M = max(0, running max)
// (log2 units), t_j = 2^(x2_j - M) - 2^-M = e^-M' (e^x_j - 1); numerator and denominator share
// the factor, so a larger M rescales both like the online softmax, and eps becomes eps 2^-M.
// Masked keys (-inf logits) would give t = -2^-M, not 0: they are excluded explicitly.
struct SoftpickNorm {
  static constexpr bool kRescales = true;
  static constexpr bool kSumsV = false;

  static void finalize_row(float m, float l, float eps, float& out_scale, float& lse) {
    lse = std::numeric_limits<float>::quiet_NaN();
    const float den = l + eps * std::exp2(-m);
    out_scale = den == 0.f ? 0.f : 1.f / den;  // no visible key and eps = 0: 0
  }
  // In place: t = 2^(x - m) - 2^-m (0 for -inf), st = max(t, 0); returns sum |t|.
  static tile::vf weights(float* p, const tile::vf& m, const tile::vf& off, tile::vf den) {
    using tile::vf;
    const vf x = vf::load_aligned(p);
    const vf t = xsimd::select(x == vf(-std::numeric_limits<float>::infinity()), vf(0.f), tile::exp2(x - m) - off);
    xsimd::max(t, vf(0.f)).store_aligned(p);
    return den + xsimd::abs(t);
  }

  struct State {
    tile::Lanes m = tile::Lanes::fill(0.f);  // M >= 0
    tile::Lanes l = tile::Lanes::fill(0.f);
    float eps = 0.f;
  };
  template <class Mask>
  static State init(const ::sinkattn::detail::KernelArgs& a, const Mask&, index_t, index_t, index_t, index_t) {
    State s;
    s.eps = a.softpick.eps;
    return s;
  }
  static bool update(State& s, float* st, index_t ld, index_t nk, int c0, int c1, tile::Lanes& alpha) {
    using tile::vf;
    tile::Lanes m_new = s.m;
    tile::col_max(m_new, st, ld, nk, c0, c1);
    bool changed = false;
    for (int c = c0; c < c1; ++c) {
      const vf mc = m_new.v[c], off = tile::exp2(-mc);
      alpha.v[c] = tile::exp2(s.m.v[c] - mc);
      changed = changed || xsimd::any(mc != s.m.v[c]);
      vf den(0.f);
      for (index_t j = 0; j < nk; ++j) den = weights(st + j * ld + c * tile::kWidth, mc, off, den);
      s.l.v[c] = xsimd::fma(s.l.v[c], alpha.v[c], den);
      s.m.v[c] = mc;
    }
    return changed;
  }
  static void finalize(const State& s, float, RowFinal& out) {
    alignas(64) float m[tile::kQRows], l[tile::kQRows];
    s.m.store(m);
    s.l.store(l);
    for (index_t r = 0; r < tile::kQRows; ++r) finalize_row(m[r], l[r], s.eps, out.out_scale[r], out.lse[r]);
  }

  struct RowState {
    float m = 0.f;
    float l = 0.f;
    float eps = 0.f;
  };
  template <class Mask>
  static RowState init_row(const ::sinkattn::detail::KernelArgs& a, const Mask&, index_t, index_t, index_t) {
    RowState s;
    s.eps = a.softpick.eps;
    return s;
  }
  static float update_row(RowState& s, float* row, int nvec) {
    using tile::vf;
    vf mv(0.f);
    for (int c = 0; c < nvec; ++c) mv = xsimd::max(mv, vf::load_aligned(row + c * tile::kWidth));
    const float m_new = std::fmax(s.m, tile::hmax(mv));
    const float alpha = std::exp2(s.m - m_new);
    const vf mc(m_new), off(std::exp2(-m_new));
    vf den(0.f);
    for (int c = 0; c < nvec; ++c) den = weights(row + c * tile::kWidth, mc, off, den);
    s.l = s.l * alpha + tile::hsum(den);
    s.m = m_new;
    return alpha;
  }
  static void merge(RowState& into, const RowState& part, float& scale_into, float& scale_part) {
    const float M = std::fmax(into.m, part.m);
    scale_into = std::exp2(into.m - M);
    scale_part = std::exp2(part.m - M);
    into.l = into.l * scale_into + part.l * scale_part;
    into.m = M;
  }
  static void finalize_row(const RowState& s, float, float& out_scale, float& lse) {
    finalize_row(s.m, s.l, s.eps, out_scale, lse);
  }
};

// ---- Scalable softmax (SSMax, 2501.19399) -------------------------------------------------
// softmax(s_h log(N_i) x): the online softmax over logits scaled per query row, right after the
// score and mask steps. N_i comes from the mask (count_visible) before the loop. A -inf logit
// stays -inf (also when the factor is 0 or negative).
struct ScalableSoftmaxNorm : OnlineSoftmax {
  static float factor(const ::sinkattn::detail::KernelArgs& a, index_t h, index_t n) {
    return n > 0 ? a.ssmax.s[h] * std::log(static_cast<float>(n)) : 1.f;
  }
  static tile::vf scaled(const tile::vf& x, const tile::vf& f) {
    return xsimd::select(x == tile::vf(-std::numeric_limits<float>::infinity()), x, x * f);
  }

  struct State : OnlineSoftmax::State {
    tile::Lanes f = tile::Lanes::fill(1.f);
    bool positive = true;  // every factor > 0: -inf * f stays -inf, no guard needed
  };
  template <class Mask>
  static State init(const ::sinkattn::detail::KernelArgs& a, const Mask& mask, index_t, index_t h, index_t i0,
                    index_t nq) {
    State s;
    alignas(64) float f[tile::kQRows];
    for (index_t r = 0; r < tile::kQRows; ++r) {
      f[r] = r < nq ? factor(a, h, mask.count_visible(i0 + r)) : 1.f;
      s.positive = s.positive && f[r] > 0.f;
    }
    for (int c = 0; c < tile::kQVecs; ++c) s.f.v[c] = tile::vf::load_aligned(f + c * tile::kWidth);
    return s;
  }
  static bool update(State& s, float* st, index_t ld, index_t nk, int c0, int c1, tile::Lanes& alpha) {
    using tile::vf;
    // One pass scales the logits and takes the lane max (it replaces the softmax's max pass).
    tile::Lanes m_new = s.m;
    auto pass = [&](auto guard) {
      for (int c = c0; c < c1; ++c) {
        const vf f = s.f.v[c];
        vf m = m_new.v[c];
        for (index_t j = 0; j < nk; ++j) {
          float* p = st + j * ld + c * tile::kWidth;
          vf x = vf::load_aligned(p);
          if constexpr (decltype(guard)::value)
            x = scaled(x, f);
          else
            x = x * f;
          x.store_aligned(p);
          m = xsimd::max(m, x);
        }
        m_new.v[c] = m;
      }
    };
    // A factor <= 0 (N_i = 1, or s_h <= 0) would turn -inf into NaN or +inf: guarded pass.
    if (s.positive)
      pass(std::false_type{});
    else
      pass(std::true_type{});
    return update_from_max(s, st, ld, nk, c0, c1, m_new, alpha);
  }

  struct RowState : OnlineSoftmax::RowState {
    float f = 1.f;
  };
  template <class Mask>
  static RowState init_row(const ::sinkattn::detail::KernelArgs& a, const Mask& mask, index_t, index_t h, index_t i) {
    RowState s;
    s.f = factor(a, h, mask.count_visible(i));
    return s;
  }
  static float update_row(RowState& s, float* row, int nvec) {
    using tile::vf;
    const vf f(s.f);
    for (int c = 0; c < nvec; ++c)
      scaled(vf::load_aligned(row + c * tile::kWidth), f).store_aligned(row + c * tile::kWidth);
    return OnlineSoftmax::update_row(s, row, nvec);
  }
};

// ---- Affine-scaled attention (Bae et al. 2026) --------------------------------------------
// O_i = alpha_i O_i^softmax + beta_i sum_{visible j} v_j: the online softmax plus one running
// V sum per row (kSumsV: the loops feed VSums below), combined in the epilogue before the gate.
// beta_i is given, or (alpha_ma - alpha_i) / N_i (N_i from the mask, or Skv). A row without a
// visible key gives 0.
struct AffineScaledNorm : OnlineSoftmax {
  static constexpr bool kSumsV = true;

  template <class Mask>
  static void coefficients(const ::sinkattn::detail::KernelArgs& a, const Mask& mask, index_t b, index_t h, index_t i,
                           float& alpha, float& beta) {
    const index_t n = mask.count_visible(i);
    alpha = beta = 0.f;
    if (n == 0) return;
    alpha = a.affine.alpha(b, i, h, 0);
    if (a.affine.beta.data != nullptr && !a.affine.beta.empty()) {
      beta = a.affine.beta(b, i, h, 0);
    } else {
      const index_t d = a.affine.beta_over_skv ? a.p.seq_kv : n;
      beta = (a.affine.alpha_ma - alpha) / static_cast<float>(d);
    }
  }
  // acc = alpha * acc * scale + beta * vsum in place; the store then uses a factor of 1.
  static void combine(float alpha, float beta, float* acc, const float* vsum, index_t dv_pad, float& scale) {
    using tile::vf;
    const vf sa(alpha * scale), sb(beta);
    for (index_t x = 0; x < dv_pad; x += tile::kWidth)
      xsimd::fma(vf::load_aligned(acc + x), sa, vf::load_aligned(vsum + x) * sb).store_aligned(acc + x);
    scale = 1.f;
  }

  struct State : OnlineSoftmax::State {
    float alpha[tile::kQRows] = {};
    float beta[tile::kQRows] = {};
  };
  template <class Mask>
  static State init(const ::sinkattn::detail::KernelArgs& a, const Mask& mask, index_t b, index_t h, index_t i0,
                    index_t nq) {
    State s;
    for (index_t r = 0; r < nq; ++r) coefficients(a, mask, b, h, i0 + r, s.alpha[r], s.beta[r]);
    return s;
  }
  static void combine(const State& s, index_t r, float* acc, const float* vsum, index_t dv_pad, float& scale) {
    combine(s.alpha[r], s.beta[r], acc, vsum, dv_pad, scale);
  }

  struct RowState : OnlineSoftmax::RowState {
    float alpha = 0.f;
    float beta = 0.f;
  };
  template <class Mask>
  static RowState init_row(const ::sinkattn::detail::KernelArgs& a, const Mask& mask, index_t b, index_t h, index_t i) {
    RowState s;
    coefficients(a, mask, b, h, i, s.alpha, s.beta);
    return s;
  }
  static void combine(const RowState& s, index_t, float* acc, const float* vsum, index_t dv_pad, float& scale) {
    combine(s.alpha, s.beta, acc, vsum, dv_pad, scale);
  }
};

// Running sums of the visible V rows of `rows` query rows per head, for `heads` heads
// (kSumsV normalizations; decode takes several KV heads per task), without a second pass over
// V: a Full block's keys are visible to every row, so its V column sum is accumulated once
// into a row shared by the head's rows; a Partial block goes through the P.V micro-kernel with
// a 0/1 visibility indicator (mask-visible keys count, also those a -inf bias silences).
// Memory: a per-thread workspace of its own.
struct VSums {
  float* full = nullptr;  // (heads, dv_pad)
  float* part = nullptr;  // (heads * rows, dv_pad)
  float* ind = nullptr;   // (rows, max_keys) indicator of a Partial block
  float* ones = nullptr;  // (max_keys)
  index_t rows = 0, heads = 1, dv_pad = 0, max_keys = 0;
  // The rows and keys `ind` was last built for: the heads of a decode task see the same keys
  // at the same positions, so the indicator is built once per block, not once per head.
  mutable index_t ind_i0 = -1, ind_j0 = -1, ind_nk = 0;

  static ::sinkattn::detail::Workspace& workspace() {
    thread_local ::sinkattn::detail::Workspace ws;
    return ws;
  }
  // ok() false: no memory (noted in `failures`).
  static VSums make(::sinkattn::detail::NoMemory& failures, index_t rows, index_t dv_pad, index_t max_keys,
                    index_t heads = 1) {
    VSums s;
    s.rows = rows;
    s.heads = heads;
    s.dv_pad = dv_pad;
    s.max_keys = tile::round_up(max_keys, tile::kWidth);
    const index_t sums = heads * (rows + 1) * dv_pad;
    s.full = workspace().floats(static_cast<std::size_t>(sums + (rows + 1) * s.max_keys), failures,
                                "workspace (a task's V sums)");
    if (s.full == nullptr) return s;
    s.part = s.full + heads * dv_pad;
    s.ind = s.full + sums;
    s.ones = s.ind + rows * s.max_keys;
    std::fill(s.full, s.full + sums, 0.f);
    std::fill(s.ones, s.ones + s.max_keys, 1.f);
    return s;
  }
  // Keys [j0, j0 + nk) of head `head` with V rows at v (unit stride, dv_pad readable floats,
  // row stride ld_v). Accumulator row r of the head holds query row i0 + r % period (prefill:
  // i0 + r; decode, where the rows of several query heads share positions: r % Sq).
  template <class Mask>
  void add(const Mask& mask, BlockKind kind, index_t i0, index_t period, index_t j0, index_t nk, const float* v,
           index_t ld_v, index_t head = 0) const {
    const index_t dv_vecs = dv_pad / tile::kWidth;
    if (kind == BlockKind::full) {
      tile::mma_pv(full + head * dv_pad, dv_pad, 1, ones, 1, 0, v, ld_v, nk, dv_vecs);
      return;
    }
    if (i0 != ind_i0 || j0 != ind_j0 || nk != ind_nk) {
      for (index_t r = 0; r < rows; ++r) {
        const index_t i = i0 + r % period;
        for (index_t x = 0; x < nk; ++x) ind[r * max_keys + x] = mask.visible(i, j0 + x) ? 1.f : 0.f;
      }
      ind_i0 = i0, ind_j0 = j0, ind_nk = nk;
    }
    tile::mma_pv(part + head * rows * dv_pad, dv_pad, rows, ind, 1, max_keys, v, ld_v, nk, dv_vecs);
  }
  bool ok() const { return full != nullptr; }
  // Row r's total (after fold()); r < heads * rows, the rows of head r / rows.
  const float* row(index_t r) const { return part + r * dv_pad; }
  void fold() const {
    for (index_t r = 0; r < heads * rows; ++r)
      for (index_t x = 0; x < dv_pad; ++x) part[r * dv_pad + x] += full[(r / rows) * dv_pad + x];
  }
};

}  // namespace sinkattn::policy
