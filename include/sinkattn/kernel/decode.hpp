#pragma once
// Split-KV decode (flash-decoding) for few query rows per KV head.
//
// In decode the query rows of one KV head (group_size heads x Sq rows) are too few to fill
// the lanes of the prefill tile, and the work is bound by reading K and V. So:
//   - one task = one (batch, group of KV heads, key split) and handles ALL query rows of
//     those KV heads together: each K/V row is read from memory once per step, not once per
//     query head, and the heads of one token are read where they lie together;
//   - scores keep the keys on the lanes (tile::dot_keys), the online softmax reduces along
//     a row (Norm::update_row), and O += P.V is the same micro-kernel as in prefill;
//   - the keys are cut into splits of a fixed size, so short sequences and single queries
//     still keep every thread busy; the partial (max, sum, O) of each split are merged in a
//     fixed order with the log-sum-exp rule, then the sink and the epilogue run once per row.
// The split size is a constant, not a function of the thread count, so the result is
// bit-identical whatever executor runs it.

#include <algorithm>
#include <cmath>
#include <limits>

#include "sinkattn/core/executor.hpp"
#include "sinkattn/kernel/args.hpp"
#include "sinkattn/kernel/config.hpp"
#include "sinkattn/kernel/fp_env.hpp"
#include "sinkattn/kernel/workspace.hpp"
#include "sinkattn/policy/mask.hpp"
#include "sinkattn/policy/normalize.hpp"
#include "sinkattn/policy/score.hpp"
#include "sinkattn/tile/gemm.hpp"
#include "sinkattn/tile/ops.hpp"

namespace sinkattn::detail {

// Query rows per KV head (Sq * group) up to which the decode kernel is used.
inline constexpr index_t kDecodeMaxRows = 8;
// Keys per inner block: 4 lane groups, one softmax update per row per block.
inline constexpr index_t kDecodeBlock = 4 * tile::kWidth;
// Keys per split task.
inline constexpr index_t kDecodeSplitKeys = 1024;

inline bool use_decode(const Problem& p) { return p.seq_q * p.group_size() <= kDecodeMaxRows; }

// Floats of one row's split-KV partial: [m, l, acc(Dv_pad)], then [vsum(Dv_pad)] when the
// normalization also sums the visible V rows (affine-scaled).
template <class Norm>
inline index_t decode_row_floats(index_t dv_pad) {
  return dv_pad + 2 + (Norm::kSumsV ? dv_pad : 0);
}

// Caller-thread buffer for the partial results of the splits (workers write disjoint parts).
inline Workspace& partials_workspace() {
  thread_local Workspace ws;
  return ws;
}

// KV heads handled by one task. Token-major layouts (BSHD, the usual KV cache) store the
// rows of all KV heads of one token next to each other, so walking the keys of several heads
// together reads memory sequentially (a stream the hardware prefetchers follow, one page per
// token) instead of one row per 4 KiB page and head. A cache in DRAM streams fastest when a
// task reads at least 4 KiB of each token row: reading 2 KiB of each 4 KiB row (8 of 16 heads
// of D64) went at 0.72-0.75 of the rate of whole rows, with the same work per byte (whole
// rows that are short by themselves: 0.82-0.85 for 2 KiB, 0.75 for 1 KiB; bench/RESULTS.md,
// run AM). So a task takes 8 heads, or as many as make 4 KiB for head dims under 128 (up to
// kDecodeMaxHeads) where `runs` says that reads longer runs: K and V token-major (head-major
// rows are runs of their own, and there 16 heads' 32 streams read a DRAM-resident cache 0.9x
// as fast as 8 heads' 16) and the call's tensors larger than the L2 (KernelArgs::prefetch_rows;
// within it there is no stream to help, and 16 heads' queries and scores leave the L1). Not
// where the larger groups would leave fewer tasks than the executor runs at once. The result
// does not depend on the grouping: each row's sums are its own (affine-scaled attention keeps
// one running V sum per head, policy::VSums).
inline constexpr index_t kDecodeMaxHeads = 16;
inline index_t decode_heads_per_task(const Problem& p, index_t splits, int concurrency, bool runs = true) {
  constexpr index_t kBase = 8, kRowBytes = 4096;
  if (!runs) return std::min(kBase, p.heads_kv);
  const index_t head_bytes = static_cast<index_t>(sizeof(float)) * std::max<index_t>(1, std::min(p.dim_qk, p.dim_v));
  const index_t want = std::clamp<index_t>((kRowBytes + head_bytes - 1) / head_bytes, kBase, kDecodeMaxHeads);
  const index_t hpt = std::min(want, p.heads_kv);
  const auto tasks = [&](index_t h) { return p.batch * ((p.heads_kv + h - 1) / h) * splits; };
  return hpt > kBase && tasks(hpt) < concurrency ? std::min(kBase, p.heads_kv) : hpt;
}

// O (nq, Dv) += P (nq, nk) . V (nk, Dv) for one head of a decode task, behind a call: merged
// into decode_task (GCC's choice, which other code in the same unit can flip) the product ran
// 0.92-0.96x as fast, from L2 and from memory alike (bench/RESULTS.md, run AM).
SINKATTN_NOINLINE void decode_pv(float* acc, index_t ld_acc, index_t nq, const float* p, index_t ld_p, const float* v,
                                 index_t ld_v, index_t nk, index_t dv_vecs, const tile::RowStream* pf, int npf) {
  tile::mma_pv(acc, ld_acc, nq, p, 1, ld_p, v, ld_v, nk, dv_vecs, {}, pf, npf);
}

// One task: keys [k_lo, k_hi) of KV heads [g0, g0 + ng) of batch b, every query row of those
// heads. Writes one partial row per query row into part (see decode_row_floats).
template <class V>
void decode_task(const KernelArgs& a, const typename V::Mask& mask, index_t b, index_t g0, index_t ng, index_t k_lo,
                 index_t k_hi, float* part, Workspace& ws) {
  const FlushToZeroScope ftz;  // masked lanes underflow in exp2 (kernel/fp_env.hpp)
  using Norm = typename V::Norm;
  const Problem& p = a.p;
  const index_t G = p.group_size(), Sq = p.seq_q, R = G * Sq, HR = ng * R;
  const index_t dqk_pad = tile::round_up(p.dim_qk, tile::kWidth), dqk_vecs = dqk_pad / tile::kWidth;
  const index_t dv_pad = tile::round_up(p.dim_v, tile::kWidth), dv_vecs = dv_pad / tile::kWidth;
  constexpr index_t ld_s = kDecodeBlock;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  // No memory: the task ends at once and the call reports it (NoMemory).
  float* qpad = ws.floats(
      static_cast<std::size_t>(2 * HR * dqk_pad + HR * ld_s + HR * dv_pad + tile::kWidth * (dqk_pad + dv_pad)),
      *a.no_memory, "workspace (a decode task's tiles)");  // (HR, Dqk_pad)
  if (qpad == nullptr) return;
  float* qpad_sink = qpad + HR * dqk_pad;         // (HR, Dqk_pad) RoPE on load: as the sink keys see it
  float* s = qpad_sink + HR * dqk_pad;            // (HR, kDecodeBlock) scores, keys on lanes
  float* acc = s + HR * ld_s;                     // (HR, Dv_pad)
  float* kpack = acc + HR * dv_pad;               // (kWidth, Dqk_pad) one group's K rows
  float* vpack = kpack + tile::kWidth * dqk_pad;  // (kWidth, Dv_pad) and V rows

  // Row gg * R + hh * Sq + i is query row i of head (g0 + gg) * G + hh.
  for (index_t gg = 0; gg < ng; ++gg)
    for (index_t hh = 0; hh < G; ++hh)
      tile::pack_rows(qpad + (gg * R + hh * Sq) * dqk_pad, dqk_pad, a.q.ptr(b, 0, (g0 + gg) * G + hh), a.q.stride[1],
                      a.q.stride[3], Sq, p.dim_qk, dqk_pad, a.scale * kLog2e);  // scores come out in log2 units
  if (a.rope) {
    // RoPE on load: rotate the (scaled) query rows in place at their positions.
    for (index_t r = 0; r < HR; ++r) {
      float* row = qpad + r * dqk_pad;
      const index_t pos = a.rope_q0 + r % Sq;
      if (a.rope_two_queries()) {
        std::copy(row, row + dqk_pad, qpad_sink + r * dqk_pad);
        rope_row(qpad_sink + r * dqk_pad, qpad_sink + r * dqk_pad, 1, p.dim_qk, a.rope->config(),
                 a.rope->row(std::min(pos, a.rope_sink_qmax)));
      }
      rope_row(row, row, 1, p.dim_qk, a.rope->config(), a.rope->row(pos));
    }
  }
  tile::zero(acc, dv_pad, HR, dv_pad);
  typename Norm::RowState state[kDecodeMaxRows * kDecodeMaxHeads];
  for (index_t r = 0; r < HR; ++r) state[r] = Norm::init_row(a, mask, b, g0 * G + r / Sq, r % Sq);
  [[maybe_unused]] policy::VSums vsums;  // affine-scaled: running sums of the visible V rows, per head
  if constexpr (Norm::kSumsV) {
    vsums = policy::VSums::make(*a.no_memory, R, dv_pad, kDecodeBlock, ng);
    if (!vsums.ok()) return;
  }

  const index_t lo = std::max(k_lo, mask.kv_begin(0, Sq)), hi = std::min(k_hi, mask.kv_end(0, Sq));

  // next_kv jumps the keys no row can see between visible ranges (sliding window: sinks, band).
  // A block stays inside one KV segment (and one side of the RoPE sink keys).
  for (index_t j0 = policy::next_kv(mask, 0, Sq, lo), j1 = j0; j0 < hi; j0 = policy::next_kv(mask, 0, Sq, j1)) {
    const KernelArgs::KvPiece pc = a.piece(j0);
    j1 = std::min({j0 + kDecodeBlock, hi, pc.end});
    if (a.rope_two_queries() && j0 < a.rope_sink_keys) j1 = std::min(j1, a.rope_sink_keys);
    const index_t nk = j1 - j0, r0 = j0 - pc.base;  // r0: the block's first row in its segment
    const TensorView<const float>& K = *pc.k;
    const TensorView<const float>& Vw = *pc.v;
    const policy::BlockKind kind = mask.classify(0, Sq, j0, j1);
    if (kind == policy::BlockKind::empty) continue;
    const int nvec = static_cast<int>((nk + tile::kWidth - 1) / tile::kWidth);
    const bool k_inplace = K.stride[3] == 1 && p.dim_qk % tile::kWidth == 0 && !a.rope;
    const bool v_inplace = Vw.stride[3] == 1 && p.dim_v % tile::kWidth == 0;
    const float* q_blk = a.rope_two_queries() && j0 < a.rope_sink_keys ? qpad_sink : qpad;
    // The scores of every head of the task, then their softmax, then P.V; both products run
    // one lane group of keys at a time across the heads: the K rows of all the task's heads for
    // 16 tokens (AVX-512), then the next 16 tokens' (a token-major cache read token row after
    // token row, whole rows where the task has every KV head), and V the same way after the
    // softmax. One head's 64 keys at a time (its slice of 64 rows, then the next head's slice
    // of the same rows; one 4 KiB page per row at Hkv8 D128) read a DRAM-resident cache at
    // 0.65-0.71 of the machine's read bandwidth, this order at 0.88-0.91 (0.75x the time; keys
    // in L3 as fast as before; bench/RESULTS.md, run AK). A plain read loop reads either order
    // equally fast: what the old one lost is in how its reads met the computation between
    // them. The softmax still updates once per 64-key block.
    // RoPE on load rotates each group's rows into kpack just before their scores, in the same
    // order (rotating the whole block's rows first, token by token, took 1.08-1.12x the time of
    // a 32-layer streaming decode step).
    for (int grp = 0; grp < nvec; ++grp) {
      const index_t jg = grp * tile::kWidth, ng_keys = std::min<index_t>(tile::kWidth, nk - jg);
      for (index_t gg = 0; gg < ng; ++gg) {
        const float* kp = K.ptr(b, r0 + jg, g0 + gg);
        index_t ld_k = K.stride[1];
        if (a.rope) {
          // RoPE on load: the group's rows rotated at their positions, row after row.
          // (`rope_rows`, which prefill uses, walks chunks of pairs across the rows: here it
          // took 1.08x the time of a 32-layer streaming decode step with RoPE on load.)
          for (index_t x = 0; x < ng_keys; ++x) {
            float* dst = kpack + x * dqk_pad;
            rope_row(dst, K.ptr(b, r0 + jg + x, g0 + gg), K.stride[3], p.dim_qk, a.rope->config(),
                     a.rope->row(j0 + jg + x));
            std::fill(dst + p.dim_qk, dst + dqk_pad, 0.f);
          }
          tile::zero(kpack + ng_keys * dqk_pad, dqk_pad, tile::kWidth - ng_keys, dqk_pad);
          kp = kpack;
          ld_k = dqk_pad;
        } else if (!k_inplace || ng_keys < tile::kWidth) {
          tile::pack_rows(kpack, dqk_pad, kp, ld_k, K.stride[3], ng_keys, p.dim_qk, dqk_pad);
          tile::zero(kpack + ng_keys * dqk_pad, dqk_pad, tile::kWidth - ng_keys, dqk_pad);
          kp = kpack;
          ld_k = dqk_pad;
        }
        index_t r = gg * R;  // the head's rows two at a time (tile::dot_keys_2rows), then the odd one
        for (; r + 1 < (gg + 1) * R; r += 2)
          tile::dot_keys_2rows(s + r * ld_s + jg, s + (r + 1) * ld_s + jg, q_blk + r * dqk_pad,
                               q_blk + (r + 1) * dqk_pad, kp, ld_k, dqk_vecs);
        if (r < (gg + 1) * R) tile::dot_keys(s + r * ld_s + jg, q_blk + r * dqk_pad, kp, ld_k, dqk_vecs);
      }
    }

    for (index_t gg = 0; gg < ng; ++gg) {
      const index_t g = g0 + gg;
      float* s_g = s + gg * R * ld_s;
      for (index_t hh = 0; hh < G; ++hh) {
        const policy::ScoreTile t{s_g + hh * Sq * ld_s, ld_s, Sq, nvec, b, g * G + hh, 0, Sq, j0, nk, ld_s, 1, nullptr};
        V::Score::apply(a, t);
        if (kind == policy::BlockKind::partial) policy::apply_mask(mask, t);
      }
      // Lanes past the last key: after the score policy, which may map -inf to a finite value.
      for (index_t r = 0; r < R; ++r)
        for (index_t x = nk; x < nvec * tile::kWidth; ++x) s_g[r * ld_s + x] = kNegInf;

      for (index_t r = 0; r < R; ++r) {
        const float alpha = Norm::update_row(state[gg * R + r], s_g + r * ld_s, nvec);
        if (alpha != 1.f) tile::scale_rows(acc + (gg * R + r) * dv_pad, dv_pad, 1, dv_vecs, &alpha);
      }
    }

    // (Each row's keys in the same order as one call over the block: the same sums, bit for bit.)
    // Each product asks for the V rows of the one after it (the next head's, or the next lane
    // group's first head's) while it runs, spread between its register tiles (tile::RowStream).
    // Token-major rows of one head lie a row of every KV head apart (2-4 KiB), past the stride
    // the L1 prefetcher follows, and one head's 16 rows are too few for P.V's own misses to
    // overlap: a cache in DRAM read 1.09-1.13x faster with it, keys in L3 0.97-1.0x (Hkv8 and
    // Hkv4, D128; bench/RESULTS.md, run AL). The K rows the same way cost more than they gained
    // (keys in L2 or L3 0.9x as fast: dot_keys has 16 rows' misses in flight by itself).
    const bool prefetch_v = a.prefetch_rows && Vw.stride[3] == 1;
    for (int grp = 0; grp < nvec; ++grp) {
      const index_t jg = grp * tile::kWidth, ng_keys = std::min<index_t>(tile::kWidth, nk - jg);
      for (index_t gg = 0; gg < ng; ++gg) {
        tile::RowStream next_v;  // the next product's V rows
        const index_t ngg = gg + 1 < ng ? gg + 1 : 0, njg = gg + 1 < ng ? jg : jg + tile::kWidth;
        const int npf = prefetch_v && njg < nk ? 1 : 0;
        if (npf > 0) {
          next_v.p = Vw.ptr(b, r0 + njg, g0 + ngg);
          next_v.ld = Vw.stride[1];
          next_v.rows = std::min<index_t>(tile::kWidth, nk - njg);
          next_v.bytes = p.dim_v * static_cast<index_t>(sizeof(float));
        }
        const float* vp = Vw.ptr(b, r0 + jg, g0 + gg);
        index_t ld_v = Vw.stride[1];
        if (!v_inplace) {
          tile::pack_rows(vpack, dv_pad, vp, ld_v, Vw.stride[3], ng_keys, p.dim_v, dv_pad);
          vp = vpack;
          ld_v = dv_pad;
        }
        decode_pv(acc + gg * R * dv_pad, dv_pad, R, s + gg * R * ld_s + jg, ld_s, vp, ld_v, ng_keys, dv_vecs, &next_v,
                  npf);
        if constexpr (Norm::kSumsV) vsums.add(mask, kind, 0, Sq, j0 + jg, ng_keys, vp, ld_v, gg);
      }
    }
  }

  // Partial result per row: [m, l, acc(Dv_pad)] (+ [vsum(Dv_pad)], see decode_row_floats).
  const index_t row_floats = decode_row_floats<Norm>(dv_pad);
  if constexpr (Norm::kSumsV) vsums.fold();
  for (index_t r = 0; r < HR; ++r) {
    float* dst = part + r * row_floats;
    dst[0] = state[r].m;
    dst[1] = state[r].l;
    std::copy(acc + r * dv_pad, acc + (r + 1) * dv_pad, dst + 2);
    if constexpr (Norm::kSumsV) std::copy(vsums.row(r), vsums.row(r) + dv_pad, dst + 2 + dv_pad);
  }
}

template <class V>
void run_decode(const KernelArgs& a, const typename V::Mask& mask, const Executor& ex) {
  using Norm = typename V::Norm;
  const Problem& p = a.p;
  const index_t G = p.group_size(), Sq = p.seq_q, R = G * Sq;
  const index_t dv_pad = tile::round_up(p.dim_v, tile::kWidth);
  const index_t splits = std::max<index_t>(1, (p.seq_kv + kDecodeSplitKeys - 1) / kDecodeSplitKeys);
  // Token-major: a token's head rows lie closer together than its neighbours' (the last
  // segment's views: a streaming cache's window, which holds most of the keys).
  bool token_major = false;
  if (p.seq_kv > 0) {
    const KernelArgs::KvPiece last = a.piece(p.seq_kv - 1);
    token_major = last.k->stride[2] < last.k->stride[1] && last.v->stride[2] < last.v->stride[1];
  }
  const index_t hpt = decode_heads_per_task(p, splits, ex.concurrency(), token_major && a.prefetch_rows),
                chunks = (p.heads_kv + hpt - 1) / hpt;
  const index_t row_floats = decode_row_floats<Norm>(dv_pad);
  const index_t task_floats = hpt * R * row_floats;
  const index_t tasks = p.batch * chunks * splits;
  // Partials of every split, then one merged row and its V sum (aligned: the epilogue loads
  // them by vectors).
  float* parts = partials_workspace().floats(static_cast<std::size_t>(tasks * task_floats + 2 * dv_pad + tile::kWidth),
                                             *a.no_memory, "workspace (the decode splits' partial rows)");
  if (parts == nullptr) return;
  float* out = parts + tile::round_up(tasks * task_floats, tile::kWidth);
  [[maybe_unused]] float* vsum = out + dv_pad;

  ex.run(tasks, [&](index_t t) {
    const index_t sp = t % splits, c = (t / splits) % chunks, b = t / (splits * chunks);
    const index_t k_lo = sp * kDecodeSplitKeys, k_hi = std::min(p.seq_kv, k_lo + kDecodeSplitKeys);
    const index_t g0 = c * hpt, ng = std::min(hpt, p.heads_kv - g0);
    decode_task<V>(a, mask, b, g0, ng, k_lo, k_hi, parts + t * task_floats, thread_workspace());
  });
  if (a.no_memory->any()) return;  // (some partials unwritten)

  // Merge the splits of each row in split order, then sink, normalisation and epilogue once.
  for (index_t b = 0; b < p.batch; ++b)
    for (index_t g = 0; g < p.heads_kv; ++g)
      for (index_t r = 0; r < R; ++r) {
        const index_t h = g * G + r / Sq, i = r % Sq, c = g / hpt, gg = g % hpt;
        typename Norm::RowState st = Norm::init_row(a, mask, b, h, i);
        std::fill(out, out + dv_pad, 0.f);
        if constexpr (Norm::kSumsV) std::fill(vsum, vsum + dv_pad, 0.f);
        for (index_t sp = 0; sp < splits; ++sp) {
          const float* src = parts + ((b * chunks + c) * splits + sp) * task_floats + (gg * R + r) * row_floats;
          typename Norm::RowState part;
          part.m = src[0];
          part.l = src[1];
          float s_into = 1.f, s_part = 1.f;
          Norm::merge(st, part, s_into, s_part);
          for (index_t x = 0; x < dv_pad; ++x) out[x] = out[x] * s_into + (s_part == 0.f ? 0.f : src[2 + x] * s_part);
          if constexpr (Norm::kSumsV)
            for (index_t x = 0; x < dv_pad; ++x) vsum[x] += src[2 + dv_pad + x];
        }
        float scale = 0.f, lse = 0.f;
        Norm::finalize_row(st, V::Sink::logit2(a, h), scale, lse);
        if constexpr (Norm::kSumsV) Norm::combine(st, 0, out, vsum, dv_pad, scale);
        V::Gate::store(a, b, i, h, out, scale);
        if (a.want_lse()) a.lse(b, h, i, 0) = lse;
      }
}

}  // namespace sinkattn::detail
