#pragma once
// ACT calibration in the fast path (SEMANTICS section 6, Yu et al. 2024):
//
//   sinkattn::forward_act(problem, q, k, v, o, options, act, executor)
//
// Attention whose weights on the sink keys S are scaled by beta, the removed mass going back to
// the other keys in proportion (reference/sinks.hpp fixes the definition: the row total T_i
// stays, a row with no mass outside S keeps beta O_S). Written so that nothing cancels when S
// holds nearly all of a row's mass (what sinks do):
//   1. the fused loop runs once with S's keys biased to -inf, plain softmax (no sink), no gate:
//      O^ = the output normalized over the other keys, L^ = their LSE;
//   2. per row, S's keys are scored again in double precision (scale, softcap, ALiBi, the
//      mask's visible(i, j)); with L = logsumexp(L^, x_S, sink), w_j = exp(x_j - L),
//      P_S = sum w_j, O_S = sum w_j v_j and the other keys' share R = exp(L^ - L),
//        O' = beta O_S + O^ (R + (1 - beta) P_S),
//      which is beta O_S + O_notS (T - beta P_S) / (T - P_S) with O_notS = R O^ and
//      T - P_S = R; then the gate.
// The extra work is O(Sq |S| (Dqk + Dv)) per head, against the call's O(Sq Skv (Dqk + Dv)).
// Supported: Softmax and SinkSoftmax, every mask, softcap, ALiBi and RoPE on load (step 2
// rotates the rows as the fused loop does), an additive score bias (step 1 adds the hidden
// keys' -inf to a copy of it) and K/V as segments; other normalizations and a requested LSE
// are Errc::unsupported (reference::attention_act has them).

#include <algorithm>
#include <cmath>
#include <limits>
#include <variant>
#include <vector>

#include "sinkattn/kernel/forward.hpp"

namespace sinkattn {
namespace detail {

// RoPE on load (a.rope): the rows act_row scores, rotated as the fused loop rotates them (in
// float, with the same table). keys: the sink keys' K rows of one KV head at their positions;
// q, q_sink: one query row at its position, and at the capped one for the keys before
// a.rope_sink_keys. Null pointers: no RoPE (act_row reads Q and K in place).
struct ActRope {
  const float* keys = nullptr;  // (act.count, Dqk)
  const float* q = nullptr;     // (Dqk)
  const float* q_sink = nullptr;
};

// Row i of head h of batch b: o's row holds O^ (step 1 above) and becomes O' (before the gate);
// lse_hat = L^. os: Dv + act.count doubles of scratch (O_S, then the sink keys' logits).
template <class Mask>
void act_row(const KernelArgs& a, const Mask& mask, const ActCalibration& act, index_t b, index_t h, index_t i,
             double lse_hat, double* os, const ActRope& rope = {}) {
  const Problem& p = a.p;
  const index_t g = p.kv_head(h), dv = p.dim_v;
  const double ninf = -std::numeric_limits<double>::infinity();
  // The sink keys' logits (-inf where the mask hides them).
  double* xs = os + dv;
  double m = lse_hat;
  const double sink = a.sink_logits ? double(a.sink_logits[h]) : ninf;
  m = std::max(m, sink);
  for (index_t s = 0; s < act.count; ++s) {
    const index_t j = act.keys[s];
    double x = ninf;
    if (mask.visible(i, j)) {
      x = 0;
      if (rope.keys != nullptr) {
        const float* qr = a.rope_two_queries() && j < a.rope_sink_keys ? rope.q_sink : rope.q;
        const float* kr = rope.keys + s * p.dim_qk;
        for (index_t d = 0; d < p.dim_qk; ++d) x += double(qr[d]) * double(kr[d]);
      } else {
        const KernelArgs::KvPiece pc = a.piece(j);
        for (index_t d = 0; d < p.dim_qk; ++d) x += double(a.q(b, i, h, d)) * double((*pc.k)(b, j - pc.base, g, d));
      }
      x *= a.scale;
      if (a.softcap > 0.f) x = a.softcap * std::tanh(x / a.softcap);
      if (a.bias.data != nullptr && !a.bias.empty()) x += double(a.bias(b, h, i, j));
      if (a.alibi_slopes != nullptr) x -= double(a.alibi_slopes[h]) * double(std::llabs(p.query_pos(i) - j));
    }
    xs[s] = x;
    m = std::max(m, x);
  }
  if (m == ninf) return;  // nothing visible and no sink: O^ = 0 stays
  double l = std::exp(lse_hat - m) + std::exp(sink - m);
  for (index_t s = 0; s < act.count; ++s) l += std::exp(xs[s] - m);
  const double lse = m + std::log(l);
  std::fill(os, os + dv, 0.0);
  double ps = 0;
  for (index_t s = 0; s < act.count; ++s) {
    if (xs[s] == ninf) continue;
    const double w = std::exp(xs[s] - lse);
    ps += w;
    const KernelArgs::KvPiece pc = a.piece(act.keys[s]);
    for (index_t d = 0; d < dv; ++d) os[d] += w * double((*pc.v)(b, act.keys[s] - pc.base, g, d));
  }
  const double others = std::exp(lse_hat - lse) + (1.0 - act.beta) * ps;
  for (index_t d = 0; d < dv; ++d) {
    float& out = a.o(b, i, h, d);
    out = static_cast<float>(act.beta * os[d] + double(out) * others);
  }
}

}  // namespace detail

namespace detail {

// forward_act below, K/V as one view each or (segmented; k and v then stand-ins of the right
// shape) as segments[0, count).
inline Status forward_act_impl(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
                               const TensorView<const float>& v, bool segmented, const KvSegment* segments,
                               index_t count, const TensorView<float>& o, const Options& opt, const ActCalibration& act,
                               const Executor& ex) {
  std::vector<index_t> starts;
  if (segmented) {
    starts.resize(static_cast<std::size_t>(std::max<index_t>(count, 0) + 1));
    SINKATTN_TRY(check_segments(p, segments, count, true, starts.data(), [&](const char* name, const auto& view) {
      return check_no_alias("o", o, name, view);
    }));
  }
  SINKATTN_TRY(validate(p, q, k, v, o, opt));
  SINKATTN_TRY(check_act(p, act));
  if (!std::holds_alternative<Softmax>(opt.norm) && !std::holds_alternative<SinkSoftmax>(opt.norm))
    return fail(Errc::unsupported,
                "norm: forward_act supports Softmax and SinkSoftmax (reference::attention_act has all)");
  if (opt.lse.data != nullptr || !opt.lse.empty())
    return fail(Errc::unsupported, "lse: forward_act does not return an LSE (ACT changes the weights, not it)");

  // Step 1: S's keys hidden by a -inf bias. Without a bias of the caller's, one row of Skv
  // values broadcast over batch, heads and rows (zero strides); with one, its values plus the
  // hidden keys' -inf, stored over the dimensions the caller's bias varies along (its zero
  // strides stay broadcasts: a key-padding mask [B, 1, 1, Skv] costs B x Skv floats, a full
  // bias a copy of its size).
  const index_t B = p.batch, Hq = p.heads_q, Sq = p.seq_q, Skv = p.seq_kv;
  const TensorView<const float>& user = opt.score.bias;
  const bool has_bias = user.data != nullptr && !user.empty();
  index_t ext[3] = {1, 1, 1};  // the caller's bias's varying extents over (b, h, i)
  if (has_bias)
    for (int d = 0; d < 3; ++d) ext[d] = user.stride[d] == 0 ? 1 : user.shape[d];
  const auto bias_floats = static_cast<std::size_t>(ext[0] * ext[1] * ext[2] * Skv);
  const FloatBuffer step1_bias(alloc_floats(bias_floats));
  if (step1_bias == nullptr) return no_memory_status(bias_floats, "forward_act (the step-1 bias)");
  for (index_t b = 0; b < ext[0]; ++b)
    for (index_t h = 0; h < ext[1]; ++h)
      for (index_t i = 0; i < ext[2]; ++i) {
        float* row = step1_bias.get() + ((b * ext[1] + h) * ext[2] + i) * Skv;
        if (has_bias)
          for (index_t j = 0; j < Skv; ++j) row[j] = user(b, h, i, j);
        else
          std::fill(row, row + Skv, 0.f);
        for (index_t s = 0; s < act.count; ++s) row[act.keys[s]] = -std::numeric_limits<float>::infinity();
      }
  const auto stride_of = [&](int d, index_t st) { return ext[d] == 1 ? index_t{0} : st; };
  const auto lse_floats = static_cast<std::size_t>(B * Hq * Sq);
  const FloatBuffer lse(alloc_floats(lse_floats));
  if (lse == nullptr) return no_memory_status(lse_floats, "forward_act (the step-1 LSE)");
  Options hidden = opt;
  hidden.norm = Softmax{};
  hidden.gate = NoGate{};
  hidden.lse = TensorView<float>::lse(lse.get(), B, Hq, Sq);
  hidden.score.bias =
      TensorView<const float>(step1_bias.get(), {B, Hq, Sq, Skv},
                              {stride_of(0, ext[1] * ext[2] * Skv), stride_of(1, ext[2] * Skv), stride_of(2, Skv), 1});
  SINKATTN_TRY(segmented ? forward(p, q, segments, count, o, hidden, ex) : forward(p, q, k, v, o, hidden, ex));
  if (B == 0 || Hq == 0 || Sq == 0) return {};

  KernelArgs a = make_args(p, q, k, v, o, opt);
  if (count > 0) {
    a.seg = segments;
    a.seg_start = starts.data();
    a.nseg = count;
  }
  const auto* gate = std::get_if<SigmoidGate>(&opt.gate);
  return with_mask_policy(a, opt, [&](const KernelArgs&, const auto& mask_all) -> Status {
    ex.run(B * Hq, [&](index_t task) {
      const index_t b = task / Hq, h = task % Hq;
      decltype(auto) mask = policy::bind(mask_all, b, h);
      std::vector<double> os(static_cast<std::size_t>(p.dim_v + act.count));  // act_row's scratch
      // RoPE: the sink keys rotated once per task, each query row (twice with capped sinks).
      std::vector<float> rot(static_cast<std::size_t>(a.rope ? (act.count + 2) * p.dim_qk : 0));
      float* const q_rot = rot.data() + act.count * p.dim_qk;  // (with RoPE only)
      float* const q_sink = q_rot + p.dim_qk;
      ActRope rope;
      if (a.rope) {
        const index_t g = p.kv_head(h);
        for (index_t s = 0; s < act.count; ++s) {
          const KernelArgs::KvPiece pc = a.piece(act.keys[s]);
          rope_row(rot.data() + s * p.dim_qk, pc.k->ptr(b, act.keys[s] - pc.base, g), pc.k->stride[3], p.dim_qk,
                   a.rope->config(), a.rope->row(act.keys[s]));
        }
        rope = {rot.data(), q_rot, q_sink};
      }
      for (index_t i = 0; i < Sq; ++i) {
        if (a.rope) {
          const index_t pos = a.rope_q0 + i;
          const float* qi = a.q.ptr(b, i, h);
          rope_row(q_rot, qi, a.q.stride[3], p.dim_qk, a.rope->config(), a.rope->row(pos));
          if (a.rope_two_queries())
            rope_row(q_sink, qi, a.q.stride[3], p.dim_qk, a.rope->config(),
                     a.rope->row(std::min(pos, a.rope_sink_qmax)));
        }
        act_row(a, mask, act, b, h, i, double(lse.get()[(b * Hq + h) * Sq + i]), os.data(), rope);
        if (gate == nullptr) continue;
        const bool headwise = gate->g.shape[3] == 1;
        for (index_t d = 0; d < p.dim_v; ++d) {
          const double x = gate->g(b, i, h, headwise ? 0 : d);
          o(b, i, h, d) = static_cast<float>(double(o(b, i, h, d)) / (1.0 + std::exp(-x)));
        }
      }
    });
    return {};
  });
}

}  // namespace detail

// o (logical [B, Sq, Hq, Dv]) = attention under `opt` with ACT calibration `act`. Validates
// everything forward() does, and act (detail::check_act).
inline Status forward_act(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
                          const TensorView<const float>& v, const TensorView<float>& o, const Options& opt,
                          const ActCalibration& act, const Executor& ex = Executor::serial()) {
  return detail::forward_act_impl(p, q, k, v, false, nullptr, 0, o, opt, act, ex);
}

// The same with K/V as segments read in place (core/kv_segments.hpp: a streaming cache's
// pieces), p.seq_kv keys in all; act.keys index the keys concatenated.
inline Status forward_act(const Problem& p, const TensorView<const float>& q, const KvSegment* segments, index_t count,
                          const TensorView<float>& o, const Options& opt, const ActCalibration& act,
                          const Executor& ex = Executor::serial()) {
  return detail::forward_act_impl(p, q, detail::stand_in_keys(p, p.dim_qk), detail::stand_in_keys(p, p.dim_v), true,
                                  segments, count, o, opt, act, ex);
}

}  // namespace sinkattn
