#pragma once
// Neighborhood attention on multi-dimensional tiles (issue 6): forward() with a
// NeighborhoodMask of rank >= 2 (or with dilation) runs here, the NATTEN way:
//
//   1. gather   Q -> Qp [B, Hq, Nq, Dqk] in the plan's query order (boxes of kBlockQ tokens,
//               padded: one query tile = one box), K, V -> Kp, Vp [B, Hkv, E + N, D]: the E
//               extra keys as they are, then the grid keys in the plan's key order (pencils
//               or boxes); the gate like Q; head-major, so the fused loop reads K and V rows
//               in place (contiguous, no V packing);
//   2. run      the fused kernel, unchanged (dispatch_norm -> run<V>), with
//               policy::NeighborhoodTiledMaskPolicy over the permuted indices;
//   3. scatter  Op -> O and LSEp -> LSE in the caller's views.
//
// Row-indexed inputs the fused loop reads by query or key index are a bias [B, Hq, Sq, Skv],
// ALiBi (|p_i - j|) and the affine-scaled alpha/beta [B, Sq, Hq, 1]; those calls keep the flat
// path (policy::NeighborhoodMaskPolicy), as do decode shapes (few query rows: the split-KV loop
// reads every key once anyway). Everything else composes: softcap, learned sinks, every other
// normalization (SSMax's N_i comes from the policy's count_visible), the gate, LSE, GQA.
//
// Workspace: one aligned thread_local buffer of the calling thread, grown on first use and
// reused (Q, K, V, O and gate copies: about 4 x tokens x heads x D floats); the copies run on
// the executor, one task per (batch, head). They cost a few percent of the attention itself
// (bench/RESULTS.md, "Neighborhood attention").

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <variant>

#include "sinkattn/core/executor.hpp"
#include "sinkattn/core/options.hpp"
#include "sinkattn/core/status.hpp"
#include "sinkattn/kernel/args.hpp"
#include "sinkattn/kernel/config.hpp"
#include "sinkattn/kernel/decode.hpp"
#include "sinkattn/kernel/workspace.hpp"
#include "sinkattn/policy/mask_neighborhood_tiled.hpp"

namespace sinkattn::detail {

namespace na_traits {  // inputs some builds have (RoPE on load, KV segments): detected, not assumed
template <class A, class = void>
struct has_rope : std::false_type {};
template <class A>
struct has_rope<A, std::void_t<decltype(std::declval<const A&>().rope)>> : std::true_type {};
template <class A, class = void>
struct has_segments : std::false_type {};
template <class A>
struct has_segments<A, std::void_t<decltype(std::declval<const A&>().nseg)>> : std::true_type {};
}  // namespace na_traits

// Whether forward() takes the permuted path for this call (see the header comment). Inputs
// indexed by query or key position keep the flat path: bias, ALiBi, affine alpha/beta, RoPE
// on load (rotates by position), K/V segments (not one view to gather from).
template <class Args>
bool neighborhood_tiled_applies(const Args& a, const NeighborhoodMask& m, const Options& opt) {
  if (use_decode(a.p)) return false;
  if (m.rank < 2 && m.dilation[0] == 1) return false;  // 1-D: the flat tiles already are boxes
  if (a.bias.data != nullptr && !a.bias.empty()) return false;
  if (a.alibi_slopes != nullptr) return false;
  if (std::holds_alternative<AffineScaled>(opt.norm)) return false;
  if constexpr (na_traits::has_rope<Args>::value)
    if (a.rope != nullptr) return false;
  if constexpr (na_traits::has_segments<Args>::value)
    if (a.nseg != 0) return false;
  return true;
}

// The permuted copies of one call, carved out of one buffer.
struct NaBuffers {
  float* q = nullptr;     // [B, Hq, Nq, Dqk]
  float* k = nullptr;     // [B, Hkv, Nk, Dqk]
  float* v = nullptr;     // [B, Hkv, Nk, Dv]
  float* o = nullptr;     // [B, Hq, Nq, Dv]
  float* gate = nullptr;  // [B, Hq, Nq, Dg] (Dg = Dv or 1), only with a gate
  float* lse = nullptr;   // [B, Hq, Nq], only when LSE is requested
};

inline Workspace& permute_workspace() {
  thread_local Workspace ws;
  return ws;
}

inline NaBuffers na_buffers(const KernelArgs& a, const NaPlan& pl, Workspace& ws) {
  const Problem& p = a.p;
  const index_t nq = pl.q.size(), nk = pl.extra + pl.k.size();
  const index_t dg = a.has_gate() ? a.gate.shape[3] : 0;
  auto pad = [](index_t n) { return (n + 15) / 16 * 16; };  // 64-byte aligned sub-buffers
  const index_t sq = pad(p.batch * p.heads_q * nq * p.dim_qk), sk = pad(p.batch * p.heads_kv * nk * p.dim_qk),
                sv = pad(p.batch * p.heads_kv * nk * p.dim_v), so = pad(p.batch * p.heads_q * nq * p.dim_v),
                sg = pad(p.batch * p.heads_q * nq * dg), sl = a.want_lse() ? pad(p.batch * p.heads_q * nq) : 0;
  float* base = ws.floats(static_cast<std::size_t>(sq + sk + sv + so + sg + sl));
  NaBuffers b;
  b.q = base;
  b.k = b.q + sq;
  b.v = b.k + sk;
  b.o = b.v + sv;
  b.gate = dg > 0 ? b.o + so : nullptr;
  b.lse = a.want_lse() ? b.o + so + sg : nullptr;
  return b;
}

inline void na_copy_row(float* dst, const float* src, index_t n, index_t stride) {
  if (stride == 1) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
  } else {
    for (index_t x = 0; x < n; ++x) dst[x] = src[x * stride];
  }
}

// Rows of view `v` (logical [B, S, H, D]) for (b, h) in the order `token` -> dst [slots, D]
// (slot s <- row first + token[s]); padding slots get zeros.
inline void na_gather(float* dst, const TensorView<const float>& v, index_t b, index_t h,
                      const std::vector<index_t>& token, index_t dim, index_t first = 0) {
  for (std::size_t s = 0; s < token.size(); ++s, dst += dim) {
    if (token[s] < 0)
      std::fill(dst, dst + dim, 0.f);
    else
      na_copy_row(dst, v.ptr(b, first + token[s], h), dim, v.stride[3]);
  }
}

// K or V of (b, g): the extra keys (rows [0, E)) in order, then the grid keys permuted.
inline void na_gather_keys(float* dst, const TensorView<const float>& v, index_t b, index_t g, const NaPlan& pl,
                           index_t dim) {
  for (index_t r = 0; r < pl.extra; ++r) na_copy_row(dst + r * dim, v.ptr(b, r, g), dim, v.stride[3]);
  na_gather(dst + pl.extra * dim, v, b, g, pl.k.token, dim, pl.extra);
}

// Step 1: Q, K, V (and the gate) into the buffers; one task per (batch, query head).
inline void na_gather_inputs(const KernelArgs& a, const NaPlan& pl, const NaBuffers& buf, const Executor& ex) {
  const Problem& p = a.p;
  const index_t nq = pl.q.size(), nk = pl.extra + pl.k.size(), group = p.group_size();
  const index_t dg = a.has_gate() ? a.gate.shape[3] : 0;
  ex.run(p.batch * p.heads_q, [&](index_t t) {
    const index_t b = t / p.heads_q, h = t % p.heads_q;
    na_gather(buf.q + t * nq * p.dim_qk, a.q, b, h, pl.q.token, p.dim_qk);
    if (dg > 0) na_gather(buf.gate + t * nq * dg, a.gate, b, h, pl.q.token, dg);
    if (h % group == 0) {  // the first query head of a KV head also copies K and V
      const index_t g = h / group, tk = b * p.heads_kv + g;
      na_gather_keys(buf.k + tk * nk * p.dim_qk, a.k, b, g, pl, p.dim_qk);
      na_gather_keys(buf.v + tk * nk * p.dim_v, a.v, b, g, pl, p.dim_v);
    }
  });
}

// Step 3: O (and LSE) back into the caller's views, padding slots dropped.
inline void na_scatter_outputs(const KernelArgs& a, const NaPlan& pl, const NaBuffers& buf, const Executor& ex) {
  const Problem& p = a.p;
  const index_t nq = pl.q.size();
  ex.run(p.batch * p.heads_q, [&](index_t t) {
    const index_t b = t / p.heads_q, h = t % p.heads_q;
    const float* src = buf.o + t * nq * p.dim_v;
    for (index_t s = 0; s < nq; ++s) {
      const index_t tok = pl.q.token[static_cast<std::size_t>(s)];
      if (tok < 0) continue;
      float* dst = a.o.ptr(b, tok, h);
      const float* row = src + s * p.dim_v;
      if (a.o.stride[3] == 1)
        std::memcpy(dst, row, static_cast<std::size_t>(p.dim_v) * sizeof(float));
      else
        for (index_t x = 0; x < p.dim_v; ++x) dst[x * a.o.stride[3]] = row[x];
      if (a.want_lse()) a.lse(b, h, tok, 0) = buf.lse[t * nq + s];
    }
  });
}

// The arguments of the permuted problem: Sq = Nq (padded), Skv = E + N, views on the buffers.
inline KernelArgs na_permuted_args(const KernelArgs& a, const NaPlan& pl, const NaBuffers& buf) {
  const Problem& p = a.p;
  const index_t nq = pl.q.size(), nk = pl.extra + pl.k.size();
  KernelArgs pa = a;
  pa.p.seq_q = nq;
  pa.p.seq_kv = nk;
  pa.q = TensorView<const float>::bhsd(buf.q, p.batch, nq, p.heads_q, p.dim_qk);
  pa.k = TensorView<const float>::bhsd(buf.k, p.batch, nk, p.heads_kv, p.dim_qk);
  pa.v = TensorView<const float>::bhsd(buf.v, p.batch, nk, p.heads_kv, p.dim_v);
  pa.o = TensorView<float>::bhsd(buf.o, p.batch, nq, p.heads_q, p.dim_v);
  if (a.has_gate()) pa.gate = TensorView<const float>::bhsd(buf.gate, p.batch, nq, p.heads_q, a.gate.shape[3]);
  pa.lse = a.want_lse() ? TensorView<float>::lse(buf.lse, p.batch, p.heads_q, nq) : TensorView<float>{};
  return pa;
}

// The whole permuted call. `dispatch(args, mask)` runs the fused kernel (forward.hpp passes
// dispatch_norm bound to the call's options and executor).
template <class Dispatch>
Status forward_neighborhood_tiled(const KernelArgs& a, const NeighborhoodMask& m, const Executor& ex,
                                  Dispatch&& dispatch) {
  NaPlan plan;
  na_build_plan(plan, m, kBlockQ, kBlockKV);
  const NaBuffers buf = na_buffers(a, plan, permute_workspace());
  na_gather_inputs(a, plan, buf, ex);
  const KernelArgs pa = na_permuted_args(a, plan, buf);
  const Status s = dispatch(pa, policy::NeighborhoodTiledMaskPolicy{&plan});
  if (!s.ok()) return s;
  na_scatter_outputs(a, plan, buf, ex);
  return {};
}

}  // namespace sinkattn::detail
