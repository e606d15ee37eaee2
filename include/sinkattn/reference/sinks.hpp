#pragma once
// SEMANTICS section 6 in the reference: the attention weights themselves, the attention mass
// each key receives, the sink metric (Gu et al.) with the fraction of heads that have a sink,
// and ACT calibration (Yu et al. 2024).
//
// The weights are read off `attention` itself, run over one-hot value rows (v_j = e_j, so the
// output row of query i is its weight vector w_i): every normalization, mask, score option and
// RoPE setting means here exactly what it means there, with no second copy of that maths. The
// output gate is not part of the weights (it scales the output after normalization,
// SEMANTICS section 4): attention_weights ignores it, attention_act applies it last.
//
// Definitions this file fixes where the contract leaves room:
// - The sink metric alpha_j averages w_ij over the query rows at or after key j by position,
//   p_i = i + Skv - Sq >= j (SEMANTICS section 2's alignment); 0 when no row qualifies.
// - ACT: T_i = sum_j w_ij, P_S = sum_{j in S} w_ij. Keys in S keep beta w_ij, the others get
//   w_ij (T_i - beta P_S) / (T_i - P_S): the removed mass goes back in proportion and the
//   row's total stays T_i. With T_i = 1 (softmax) this is SEMANTICS' O' = beta O_S + O_notS
//   (1 - beta P_S) / (1 - P_S); with a learned sink the sink's share stays where it was. A row
//   with no mass outside S (T_i == P_S) keeps beta O_S.
// - A key of weight 0 adds nothing to the calibrated output, not even a NaN in its value row
//   (masked keys have weight 0; `attention` does not read their rows either).
// - S never holds key 0 (ACT keeps the first token's sink: "excluding the first token"), and
//   holds each key once.
// Memory: O(B Hq Sq Skv) Reals for the weights and Skv^2 floats for the one-hot rows, test scale.

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "sinkattn/reference/attention.hpp"

namespace sinkattn {

namespace reference {
namespace detail {

// The weights into w (logical [B, Hq, Sq, Skv], checked by the caller): attention over the
// one-hot value rows, writing its output [B, Sq, Hq, Dv = Skv] through w's strides.
template <class Real>
Status weights_into(const Problem& p, TensorView<const float> q, TensorView<const float> k, const Options& opt,
                    TensorView<Real> w) {
  const index_t Skv = p.seq_kv;
  // The same rows for every batch and head (zero strides).
  std::vector<float> eye(static_cast<size_t>(Skv * Skv), 0.f);
  for (index_t j = 0; j < Skv; ++j) eye[static_cast<size_t>(j * Skv + j)] = 1.f;
  Problem pw = p;
  pw.dim_v = Skv;
  const TensorView<const float> v(eye.data(), {p.batch, Skv, p.heads_kv, Skv}, {0, Skv, 0, 1});
  const TensorView<Real> o(w.data, {p.batch, p.seq_q, p.heads_q, Skv},
                           {w.stride[0], w.stride[2], w.stride[1], w.stride[3]});
  Options plain = opt;
  plain.gate = NoGate{};
  return attention<Real>(pw, q, k, v, o, plain);
}

// The weights as a dense [B][Hq][Sq][Skv] buffer.
template <class Real>
Status weights_buffer(const Problem& p, TensorView<const float> q, TensorView<const float> k, const Options& opt,
                      std::vector<Real>& w) {
  SINKATTN_TRY(::sinkattn::detail::check_problem(p));
  w.assign(static_cast<size_t>(p.batch * p.heads_q * p.seq_q * p.seq_kv), Real(0));
  const index_t Hq = p.heads_q, Sq = p.seq_q, Skv = p.seq_kv;
  return weights_into(p, q, k, opt,
                      TensorView<Real>(w.data(), {p.batch, Hq, Sq, Skv}, {Hq * Sq * Skv, Sq * Skv, Skv, 1}));
}

}  // namespace detail

// w (logical [B, Hq, Sq, Skv]) = the weight that query row i of head h gives key j under
// `opt`: every option of `attention` except the gate (see the top of this file). Keys the
// mask hides get 0; a learned sink's share is in no key (the row then sums to less than 1).
template <class Real>
Status attention_weights(const Problem& p, TensorView<const float> q, TensorView<const float> k, const Options& opt,
                         TensorView<Real> w) {
  namespace cd = ::sinkattn::detail;
  SINKATTN_TRY(cd::check_problem(p));
  SINKATTN_TRY(cd::check_view("w", w, {p.batch, p.heads_q, p.seq_q, p.seq_kv}, cd::kBHSS));
  SINKATTN_TRY(cd::check_writable("w", w));
  SINKATTN_TRY(cd::check_no_alias("w", w, "q", q));
  SINKATTN_TRY(cd::check_no_alias("w", w, "k", k));
  return detail::weights_into(p, q, k, opt, w);
}

// mass (logical [B, Hq, Skv, 1]) = sum over query rows i of w_ij, the attention mass key j
// receives in head h; alpha (same shape; empty: not computed) = the sink metric, the mean of
// w_ij over the rows at or after key j (p_i >= j), 0 when there is none.
template <class Real>
Status sink_mass(const Problem& p, TensorView<const float> q, TensorView<const float> k, const Options& opt,
                 TensorView<Real> mass, TensorView<Real> alpha = {}) {
  namespace cd = ::sinkattn::detail;
  SINKATTN_TRY(cd::check_problem(p));
  SINKATTN_TRY(cd::check_view("mass", mass, {p.batch, p.heads_q, p.seq_kv, 1}, cd::kBHS1));
  SINKATTN_TRY(cd::check_writable("mass", mass));
  SINKATTN_TRY(cd::check_no_alias("mass", mass, "q", q));
  SINKATTN_TRY(cd::check_no_alias("mass", mass, "k", k));
  const bool want_alpha = detail::requested(alpha);
  if (want_alpha) {
    SINKATTN_TRY(cd::check_view("alpha", alpha, {p.batch, p.heads_q, p.seq_kv, 1}, cd::kBHS1));
    SINKATTN_TRY(cd::check_writable("alpha", alpha));
    SINKATTN_TRY(cd::check_no_alias("alpha", alpha, "q", q));
    SINKATTN_TRY(cd::check_no_alias("alpha", alpha, "k", k));
    SINKATTN_TRY(cd::check_no_alias("alpha", alpha, "mass", mass));
  }
  std::vector<Real> w;
  SINKATTN_TRY(detail::weights_buffer<Real>(p, q, k, opt, w));
  const index_t Sq = p.seq_q, Skv = p.seq_kv;
  for (index_t b = 0; b < p.batch; ++b)
    for (index_t h = 0; h < p.heads_q; ++h)
      for (index_t j = 0; j < Skv; ++j) {
        Real total = 0, late = 0;
        index_t rows = 0;
        for (index_t i = 0; i < Sq; ++i) {
          const Real x = w[static_cast<size_t>(((b * p.heads_q + h) * Sq + i) * Skv + j)];
          total += x;
          if (p.query_pos(i) >= j) late += x, ++rows;
        }
        mass(b, h, j, 0) = total;
        if (want_alpha) alpha(b, h, j, 0) = rows > 0 ? late / Real(rows) : Real(0);
      }
  return {};
}

// frac (logical [B, 1, Skv, 1]) = the fraction of heads h whose sink metric alpha[b, h, j]
// (as sink_mass writes it, [B, Hq, Skv, 1]) exceeds eps (SEMANTICS: 0.3 by default).
template <class Real>
Status sink_head_fraction(TensorView<const Real> alpha, TensorView<Real> frac, double eps = 0.3) {
  namespace cd = ::sinkattn::detail;
  SINKATTN_TRY(cd::check_view("alpha", alpha, {-1, -1, -1, 1}, cd::kBHS1));
  SINKATTN_TRY(cd::check_view("frac", frac, {alpha.shape[0], 1, alpha.shape[2], 1}, cd::kBHS1));
  SINKATTN_TRY(cd::check_writable("frac", frac));
  SINKATTN_TRY(cd::check_no_alias("frac", frac, "alpha", alpha));
  if (!std::isfinite(eps)) return cd::fail(Errc::out_of_range, "eps must be finite");
  const index_t H = alpha.shape[1];
  for (index_t b = 0; b < alpha.shape[0]; ++b)
    for (index_t j = 0; j < alpha.shape[2]; ++j) {
      index_t n = 0;
      for (index_t h = 0; h < H; ++h) n += alpha(b, h, j, 0) > Real(eps) ? 1 : 0;
      frac(b, 0, j, 0) = H > 0 ? Real(n) / Real(H) : Real(0);
    }
  return {};
}

// Attention with ACT calibration (see the top of this file): o (logical [B, Sq, Hq, Dv]) =
// sum_j w'_ij v_j, then the output gate of `opt`. Returns a bad Status, and writes nothing,
// for invalid arguments (those of `attention`, and act's).
template <class Real>
Status attention_act(const Problem& p, TensorView<const float> q, TensorView<const float> k, TensorView<const float> v,
                     TensorView<Real> o, const Options& opt, const ActCalibration& act) {
  namespace cd = ::sinkattn::detail;
  SINKATTN_TRY(detail::validate_args(p, q, k, v, o, opt, TensorView<Real>{}));
  SINKATTN_TRY(::sinkattn::detail::check_act(p, act));
  std::vector<Real> w;
  SINKATTN_TRY(detail::weights_buffer<Real>(p, q, k, opt, w));
  const index_t Hq = p.heads_q, Sq = p.seq_q, Skv = p.seq_kv, Dv = p.dim_v;
  std::vector<unsigned char> in_s(static_cast<size_t>(Skv), 0);
  for (index_t s = 0; s < act.count; ++s) in_s[static_cast<size_t>(act.keys[s])] = 1;
  const Real beta = Real(act.beta);
  const auto* gate = std::get_if<SigmoidGate>(&opt.gate);
  const bool headwise_gate = gate && gate->g.shape[3] == 1;
  std::vector<Real> out(static_cast<size_t>(Dv));
  for (index_t b = 0; b < p.batch; ++b)
    for (index_t h = 0; h < Hq; ++h) {
      const index_t g = p.kv_head(h);
      for (index_t i = 0; i < Sq; ++i) {
        const Real* wi = w.data() + ((b * Hq + h) * Sq + i) * Skv;
        Real total = 0, sink = 0;
        for (index_t j = 0; j < Skv; ++j) {
          total += wi[j];
          if (in_s[static_cast<size_t>(j)]) sink += wi[j];
        }
        const Real rest = total - sink;
        const Real give = rest != Real(0) ? (total - beta * sink) / rest : Real(0);
        std::fill(out.begin(), out.end(), Real(0));
        for (index_t j = 0; j < Skv; ++j) {
          const Real wj = wi[j] * (in_s[static_cast<size_t>(j)] ? beta : give);
          if (wj == Real(0)) continue;  // (see the top of this file)
          for (index_t d = 0; d < Dv; ++d) out[static_cast<size_t>(d)] += wj * Real(v(b, j, g, d));
        }
        for (index_t d = 0; d < Dv; ++d) {
          Real x = out[static_cast<size_t>(d)];
          if (gate) x *= detail::sigmoid(Real(gate->g(b, i, h, headwise_gate ? 0 : d)));
          o(b, i, h, d) = x;
        }
      }
    }
  return {};
}

}  // namespace reference
}  // namespace sinkattn
