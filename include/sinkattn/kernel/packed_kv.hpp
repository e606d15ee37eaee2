#pragma once
// K and V packed once per call: keys rotated (RoPE on load), strided rows made contiguous.
//
// The fused loop reads each key block once per query tile, and per query head of its group,
// that visits it. Two things then repeat per visit and cost more than doing them once:
//   - RoPE on load rotates each key block into its packed panel: 64 rotations per key for
//     dense attention over 4096 keys (1.12-1.13x the time; bench/RESULTS.md, run T);
//   - K and V rows that are not contiguous (token-major layouts: rows Hkv * D floats apart;
//     pack_strided_kv below) fall into a few L1 sets, and on 16-register ISAs V
//     is copied into a panel per block: 1.45x the time of head-major K and V for dense
//     attention on a Zen 2 (B1 H8 S4096 D64; bench/RESULTS.md, run U), 1.11-1.20x on an
//     AVX-512 Xeon (run AC).
// When keys are visited at least twice on average, run() first packs them, in parallel, into
// a buffer, and the tasks read it in place as unit-stride, head-major K and V:
//
//   packed K  (B, Hkv, Skv, Dqk_pad) floats: rows Dqk_pad floats apart, the columns
//             [Dqk, Dqk_pad) zero; key j rotated at its position j with RoPE on load.
//   packed V  (B, Hkv, Skv, Dv_pad) floats after it, when V is packed: columns [Dv, Dv_pad)
//             zero, so P.V reads whole vectors in place (KernelArgs::v_packed).
//
// Memory: up to packed_kv_retained bytes (32 MiB) come from a buffer the calling thread keeps
// (like the tasks' workspaces, it never shrinks), so the hot path does not allocate. A call
// whose packed K/V are larger runs in chunks of one batch element, or of one KV head (task
// order (b, h, tile) only: a chunk must be a range of tasks), each chunk packed just before
// its tasks run; a chunk larger than the kept buffer is allocated for the call. A call made
// while the thread's buffer is in use (an executor that runs other work, and another attention
// call, on the waiting caller's thread) allocates its own. Where a chunk of K and V would give
// the executor too few tasks, or memory cannot be had, run() packs K alone (about half the
// room); failing that too, the call reads K/V where they are (rotating per block).

#include <algorithm>
#include <cstddef>
#include <memory>
#include <new>

#include "sinkattn/core/executor.hpp"
#include "sinkattn/core/kv_segments.hpp"
#include "sinkattn/core/rope.hpp"
#include "sinkattn/kernel/args.hpp"
#include "sinkattn/kernel/config.hpp"
#include "sinkattn/kernel/workspace.hpp"
#include "sinkattn/policy/mask.hpp"
#include "sinkattn/tile/ops.hpp"
#include "sinkattn/tile/simd.hpp"

namespace sinkattn::detail {

inline constexpr std::size_t kPackedKvRetained = std::size_t{32} << 20;  // bytes
// The limits in force: tests lower the first to reach the chunked and the allocated layouts on
// small problems, turn the second off to compare with rows read in place, and set the third to
// count every tile as wide (wide_tile_keys; < 0: from the L2 size). Set them only while no
// call runs.
//
// pack_strided_kv: whether run() (kernel/forward.hpp) packs K and V rows that are not
// contiguous (token-major layouts) into head-major buffers once per call when keys are
// revisited and either a tile's keys stream from beyond L2 or each key is read by many tiles.
// K rows 1-2 KiB apart fall into a quarter of the L1's sets (a 64-row block of D64 rows: 16
// lines in each of 16 sets, more than the ways), and the register-tile passes re-read them.
// On the 16-register ISAs, where V is also copied into a panel per block, head-major K alone
// took 0.84x the time, V alone 0.73x, both 0.68x (dense S4096, Zen 2; bench/RESULTS.md, run
// U). With AVX-512 a contiguous K gained 1-3% on a Zen 4 (run T), and K and V together
// 0.89-0.91x the time on an AVX-512 Xeon (2 MiB L2, 48 KiB 12-way L1: dense and causal B1 H2
// S8192 D128, GQA causal S4096 D64; K alone 0.96, V alone 0.98; run AC), the copy included:
// every ISA packs.
inline std::size_t packed_kv_retained = kPackedKvRetained;
inline bool pack_strided_kv = true;
inline index_t pack_wide_keys = -1;
inline constexpr index_t kPackRows = 512;  // rows per packing job (parallel over the executor)

// Which of K and V a call packs: K with RoPE on load (rotated); with `strided`, also K and V
// whose rows are not contiguous floats (V also when Dv is not a whole number of vectors, as the
// loop copies such rows per block), in any of its segments.
struct PackWhat {
  bool k = false, v = false;
  bool any() const { return k || v; }
};
inline PackWhat pack_what(const KernelArgs& a, bool strided) {
  const Problem& p = a.p;
  PackWhat w;
  if (a.k_packed || a.v_packed || p.seq_kv == 0) return w;
  w.k = a.rope != nullptr;
  if (!strided) return w;
  const auto is_strided = [](const TensorView<const float>& t, index_t cols, bool whole_vectors) {
    return t.stride[3] != 1 || t.stride[1] != cols || (whole_vectors && cols % tile::kWidth != 0);
  };
  const auto check = [&](const TensorView<const float>& k, const TensorView<const float>& v) {
    if (!k.empty() && is_strided(k, p.dim_qk, false)) w.k = true;
    if (!v.empty() && is_strided(v, p.dim_v, true)) w.v = true;
  };
  if (a.nseg == 0)
    check(a.k, a.v);
  else
    for (index_t s = 0; s < a.nseg; ++s) check(a.seg[s].k, a.seg[s].v);
  return w;
}

// Strided K/V rows are packed, whatever the tiles' width, when each key is read by at least
// this many query tiles of one head on average: the copy, once per key, then costs less than
// the strided reads it replaces, even from L2 (dense B1 H8 S1024 D64 and D128: 0.87x and 0.84x
// the time, 16 tiles per key; 1024-key blocks and windows 0.94x; 256-key blocks and windows,
// 4-5 tiles per key, 1.12-1.16x; AVX-512 Xeon, bench/RESULTS.md, run AD).
inline constexpr index_t kPackTilesPerKey = 8;

// How often the query tiles visit the keys, counted over the mask's key blocks for batch 0,
// head 0: revisited when the visits, times the query heads sharing a KV head, reach twice Skv
// (dense attention over two query tiles; not a decode-sized block-sparse call that picks a few
// blocks, nor one query tile without GQA); wide when some tile visits more than `wide_keys`;
// reused when the visits reach kPackTilesPerKey * Skv (both only when wide_keys >= 0: the
// question whether strided rows pay to pack; the count stops once it is answered).
struct KvVisits {
  bool revisited = false, wide = false, reused = false;
  bool pack_strided() const { return revisited && (wide || reused); }
};
template <class Mask>
KvVisits kv_visits(const KernelArgs& a, const Mask& mask_all, index_t query_tiles, index_t wide_keys) {
  const Problem& p = a.p;
  KvVisits r;
  if (p.seq_kv == 0) return r;
  decltype(auto) mask = policy::bind(mask_all, 0, 0);
  const index_t rep = p.heads_q / p.heads_kv;
  index_t visits = 0;
  for (index_t t = 0; t < query_tiles && !(r.revisited && (wide_keys < 0 || r.wide || r.reused)); ++t) {
    const index_t i0 = t * kBlockQ;
    index_t keys = 0;
    policy::for_each_kv_block(mask, i0, std::min(p.seq_q, i0 + kBlockQ), kBlockKV,
                              [&](index_t j0, index_t j1, policy::BlockKind) { keys += j1 - j0; });
    visits += keys;
    r.revisited = r.revisited || rep * visits >= 2 * p.seq_kv;
    r.wide = r.wide || (wide_keys >= 0 && keys > wide_keys);
    r.reused = r.reused || (wide_keys >= 0 && visits >= kPackTilesPerKey * p.seq_kv);
  }
  return r;
}

// Strided K/V rows pay to pack where a query tile's keys stream from beyond L2, or where each
// key is read by many tiles (kPackTilesPerKey); keys in L2 that few tiles read (a sliding
// window of 256 keys, neighborhood and block tiles) are read in place, and their copy cost up
// to 1.10x (B1 H4 S4096 D64 BSHD, 1-D blocks of 256 keys; Zen 2, bench/RESULTS.md, run U).
// The keys above which a tile's K/V rows (those of all KV heads when the heads run innermost)
// take more than half the L2.
inline index_t wide_tile_keys(const KernelArgs& a) {
  const Problem& p = a.p;
  if (pack_wide_keys >= 0) return pack_wide_keys;
  const double row = static_cast<double>(p.dim_qk + p.dim_v) * sizeof(float) * (a.heads_inner ? p.heads_kv : 1);
  return static_cast<index_t>(0.5 * static_cast<double>(l2_cache_bytes()) / std::max(row, 1.0));
}

// How a call's K/V are packed: which of them (what), into one buffer for all (B, Hkv), one per
// batch element, or one per (b, g); kept: the calling thread's buffer suffices; floats: the
// buffer's size. none: read in place (a head chunk would leave the executor fewer than two
// tasks per thread between its barriers, or there is nothing to pack).
struct PackedKvPlan {
  enum class Chunk { none, all, batch, head } chunk = Chunk::all;
  bool kept = true;
  PackWhat what;
  index_t floats = 0;
};

inline PackedKvPlan packed_kv_plan(const KernelArgs& a, PackWhat what, index_t query_tiles, int concurrency) {
  const Problem& p = a.p;
  if (!what.any()) return {PackedKvPlan::Chunk::none, false, what, 0};
  const index_t head = p.seq_kv * ((what.k ? tile::round_up(p.dim_qk, tile::kWidth) : 0) +
                                   (what.v ? tile::round_up(p.dim_v, tile::kWidth) : 0));  // floats per (b, g)
  const auto bytes = [](index_t floats) { return static_cast<std::size_t>(floats) * sizeof(float); };
  const std::size_t retained = packed_kv_retained;
  PackedKvPlan plan;
  plan.what = what;
  plan.floats = p.batch * p.heads_kv * head;
  if (bytes(plan.floats) > retained && p.batch > 1) plan.chunk = PackedKvPlan::Chunk::batch, plan.floats /= p.batch;
  if (bytes(plan.floats) > retained && !a.heads_inner && p.heads_kv > 1) {
    if ((p.heads_q / p.heads_kv) * query_tiles < 2 * index_t{concurrency})
      return {PackedKvPlan::Chunk::none, false, what, 0};
    plan.chunk = PackedKvPlan::Chunk::head, plan.floats = head;
  }
  plan.kept = bytes(plan.floats) <= retained;
  return plan;
}

// The calling thread's kept buffer for packed K/V.
inline KeptWorkspace& kept_kv() {
  thread_local KeptWorkspace k;
  return k;
}

// Keys [j0, j1) of (b, g) into dst, rows ld floats apart (columns [Dqk, ld) zero), read
// through the call's segments and rotated at their positions with RoPE on load (copied as they
// are without it).
inline void load_keys(float* dst, index_t ld, const KernelArgs& a, index_t b, index_t g, index_t j0, index_t j1) {
  a.for_each_piece(j0, j1, [&](index_t s0, index_t s1, const KernelArgs::KvPiece& pc) {
    const TensorView<const float>& K = *pc.k;
    float* d = dst + (s0 - j0) * ld;
    const float* src = K.ptr(b, s0 - pc.base, g);
    if (a.rope)
      rope_rows(d, ld, src, K.stride[1], K.stride[3], s1 - s0, a.p.dim_qk, ld, *a.rope, s0);
    else
      tile::pack_rows(d, ld, src, K.stride[1], K.stride[3], s1 - s0, a.p.dim_qk, ld);
  });
}

// The values of the same keys, copied (columns [Dv, ld) zero).
inline void load_values(float* dst, index_t ld, const KernelArgs& a, index_t b, index_t g, index_t j0, index_t j1) {
  a.for_each_piece(j0, j1, [&](index_t s0, index_t s1, const KernelArgs::KvPiece& pc) {
    const TensorView<const float>& V = *pc.v;
    tile::pack_rows(dst + (s0 - j0) * ld, ld, V.ptr(b, s0 - pc.base, g), V.stride[1], V.stride[3], s1 - s0, a.p.dim_v,
                    ld);
  });
}

// Runs the call's tasks [0, B * Hq * query_tiles) through run_tasks(args, t0, t1) as `plan`
// says, chunk by chunk, each chunk's args reading its packed K and/or V in place
// (KernelArgs::k_packed, v_packed). Returns false, having run nothing, when the plan is none or
// the scratch memory cannot be had.
template <class RunTasks>
bool run_with_packed_kv(const KernelArgs& a, index_t query_tiles, const PackedKvPlan& plan, const Executor& ex,
                        RunTasks&& run_tasks) {
  using Chunk = PackedKvPlan::Chunk;
  const Problem& p = a.p;
  if (plan.chunk == Chunk::none) return false;
  const index_t ldk = plan.what.k ? tile::round_up(p.dim_qk, tile::kWidth) : 0;
  const index_t ldv = plan.what.v ? tile::round_up(p.dim_v, tile::kWidth) : 0;
  const index_t rep = p.heads_q / p.heads_kv;

  // The kept buffer when the plan fits it and no outer call on this thread holds it, else the
  // call's own memory (until it returns).
  const ScratchLease mem(kept_kv(), static_cast<std::size_t>(plan.floats), plan.kept);
  float* const buf = mem.data();
  if (buf == nullptr) return false;

  // One (b, g) of the chunk: K's rows, then V's. The layout's strides over b and g are 0
  // where the chunk has one of them, so every pointer formed stays inside the buffer.
  const index_t nb = plan.chunk == Chunk::all ? p.batch : 1;
  const index_t ng = plan.chunk == Chunk::head ? 1 : p.heads_kv;
  float* const kbuf = buf;
  float* const vbuf = buf + nb * ng * p.seq_kv * ldk;
  const auto st0 = [&](index_t ld) { return nb > 1 ? p.heads_kv * p.seq_kv * ld : 0; };
  const auto st2 = [&](index_t ld) { return ng > 1 ? p.seq_kv * ld : 0; };
  // The packed rows as K/V (one segment) or as the segments' K/V.
  constexpr index_t kInline = 16;  // no allocation for the usual few segments
  KvSegment segs_inline[kInline];
  std::unique_ptr<KvSegment[]> segs_heap;
  KvSegment* segs = segs_inline;
  if (a.nseg > kInline) {
    segs_heap.reset(new (std::nothrow) KvSegment[static_cast<std::size_t>(a.nseg)]);
    if (!segs_heap) return false;
    segs = segs_heap.get();
  }
  KernelArgs ak = a;
  ak.k_packed = plan.what.k;
  ak.v_packed = plan.what.v;
  const auto view = [&](float* base, index_t ld, index_t dim, index_t j0, index_t n) {
    return TensorView<const float>(base + j0 * ld, {p.batch, n, p.heads_kv, dim}, {st0(ld), ld, st2(ld), 1});
  };
  const auto piece = [&](const KvSegment& orig, index_t j0, index_t n) {
    return KvSegment{plan.what.k ? view(kbuf, ldk, p.dim_qk, j0, n) : orig.k,
                     plan.what.v ? view(vbuf, ldv, p.dim_v, j0, n) : orig.v};
  };
  if (a.nseg > 0) {
    for (index_t s = 0; s < a.nseg; ++s) segs[s] = piece(a.seg[s], a.seg_start[s], a.seg_start[s + 1] - a.seg_start[s]);
    ak.seg = segs;
  } else {
    const KvSegment one = piece(KvSegment{a.k, a.v}, 0, p.seq_kv);
    ak.k = one.k;
    ak.v = one.v;
  }

  // Packs (b, g) for b in [b0, b1), g in [g0, g1) into their places in the layout, then runs
  // tasks [t0, t1).
  const index_t pieces = (p.seq_kv + kPackRows - 1) / kPackRows;
  const auto run_chunk = [&](index_t b0, index_t b1, index_t g0, index_t g1, index_t t0, index_t t1) {
    const index_t n = g1 - g0;
    ex.run((b1 - b0) * n * pieces, [&](index_t i) {
      const index_t b = b0 + i / (n * pieces), g = g0 + i / pieces % n, j0 = i % pieces * kPackRows;
      const index_t j1 = std::min(p.seq_kv, j0 + kPackRows);
      if (plan.what.k) load_keys(kbuf + b * st0(ldk) + g * st2(ldk) + j0 * ldk, ldk, a, b, g, j0, j1);
      if (plan.what.v) load_values(vbuf + b * st0(ldv) + g * st2(ldv) + j0 * ldv, ldv, a, b, g, j0, j1);
    });
    run_tasks(static_cast<const KernelArgs&>(ak), t0, t1);
  };
  const index_t per_batch = p.heads_q * query_tiles;  // tasks (b is outermost in both orders)
  if (plan.chunk == Chunk::all) {
    run_chunk(0, p.batch, 0, p.heads_kv, 0, p.batch * per_batch);
  } else {
    for (index_t b = 0; b < p.batch; ++b) {
      if (plan.chunk == Chunk::batch) {
        run_chunk(b, b + 1, 0, p.heads_kv, b * per_batch, (b + 1) * per_batch);
      } else {  // order (b, h, tile): the tasks of KV head g are those of its rep query heads
        for (index_t g = 0; g < p.heads_kv; ++g) {
          const index_t t0 = b * per_batch + g * rep * query_tiles;
          run_chunk(b, b + 1, g, g + 1, t0, t0 + rep * query_tiles);
        }
      }
    }
  }
  return true;
}

}  // namespace sinkattn::detail
