#pragma once
// The entry points of the fast path.
//
//   sinkattn::forward(problem, q, k, v, o, options, executor)
//       runtime options (what engines hold) -> the compiled policy combination, chosen once
//       per call (FlashAttention's BOOL_SWITCH); a combination the fast path does not have
//       yet is a clear Errc::unsupported, never a silent fallback.
//   sinkattn::forward<Variant<...>>(problem, q, k, v, o, mask, options, executor)
//       one specialisation only, for those who want exactly one instantiation.

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "sinkattn/core/executor.hpp"
#include "sinkattn/core/helpers.hpp"
#include "sinkattn/core/kv_segments.hpp"
#include "sinkattn/core/options.hpp"
#include "sinkattn/core/status.hpp"
#include "sinkattn/core/validate.hpp"
#include "sinkattn/kernel/args.hpp"
#include "sinkattn/kernel/config.hpp"
#include "sinkattn/kernel/decode.hpp"
#include "sinkattn/kernel/packed_kv.hpp"
#include "sinkattn/kernel/permute.hpp"
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
  a.stream_o = output_streams(p, o, opt.output_stores);
  a.prefetch_rows = prefetch_pays(p);
  a.o_prefetch_one_block = o_prefetch_one_block();
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
  if (opt.rope.table) {
    a.rope = opt.rope.table;
    a.rope_q0 = opt.rope.query_position < 0 ? p.seq_kv - p.seq_q : opt.rope.query_position;
    a.rope_sink_keys = opt.rope.sink_keys;
    a.rope_sink_qmax = opt.rope.sink_query_max < 0 ? a.rope_q0 + p.seq_q : opt.rope.sink_query_max;
  }
  return a;
}

// Runs the prefill tasks [t0, t1) of one specialisation (nqb query tiles per head).
template <class V>
void run_tasks(const KernelArgs& a, const typename V::Mask& mask, const Executor& ex, index_t nqb, index_t t0,
               index_t t1) {
  const Problem& p = a.p;
  // Task order (b, h, query block): consecutive tasks share K/V of one head in cache. Within
  // a head the last query blocks go first: under causal masks they are the longest, and a
  // dynamic schedule that ends on short tasks keeps both threads busy to the end. Each task
  // owns its output rows, so the result does not depend on the thread count.
  // a.heads_inner (short tiles: small blocks, neighborhood tiles; heads_inner_fits in
  // kernel/config.hpp) takes (b, query block, h) instead: in token-major layouts the heads of
  // a token share one row of Q and of O, so the heads of a tile run back to back while the
  // rows are in cache (their K/V blocks fit in L2 together).
  // a.tiles_ascending (permuted neighborhood tiles, whose tasks are of even length) takes the
  // query blocks in ascending order instead: their keys, gathered in the plan's key order, then
  // stream upwards through the hardware prefetchers from tile to tile (bench/RESULTS.md run AA).
  // Each task prefetches the rows of the task its thread likely runs next: t + 1 on one
  // thread, t + threads under a dynamic schedule handing out tasks in order (a guess: a wrong
  // one costs some L3 traffic, never a wrong result).
  // (A task past t1 is none: with K/V packed chunk by chunk, its rows are not there yet.)
  const bool hi = a.heads_inner;
  const index_t ahead = std::max(1, ex.concurrency());
  const auto task = [&](index_t t) {
    PrefillTask k;
    if (t >= t1) return k;
    k.h = hi ? t % p.heads_q : (t / nqb) % p.heads_q;
    k.qb = hi ? t / p.heads_q % nqb : t % nqb;
    if (!a.tiles_ascending) k.qb = nqb - 1 - k.qb;
    k.b = t / (nqb * p.heads_q);
    return k;
  };
  ex.run(t1 - t0, [&](index_t i) {
    const PrefillTask k = task(t0 + i);
    prefill_task<V>(a, mask, k.b, k.h, k.qb, thread_workspace(), task(t0 + i + ahead));
  });
}

// run() below, with a.no_memory set.
template <class V>
void run_loops(const KernelArgs& a, const typename V::Mask& mask, const Executor& ex) {
  const Problem& p = a.p;
  if (p.batch == 0 || p.heads_q == 0 || p.seq_q == 0) return;
  // Split-KV decode runs the rows of several heads together under one mask; head-dependent
  // masks (block-sparse lists) take the prefill loop, which binds the mask per (b, h).
  if constexpr (!policy::kHeadDependent<typename V::Mask>) {
    if (use_decode(p) && a.q_rows == nullptr) {  // (the decode loop has no query slot map)
      run_decode<V>(a, mask, ex);
      return;
    }
  }
  const index_t nqb = (p.seq_q + kBlockQ - 1) / kBlockQ;
  // Where tiles copy V blocks and revisit them (block-aligned masks, head after head), each
  // thread keeps its last panels for the next tiles (kernel/v_panels.hpp).
  KernelArgs av = a;
  if (keep_v_panels && !a.heads_inner && copies_v_rows(a) && kv_visits(a, mask, nqb, -1).revisited)
    av.v_panels = next_v_panel_generation();
  const auto tasks = [&](const KernelArgs& ak, index_t t0, index_t t1) { run_tasks<V>(ak, mask, ex, nqb, t0, t1); };
  // Keys visited twice on average: rotate them (RoPE on load) once, not per visit, and where
  // a tile's keys stream from beyond L2 or each key is read by many tiles, copy strided rows
  // contiguous (kernel/packed_kv.hpp).
  // Neighborhood calls on query slots (kernel/permute.hpp) have chosen their K/V rows already:
  // gathered where tiles share keys, in place where each key serves one tile.
  const index_t wide = wide_tile_keys(a);
  const PackWhat rotate = pack_what(a, false), all = pack_what(a, pack_strided_kv && !a.q_rows);
  if (all.any()) {
    const bool strided = all.k != rotate.k || all.v != rotate.v;  // whether width and reuse matter
    const KvVisits vis = kv_visits(a, mask, nqb, strided ? wide : -1);
    const PackWhat what = vis.pack_strided() ? all : rotate;
    if (vis.revisited && what.any()) {
      if (run_with_packed_kv(av, nqb, packed_kv_plan(a, what, nqb, ex.concurrency()), ex, tasks)) return;
      // No room for K and V (a KV-head chunk would starve the executor, or no memory): K
      // alone needs about half of it and still rotates each key once (RoPE on load) or reads
      // it contiguous; V is then read in place.
      if (what.k && what.v &&
          run_with_packed_kv(av, nqb, packed_kv_plan(a, PackWhat{true, false}, nqb, ex.concurrency()), ex, tasks))
        return;
    }
  }
  tasks(av, 0, p.batch * p.heads_q * nqb);
}

// Runs one specialisation over the whole problem; arguments already validated. Fails only
// for want of scratch memory (Errc::out_of_memory, the output then unspecified).
template <class V>
Status run(const KernelArgs& a, const typename V::Mask& mask, const Executor& ex) {
  NoMemory no_memory;
  KernelArgs am = a;
  am.no_memory = &no_memory;
  run_loops<V>(am, mask, ex);
  return no_memory.status();
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
          return run<Variant<S, Mask, policy::OnlineSoftmax, policy::NoSink, G>>(a, mask, ex);
        else if constexpr (std::is_same_v<N, SinkSoftmax>)
          return run<Variant<S, Mask, policy::OnlineSoftmax, policy::LearnedSinkLogit, G>>(a, mask, ex);
        else if constexpr (std::is_same_v<N, Sigmoid>)
          return run<Variant<S, Mask, policy::SigmoidNorm, policy::NoSink, G>>(a, mask, ex);
        else if constexpr (std::is_same_v<N, Softpick>)
          return run<Variant<S, Mask, policy::SoftpickNorm, policy::NoSink, G>>(a, mask, ex);
        else if constexpr (std::is_same_v<N, ScalableSoftmax>)
          return run<Variant<S, Mask, policy::ScalableSoftmaxNorm, policy::NoSink, G>>(a, mask, ex);
        else if constexpr (std::is_same_v<N, AffineScaled>)
          return run<Variant<S, Mask, policy::AffineScaledNorm, policy::NoSink, G>>(a, mask, ex);
        else
          return Status(Errc::unsupported, "norm: this normalization is not in the fast path yet (use the reference)");
      },
      opt.norm);
}

}  // namespace detail

namespace detail {

// Block attention's task order: heads innermost when a query tile's keys (its block, two
// blocks when tiles may straddle a boundary, plus the global keys) fit (heads_inner_fits).
// Not with last_block_attends_all: that block's tiles visit every key.
inline bool block_heads_inner(const BlockMask& m, const Problem& p) {
  if (m.last_block_attends_all) return false;
  index_t longest = m.block_size;
  if (m.block_size <= 0) {  // ragged: the longest block
    longest = 0;
    for (std::size_t i = 0; i < m.boundaries.size(); ++i) {
      const index_t end = i + 1 < m.boundaries.size() ? m.boundaries[i + 1] : p.seq_kv;
      longest = std::max(longest, end - m.boundaries[i]);
    }
  }
  const bool aligned =
      m.block_size > 0 && m.block_size % kBlockQ == 0 && (p.seq_kv - p.seq_q + m.offset) % kBlockQ == 0;
  const index_t keys = std::min(p.seq_kv, (aligned ? 1 : 2) * longest + m.global_keys);
  return heads_inner_fits(static_cast<double>(keys), p);
}

// The flat neighborhood tiles' task order: heads innermost when the widest key range of a
// query tile (its windows' span plus the extra keys; 1-D or a row-major span) fits, as for
// block attention (a 1-D blocked neighborhood is block attention).
inline bool flat_neighborhood_heads_inner(const NeighborhoodMask& m, const Problem& p) {
  const policy::NeighborhoodMaskPolicy grid{m.rank, m.extent, m.kernel, m.dilation, m.stride, m.causal, 0};
  index_t keys = 0;
  for (index_t i0 = 0; i0 < p.seq_q; i0 += kBlockQ) {
    const index_t i1 = std::min(p.seq_q, i0 + kBlockQ);
    keys = std::max(keys, grid.kv_end(i0, i1) - grid.kv_begin(i0, i1));
  }
  return heads_inner_fits(static_cast<double>(keys + m.extra_keys), p);
}

// Runtime mask -> its flat policy (the mask over the caller's own token order), handed to
// f(args, policy) with the task order it suits (KernelArgs::heads_inner).
template <class F>
Status with_mask_policy(const KernelArgs& a, const Options& opt, F&& f) {
  if (std::holds_alternative<FullMask>(opt.mask)) return f(a, policy::FullMaskPolicy{a.p.seq_kv});
  if (const auto* c = std::get_if<CausalMask>(&opt.mask))
    return f(a, policy::CausalMaskPolicy{a.p.seq_kv, a.p.seq_kv - a.p.seq_q + c->offset});
  if (const auto* w = std::get_if<SlidingWindowMask>(&opt.mask))
    return f(a, policy::SlidingWindowMaskPolicy{a.p.seq_kv, a.p.seq_kv - a.p.seq_q + w->offset, w->left, w->right,
                                                w->sink_tokens});
  if (const auto* m = std::get_if<BlockMask>(&opt.mask)) {
    KernelArgs ab = a;
    ab.heads_inner = block_heads_inner(*m, a.p);
    return f(ab, policy::BlockMaskPolicy{a.p.seq_kv, a.p.seq_kv - a.p.seq_q + m->offset,
                                         m->boundaries.empty() ? m->block_size : 0, m->boundaries.data(),
                                         static_cast<index_t>(m->boundaries.size()), m->global_keys,
                                         m->last_block_attends_all, m->causal});
  }
  if (const auto* m = std::get_if<BlockSparseMask>(&opt.mask))
    return f(a, policy::BlockSparseMaskPolicy{a.p.seq_q, a.p.seq_kv, a.p.heads_q, m->q_block, m->kv_block, m->offsets,
                                              m->indices, m->element_mask ? &m->element_mask : nullptr});
  if (const auto* m = std::get_if<NeighborhoodMask>(&opt.mask)) {
    KernelArgs an = a;
    an.heads_inner = flat_neighborhood_heads_inner(*m, a.p);
    return f(an, policy::NeighborhoodMaskPolicy{m->rank, m->extent, m->kernel, m->dilation, m->stride, m->causal,
                                                m->extra_keys});
  }
  return Status(Errc::unsupported, "mask: this mask is not in the fast path yet (use the reference)");
}

// Runtime mask -> its policy, then the normalization switch (dispatch_norm).
inline Status dispatch_mask(const KernelArgs& a, const Options& opt, const Executor& ex) {
  // 2-D/3-D (and dilated) neighborhood grids: multi-dimensional query tiles over permuted
  // tokens (kernel/permute.hpp); what that cannot take (see neighborhood_tiled_applies) keeps
  // the flat tiles, as does a call whose K/V copies find no memory.
  if (const auto* m = std::get_if<NeighborhoodMask>(&opt.mask))
    if (detail::neighborhood_tiled_applies(a, *m, opt)) {
      Status s;
      if (detail::forward_neighborhood_tiled(
              a, *m, ex,
              [&](const detail::KernelArgs& pa, const auto& pm) { return detail::dispatch_norm(pa, opt, pm, ex); }, s))
        return s;
    }
  return with_mask_policy(a, opt, [&](const KernelArgs& pa, const auto& pm) { return dispatch_norm(pa, opt, pm, ex); });
}

}  // namespace detail

// Runtime-option entry point: validates once, picks the specialisation, runs it.
inline Status forward(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
                      const TensorView<const float>& v, const TensorView<float>& o, const Options& opt = {},
                      const Executor& ex = Executor::serial()) {
  SINKATTN_TRY(validate(p, q, k, v, o, opt));
  return detail::dispatch_mask(detail::make_args(p, q, k, v, o, opt), opt, ex);
}

// Keys and values as a list of segments read in place (core/kv_segments.hpp): a KV cache's
// pieces, a chunk appended to a cache, pages. p.seq_kv must equal the segments' total rows.
inline Status forward(const Problem& p, const TensorView<const float>& q, const KvSegment* segments, index_t count,
                      const TensorView<float>& o, const Options& opt = {}, const Executor& ex = Executor::serial()) {
  constexpr index_t kInline = 16;  // no allocation for the usual few segments
  index_t starts_inline[kInline + 1];
  std::vector<index_t> starts_heap;
  index_t* starts = starts_inline;
  if (count > kInline) {
    starts_heap.resize(static_cast<std::size_t>(count + 1));
    starts = starts_heap.data();
  }
  SINKATTN_TRY(detail::check_segments(p, segments, count, true, starts, [&](const char* name, const auto& view) {
    SINKATTN_TRY(detail::check_no_alias("o", o, name, view));
    if (opt.lse.data) SINKATTN_TRY(detail::check_no_alias("lse", opt.lse, name, view));
    return Status{};
  }));
  // The rest of validate() on stand-in K/V views, since the segments were checked above.
  const auto k_all = detail::stand_in_keys(p, p.dim_qk), v_all = detail::stand_in_keys(p, p.dim_v);
  SINKATTN_TRY(validate(p, q, k_all, v_all, o, opt));
  detail::KernelArgs a = detail::make_args(p, q, k_all, v_all, o, opt);
  if (count == 0) {
    a.nseg = 0;  // seq_kv == 0: no key is ever read
  } else {
    a.seg = segments;
    a.seg_start = starts;
    a.nseg = count;
  }
  return detail::dispatch_mask(a, opt, ex);
}

// Compile-time entry point: exactly one specialisation. `opt` supplies the data the policies
// read (scale, softcap, bias, slopes, sinks, lse) and must agree with V.
template <class V>
Status forward(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
               const TensorView<const float>& v, const TensorView<float>& o, const typename V::Mask& mask,
               const Options& opt = {}, const Executor& ex = Executor::serial()) {
  SINKATTN_TRY(validate(p, q, k, v, o, opt));
  return detail::run<V>(detail::make_args(p, q, k, v, o, opt), mask, ex);
}

}  // namespace sinkattn

// SINKATTN_EXTERN_KERNELS: the specialisations above are compiled elsewhere (kernel/instantiate.hpp).
#include "sinkattn/kernel/instantiate.hpp"
