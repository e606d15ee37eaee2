#pragma once
// Sink diagnostics in the fast path (SEMANTICS section 6): the attention mass each key
// receives, sum_i w_ij, and the sink metric alpha_j (the mean of w_ij over the rows at or after
// key j by position), per (batch, query head).
//
//   sinkattn::sink_mass(problem, q, k, mass, alpha, options, executor)
//
// Two sweeps over each query tile's visible key blocks, as the contract allows (one task per
// (b, h), S^T = K . Q^T as in the fused loop). The first runs the normalization policy's own
// update over the blocks (the weights P of each block, relative to the lanes' running max
// after it) and its finalize (the row factor out_scale, a learned sink joined there); the
// second sums w = P * 2^(m_k - m) * out_scale over the lanes of each key row (sink_mass_task).
// The weights stay exact at any logit size: no LSE is formed. The first sweep keeps its P
// (kMassCacheFloats), so the second only rescales them: no second GEMM. Each task owns its
// head's mass row: the result does not depend on the executor.
// A row with a NaN anywhere in its scores adds NaN to every key it sees.
// Supported: every mask (the flat policies), score option and normalization (a learned sink
// takes its share of each row and gives none to a key), RoPE on load, and K as one view or as
// KV segments (a streaming cache's pieces: each task then copies its head's keys once).

#include <algorithm>
#include <cmath>
#include <limits>
#include <variant>
#include <vector>

#include "sinkattn/kernel/forward.hpp"
#include "sinkattn/kernel/packed_kv.hpp"
#include "sinkattn/tile/math.hpp"

namespace sinkattn {
namespace detail {

// Sweep 2 reads the first sweep's weights back instead of recomputing S^T when a query tile's
// visible blocks fit in this many floats (4 MiB: up to 256 key blocks, 16k keys, per tile).
// Read back from L2/L3 they cost a fraction of the GEMM and exp2 they replace
// (bench/RESULTS.md, run S).
inline constexpr index_t kMassCacheFloats = index_t{1} << 20;

// One visible key block [j0, j0 + nk) of a query tile, computed for lane vectors [v0, v1),
// i.e. lanes [l0, l1).
struct MassBlock {
  index_t j0 = 0, nk = 0;
  int v0 = 0, v1 = 0;
  index_t l0 = 0, l1 = 0;
  policy::BlockKind kind = policy::BlockKind::full;
};

// S^T = K . Q^T of one block (tile::mma_kqt) behind a call: inlined into sink_mass_task, whose
// body holds both sweeps and the normalization's update, the register tile's code took the
// whole call 1.09x the time (GCC 12; bench/RESULTS.md, run S).
SINKATTN_NOINLINE void mass_kqt(float* st, const float* k, index_t ld_k, index_t nk, const float* qt, index_t d,
                                int vecs) {
  tile::mma_kqt(st, kBlockQ, k, ld_k, nk, qt, d, vecs);
}

// The blocks a query tile may cache: a tile that visits more recomputes its scores.
inline index_t mass_cache_blocks(const Problem& p, index_t cache_floats) {
  const index_t per_block = kBlockKV * kBlockQ;                   // the block's weights
  const index_t want = (p.seq_kv + kBlockKV - 1) / kBlockKV + 2;  // (the RoPE sink cut may split one)
  return std::min(want, std::max<index_t>(cache_floats, 0) / per_block);
}

// Floats of workspace one mass task needs (every part but the last a multiple of 64 floats:
// aligned).
inline index_t sink_mass_workspace_floats(const Problem& p, index_t cache_blocks, bool whole_k) {
  const index_t dqk_pad = tile::round_up(std::max<index_t>(p.dim_qk, 1), tile::kWidth);
  return 2 * p.dim_qk * kBlockQ                // Q^T, and Q^T for the sink keys (RoPE)
         + kBlockKV * kBlockQ                  // S^T, then the weights
         + kBlockQ                             // the lanes' factor for one block
         + kBlockKV * dqk_pad                  // packed K (strided K only)
         + cache_blocks * kBlockKV * kBlockQ   // the cached blocks
         + (whole_k ? p.seq_kv * dqk_pad : 0)  // the head's K (RoPE on load, KV segments)
         + 2 * p.seq_kv;                       // the head's mass and late mass per key
}

// Head h of batch b: the mass and (want_late) the mass from the rows at or after each key, into
// *tot_out / *late_out [0 .. Skv) (workspace). cache_blocks: mass_cache_blocks; blocks and
// block_max: scratch of the task.
//
// Any normalization policy (policy/normalize.hpp): Norm::update turns a block of scores into
// weights P in place, relative to the lanes' running max m_k after block k when the policy
// keeps one (kRescales: the softmax family and softpick, log2 units), and finalize gives the
// row factor of O = out_scale * sum_j P_j v_j. So the weight of key j of block k is
//   w = P * 2^(m_k - m) * out_scale   (0 where m_k = -inf: the lane saw nothing up to block k)
// with m the final max, and P * out_scale without a running max (sigmoid). Affine-scaled adds
// beta_i for every key row i sees by the mask (its alpha_i is in out_scale), as its V sum does.
template <class Norm, class Mask>
void sink_mass_task(const KernelArgs& a, const Mask& mask_all, index_t b, index_t h, bool want_late,
                    index_t cache_blocks, Workspace& ws, std::vector<MassBlock>& blocks, std::vector<float>& block_max,
                    float** tot_out, float** late_out) {
  using tile::vf;
  const FlushToZeroScope ftz;  // masked lanes underflow in exp2 (kernel/fp_env.hpp)
  decltype(auto) mask = policy::bind(mask_all, b, h);
  const Problem& p = a.p;
  const index_t g = p.kv_head(h);
  const index_t dqk_pad = tile::round_up(std::max<index_t>(p.dim_qk, 1), tile::kWidth);
  // RoPE on load and KV segments load the head's K once, rotated, into krot (rotating per
  // query tile cost 1.21x the plain call; bench/RESULTS.md, run S).
  const bool whole_k = a.rope != nullptr || a.nseg > 0;
  // No memory (*tot_out stays null): the task ends at once and the call reports it.
  float* qt = ws.floats(static_cast<std::size_t>(sink_mass_workspace_floats(p, cache_blocks, whole_k)), *a.no_memory,
                        "workspace (a sink_mass task's tiles and key rows)");  // (Dqk, BQ)
  if (qt == nullptr) return;
  float* qt_sink = qt + p.dim_qk * kBlockQ;                 // (Dqk, BQ)
  float* st = qt_sink + p.dim_qk * kBlockQ;                 // (BKV, BQ)
  float* lane_f = st + kBlockKV * kBlockQ;                  // (BQ)
  float* kpack = lane_f + kBlockQ;                          // (BKV, Dqk_pad)
  float* cache = kpack + kBlockKV * dqk_pad;                // (blocks, BKV, BQ)
  float* krot = cache + cache_blocks * kBlockKV * kBlockQ;  // (Skv, Dqk_pad), whole_k
  float* tot = krot + (whole_k ? p.seq_kv * dqk_pad : 0);   // (Skv)
  float* late = tot + p.seq_kv;                             // (Skv)
  std::fill(tot, tot + 2 * p.seq_kv, 0.f);
  *tot_out = tot;
  *late_out = late;
  const float kInf = std::numeric_limits<float>::infinity();
  const float sink2 = a.sink_logits ? a.sink_logits[h] * kLog2e : -kInf;
  if (whole_k) load_keys(krot, dqk_pad, a, b, g, 0, p.seq_kv);

  for (index_t i0 = 0; i0 < p.seq_q; i0 += kBlockQ) {
    const index_t nq = std::min(kBlockQ, p.seq_q - i0);
    const int vecs = static_cast<int>((nq + tile::kWidth - 1) / tile::kWidth);
    // Q^T carries scale * log2(e). RoPE on load rotates the rows through kpack, once more at
    // the capped position for the sink keys when they see another query (as prefill_task).
    const auto pack_q = [&](float* dst, bool sink) {
      if (!a.rope) {
        tile::pack_transposed(dst, a.q.ptr(b, i0, h), a.q.stride[1], a.q.stride[3], nq, p.dim_qk, a.scale * kLog2e);
        return;
      }
      for (index_t r = 0; r < nq; ++r) {
        index_t pos = a.rope_q0 + i0 + r;
        if (sink) pos = std::min(pos, a.rope_sink_qmax);
        rope_row(kpack + r * dqk_pad, a.q.ptr(b, i0 + r, h), a.q.stride[3], p.dim_qk, a.rope->config(),
                 a.rope->row(pos));
      }
      tile::pack_transposed(dst, kpack, dqk_pad, 1, nq, p.dim_qk, a.scale * kLog2e);
    };
    pack_q(qt, false);
    if (a.rope_two_queries()) pack_q(qt_sink, true);
    // The tile's visible blocks, in the order both sweeps visit them; a block that straddles
    // the end of the sink keys of a two-query RoPE is two.
    blocks.clear();
    policy::for_each_kv_block_rows(
        mask, i0, i0 + nq, kBlockKV, tile::kWidth,
        [&](index_t j0, index_t j1, policy::BlockKind kind, policy::RowSpan rows) {
          const int v0 = static_cast<int>(rows.lo / tile::kWidth);
          const int v1 = std::min(vecs, static_cast<int>((rows.hi + tile::kWidth - 1) / tile::kWidth));
          if (v0 >= v1) return;
          const MassBlock k{j0,  j1 - j0, v0, v1, index_t{v0} * tile::kWidth, std::min(nq, index_t{v1} * tile::kWidth),
                            kind};
          const index_t cut = a.rope_sink_keys;
          if (a.rope_two_queries() && j0 < cut && cut < j1) {
            MassBlock lo = k, hi = k;
            lo.nk = cut - j0;
            hi.j0 = cut;
            hi.nk = j1 - cut;
            blocks.push_back(lo);
            blocks.push_back(hi);
          } else {
            blocks.push_back(k);
          }
        });
    const bool cached = static_cast<index_t>(blocks.size()) <= cache_blocks;
    block_max.resize(blocks.size() * static_cast<std::size_t>(kBlockQ));
    // Block n's weights P (Norm::update on its scored, masked S^T) into the cache or `st`;
    // f(block, P, n). Both sweeps run it from a fresh state unless the weights are cached:
    // the same updates give the same P.
    const auto weights = [&](auto&& f) {
      auto state = Norm::init(a, mask, b, h, i0, nq);
      const auto block = [&](const MassBlock& k, std::size_t n) {
        float* d = cached ? cache + static_cast<index_t>(n) * kBlockKV * kBlockQ : st;
        const float* kp = whole_k ? krot + k.j0 * dqk_pad : a.k.ptr(b, k.j0, g);
        index_t ld_k = whole_k ? dqk_pad : a.k.stride[1];
        if (!whole_k && a.k.stride[3] != 1) {
          tile::pack_rows(kpack, dqk_pad, kp, ld_k, a.k.stride[3], k.nk, p.dim_qk, dqk_pad);
          kp = kpack;
          ld_k = dqk_pad;
        }
        const float* q_blk = a.rope_two_queries() && k.j0 < a.rope_sink_keys ? qt_sink : qt;
        mass_kqt(d + k.l0, kp, ld_k, k.nk, q_blk + k.l0, p.dim_qk, k.v1 - k.v0);
        const policy::ScoreTile t{d + k.l0,    kBlockQ, k.nk, k.v1 - k.v0, b,       h,      i0 + k.l0,
                                  k.l1 - k.l0, k.j0,    k.nk, 1,           kBlockQ, nullptr};
        policy::RuntimeScore::apply(a, t);
        if (k.kind == policy::BlockKind::partial) policy::apply_mask(mask, t);
        tile::Lanes alpha;
        Norm::update(state, d, kBlockQ, k.nk, k.v0, k.v1, alpha);
        if constexpr (Norm::kRescales) state.m.store(block_max.data() + n * kBlockQ);
        f(k, d, n);
      };
      std::size_t n = 0;
      policy::for_each_kv_block_rows(mask, i0, i0 + nq, kBlockKV, tile::kWidth,
                                     [&](index_t j0, index_t j1, policy::BlockKind, policy::RowSpan) {
                                       // none when no lane vector sees the block, two when it
                                       // straddles the end of the sink keys
                                       for (; n < blocks.size() && blocks[n].j0 >= j0 && blocks[n].j0 < j1; ++n)
                                         block(blocks[n], n);
                                     });
      return state;
    };
    // Sweep 1: the final state, the weights cached when they fit, each block's running max.
    const auto state = weights([](const MassBlock&, float*, std::size_t) {});
    policy::RowFinal fin;
    fin.want_lse = false;
    Norm::finalize(state, sink2, fin);
    alignas(64) float out_scale[kBlockQ], beta[kBlockQ] = {};
    for (index_t r = 0; r < kBlockQ; ++r) out_scale[r] = r < nq ? fin.out_scale[r] : 0.f;  // (padding lanes)
    if constexpr (Norm::kSumsV)
      for (index_t r = 0; r < nq; ++r) out_scale[r] *= state.alpha[r], beta[r] = state.beta[r];
    alignas(64) float m_end[kBlockQ];
    if constexpr (Norm::kRescales) state.m.store(m_end);

    // Sweep 2: w = P * lane factor, summed over the lanes of each key row.
    const index_t pos0 = p.query_pos(i0);  // lane q sits at position pos0 + q
    // Padding lanes (past nq) hold the scores of zero queries, whose weights lane_f zeroes,
    // except that 0 * inf is NaN when a key row holds inf: they are dropped by lane instead.
    const int c_tail = nq % tile::kWidth != 0 ? vecs - 1 : -1;  // the vector that has some
    alignas(64) float lane_of[tile::kWidth];
    for (int x = 0; x < tile::kWidth; ++x) lane_of[x] = static_cast<float>(x);
    const auto keep = vf::load_aligned(lane_of) < vf(static_cast<float>(nq % tile::kWidth));
    const auto sum_rows = [&](const MassBlock& k, float* d, std::size_t n) {
      for (int c = k.v0; c < k.v1; ++c) {
        const index_t x = c * tile::kWidth;
        vf fc = vf::load_aligned(out_scale + x);
        if constexpr (Norm::kRescales) {
          const vf mk = vf::load_unaligned(block_max.data() + n * kBlockQ + x);
          fc = xsimd::select(mk == vf(-kInf), vf(0.f), tile::exp2(mk - vf::load_aligned(m_end + x)) * fc);
        }
        fc.store_aligned(lane_f + x);
      }
      for (index_t r = 0; r < k.nk; ++r) {
        float* row = d + r * kBlockQ;
        const index_t j = k.j0 + r;
        if constexpr (Norm::kSumsV) {  // + beta_i where the mask shows key j to row i
          for (index_t q = k.l0; q < index_t{k.v1} * tile::kWidth; ++q) {
            row[q] = q < k.l1 ? row[q] * lane_f[q] : 0.f;
            if (q < k.l1 && (k.kind == policy::BlockKind::full || mask.visible(i0 + q, j))) row[q] += beta[q];
          }
        }
        vf acc(0.f);
        for (int c = k.v0; c < k.v1; ++c) {
          vf w = vf::load_aligned(row + c * tile::kWidth);
          if constexpr (!Norm::kSumsV) {
            w = w * vf::load_aligned(lane_f + c * tile::kWidth);
            if (c == c_tail) w = xsimd::select(keep, w, vf(0.f));
            if (want_late) w.store_aligned(row + c * tile::kWidth);
          }
          acc += w;
        }
        const float sum = tile::hsum(acc);
        tot[j] += sum;
        if (!want_late) continue;
        const index_t cut = j - pos0;  // lanes >= cut are at or after key j
        if (cut <= k.l0) {
          late[j] += sum;
        } else if (cut < k.l1) {
          float s = 0.f;
          for (index_t q = cut; q < k.l1; ++q) s += row[q];
          late[j] += s;
        }
      }
    };
    if (cached) {
      for (std::size_t n = 0; n < blocks.size(); ++n)
        sum_rows(blocks[n], cache + static_cast<index_t>(n) * kBlockKV * kBlockQ, n);
    } else {
      weights(sum_rows);
    }
  }
}

// The keys of a sink_mass call: one view k, or (segmented) segments[0, count) whose K rows
// follow each other (their V is not read).
struct MassKeys {
  TensorView<const float> k;
  bool segmented = false;
  const KvSegment* segments = nullptr;
  index_t count = 0;
};

// sink_mass below; cache_floats: kMassCacheFloats (tests pass 0 to take the recomputing sweep).
inline Status sink_mass_impl(const Problem& p, const TensorView<const float>& q, const MassKeys& keys,
                             const TensorView<float>& mass, const TensorView<float>& alpha, const Options& opt,
                             const Executor& ex, index_t cache_floats) {
  SINKATTN_TRY(check_problem(p));
  SINKATTN_TRY(check_view("q", q, {p.batch, p.seq_q, p.heads_q, p.dim_qk}, kBSHD));
  SINKATTN_TRY(check_view("mass", mass, {p.batch, p.heads_q, p.seq_kv, 1}, kBHS1));
  SINKATTN_TRY(check_writable("mass", mass));
  SINKATTN_TRY(check_no_alias("mass", mass, "q", q));
  const bool want_alpha = alpha.data != nullptr || !alpha.empty();
  if (want_alpha) {
    SINKATTN_TRY(check_view("alpha", alpha, {p.batch, p.heads_q, p.seq_kv, 1}, kBHS1));
    SINKATTN_TRY(check_writable("alpha", alpha));
    SINKATTN_TRY(check_no_alias("alpha", alpha, "q", q));
    SINKATTN_TRY(check_no_alias("alpha", alpha, "mass", mass));
  }
  const auto keys_no_alias = [&](const char* name, const TensorView<const float>& view) {
    SINKATTN_TRY(check_no_alias("mass", mass, name, view));
    if (want_alpha) SINKATTN_TRY(check_no_alias("alpha", alpha, name, view));
    return Status{};
  };
  std::vector<index_t> starts;
  if (keys.segmented) {
    starts.resize(static_cast<std::size_t>(std::max<index_t>(keys.count, 0) + 1));
    SINKATTN_TRY(check_segments(p, keys.segments, keys.count, false, starts.data(), keys_no_alias));
  } else {
    SINKATTN_TRY(check_view("k", keys.k, {p.batch, p.seq_kv, p.heads_kv, p.dim_qk}, kBSHD));
    SINKATTN_TRY(keys_no_alias("k", keys.k));
  }

  // The options as forward() checks them; the gate and opt.lse play no part.
  Options checked = opt;
  checked.gate = NoGate{};
  checked.lse = {};
  SINKATTN_TRY(check_options(p, checked));
  const index_t B = p.batch, Hq = p.heads_q, Sq = p.seq_q, Skv = p.seq_kv;
  if (B == 0 || Hq == 0 || Skv == 0) return {};

  KernelArgs a = make_args(p, q, keys.k, {}, {}, checked);  // (no V, no O)
  if (keys.segmented) {
    a.seg = keys.segments;
    a.seg_start = starts.data();
    a.nseg = keys.count;
  }
  const index_t cache_blocks = mass_cache_blocks(p, cache_floats);
  NoMemory no_memory;
  a.no_memory = &no_memory;
  const auto run = [&](auto norm, const KernelArgs& pa, const auto& mask) {
    using Norm = decltype(norm);
    ex.run(B * Hq, [&](index_t task) {
      const index_t b = task / Hq, h = task % Hq;
      float *tot = nullptr, *late = nullptr;
      std::vector<MassBlock> blocks;
      std::vector<float> block_max;
      blocks.reserve(static_cast<std::size_t>(Skv / kBlockKV + 4));
      sink_mass_task<Norm>(pa, mask, b, h, want_alpha, cache_blocks, thread_workspace(), blocks, block_max, &tot,
                           &late);
      if (tot == nullptr) return;  // no memory (noted)
      for (index_t j = 0; j < Skv; ++j) {
        mass(b, h, j, 0) = tot[j];
        if (!want_alpha) continue;
        const index_t rows = std::clamp<index_t>(Sq - std::max<index_t>(0, j - (Skv - Sq)), 0, Sq);
        alpha(b, h, j, 0) = rows > 0 ? late[j] / static_cast<float>(rows) : 0.f;
      }
    });
  };
  return with_mask_policy(a, opt, [&](const KernelArgs& pa, const auto& mask) -> Status {
    return std::visit(
        [&](const auto& n) -> Status {
          using N = std::decay_t<decltype(n)>;
          if constexpr (std::is_same_v<N, Softmax> || std::is_same_v<N, SinkSoftmax>)
            run(policy::OnlineSoftmax{}, pa, mask);
          else if constexpr (std::is_same_v<N, Sigmoid>)
            run(policy::SigmoidNorm{}, pa, mask);
          else if constexpr (std::is_same_v<N, Softpick>)
            run(policy::SoftpickNorm{}, pa, mask);
          else if constexpr (std::is_same_v<N, ScalableSoftmax>)
            run(policy::ScalableSoftmaxNorm{}, pa, mask);
          else if constexpr (std::is_same_v<N, AffineScaled>)
            run(policy::AffineScaledNorm{}, pa, mask);
          else
            return fail(Errc::unsupported, "norm: sink_mass has no fast path for this normalization yet");
          return no_memory.status();
        },
        opt.norm);
  });
}

}  // namespace detail

// mass (logical [B, Hq, Skv, 1]) = sum over query rows i of w_ij; alpha (same shape; empty: not
// computed) = the sink metric: the mean of w_ij over the rows with position p_i >= j, 0 when
// there is none (reference/sinks.hpp fixes the definitions). The output gate plays no part.
inline Status sink_mass(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
                        const TensorView<float>& mass, const TensorView<float>& alpha = {}, const Options& opt = {},
                        const Executor& ex = Executor::serial()) {
  return detail::sink_mass_impl(p, q, {k}, mass, alpha, opt, ex, detail::kMassCacheFloats);
}

// The same with the keys as segments read in place (core/kv_segments.hpp: a streaming cache's
// sink, window and chunk pieces; key j runs over them concatenated, p.seq_kv keys in all). Only
// their K is read: V may be empty.
inline Status sink_mass(const Problem& p, const TensorView<const float>& q, const KvSegment* segments, index_t count,
                        const TensorView<float>& mass, const TensorView<float>& alpha = {}, const Options& opt = {},
                        const Executor& ex = Executor::serial()) {
  return detail::sink_mass_impl(p, q, {{}, true, segments, count}, mass, alpha, opt, ex, detail::kMassCacheFloats);
}

}  // namespace sinkattn
