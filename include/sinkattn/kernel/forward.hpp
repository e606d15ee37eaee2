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
#include "sinkattn/core/options.hpp"
#include "sinkattn/core/status.hpp"
#include "sinkattn/core/validate.hpp"
#include "sinkattn/kernel/args.hpp"
#include "sinkattn/kernel/config.hpp"
#include "sinkattn/kernel/decode.hpp"
#include "sinkattn/kernel/prefill.hpp"
#include "sinkattn/policy/gate.hpp"
#include "sinkattn/policy/mask.hpp"
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
  if (const auto* g = std::get_if<SigmoidGate>(&opt.gate)) a.gate = g->g;
  return a;
}

// Runs one specialisation over the whole problem; arguments already validated.
template <class V>
void run(const KernelArgs& a, const typename V::Mask& mask, const Executor& ex) {
  const Problem& p = a.p;
  if (p.batch == 0 || p.heads_q == 0 || p.seq_q == 0) return;
  if (use_decode(p)) {
    run_decode<V>(a, mask, ex);
    return;
  }
  const index_t nqb = (p.seq_q + kBlockQ - 1) / kBlockQ;
  // Task order (b, h, query block): consecutive tasks share K/V of one head in cache. Each
  // task owns its output rows, so the result does not depend on the thread count.
  ex.run(p.batch * p.heads_q * nqb, [&](index_t t) {
    const index_t qb = t % nqb;
    const index_t h = (t / nqb) % p.heads_q;
    const index_t b = t / (nqb * p.heads_q);
    prefill_task<V>(a, mask, b, h, qb, thread_workspace());
  });
}

template <class Mask, class Norm, class Sink, class Gate>
Status dispatch_score(const KernelArgs& a, const Mask& mask, const Executor& ex) {
  const bool cap = a.softcap > 0.f, bias = a.bias.data != nullptr && !a.bias.empty(), alibi = a.alibi_slopes != nullptr;
  auto go = [&](auto c, auto b, auto l) {
    using S = policy::Score<decltype(c)::value, decltype(b)::value, decltype(l)::value>;
    run<Variant<S, Mask, Norm, Sink, Gate>>(a, mask, ex);
  };
  using T = std::true_type;
  using F = std::false_type;
  if (cap) {
    if (bias)
      alibi ? go(T{}, T{}, T{}) : go(T{}, T{}, F{});
    else
      alibi ? go(T{}, F{}, T{}) : go(T{}, F{}, F{});
  } else {
    if (bias)
      alibi ? go(F{}, T{}, T{}) : go(F{}, T{}, F{});
    else
      alibi ? go(F{}, F{}, T{}) : go(F{}, F{}, F{});
  }
  return {};
}

template <class Mask>
Status dispatch_norm(const KernelArgs& a, const Options& opt, const Mask& mask, const Executor& ex) {
  if (!std::holds_alternative<NoGate>(opt.gate))
    return Status(Errc::unsupported, "gate: the sigmoid output gate is not in the fast path yet (use the reference)");
  if (std::holds_alternative<Softmax>(opt.norm))
    return dispatch_score<Mask, policy::OnlineSoftmax, policy::NoSink, policy::NoGate>(a, mask, ex);
  if (std::holds_alternative<SinkSoftmax>(opt.norm))
    return dispatch_score<Mask, policy::OnlineSoftmax, policy::LearnedSinkLogit, policy::NoGate>(a, mask, ex);
  return Status(Errc::unsupported, "norm: this normalization is not in the fast path yet (use the reference)");
}

}  // namespace detail

// Runtime-option entry point: validates once, picks the specialisation, runs it.
inline Status forward(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
                      const TensorView<const float>& v, const TensorView<float>& o, const Options& opt = {},
                      const Executor& ex = Executor::serial()) {
  SINKATTN_TRY(validate(p, q, k, v, o, opt));
  const detail::KernelArgs a = detail::make_args(p, q, k, v, o, opt);
  if (std::holds_alternative<FullMask>(opt.mask))
    return detail::dispatch_norm(a, opt, policy::FullMaskPolicy{p.seq_kv}, ex);
  if (const auto* c = std::get_if<CausalMask>(&opt.mask))
    return detail::dispatch_norm(a, opt, policy::CausalMaskPolicy{p.seq_kv, p.seq_kv - p.seq_q + c->offset}, ex);
  return Status(Errc::unsupported, "mask: this mask is not in the fast path yet (use the reference)");
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
