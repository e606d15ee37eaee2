#pragma once
// The fp64 reference: the test oracle for every kernel (SEMANTICS.md sections 1-4).
//
// Plain loops written to be read, one query row at a time, sharing no code with the fast path.
// Real = double is the oracle; Real = float is the "naive fp32" implementation that the
// tolerance rule measures the kernels against (|ours - ref64| <= 2 |naive32 - ref64| + atol).
// Every intermediate (dot products, exponentials, sums) is held in Real.
//
// Definitions this file fixes where the contract leaves room (the kernels must agree):
// - "Visible" means visible under the mask. N_i (SSMax, affine beta) counts mask-visible
//   keys, also those whose logit is -inf through a bias; affine's sum_j v_j runs over them too.
// - ALiBi uses p_i = i + (Skv - Sq) (ScoreOptions carries no offset).
// - LSE (natural log) per normalization:
//     Softmax          log sum_j exp(x_ij)
//     SinkSoftmax      logaddexp(log sum_j exp(x_ij), S_h): includes the sink. A row with no
//                      visible key therefore returns S_h (-inf when S_h = -inf); its output is 0.
//     AffineScaled     the LSE of its softmax part
//     ScalableSoftmax  the LSE of the scaled logits s_h * log(N_i) * x_ij
//     Sigmoid/Softpick undefined: asking for it is an error Status.
//   A row with no visible key (and no sink) has output 0 and LSE -inf, never NaN.
// - ScalableSoftmax scales the final logit (after softcap, bias, ALiBi); a -inf logit stays
//   -inf (so N_i = 1 does not produce 0 * -inf).
// - Softpick excludes -inf logits (masked or -inf bias) from numerator and denominator, like
//   the authors' implementation (torch.where(x.isfinite(), ...)); eps is added to the
//   mathematical denominator sum |e^x - 1| + eps (the row-max rescaling scales it too).
// - Sigmoid with normalize: a row whose denominator sum w + eps is 0 gives 0.
// - NaN in any input reaching a row (its q, a visible k/v, its bias, sink, alpha, gate...)
//   makes that row NaN; rows that do not read it are unaffected.

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <variant>
#include <vector>

#include "sinkattn/core/options.hpp"
#include "sinkattn/core/status.hpp"
#include "sinkattn/core/tensor_view.hpp"
#include "sinkattn/core/types.hpp"
#include "sinkattn/core/validate.hpp"
#include "sinkattn/reference/visibility.hpp"

namespace sinkattn {
namespace reference {
namespace detail {

template <class T>
bool requested(const TensorView<T>& v) {
  return v.data != nullptr || !v.empty();
}

// The checks of sinkattn::validate(), with an output of element type Real and the LSE
// passed as an argument (opt.lse is the kernels' output and is ignored here).
template <class Real>
Status validate_args(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
                     const TensorView<const float>& v, const TensorView<Real>& o, const Options& opt,
                     const TensorView<Real>& lse) {
  namespace cd = ::sinkattn::detail;
  SINKATTN_TRY(cd::check_problem(p));
  SINKATTN_TRY(cd::check_view("q", q, {p.batch, p.seq_q, p.heads_q, p.dim_qk}, cd::kBSHD));
  SINKATTN_TRY(cd::check_view("k", k, {p.batch, p.seq_kv, p.heads_kv, p.dim_qk}, cd::kBSHD));
  SINKATTN_TRY(cd::check_view("v", v, {p.batch, p.seq_kv, p.heads_kv, p.dim_v}, cd::kBSHD));
  SINKATTN_TRY(cd::check_view("o", o, {p.batch, p.seq_q, p.heads_q, p.dim_v}, cd::kBSHD));
  SINKATTN_TRY(cd::check_writable("o", o));
  SINKATTN_TRY(cd::check_no_alias("o", o, "q", q));
  SINKATTN_TRY(cd::check_no_alias("o", o, "k", k));
  SINKATTN_TRY(cd::check_no_alias("o", o, "v", v));
  if (requested(lse)) {
    SINKATTN_TRY(cd::check_view("lse", lse, {p.batch, p.heads_q, p.seq_q, 1}, cd::kBHS1));
    SINKATTN_TRY(cd::check_writable("lse", lse));
    SINKATTN_TRY(cd::check_no_alias("lse", lse, "o", o));
    SINKATTN_TRY(cd::check_no_alias("lse", lse, "q", q));
    SINKATTN_TRY(cd::check_no_alias("lse", lse, "k", k));
    SINKATTN_TRY(cd::check_no_alias("lse", lse, "v", v));
    if (std::holds_alternative<Sigmoid>(opt.norm))
      return cd::fail(Errc::invalid_argument, "lse: not defined for the sigmoid normalization");
    if (std::holds_alternative<Softpick>(opt.norm))
      return cd::fail(Errc::invalid_argument, "lse: not defined for the softpick normalization");
  }

  const ScoreOptions& s = opt.score;
  if (s.scale && !std::isfinite(*s.scale)) return cd::fail(Errc::out_of_range, "score.scale is not finite");
  if (!(s.softcap >= 0.f) || !std::isfinite(s.softcap))
    return cd::fail(Errc::out_of_range, "score.softcap must be finite and >= 0");
  if (requested(s.bias))
    SINKATTN_TRY(cd::check_view("score.bias", s.bias, {p.batch, p.heads_q, p.seq_q, p.seq_kv}, cd::kBHSS));

  // The normalization checks look at opt.lse, which is not ours: check them without it.
  Options without_lse = opt;
  without_lse.lse = {};
  SINKATTN_TRY(std::visit([&](const auto& m) { return cd::check_mask(p, m); }, opt.mask));
  SINKATTN_TRY(std::visit([&](const auto& n) { return cd::check_norm(p, without_lse, n); }, opt.norm));
  SINKATTN_TRY(std::visit([&](const auto& g) { return cd::check_gate(p, g); }, opt.gate));
  if (const auto* g = std::get_if<SigmoidGate>(&opt.gate)) SINKATTN_TRY(cd::check_no_alias("o", o, "gate.g", g->g));
  SINKATTN_TRY(cd::check_rope(p, opt.rope));
  return {};
}

// RoPE in Real, angles computed here from the configuration (not from the kernels' table).
template <class Real>
void rope_rotate(Real* x, index_t pos, const Rope& cfg) {
  const index_t half = cfg.rot() / 2;
  for (index_t i = 0; i < half; ++i) {
    const Real angle = Real(pos) / std::pow(Real(cfg.theta), Real(2 * i) / Real(2 * half));
    const Real c = std::cos(angle), s = std::sin(angle);
    const index_t ia = cfg.pairing == RopePairing::neox ? i : 2 * i;
    const index_t ib = cfg.pairing == RopePairing::neox ? i + half : 2 * i + 1;
    const Real a = x[ia], b = x[ib];
    x[ia] = a * c - b * s;
    x[ib] = b * c + a * s;
  }
}

template <class Real>
Real neg_inf() {
  return -std::numeric_limits<Real>::infinity();
}

template <class Real>
Real nan() {
  return std::numeric_limits<Real>::quiet_NaN();
}

// sigmoid without overflow for either sign of x.
template <class Real>
Real sigmoid(Real x) {
  if (x >= Real(0)) return Real(1) / (Real(1) + std::exp(-x));
  const Real e = std::exp(x);  // also NaN -> NaN
  return e / (Real(1) + e);
}

// One query row after scoring: the visible keys and their logits.
template <class Real>
struct Row {
  std::vector<index_t> keys;  // mask-visible keys, ascending
  std::vector<Real> x;        // their logits (softcap, bias, ALiBi applied)
};

// out[0..Dv) = sum_j w_j v_j with w = softmax over (row logits `x`, plus an optional extra
// logit `extra` that has no value vector, -inf for none). Returns the LSE of all logits.
// No visible mass (every logit -inf): out = 0 and the LSE is -inf. Any NaN logit: NaN row.
template <class Real>
Real softmax_row(const std::vector<index_t>& keys, const std::vector<Real>& x, Real extra, const Real* vc, index_t dv,
                 Real* out) {
  std::fill(out, out + dv, Real(0));
  bool has_nan = std::isnan(extra);
  Real m = extra;
  for (Real xj : x) {
    has_nan = has_nan || std::isnan(xj);
    m = std::max(m, xj);
  }
  if (has_nan) {
    std::fill(out, out + dv, nan<Real>());
    return nan<Real>();
  }
  if (m == neg_inf<Real>()) return neg_inf<Real>();
  Real l = std::exp(extra - m);  // 0 when there is no extra logit
  for (size_t t = 0; t < keys.size(); ++t) {
    const Real w = std::exp(x[t] - m);  // subtracting the row max keeps +-1e4 logits finite
    l += w;
    const Real* vj = vc + keys[t] * dv;
    for (index_t d = 0; d < dv; ++d) out[d] += w * vj[d];
  }
  for (index_t d = 0; d < dv; ++d) out[d] /= l;
  return m + std::log(l);
}

// Softpick over the row: w = ReLU(e^x - 1) / (sum |e^x - 1| + eps), -inf logits excluded.
template <class Real>
void softpick_row(const std::vector<index_t>& keys, const std::vector<Real>& x, Real eps, const Real* vc, index_t dv,
                  Real* out) {
  std::fill(out, out + dv, Real(0));
  bool has_nan = false, any = false;
  Real m = neg_inf<Real>();
  for (Real xj : x) {
    has_nan = has_nan || std::isnan(xj);
    if (xj != neg_inf<Real>()) any = true;
    m = std::max(m, xj);
  }
  if (has_nan) {
    std::fill(out, out + dv, nan<Real>());
    return;
  }
  if (!any) return;
  // e^x - 1 overflows for large x: for m > 0 divide numerator and denominator by e^m, i.e.
  // t_j = e^(x_j - m) - e^(-m) and eps e^(-m). For m <= 0 nothing overflows; expm1 is exact
  // near 0 (and then every numerator is 0 anyway).
  const bool rescale = m > Real(0);
  const Real shift = rescale ? std::exp(-m) : Real(1);
  Real den = eps * shift;
  std::vector<Real> t(x.size(), Real(0));
  for (size_t u = 0; u < x.size(); ++u) {
    if (x[u] == neg_inf<Real>()) continue;
    t[u] = rescale ? std::exp(x[u] - m) - shift : std::expm1(x[u]);
    den += std::abs(t[u]);
  }
  if (den == Real(0)) return;  // every x_j == 0 and eps == 0: no mass
  for (size_t u = 0; u < x.size(); ++u) {
    if (!(t[u] > Real(0))) continue;
    const Real w = t[u] / den;
    const Real* vj = vc + keys[u] * dv;
    for (index_t d = 0; d < dv; ++d) out[d] += w * vj[d];
  }
}

// Sigmoid over the row: w = sigmoid(x + b); optionally divided by (sum w + eps).
template <class Real>
void sigmoid_row(const std::vector<index_t>& keys, const std::vector<Real>& x, Real b, bool normalize, Real eps,
                 const Real* vc, index_t dv, Real* out) {
  std::fill(out, out + dv, Real(0));
  Real sum = 0;
  for (size_t u = 0; u < x.size(); ++u) {
    const Real w = sigmoid(x[u] + b);
    sum += w;
    const Real* vj = vc + keys[u] * dv;
    for (index_t d = 0; d < dv; ++d) out[d] += w * vj[d];
  }
  if (!normalize) return;
  const Real den = sum + eps;
  if (den == Real(0)) return;  // no visible key (or all weights 0) with eps == 0
  for (index_t d = 0; d < dv; ++d) out[d] /= den;
}

}  // namespace detail

// Reference attention. Writes o (logical [B, Sq, Hq, Dv]) and, when `lse` is non-empty, the
// LSE (logical [B, Hq, Sq, 1], natural log; see the table at the top of this file). opt.lse is
// ignored: it is the kernels' output. Returns a bad Status, and writes nothing, for invalid
// arguments (the same checks as sinkattn::validate()).
template <class Real>
Status attention(const Problem& p, TensorView<const float> q, TensorView<const float> k, TensorView<const float> v,
                 TensorView<Real> o, const Options& opt, TensorView<Real> lse = {}) {
  static_assert(std::is_floating_point_v<Real>, "Real must be float or double");
  SINKATTN_TRY(detail::validate_args(p, q, k, v, o, opt, lse));
  const bool want_lse = detail::requested(lse);

  const index_t B = p.batch, Hq = p.heads_q, Hkv = p.heads_kv, Sq = p.seq_q, Skv = p.seq_kv;
  const index_t Dk = p.dim_qk, Dv = p.dim_v;
  if (B == 0 || Hq == 0 || Sq == 0) return {};
  const index_t group = Hq / Hkv;

  const ScoreOptions& sc = opt.score;
  const Real scale = sc.scale ? Real(*sc.scale) : (Dk > 0 ? Real(1) / std::sqrt(Real(Dk)) : Real(1));
  const Real cap = Real(sc.softcap);
  const bool has_bias = detail::requested(sc.bias);
  const detail::MaskEval mask(p, opt.mask);

  const auto* sink = std::get_if<SinkSoftmax>(&opt.norm);
  const auto* sig = std::get_if<Sigmoid>(&opt.norm);
  const auto* affine = std::get_if<AffineScaled>(&opt.norm);
  const auto* pick = std::get_if<Softpick>(&opt.norm);
  const auto* ssmax = std::get_if<ScalableSoftmax>(&opt.norm);
  const auto* gate = std::get_if<SigmoidGate>(&opt.gate);
  const bool headwise_gate = gate && gate->g.shape[3] == 1;

  std::vector<Real> kc(static_cast<size_t>(Skv * Dk));  // K of one (b, kv head), [Skv, Dk]
  std::vector<Real> vc(static_cast<size_t>(Skv * Dv));  // V of one (b, kv head), [Skv, Dv]
  std::vector<Real> qrow(static_cast<size_t>(Dk));
  std::vector<Real> qsink(static_cast<size_t>(Dk));  // RoPE: the query as the sink keys see it
  const RopeOnLoad& rope = opt.rope;
  const index_t rope_q0 = rope.query_position < 0 ? Skv - Sq : rope.query_position;
  std::vector<Real> out(static_cast<size_t>(Dv));
  std::vector<Real> vsum(static_cast<size_t>(Dv));
  std::vector<unsigned char> vis;
  detail::Row<Real> row;

  for (index_t b = 0; b < B; ++b) {
    for (index_t g = 0; g < Hkv; ++g) {
      for (index_t j = 0; j < Skv; ++j) {
        for (index_t d = 0; d < Dk; ++d) kc[j * Dk + d] = Real(k(b, j, g, d));
        for (index_t d = 0; d < Dv; ++d) vc[j * Dv + d] = Real(v(b, j, g, d));
        if (rope.table) detail::rope_rotate(kc.data() + j * Dk, j, rope.table->config());
      }
      for (index_t h = g * group; h < (g + 1) * group; ++h) {
        for (index_t i = 0; i < Sq; ++i) {
          // ---- 1. scores of the visible keys, in the order of SEMANTICS section 1 ----
          for (index_t d = 0; d < Dk; ++d) qrow[d] = qsink[d] = Real(q(b, i, h, d));
          if (rope.table) {
            const index_t qp = rope_q0 + i;
            detail::rope_rotate(qrow.data(), qp, rope.table->config());
            detail::rope_rotate(qsink.data(), rope.sink_query_max < 0 ? qp : std::min(qp, rope.sink_query_max),
                                rope.table->config());
          }
          mask.row(b, h, i, vis);
          row.keys.clear();
          row.x.clear();
          const index_t pos = i + (Skv - Sq);  // ALiBi position
          for (index_t j = 0; j < Skv; ++j) {
            if (!vis[j]) continue;  // 4. masked keys contribute nothing
            const Real* qi = rope.table && j < rope.sink_keys ? qsink.data() : qrow.data();
            const Real* kj = kc.data() + j * Dk;
            Real dot = 0;
            for (index_t d = 0; d < Dk; ++d) dot += qi[d] * kj[d];
            Real x = scale * dot;
            if (cap > Real(0)) x = cap * std::tanh(x / cap);
            if (has_bias) x += Real(sc.bias(b, h, i, j));
            if (sc.alibi_slopes) x -= Real(sc.alibi_slopes[h]) * Real(std::abs(pos - j));
            row.keys.push_back(j);
            row.x.push_back(x);
          }
          const index_t n_visible = static_cast<index_t>(row.keys.size());

          // ---- 3. normalization ----
          Real row_lse = detail::neg_inf<Real>();
          if (sig) {
            const Real bias = Real(sig->bias) + (sig->head_bias ? Real(sig->head_bias[h]) : Real(0));
            detail::sigmoid_row(row.keys, row.x, bias, sig->normalize, Real(sig->eps), vc.data(), Dv, out.data());
          } else if (pick) {
            detail::softpick_row(row.keys, row.x, Real(pick->eps), vc.data(), Dv, out.data());
          } else {
            Real extra = detail::neg_inf<Real>();
            if (sink) extra = Real(sink->sinks[h]);  // raw logit: not scaled, no softcap
            if (ssmax && n_visible > 0) {
              const Real f = Real(ssmax->s[h]) * std::log(Real(n_visible));
              for (Real& x : row.x)
                if (x != detail::neg_inf<Real>()) x *= f;
            }
            row_lse = detail::softmax_row(row.keys, row.x, extra, vc.data(), Dv, out.data());
            if (affine) {
              if (n_visible == 0) {
                std::fill(out.begin(), out.end(), Real(0));
              } else {
                const Real alpha = Real(affine->alpha(b, i, h, 0));
                Real beta;
                if (detail::requested(affine->beta)) {
                  beta = Real(affine->beta(b, i, h, 0));
                } else {
                  const index_t n = affine->beta_over_skv ? Skv : n_visible;
                  beta = (Real(affine->alpha_ma) - alpha) / Real(n);
                }
                std::fill(vsum.begin(), vsum.end(), Real(0));
                for (index_t j : row.keys)
                  for (index_t d = 0; d < Dv; ++d) vsum[d] += vc[j * Dv + d];
                for (index_t d = 0; d < Dv; ++d) out[d] = alpha * out[d] + beta * vsum[d];
              }
            }
          }

          // ---- 4. output gate ----
          if (gate) {
            for (index_t d = 0; d < Dv; ++d) out[d] *= detail::sigmoid(Real(gate->g(b, i, h, headwise_gate ? 0 : d)));
          }

          for (index_t d = 0; d < Dv; ++d) o(b, i, h, d) = out[d];
          if (want_lse) lse(b, h, i, 0) = row_lse;
        }
      }
    }
  }
  return {};
}

}  // namespace reference
}  // namespace sinkattn
