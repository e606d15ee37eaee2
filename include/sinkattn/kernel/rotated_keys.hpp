#pragma once
// RoPE on load, keys rotated once per call instead of once per query tile.
//
// The fused loop rotates each key block as it loads it (rope_rows into the packed panel), so
// a key is rotated again by every query tile, and every query head of its group, that visits
// it: 64 times per head for dense attention over 4096 keys, times Hq / Hkv under GQA. When keys
// are visited at least twice on average, run() first rotates them into a buffer, in parallel,
// and the tasks then read that buffer in place as an ordinary unit-stride K:
//
//   rotated K  (B, Hkv, Skv, Dqk_pad) floats: head-major, rows Dqk_pad floats apart, the
//              columns [Dqk, Dqk_pad) zero; key j rotated at its position j.
//
// Memory: up to rotated_keys_retained bytes (32 MiB) come from a buffer the calling thread
// keeps (like the tasks' workspaces, it never shrinks), so the hot path does not allocate. A
// call whose rotated keys are larger runs in chunks of one batch element, or of one KV head
// (task order (b, h, tile) only: a chunk must be a range of tasks), each chunk rotated just
// before its tasks run; a chunk larger than the kept buffer is allocated for the call. A call
// made while the thread's buffer is in use (an executor that runs other work, and another
// attention call, on the waiting caller's thread) allocates its own. Where a chunk would give
// the executor too few tasks, or memory cannot be had, the call rotates per block as before.

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

inline constexpr std::size_t kRotatedKeysRetained = std::size_t{32} << 20;  // bytes
// The limit in force: tests lower it to reach the chunked and the allocated layouts on small
// problems (set it only while no call runs).
inline std::size_t rotated_keys_retained = kRotatedKeysRetained;
inline constexpr index_t kRotateRows = 512;  // rows per rotation job (parallel over the executor)

// Whether rotating the keys once pays: the keys the query tiles of one head visit (the mask's
// key blocks, counted for batch 0, head 0), times the query heads sharing a KV head, reach
// twice Skv. Dense attention over two query tiles does; a decode-sized block-sparse call that
// picks a few blocks, or one query tile without GQA, does not.
template <class Mask>
bool keys_revisited(const KernelArgs& a, const Mask& mask_all, index_t query_tiles) {
  const Problem& p = a.p;
  if (a.rope == nullptr || a.k_rotated || p.seq_kv == 0) return false;
  decltype(auto) mask = policy::bind(mask_all, 0, 0);
  const index_t rep = p.heads_q / p.heads_kv;
  index_t visits = 0;
  for (index_t t = 0; t < query_tiles && rep * visits < 2 * p.seq_kv; ++t) {
    const index_t i0 = t * kBlockQ;
    policy::for_each_kv_block(mask, i0, std::min(p.seq_q, i0 + kBlockQ), kBlockKV,
                              [&](index_t j0, index_t j1, policy::BlockKind) { visits += j1 - j0; });
  }
  return rep * visits >= 2 * p.seq_kv;
}

// How a call's keys are rotated: into one buffer for all (B, Hkv), one per batch element, or
// one per (b, g); kept: the calling thread's buffer suffices; floats: the buffer's size.
// none: rotate per block (a head chunk would leave the executor fewer than two tasks per
// thread between its barriers).
struct RotatedKeysPlan {
  enum class Chunk { none, all, batch, head } chunk = Chunk::all;
  bool kept = true;
  index_t floats = 0;
};

inline RotatedKeysPlan rotated_keys_plan(const KernelArgs& a, index_t query_tiles, int concurrency) {
  const Problem& p = a.p;
  const index_t head = p.seq_kv * tile::round_up(p.dim_qk, tile::kWidth);  // floats per (b, g)
  const auto bytes = [](index_t floats) { return static_cast<std::size_t>(floats) * sizeof(float); };
  const std::size_t retained = rotated_keys_retained;
  RotatedKeysPlan plan;
  plan.floats = p.batch * p.heads_kv * head;
  if (bytes(plan.floats) > retained && p.batch > 1) plan.chunk = RotatedKeysPlan::Chunk::batch, plan.floats /= p.batch;
  if (bytes(plan.floats) > retained && !a.heads_inner && p.heads_kv > 1) {
    if ((p.heads_q / p.heads_kv) * query_tiles < 2 * index_t{concurrency})
      return {RotatedKeysPlan::Chunk::none, false, 0};
    plan.chunk = RotatedKeysPlan::Chunk::head, plan.floats = head;
  }
  plan.kept = bytes(plan.floats) <= retained;
  return plan;
}

// The calling thread's kept buffer, and whether a call on this thread is using it.
struct KeptKeys {
  Workspace ws;
  bool busy = false;
};
inline KeptKeys& kept_keys() {
  thread_local KeptKeys k;
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

// Runs the call's tasks [0, B * Hq * query_tiles) through run_tasks(args, t0, t1) as `plan`
// says, chunk by chunk, each chunk's args reading its rotated keys in place
// (KernelArgs::k_rotated). Returns false, having run nothing, when the plan is none or the
// scratch memory cannot be had.
template <class RunTasks>
bool run_with_rotated_keys(const KernelArgs& a, index_t query_tiles, const RotatedKeysPlan& plan, const Executor& ex,
                           RunTasks&& run_tasks) {
  using Chunk = RotatedKeysPlan::Chunk;
  const Problem& p = a.p;
  if (plan.chunk == Chunk::none) return false;
  const index_t ld = tile::round_up(p.dim_qk, tile::kWidth);
  const index_t head = p.seq_kv * ld;
  const index_t rep = p.heads_q / p.heads_kv;

  struct Free {
    void operator()(float* q) const { ::operator delete(q, std::align_val_t(tile::kAlign)); }
  };
  std::unique_ptr<float, Free> own;
  KeptKeys& kept = kept_keys();
  float* buf = plan.kept && !kept.busy ? kept.ws.try_floats(static_cast<std::size_t>(plan.floats)) : nullptr;
  const bool use_kept = buf != nullptr;
  if (!use_kept) {
    own.reset(static_cast<float*>(::operator new(static_cast<std::size_t>(plan.floats) * sizeof(float),
                                                 std::align_val_t(tile::kAlign), std::nothrow)));
    if (!own) return false;
    buf = own.get();
  }
  struct Busy {  // the kept buffer is this call's until it returns
    KeptKeys* k;
    ~Busy() {
      if (k) k->busy = false;
    }
  } busy{use_kept ? &kept : nullptr};
  if (use_kept) kept.busy = true;

  // The layout's strides over b and g are 0 where the chunk has one of them, so every pointer
  // formed stays inside the buffer.
  const index_t st0 = plan.chunk == Chunk::all ? p.heads_kv * head : 0;
  const index_t st2 = plan.chunk == Chunk::head ? 0 : head;
  // The rotated keys as K (one segment) or as the segments' K (V unchanged).
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
  ak.k_rotated = true;
  const auto view = [&](index_t j0, index_t n) {
    return TensorView<const float>(buf + j0 * ld, {p.batch, n, p.heads_kv, p.dim_qk}, {st0, ld, st2, 1});
  };
  if (a.nseg > 0) {
    for (index_t s = 0; s < a.nseg; ++s)
      segs[s] = {view(a.seg_start[s], a.seg_start[s + 1] - a.seg_start[s]), a.seg[s].v};
    ak.seg = segs;
  } else {
    ak.k = view(0, p.seq_kv);
  }

  // Rotates (b, g) for b in [b0, b1), g in [g0, g1) into their places in the layout, then
  // runs tasks [t0, t1).
  const index_t pieces = (p.seq_kv + kRotateRows - 1) / kRotateRows;
  const auto run_chunk = [&](index_t b0, index_t b1, index_t g0, index_t g1, index_t t0, index_t t1) {
    const index_t ng = g1 - g0;
    ex.run((b1 - b0) * ng * pieces, [&](index_t i) {
      const index_t b = b0 + i / (ng * pieces), g = g0 + i / pieces % ng, j0 = i % pieces * kRotateRows;
      load_keys(buf + b * st0 + g * st2 + j0 * ld, ld, a, b, g, j0, std::min(p.seq_kv, j0 + kRotateRows));
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
