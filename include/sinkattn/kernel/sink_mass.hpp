#pragma once
// Sink diagnostics in the fast path (SEMANTICS section 6): the attention mass each key
// receives, sum_i w_ij, and the sink metric alpha_j (the mean of w_ij over the rows at or after
// key j by position), per (batch, query head).
//
//   sinkattn::sink_mass(problem, q, k, mass, alpha, options, executor)
//
// Two sweeps over each query tile's visible key blocks, as the contract allows (one task per
// (b, h), S^T = K . Q^T as in the fused loop): the first keeps each query lane's running max m
// and sum l (log2 units, the learned sink's logit joined at the end), the second sums the
// weights w = 2^(y - m) / l over the lanes of each key row. Keeping m and l apart, rather than
// one LSE, keeps a dominant key's weight exact at any logit size. The first sweep keeps the
// terms it sums (kMassCacheFloats), so the second only rescales them: no second GEMM. Each task owns its head's
// mass row: the result does not depend on the executor.
// A row with a NaN anywhere in its scores adds NaN to every key it sees.
// Supported: every mask (the flat policies) and score option with Softmax and SinkSoftmax
// (whose sink takes its share of each row and gives none to a key); RoPE on load, the other
// normalizations are Errc::unsupported (reference::sink_mass has them all); K is one view (no
// KV segments).

#include <algorithm>
#include <cmath>
#include <limits>
#include <variant>
#include <vector>

#include "sinkattn/kernel/forward.hpp"
#include "sinkattn/tile/math.hpp"

namespace sinkattn {
namespace detail {

// Sweep 2 reads the first sweep's exponentials back instead of recomputing S^T when a query
// tile's visible blocks fit in this many floats (4 MiB: up to 252 key blocks per tile). Read back
// from L2/L3 they cost a fraction of the GEMM and exp2 they replace (bench/RESULTS.md, run S).
inline constexpr index_t kMassCacheFloats = index_t{1} << 20;

// One visible key block [j0, j0 + nk) of a query tile, computed for lane vectors [v0, v1),
// i.e. lanes [l0, l1).
struct MassBlock {
  index_t j0 = 0, nk = 0;
  int v0 = 0, v1 = 0;
  index_t l0 = 0, l1 = 0;
};

// The blocks a query tile may cache: a tile that visits more recomputes its scores.
inline index_t mass_cache_blocks(const Problem& p, index_t cache_floats) {
  const index_t per_block = kBlockKV * kBlockQ + kBlockQ;         // exponentials and the lanes' max
  const index_t want = (p.seq_kv + kBlockKV - 1) / kBlockKV + 2;  // (a segment may split one)
  return std::min(want, std::max<index_t>(cache_floats, 0) / per_block);
}

// Floats of workspace one mass task needs (every part but the last two a multiple of 64 floats:
// aligned).
inline index_t sink_mass_workspace_floats(const Problem& p, index_t cache_blocks) {
  const index_t dqk_pad = tile::round_up(std::max<index_t>(p.dim_qk, 1), tile::kWidth);
  return p.dim_qk * kBlockQ                               // Q^T
         + kBlockKV * kBlockQ                             // S^T, then the weights
         + 2 * kBlockQ                                    // the query lanes' max and 1 / sum
         + kBlockKV * dqk_pad                             // packed K (strided K only)
         + cache_blocks * (kBlockKV * kBlockQ + kBlockQ)  // the cached blocks
         + 2 * p.seq_kv;                                  // the head's mass and late mass per key
}

// Head h of batch b: the mass and (want_late) the mass from the rows at or after each key, into
// *tot_out / *late_out [0 .. Skv) (workspace). cache_blocks: mass_cache_blocks.
template <class Mask>
void sink_mass_task(const KernelArgs& a, const Mask& mask_all, index_t b, index_t h, bool want_late,
                    index_t cache_blocks, Workspace& ws, std::vector<MassBlock>& blocks, float** tot_out,
                    float** late_out) {
  using tile::vf;
  const FlushToZeroScope ftz;  // masked lanes underflow in exp2 (kernel/fp_env.hpp)
  decltype(auto) mask = policy::bind(mask_all, b, h);
  const Problem& p = a.p;
  const index_t g = p.kv_head(h);
  const index_t dqk_pad = tile::round_up(std::max<index_t>(p.dim_qk, 1), tile::kWidth);
  float* qt = ws.floats(static_cast<std::size_t>(sink_mass_workspace_floats(p, cache_blocks)));  // (Dqk, BQ)
  float* st = qt + p.dim_qk * kBlockQ;                                                           // (BKV, BQ)
  float* mrow = st + kBlockKV * kBlockQ;                                                         // (BQ)
  float* inv_l = mrow + kBlockQ;                                                                 // (BQ)
  float* kpack = inv_l + kBlockQ;                                                                // (BKV, Dqk_pad)
  float* cache = kpack + kBlockKV * dqk_pad;                                                     // (blocks, BKV, BQ)
  float* cache_max = cache + cache_blocks * kBlockKV * kBlockQ;                                  // (blocks, BQ)
  float* tot = cache_max + cache_blocks * kBlockQ;                                               // (Skv)
  float* late = tot + p.seq_kv;                                                                  // (Skv)
  std::fill(tot, tot + 2 * p.seq_kv, 0.f);
  *tot_out = tot;
  *late_out = late;
  const float kInf = std::numeric_limits<float>::infinity();
  const float sink2 = a.sink_logits ? a.sink_logits[h] * kLog2e : -kInf;

  for (index_t i0 = 0; i0 < p.seq_q; i0 += kBlockQ) {
    const index_t nq = std::min(kBlockQ, p.seq_q - i0);
    const int vecs = static_cast<int>((nq + tile::kWidth - 1) / tile::kWidth);
    tile::pack_transposed(qt, a.q.ptr(b, i0, h), a.q.stride[1], a.q.stride[3], nq, p.dim_qk, a.scale * kLog2e);
    // The tile's visible blocks, in the order both sweeps visit them.
    blocks.clear();
    policy::for_each_kv_block_rows(mask, i0, i0 + nq, kBlockKV, tile::kWidth,
                                   [&](index_t j0, index_t j1, policy::BlockKind, policy::RowSpan rows) {
                                     const int v0 = static_cast<int>(rows.lo / tile::kWidth);
                                     const int v1 =
                                         std::min(vecs, static_cast<int>((rows.hi + tile::kWidth - 1) / tile::kWidth));
                                     if (v0 < v1)
                                       blocks.push_back({j0, j1 - j0, v0, v1, index_t{v0} * tile::kWidth,
                                                         std::min(nq, index_t{v1} * tile::kWidth)});
                                   });
    const bool cached = static_cast<index_t>(blocks.size()) <= cache_blocks;
    // S^T of the n-th block into dst (BKV, BQ), scored and masked, for its lane vectors.
    std::size_t n = 0;
    const auto scores = [&](float* dst, auto&& f) {
      n = 0;
      policy::for_each_kv_block_rows(
          mask, i0, i0 + nq, kBlockKV, tile::kWidth, [&](index_t j0, index_t, policy::BlockKind kind, policy::RowSpan) {
            if (n == blocks.size() || blocks[n].j0 != j0) return;  // (no lane vector sees it)
            const MassBlock& k = blocks[n];
            float* d = cached ? cache + static_cast<index_t>(n) * kBlockKV * kBlockQ : dst;
            const float* kp = a.k.ptr(b, j0, g);
            index_t ld_k = a.k.stride[1];
            if (a.k.stride[3] != 1) {
              tile::pack_rows(kpack, dqk_pad, kp, ld_k, a.k.stride[3], k.nk, p.dim_qk, dqk_pad);
              kp = kpack;
              ld_k = dqk_pad;
            }
            tile::mma_kqt(d + k.l0, kBlockQ, kp, ld_k, k.nk, qt + k.l0, p.dim_qk, k.v1 - k.v0);
            const policy::ScoreTile t{d + k.l0,    kBlockQ, k.nk, k.v1 - k.v0, b,       h,      i0 + k.l0,
                                      k.l1 - k.l0, j0,      k.nk, 1,           kBlockQ, nullptr};
            policy::RuntimeScore::apply(a, t);
            if (kind == policy::BlockKind::partial) policy::apply_mask(mask, t);
            f(k, d, n++);
          });
    };
    // Sweep 1: per lane the max m and sum l of 2^(y - m) (a lane whose max is still -inf
    // subtracts 0 instead, so that its sum stays 0, not NaN). A cached block keeps its terms
    // 2^(y - base) in place and its lanes' max (-inf: the block gave the lane nothing).
    vf m[tile::kQVecs], l[tile::kQVecs];
    for (int c = 0; c < tile::kQVecs; ++c) m[c] = vf(-kInf), l[c] = vf(0.f);
    scores(st, [&](const MassBlock& k, float* d, std::size_t nb) {
      for (int c = k.v0; c < k.v1; ++c) {
        vf mx = m[c];
        for (index_t r = 0; r < k.nk; ++r) mx = xsimd::max(mx, vf::load_aligned(d + r * kBlockQ + c * tile::kWidth));
        const vf base = xsimd::select(mx == vf(-kInf), vf(0.f), mx);
        vf s = l[c] * tile::exp2(m[c] - base);
        for (index_t r = 0; r < k.nk; ++r) {
          float* y = d + r * kBlockQ + c * tile::kWidth;
          const vf e = tile::exp2(vf::load_aligned(y) - base);
          if (cached) e.store_aligned(y);
          s += e;
        }
        if (cached) mx.store_aligned(cache_max + static_cast<index_t>(nb) * kBlockQ + c * tile::kWidth);
        m[c] = mx;
        l[c] = s;
      }
    });
    for (int c = 0; c < tile::kQVecs; ++c) {  // the sink joins every row; then 1 / l (0: no mass)
      const vf mx = xsimd::max(m[c], vf(sink2));
      const vf base = xsimd::select(mx == vf(-kInf), vf(0.f), mx);
      const vf s = l[c] * tile::exp2(m[c] - base) + tile::exp2(vf(sink2) - base);
      base.store_aligned(mrow + c * tile::kWidth);
      xsimd::select(s > vf(0.f), vf(1.f) / s, vf(0.f)).store_aligned(inv_l + c * tile::kWidth);
    }
    std::fill(inv_l + nq, inv_l + kBlockQ, 0.f);  // padding lanes (zero queries) weigh nothing
    // Sweep 2: the weights, summed over the lanes of each key row: w = 2^(y - m) / l from
    // recomputed scores, or from a cached block w = 2^(y - base) * 2^(max - m) / l (0 where
    // the block's max is -inf: the lane saw none of its keys).
    const index_t pos0 = p.query_pos(i0);  // lane q sits at position pos0 + q
    const auto sum_rows = [&](const MassBlock& k, float* d, auto&& weight) {
      for (index_t r = 0; r < k.nk; ++r) {
        float* row = d + r * kBlockQ;
        vf acc(0.f);
        for (int c = k.v0; c < k.v1; ++c) {
          const vf w = weight(vf::load_aligned(row + c * tile::kWidth), c);
          if (want_late) w.store_aligned(row + c * tile::kWidth);
          acc += w;
        }
        const index_t j = k.j0 + r;
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
      for (std::size_t nb = 0; nb < blocks.size(); ++nb) {
        const MassBlock& k = blocks[nb];
        vf f[tile::kQVecs];
        for (int c = k.v0; c < k.v1; ++c) {
          const index_t x = static_cast<index_t>(nb) * kBlockQ + c * tile::kWidth;
          f[c] = tile::exp2(vf::load_aligned(cache_max + x) - vf::load_aligned(mrow + c * tile::kWidth)) *
                 vf::load_aligned(inv_l + c * tile::kWidth);
        }
        sum_rows(k, cache + static_cast<index_t>(nb) * kBlockKV * kBlockQ,
                 [&](const vf& e, int c) { return e * f[c]; });
      }
    } else {
      scores(st, [&](const MassBlock& k, float* d, std::size_t) {
        sum_rows(k, d, [&](const vf& y, int c) {
          return tile::exp2(y - vf::load_aligned(mrow + c * tile::kWidth)) * vf::load_aligned(inv_l + c * tile::kWidth);
        });
      });
    }
  }
}

// sink_mass below; cache_floats: kMassCacheFloats (tests pass 0 to take the recomputing sweep).
inline Status sink_mass_impl(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
                             const TensorView<float>& mass, const TensorView<float>& alpha, const Options& opt,
                             const Executor& ex, index_t cache_floats) {
  SINKATTN_TRY(check_problem(p));
  SINKATTN_TRY(check_view("q", q, {p.batch, p.seq_q, p.heads_q, p.dim_qk}, kBSHD));
  SINKATTN_TRY(check_view("k", k, {p.batch, p.seq_kv, p.heads_kv, p.dim_qk}, kBSHD));
  SINKATTN_TRY(check_view("mass", mass, {p.batch, p.heads_q, p.seq_kv, 1}, kBHS1));
  SINKATTN_TRY(check_writable("mass", mass));
  SINKATTN_TRY(check_no_alias("mass", mass, "q", q));
  SINKATTN_TRY(check_no_alias("mass", mass, "k", k));
  const bool want_alpha = alpha.data != nullptr || !alpha.empty();
  if (want_alpha) {
    SINKATTN_TRY(check_view("alpha", alpha, {p.batch, p.heads_q, p.seq_kv, 1}, kBHS1));
    SINKATTN_TRY(check_writable("alpha", alpha));
    SINKATTN_TRY(check_no_alias("alpha", alpha, "q", q));
    SINKATTN_TRY(check_no_alias("alpha", alpha, "k", k));
    SINKATTN_TRY(check_no_alias("alpha", alpha, "mass", mass));
  }
  if (!std::holds_alternative<Softmax>(opt.norm) && !std::holds_alternative<SinkSoftmax>(opt.norm))
    return fail(Errc::unsupported,
                "norm: sink_mass supports Softmax and SinkSoftmax in the fast path (reference::sink_mass has all)");
  if (opt.rope.table) return fail(Errc::unsupported, "rope: sink_mass has no RoPE on load (rotate q and k first)");

  // The options as forward() checks them; the gate and opt.lse play no part.
  Options checked = opt;
  checked.gate = NoGate{};
  checked.lse = {};
  SINKATTN_TRY(check_options(p, checked));
  const index_t B = p.batch, Hq = p.heads_q, Sq = p.seq_q, Skv = p.seq_kv;
  if (B == 0 || Hq == 0 || Skv == 0) return {};

  const KernelArgs a = make_args(p, q, k, {}, {}, checked);  // (no V, no O)
  const index_t cache_blocks = mass_cache_blocks(p, cache_floats);
  return with_mask_policy(a, opt, [&](const KernelArgs& pa, const auto& mask) -> Status {
    ex.run(B * Hq, [&](index_t task) {
      const index_t b = task / Hq, h = task % Hq;
      float *tot = nullptr, *late = nullptr;
      std::vector<MassBlock> blocks;
      blocks.reserve(static_cast<std::size_t>(Skv / kBlockKV + 4));
      sink_mass_task(pa, mask, b, h, want_alpha, cache_blocks, thread_workspace(), blocks, &tot, &late);
      for (index_t j = 0; j < Skv; ++j) {
        mass(b, h, j, 0) = tot[j];
        if (!want_alpha) continue;
        const index_t rows = std::clamp<index_t>(Sq - std::max<index_t>(0, j - (Skv - Sq)), 0, Sq);
        alpha(b, h, j, 0) = rows > 0 ? late[j] / static_cast<float>(rows) : 0.f;
      }
    });
    return {};
  });
}

}  // namespace detail

// mass (logical [B, Hq, Skv, 1]) = sum over query rows i of w_ij; alpha (same shape; empty: not
// computed) = the sink metric: the mean of w_ij over the rows with position p_i >= j, 0 when
// there is none (reference/sinks.hpp fixes the definitions). The output gate plays no part.
inline Status sink_mass(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
                        const TensorView<float>& mass, const TensorView<float>& alpha = {}, const Options& opt = {},
                        const Executor& ex = Executor::serial()) {
  return detail::sink_mass_impl(p, q, k, mass, alpha, opt, ex, detail::kMassCacheFloats);
}

}  // namespace sinkattn
