#pragma once
// Neighborhood attention on multi-dimensional tiles (issue 6): forward() with a
// NeighborhoodMask of rank >= 2 (or with dilation) runs here, the NATTEN way:
//
//   1. gather   K, V -> Kp, Vp [B, Hkv, E + N, D]: the E extra keys as they are, then the grid
//               keys in the plan's key order (pencils or boxes); head-major, so the fused loop
//               reads K and V rows in place (contiguous, no V packing). Skipped whenever the
//               loop can read the caller's rows through KernelArgs::kv_rows instead (unit
//               strides; on AVX2 only for keys that serve about one query tile:
//               na_keys_in_place);
//   2. run      the fused kernel, unchanged (dispatch_norm -> run<V>), with
//               policy::NeighborhoodTiledMaskPolicy over the permuted indices; the queries are
//               not copied: KernelArgs::q_rows maps each query slot (boxes of kBlockQ tokens,
//               padded: one query tile = one box) to its row, so a task gathers its Q rows into
//               its Q^T pack and writes O, LSE (and reads the gate) at the caller's rows.
//
// Row-indexed inputs the fused loop reads by query or key index are a bias [B, Hq, Sq, Skv],
// ALiBi (|p_i - j|) and the affine-scaled alpha/beta [B, Sq, Hq, 1]; those calls keep the flat
// path (policy::NeighborhoodMaskPolicy), as do decode shapes (few query rows: the split-KV loop
// reads every key once anyway). Everything else composes: softcap, learned sinks, every other
// normalization (SSMax's N_i comes from the policy's count_visible), the gate, LSE, GQA.
//
// Workspace: the K and V copies (B x (E + N) x Hkv x (Dqk + Dv) floats) go to an aligned
// thread_local buffer of the calling thread, grown on first use and kept for the next call (a
// model runs the same mask in every layer; a copy allocated per call page-faulted away the
// gain: 1.06x the time of reading in place for 64 MiB of copies, H32 D64 k13), or to memory of
// the call's own while an outer call on this thread holds that buffer (ScratchLease). Without
// memory (or beyond na_gather_limit) K/V are read in place where their rows allow it, else the
// call takes the flat tiles. The copies run on the executor, in chunks of rows (all heads of a
// token at once). Q, O, LSE and the gate went through copies too until the query map replaced
// them: half of the copy traffic (bench/RESULTS.md).

#include <algorithm>
#include <cstddef>
#include <memory>
#include <new>
#include <optional>
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
#include "sinkattn/tile/ops.hpp"

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
  float* k = nullptr;  // [B, Hkv, Nk, Dqk]
  float* v = nullptr;  // [B, Hkv, Nk, Dv]
};

// The calling thread's kept buffer for the K/V copies.
inline KeptWorkspace& na_kept() {
  thread_local KeptWorkspace k;
  return k;
}
inline Workspace& permute_workspace() { return na_kept().ws; }

// Floats of the copies (64-byte aligned sub-buffers), K's share in *k_floats.
inline index_t na_buffer_floats(const KernelArgs& a, const NaPlan& pl, index_t* k_floats = nullptr) {
  const Problem& p = a.p;
  const index_t nk = pl.extra + pl.k.size();
  auto pad = [](index_t n) { return (n + 15) / 16 * 16; };
  const index_t sk = pad(p.batch * p.heads_kv * nk * p.dim_qk), sv = pad(p.batch * p.heads_kv * nk * p.dim_v);
  if (k_floats != nullptr) *k_floats = sk;
  return sk + sv;
}

inline NaBuffers na_carve(const KernelArgs& a, const NaPlan& pl, float* base) {
  index_t sk = 0;
  na_buffer_floats(a, pl, &sk);
  return base == nullptr ? NaBuffers{} : NaBuffers{base, base + sk};
}

inline NaBuffers na_buffers(const KernelArgs& a, const NaPlan& pl, Workspace& ws) {
  return na_carve(a, pl, ws.try_floats(static_cast<std::size_t>(na_buffer_floats(a, pl))));  // (k null: no memory)
}

// Bytes of copies a call may hold (a memory-bound caller may lower it; tests set 0 to take
// the fallbacks).
inline std::size_t na_gather_limit = static_cast<std::size_t>(-1);

inline void na_copy_row(float* dst, const float* src, index_t n, index_t stride) {
  if (stride == 1) {
    tile::copy_row(dst, src, n);
  } else {
    for (index_t x = 0; x < n; ++x) dst[x] = src[x * stride];
  }
}

// Rows [s0, s1) of the permuted K or V (row E + s <- grid key slot s, rows < E the extra
// keys) for every KV head of batch b: dst + (b * Hkv + g) * (E + slots) * dim is head g's
// [E + slots, dim]. Padding slots get zeros. Token-outer: in token-major layouts (BSHD) the
// heads of a token share one contiguous row, read once in full instead of once per head at
// a stride (a third less time than the head-outer loop, bench/RESULTS.md).
inline void na_gather_rows(float* dst, const TensorView<const float>& v, index_t b, const NaPlan& pl, index_t dim,
                           index_t heads, index_t s0, index_t s1) {
  const index_t nk = pl.extra + pl.k.size();
  for (index_t s = s0; s < s1; ++s) {
    const index_t tok = s < pl.extra ? s : pl.k.token[static_cast<std::size_t>(s - pl.extra)];
    const index_t row = s < pl.extra ? s : pl.extra + tok;
    for (index_t g = 0; g < heads; ++g) {
      float* d = dst + ((b * heads + g) * nk + s) * dim;
      if (tok < 0)
        std::fill(d, d + dim, 0.f);
      else
        na_copy_row(d, v.ptr(b, row, g), dim, v.stride[3]);
    }
  }
}

// Step 1: K and V into the buffers; tasks of kGatherRows permuted rows of K or of V (all
// heads), so that two threads share even a one-head problem.
inline void na_gather_inputs(const KernelArgs& a, const NaPlan& pl, const NaBuffers& buf, const Executor& ex) {
  constexpr index_t kGatherRows = 512;
  const Problem& p = a.p;
  const index_t nk = pl.extra + pl.k.size();
  const index_t chunks = (nk + kGatherRows - 1) / kGatherRows;
  ex.run(p.batch * 2 * chunks, [&](index_t t) {
    const index_t b = t / (2 * chunks), kv = t / chunks % 2, c = t % chunks;
    const index_t s0 = c * kGatherRows, s1 = std::min(nk, s0 + kGatherRows);
    if (kv == 0)
      na_gather_rows(buf.k, a.k, b, pl, p.dim_qk, p.heads_kv, s0, s1);
    else
      na_gather_rows(buf.v, a.v, b, pl, p.dim_v, p.heads_kv, s0, s1);
  });
}

// How many query tiles read each grid key, on average (the plan's mean window union per tile,
// over all tiles, per key).
inline double na_tiles_per_key(const NaPlan& pl) {
  if (pl.k.size() == 0) return 0;
  return pl.union_keys * static_cast<double>(pl.q.size() / kBlockQ) / static_cast<double>(pl.k.size());
}

// Where P.V reads V rows in place (kVRowsInPlace), the gather pays once the reads a key costs in
// place, its tiles' visits times its rows' stride, reach kNaGatherBytes: rows further apart share
// fewer 4 KiB pages (TLB, L2 streamer) and fewer L1 sets, so each in-place read costs more, while
// the gather costs one read and one write per key whatever the stride. Measured on an AVX-512
// Xeon (bench/RESULTS.md, run AE; B1 S4096, 2-D kernels 7-21 and 3-D 3-7, stride 1): at 1 KiB
// token rows (H4 D64) the gather took 0.91-0.98x the time from 7.7 visits per key on and 1.0-1.1x
// at 5.4; at 2 KiB 0.91-0.99x at 5.4 visits, 1.13-1.18x at 2.6-2.7; at 4 KiB 0.77-1.01x
// everywhere. Head-major K/V (rows of one head, a few hundred bytes apart) stay in place: there
// the gather took 1.0-1.4x. A Zen 4 read 4 KiB rows in place in 0.96-0.98x the gather's time
// (run M, older code, 32x32 grids): there the rule may cost a few percent where here it saves
// 10-20%.
inline constexpr double kNaGatherBytes = 6 * 1024;

// Whether the kernel reads K and V at the caller's rows (KernelArgs::kv_rows) instead of
// gathering them first. Rows must have a unit stride. Where P.V reads V rows through
// pointers (kVRowsInPlace, kernel/config.hpp), unless the visits times the row stride reach
// kNaGatherBytes (above): the rows read in place go straight into the micro-kernels, where a
// gather writes every row once and the kernel reads the copy again. Otherwise (V copied into
// its panel per block) only when each key serves about one query tile (blocked neighborhoods,
// stride == kernel: 0.91x the time for 8x8 blocks on 64x64 on a Zen 2); keys that several
// tiles share (stride 1: each key in ~6 tiles' unions in 2-D) are gathered once, and
// contiguous rows then stream through the hardware prefetchers (reading them in place took
// 1.05x the time).
inline bool na_keys_in_place(const KernelArgs& a, const NaPlan& pl) {
  if (a.k.stride[3] != 1 || a.v.stride[3] != 1 || pl.k.size() == 0) return false;
  const double visits = na_tiles_per_key(pl);
  if (kVRowsInPlace) {
    const double row_bytes = static_cast<double>(std::max(a.k.stride[1], a.v.stride[1])) * sizeof(float);
    return visits * row_bytes < kNaGatherBytes;
  }
  return visits <= 1.5;
}

// The arguments of the permuted problem: Sq = Nq query slots (padded) mapped to the caller's
// rows by q_rows (Q, O, LSE and the gate stay the caller's views), Skv = E + N key slots, read
// from the gathered copies in `buf`, or (buf null) at the caller's rows through kv_rows.
inline KernelArgs na_permuted_args(const KernelArgs& a, const NaPlan& pl, const NaBuffers* buf) {
  const Problem& p = a.p;
  const index_t nq = pl.q.size(), nk = pl.extra + pl.k.size();
  KernelArgs pa = a;
  pa.p.seq_q = nq;
  pa.p.seq_kv = nk;
  pa.q_rows = pl.q.token.data();
  // Heads innermost when a tile's window union over all KV heads fits (kernel/config.hpp): in
  // the whole L2 when K/V are gathered, not half as for keys read in place. A box tile's Q and
  // O rows are scattered, one short run per grid row, so every head of a token row using it
  // back to back saves much; gathered K/V rows are contiguous per head, and what the L2 cannot
  // keep streams back through the hardware prefetchers. 16x16 blocked 2-D tiles (256 keys, 4
  // KV heads, D64: 512 KiB, all of a Zen 2's L2, gathered) took 0.96x the time heads-inner
  // (bench/RESULTS.md, run W). Keys read in place at strided rows keep half: 3-D 7^3 (1.2 MiB)
  // took 1.05x heads-inner with a 2 MiB L2 (Zen 4, where keys are always read in place).
  const double l2_share = buf != nullptr ? 1.0 : 0.5;
  pa.heads_inner = heads_inner_fits(pl.union_keys + static_cast<double>(pl.extra), p, l2_share);
  pa.tiles_ascending = true;  // (tiles of even length: no causal imbalance to start from)
  if (buf == nullptr) {
    pa.kv_rows = pl.k_rows.data();
  } else {
    pa.k = TensorView<const float>::bhsd(buf->k, p.batch, nk, p.heads_kv, p.dim_qk);
    pa.v = TensorView<const float>::bhsd(buf->v, p.batch, nk, p.heads_kv, p.dim_v);
  }
  return pa;
}

// The plan a call runs: tiles of kBlockQ query slots, blocks of <= kBlockKV keys, also as lists
// computed per vector of lanes (policy/mask_neighborhood_tiled.hpp, na_build_lists).
inline void na_build_call_plan(NaPlan& pl, const NeighborhoodMask& m) {
  na_build_plan(pl, m, kBlockQ, kBlockKV);
  na_build_lists(pl, kBlockQ, kBlockKV, tile::kWidth);
}

// Plans kept per thread (na_plan_for), and the grid slots (query + key) they may hold
// together beyond the newest plan: about 200 bytes per slot, so 2^18 slots are ~50 MiB.
inline constexpr int kNaPlansKept = 4;
inline constexpr index_t kNaPlanSlotsKept = index_t{1} << 18;

inline bool same_neighborhood(const NeighborhoodMask& a, const NeighborhoodMask& b) {
  return a.rank == b.rank && a.extent == b.extent && a.kernel == b.kernel && a.dilation == b.dilation &&
         a.stride == b.stride && a.causal == b.causal && a.extra_keys == b.extra_keys;
}

// How many plans this thread has built (tests: which calls reused one).
inline long& na_plan_builds() {
  thread_local long n = 0;
  return n;
}

// The plan of mask m, built once per thread and kept for later calls with the same mask. The
// plan (token orders, window tables, the search for the key order, the key lists) depends on
// the mask alone, and costs a large share of one call (BM_na_plan, Zen 2, B1 H4 D64): on a
// 64x64 grid 0.74 ms for k=s=8 (a 4.1 ms call), 5.2 ms for k13 (16.5 ms), 14.8 ms for a 16^3
// grid with k7 (31 ms). A model applies one mask in every layer, or alternates a few (DiNAT
// alternates dilations, hierarchical models change the grid per stage), so the last
// kNaPlansKept plans are kept, least recently used evicted first, while their slots stay
// within kNaPlanSlotsKept. The returned plan stays valid until a later call on this thread
// evicts it.
inline const NaPlan& na_plan_for(const NeighborhoodMask& m) {
  struct Cached {
    bool valid = false;
    NeighborhoodMask m;
    NaPlan plan;
    unsigned long used = 0;  // the tick of the last call that took it
  };
  thread_local Cached cache[kNaPlansKept];
  thread_local unsigned long tick = 0;
  ++tick;
  for (Cached& c : cache)
    if (c.valid && same_neighborhood(c.m, m)) {
      c.used = tick;
      return c.plan;
    }
  const auto slots = [](const NaPlan& pl) { return pl.q.size() + pl.k.size(); };
  Cached* slot = &cache[0];  // an empty entry, else the least recently used
  for (Cached& c : cache)
    if (!c.valid || (slot->valid && c.used < slot->used)) slot = &c;
  slot->valid = false;
  slot->plan = NaPlan{};
  na_build_call_plan(slot->plan, m);
  ++na_plan_builds();
  slot->m = m;
  slot->used = tick;
  slot->valid = true;
  // Older plans go, least recently used first, while the others hold too many slots.
  for (;;) {
    index_t kept = 0;
    Cached* oldest = nullptr;
    for (Cached& c : cache)
      if (c.valid && &c != slot) {
        kept += slots(c.plan);
        if (oldest == nullptr || c.used < oldest->used) oldest = &c;
      }
    if (oldest == nullptr || kept <= kNaPlanSlotsKept) break;
    oldest->valid = false;
    oldest->plan = NaPlan{};
  }
  return slot->plan;
}

// The whole permuted call. `dispatch(args, mask)` runs the fused kernel (forward.hpp passes
// dispatch_norm bound to the call's options and executor); its status goes to `status`.
// Returns false, having run nothing, when K/V need copies (a head dim of non-unit stride) that
// find no memory: the flat tiles (policy::NeighborhoodMaskPolicy) then run the call on the
// caller's rows.
template <class Dispatch>
bool forward_neighborhood_tiled(const KernelArgs& a, const NeighborhoodMask& m, const Executor& ex, Dispatch&& dispatch,
                                Status& status) {
  const NaPlan& plan = na_plan_for(m);
  const policy::NeighborhoodTiledMaskPolicy pol{&plan};
  if (na_keys_in_place(a, plan)) {
    status = dispatch(na_permuted_args(a, plan, nullptr), pol);
    return true;
  }
  // The copies: in the thread's kept buffer unless an outer call on this thread holds it, then
  // in memory of the call's own (ScratchLease); none beyond na_gather_limit or without memory.
  const auto floats = static_cast<std::size_t>(na_buffer_floats(a, plan));
  std::optional<ScratchLease> mem;
  if (floats * sizeof(float) <= na_gather_limit) mem.emplace(na_kept(), floats, true);
  const NaBuffers buf = na_carve(a, plan, mem ? mem->data() : nullptr);
  if (buf.k == nullptr) {
    if (a.k.stride[3] != 1 || a.v.stride[3] != 1 || plan.k.size() == 0) return false;
    status = dispatch(na_permuted_args(a, plan, nullptr), pol);  // (rows of unit stride: in place)
    return true;
  }
  na_gather_inputs(a, plan, buf, ex);
  status = dispatch(na_permuted_args(a, plan, &buf), pol);
  return true;
}

}  // namespace sinkattn::detail
