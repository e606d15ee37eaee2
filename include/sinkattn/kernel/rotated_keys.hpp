#pragma once
// RoPE on load, keys rotated once per call instead of once per query tile.
//
// The fused loop rotates each key block as it loads it (rope_rows into the packed panel), so
// a key is rotated again by every query tile, and every query head of its group, that visits
// it: 64 times per head for dense attention over 4096 keys, times Hq / Hkv under GQA. When keys
// are visited more than once, run() first rotates them into a buffer, in parallel, and the
// tasks then read that buffer in place as an ordinary unit-stride K:
//
//   rotated K  (B, Hkv, Skv, Dqk_pad) floats: head-major, rows Dqk_pad floats apart, the
//              columns [Dqk, Dqk_pad) zero; key j rotated at its position j.
//
// Memory: up to rotated_keys_retained bytes (32 MiB) come from a buffer the calling thread keeps (like
// the tasks' workspaces, it never shrinks), so the hot path does not allocate. A call whose
// rotated keys are larger runs in chunks of one batch element, or of one KV head (task order
// (b, h, tile) only: a chunk must be a range of tasks), each chunk rotated just before its
// tasks run; a chunk larger than the retained buffer is allocated for the call (such a chunk
// holds over 32 MiB of keys: its attention takes seconds). If that allocation fails the call
// rotates per block as before: never an error for lack of scratch memory.

#include <algorithm>
#include <cstddef>
#include <memory>
#include <new>

#include "sinkattn/core/executor.hpp"
#include "sinkattn/core/kv_segments.hpp"
#include "sinkattn/core/rope.hpp"
#include "sinkattn/kernel/args.hpp"
#include "sinkattn/kernel/workspace.hpp"
#include "sinkattn/tile/ops.hpp"
#include "sinkattn/tile/simd.hpp"

namespace sinkattn::detail {

inline constexpr std::size_t kRotatedKeysRetained = std::size_t{32} << 20;  // bytes
// The limit in force: tests lower it to reach the chunked and the allocated layouts on small
// problems (set it only while no call runs).
inline std::size_t rotated_keys_retained = kRotatedKeysRetained;
inline constexpr index_t kRotateRows = 512;  // rows per rotation job (parallel over the executor)

// Whether rotating the keys once pays: some key is visited by two query tiles or two query
// heads. (A call with one query tile per head and no GQA rotates each key once either way.)
inline bool rotate_keys_once(const KernelArgs& a, index_t query_tiles) {
  const Problem& p = a.p;
  return a.rope != nullptr && !a.k_rotated && p.seq_kv > 0 && query_tiles * (p.heads_q / p.heads_kv) >= 2;
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

// Runs the call's tasks [0, ntasks) through run_tasks(args, t0, t1), chunk by chunk, each
// chunk's args reading its rotated keys in place (KernelArgs::k_rotated). heads_inner: the task
// order is (b, tile, h), so a chunk cannot be one KV head. Returns false, having run nothing,
// when the scratch memory cannot be had.
template <class RunTasks>
bool run_with_rotated_keys(const KernelArgs& a, index_t query_tiles, const Executor& ex, RunTasks&& run_tasks) {
  const Problem& p = a.p;
  const index_t ld = tile::round_up(p.dim_qk, tile::kWidth);
  const index_t head = p.seq_kv * ld;  // floats per (b, g)
  const index_t rep = p.heads_q / p.heads_kv;
  const auto bytes = [](index_t floats) { return static_cast<std::size_t>(floats) * sizeof(float); };

  // The chunk: all of it, one batch element, or one (b, g). The layout's strides over b and g
  // are 0 where the chunk has one of them, so every pointer formed stays inside the buffer.
  enum class Chunk { all, batch, head } chunk = Chunk::all;
  index_t floats = p.batch * p.heads_kv * head;
  const std::size_t retained = rotated_keys_retained;
  if (bytes(floats) > retained && p.batch > 1) chunk = Chunk::batch, floats = p.heads_kv * head;
  if (bytes(floats) > retained && !a.heads_inner && p.heads_kv > 1) chunk = Chunk::head, floats = head;

  struct Free {
    void operator()(float* q) const { ::operator delete(q, std::align_val_t(tile::kAlign)); }
  };
  std::unique_ptr<float, Free> own;
  float* buf = nullptr;
  if (bytes(floats) <= retained) {
    thread_local Workspace kept;  // the calling thread's, apart from its tasks' workspace
    buf = kept.floats(static_cast<std::size_t>(floats));
  } else {
    own.reset(static_cast<float*>(::operator new(bytes(floats), std::align_val_t(tile::kAlign), std::nothrow)));
    if (!own) return false;
    buf = own.get();
  }

  const index_t st0 = chunk == Chunk::all ? p.heads_kv * head : 0;
  const index_t st2 = chunk == Chunk::head ? 0 : head;
  // The rotated keys as K (one segment) or as the segments' K (V unchanged).
  std::unique_ptr<KvSegment[]> segs;
  if (a.nseg > 0) {
    segs.reset(new (std::nothrow) KvSegment[static_cast<std::size_t>(a.nseg)]);
    if (!segs) return false;
  }
  KernelArgs ak = a;
  ak.k_rotated = true;
  const auto view = [&](index_t j0, index_t n) {
    return TensorView<const float>(buf + j0 * ld, {p.batch, n, p.heads_kv, p.dim_qk}, {st0, ld, st2, 1});
  };
  if (a.nseg > 0) {
    for (index_t s = 0; s < a.nseg; ++s)
      segs[s] = {view(a.seg_start[s], a.seg_start[s + 1] - a.seg_start[s]), a.seg[s].v};
    ak.seg = segs.get();
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
  if (chunk == Chunk::all) {
    run_chunk(0, p.batch, 0, p.heads_kv, 0, p.batch * per_batch);
  } else {
    for (index_t b = 0; b < p.batch; ++b) {
      if (chunk == Chunk::batch) {
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
