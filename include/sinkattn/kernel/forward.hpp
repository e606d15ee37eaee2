#pragma once
// The entry points of the fast path.
//
//   sinkattn::forward(problem, q, k, v, o, options, executor)
//       runtime options (what engines hold) -> the compiled policy combination, chosen once
//       per call (FlashAttention's BOOL_SWITCH); a combination the fast path does not have
//       yet is a clear Errc::unsupported, never a silent fallback.
//   sinkattn::forward<Variant<...>>(problem, q, k, v, o, mask, options, executor)
//       one specialisation only, for those who want exactly one instantiation.

#include <cmath>
#include <type_traits>
#include <variant>

#include "sinkattn/core/executor.hpp"
#include "sinkattn/core/helpers.hpp"
#include "sinkattn/core/options.hpp"
#include "sinkattn/core/status.hpp"
#include "sinkattn/core/validate.hpp"
#include "sinkattn/kernel/args.hpp"
#include "sinkattn/kernel/config.hpp"
#include "sinkattn/kernel/decode.hpp"
#include "sinkattn/kernel/prefill.hpp"
#include "sinkattn/policy/gate.hpp"
#include "sinkattn/policy/mask.hpp"
#include "sinkattn/policy/mask_block.hpp"
#include "sinkattn/policy/mask_block_sparse.hpp"
#include "sinkattn/policy/mask_neighborhood.hpp"
#include "sinkattn/policy/mask_window.hpp"
#include "sinkattn/policy/normalize.hpp"
#include "sinkattn/policy/score.hpp"
#include "sinkattn/policy/sink.hpp"

namespace sinkattn {
namespace detail {

inline KernelArgs make_args(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
                            const TensorView<const float>& v, const TensorView<float>& o, const Options& opt) {
  KernelArgs a;
  a.p = p;
  a.q = q;
  a.k = k;
  a.v = v;
  a.o = o;
  a.lse = opt.lse;
  a.scale = opt.score.scale ? *opt.score.scale : (p.dim_qk > 0 ? 1.f / std::sqrt(static_cast<float>(p.dim_qk)) : 1.f);
  a.softcap = opt.score.softcap;
  a.bias = opt.score.bias;
  a.alibi_slopes = opt.score.alibi_slopes;
  if (const auto* s = std::get_if<SinkSoftmax>(&opt.norm)) a.sink_logits = s->sinks;
  if (const auto* n = std::get_if<Sigmoid>(&opt.norm)) a.sigmoid = *n;
  if (const auto* n = std::get_if<Softpick>(&opt.norm)) a.softpick = *n;
  if (const auto* n = std::get_if<ScalableSoftmax>(&opt.norm)) a.ssmax = *n;
  if (const auto* n = std::get_if<AffineScaled>(&opt.norm)) a.affine = *n;
  if (const auto* g = std::get_if<SigmoidGate>(&opt.gate)) a.gate = g->g;
  return a;
}

// Runs one specialisation over the whole problem; arguments already validated.
template <class V>
void run(const KernelArgs& a, const typename V::Mask& mask, const Executor& ex) {
  const Problem& p = a.p;
  if (p.batch == 0 || p.heads_q == 0 || p.seq_q == 0) return;
  // Split-KV decode runs the rows of several heads together under one mask; head-dependent
  // masks (block-sparse lists) take the prefill loop, which binds the mask per (b, h).
  if constexpr (!policy::kHeadDependent<typename V::Mask>) {
    if (use_decode(p)) {
      run_decode<V>(a, mask, ex);
      return;
    }
  }
  const index_t nqb = (p.seq_q + kBlockQ - 1) / kBlockQ;
  // Task order (b, h, query block): consecutive tasks share K/V of one head in cache. Within
  // a head the last query blocks go first: under causal masks they are the longest, and a
  // dynamic schedule that ends on short tasks keeps both threads busy to the end. Each task
  // owns its output rows, so the result does not depend on the thread count.
  ex.run(p.batch * p.heads_q * nqb, [&](index_t t) {
    const index_t qb = nqb - 1 - t % nqb;
    const index_t h = (t / nqb) % p.heads_q;
    const index_t b = t / (nqb * p.heads_q);
    prefill_task<V>(a, mask, b, h, qb, thread_workspace());
  });
}

// Runtime options -> one specialisation per (mask, normalization). The score modifiers
// (softcap, bias, ALiBi: policy::RuntimeScore, a branch per tile), the sink of SinkSoftmax and
// the output gate (policy::OptionalSigmoidGate, a branch per output row) are runtime branches
// whose cost is nil, so the fused loop is compiled 6 masks x 6 normalizations times, not 6 x
// 6 x 8 x 2 (FlashAttention's BOOL_SWITCH, applied only where a branch would cost).
template <class Mask>
Status dispatch_norm(const KernelArgs& a, const Options& opt, const Mask& mask, const Executor& ex) {
  using S = policy::RuntimeScore;
  using G = policy::OptionalSigmoidGate;
  return std::visit(
      [&](const auto& n) -> Status {
        using N = std::decay_t<decltype(n)>;
        if constexpr (std::is_same_v<N, Softmax>)
          run<Variant<S, Mask, policy::OnlineSoftmax, policy::NoSink, G>>(a, mask, ex);
        else if constexpr (std::is_same_v<N, SinkSoftmax>)
          run<Variant<S, Mask, policy::OnlineSoftmax, policy::LearnedSinkLogit, G>>(a, mask, ex);
        else if constexpr (std::is_same_v<N, Sigmoid>)
          run<Variant<S, Mask, policy::SigmoidNorm, policy::NoSink, G>>(a, mask, ex);
        else if constexpr (std::is_same_v<N, Softpick>)
          run<Variant<S, Mask, policy::SoftpickNorm, policy::NoSink, G>>(a, mask, ex);
        else if constexpr (std::is_same_v<N, ScalableSoftmax>)
          run<Variant<S, Mask, policy::ScalableSoftmaxNorm, policy::NoSink, G>>(a, mask, ex);
        else if constexpr (std::is_same_v<N, AffineScaled>)
          run<Variant<S, Mask, policy::AffineScaledNorm, policy::NoSink, G>>(a, mask, ex);
        else
          return Status(Errc::unsupported, "norm: this normalization is not in the fast path yet (use the reference)");
        return {};
      },
      opt.norm);
}

}  // namespace detail

namespace detail {

// Runtime mask -> its policy, then the normalization switch (dispatch_norm).
inline Status dispatch_mask(const KernelArgs& a, const Options& opt, const Executor& ex) {
  if (std::holds_alternative<FullMask>(opt.mask))
    return detail::dispatch_norm(a, opt, policy::FullMaskPolicy{a.p.seq_kv}, ex);
  if (const auto* c = std::get_if<CausalMask>(&opt.mask))
    return detail::dispatch_norm(a, opt, policy::CausalMaskPolicy{a.p.seq_kv, a.p.seq_kv - a.p.seq_q + c->offset}, ex);
  if (const auto* w = std::get_if<SlidingWindowMask>(&opt.mask))
    return detail::dispatch_norm(
        a, opt,
        policy::SlidingWindowMaskPolicy{a.p.seq_kv, a.p.seq_kv - a.p.seq_q + w->offset, w->left, w->right, w->sink_tokens},
        ex);
  if (const auto* m = std::get_if<BlockMask>(&opt.mask))
    return detail::dispatch_norm(
        a, opt,
        policy::BlockMaskPolicy{a.p.seq_kv, a.p.seq_kv - a.p.seq_q + m->offset, m->boundaries.empty() ? m->block_size : 0,
                                m->boundaries.data(), static_cast<index_t>(m->boundaries.size()), m->global_keys,
                                m->last_block_attends_all, m->causal},
        ex);
  if (const auto* m = std::get_if<BlockSparseMask>(&opt.mask))
    return detail::dispatch_norm(
        a, opt,
        policy::BlockSparseMaskPolicy{a.p.seq_q, a.p.seq_kv, a.p.heads_q, m->q_block, m->kv_block, m->offsets, m->indices,
                                      m->element_mask ? &m->element_mask : nullptr},
        ex);
  if (const auto* m = std::get_if<NeighborhoodMask>(&opt.mask))
    return detail::dispatch_norm(
        a, opt, policy::NeighborhoodMaskPolicy{m->rank, m->extent, m->kernel, m->dilation, m->stride, m->causal}, ex);
  return Status(Errc::unsupported, "mask: this mask is not in the fast path yet (use the reference)");
}

}  // namespace detail

// Runtime-option entry point: validates once, picks the specialisation, runs it.
inline Status forward(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
                      const TensorView<const float>& v, const TensorView<float>& o, const Options& opt = {},
                      const Executor& ex = Executor::serial()) {
  SINKATTN_TRY(validate(p, q, k, v, o, opt));
  return detail::dispatch_mask(detail::make_args(p, q, k, v, o, opt), opt, ex);
}

// Compile-time entry point: exactly one specialisation. `opt` supplies the data the policies
// read (scale, softcap, bias, slopes, sinks, lse) and must agree with V.
template <class V>
Status forward(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
               const TensorView<const float>& v, const TensorView<float>& o, const typename V::Mask& mask,
               const Options& opt = {}, const Executor& ex = Executor::serial()) {
  SINKATTN_TRY(validate(p, q, k, v, o, opt));
  detail::run<V>(detail::make_args(p, q, k, v, o, opt), mask, ex);
  return {};
}

}  // namespace sinkattn
