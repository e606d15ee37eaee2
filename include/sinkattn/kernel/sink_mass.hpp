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
// one LSE, keeps a dominant key's weight exact at any logit size. Each task owns its head's
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

// Floats of workspace one mass task needs.
inline index_t sink_mass_workspace_floats(const Problem& p) {
  const index_t dqk_pad = tile::round_up(std::max<index_t>(p.dim_qk, 1), tile::kWidth);
  return p.dim_qk * kBlockQ    // Q^T
         + kBlockKV * kBlockQ  // S^T, then the weights
         + 2 * kBlockQ         // the query lanes' max and 1 / sum
         + kBlockKV * dqk_pad  // packed K (strided K only)
         + 2 * p.seq_kv;       // the head's mass and late mass per key
}

// Head h of batch b: the mass and (want_late) the mass from the rows at or after each key, into
// *tot_out / *late_out [0 .. Skv) (workspace).
template <class Mask>
void sink_mass_task(const KernelArgs& a, const Mask& mask_all, index_t b, index_t h, bool want_late, Workspace& ws,
                    float** tot_out, float** late_out) {
  using tile::vf;
  const FlushToZeroScope ftz;  // masked lanes underflow in exp2 (kernel/fp_env.hpp)
  decltype(auto) mask = policy::bind(mask_all, b, h);
  const Problem& p = a.p;
  const index_t g = p.kv_head(h);
  const index_t dqk_pad = tile::round_up(std::max<index_t>(p.dim_qk, 1), tile::kWidth);
  float* qt = ws.floats(static_cast<std::size_t>(sink_mass_workspace_floats(p)));  // (Dqk, BQ)
  float* st = qt + p.dim_qk * kBlockQ;                                             // (BKV, BQ)
  float* mrow = st + kBlockKV * kBlockQ;                                           // (BQ)
  float* inv_l = mrow + kBlockQ;                                                   // (BQ)
  float* kpack = inv_l + kBlockQ;                                                  // (BKV, Dqk_pad)
  float* tot = kpack + kBlockKV * dqk_pad;                                         // (Skv)
  float* late = tot + p.seq_kv;                                                    // (Skv)
  std::fill(tot, tot + 2 * p.seq_kv, 0.f);
  *tot_out = tot;
  *late_out = late;
  const float kInf = std::numeric_limits<float>::infinity();
  const float sink2 = a.sink_logits ? a.sink_logits[h] * kLog2e : -kInf;

  for (index_t i0 = 0; i0 < p.seq_q; i0 += kBlockQ) {
    const index_t nq = std::min(kBlockQ, p.seq_q - i0);
    const int vecs = static_cast<int>((nq + tile::kWidth - 1) / tile::kWidth);
    tile::pack_transposed(qt, a.q.ptr(b, i0, h), a.q.stride[1], a.q.stride[3], nq, p.dim_qk, a.scale * kLog2e);
    // S^T of one block for the lane vectors that can see it (policy/mask.hpp), scored and
    // masked; f(j0, nk, v0, v1, l0, l1) reads it.
    const auto scores = [&](auto&& f) {
      policy::for_each_kv_block_rows(
          mask, i0, i0 + nq, kBlockKV, tile::kWidth,
          [&](index_t j0, index_t j1, policy::BlockKind kind, policy::RowSpan rows) {
            const index_t nk = j1 - j0;
            const int v0 = static_cast<int>(rows.lo / tile::kWidth);
            const int v1 = std::min(vecs, static_cast<int>((rows.hi + tile::kWidth - 1) / tile::kWidth));
            if (v0 >= v1) return;
            const float* kp = a.k.ptr(b, j0, g);
            index_t ld_k = a.k.stride[1];
            if (a.k.stride[3] != 1) {
              tile::pack_rows(kpack, dqk_pad, kp, ld_k, a.k.stride[3], nk, p.dim_qk, dqk_pad);
              kp = kpack;
              ld_k = dqk_pad;
            }
            const index_t l0 = index_t{v0} * tile::kWidth, l1 = std::min(nq, index_t{v1} * tile::kWidth);
            tile::mma_kqt(st + l0, kBlockQ, kp, ld_k, nk, qt + l0, p.dim_qk, v1 - v0);
            const policy::ScoreTile t{st + l0, kBlockQ, nk, v1 - v0, b,       h,      i0 + l0,
                                      l1 - l0, j0,      nk, 1,       kBlockQ, nullptr};
            policy::RuntimeScore::apply(a, t);
            if (kind == policy::BlockKind::partial) policy::apply_mask(mask, t);
            f(j0, nk, v0, v1, l0, l1);
          });
    };
    // Sweep 1: per lane the max m and sum l of 2^(y - m) (a lane whose max is still -inf
    // subtracts 0 instead, so that its sum stays 0, not NaN).
    vf m[tile::kQVecs], l[tile::kQVecs];
    for (int c = 0; c < tile::kQVecs; ++c) m[c] = vf(-kInf), l[c] = vf(0.f);
    scores([&](index_t, index_t nk, int v0, int v1, index_t, index_t) {
      for (int c = v0; c < v1; ++c) {
        vf mx = m[c];
        for (index_t r = 0; r < nk; ++r) mx = xsimd::max(mx, vf::load_aligned(st + r * kBlockQ + c * tile::kWidth));
        const vf base = xsimd::select(mx == vf(-kInf), vf(0.f), mx);
        vf s = l[c] * tile::exp2(m[c] - base);
        for (index_t r = 0; r < nk; ++r) s += tile::exp2(vf::load_aligned(st + r * kBlockQ + c * tile::kWidth) - base);
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
    // Sweep 2: w = 2^(y - m) / l, summed over the lanes of each key row.
    const index_t pos0 = p.query_pos(i0);  // lane q sits at position pos0 + q
    scores([&](index_t j0, index_t nk, int v0, int v1, index_t l0, index_t l1) {
      for (index_t r = 0; r < nk; ++r) {
        float* row = st + r * kBlockQ;
        vf acc(0.f);
        for (int c = v0; c < v1; ++c) {
          const vf w =
              tile::exp2(vf::load_aligned(row + c * tile::kWidth) - vf::load_aligned(mrow + c * tile::kWidth)) *
              vf::load_aligned(inv_l + c * tile::kWidth);
          w.store_aligned(row + c * tile::kWidth);
          acc += w;
        }
        const index_t j = j0 + r;
        const float sum = tile::hsum(acc);
        tot[j] += sum;
        if (!want_late) continue;
        const index_t cut = j - pos0;  // lanes >= cut are at or after key j
        if (cut <= l0) {
          late[j] += sum;
        } else if (cut < l1) {
          float s = 0.f;
          for (index_t q = cut; q < l1; ++q) s += row[q];
          late[j] += s;
        }
      }
    });
  }
}

}  // namespace detail

// mass (logical [B, Hq, Skv, 1]) = sum over query rows i of w_ij; alpha (same shape; empty: not
// computed) = the sink metric: the mean of w_ij over the rows with position p_i >= j, 0 when
// there is none (reference/sinks.hpp fixes the definitions). The output gate plays no part.
inline Status sink_mass(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
                        const TensorView<float>& mass, const TensorView<float>& alpha = {}, const Options& opt = {},
                        const Executor& ex = Executor::serial()) {
  using namespace detail;
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

  // Pass 2: the weights, summed per key.
  const KernelArgs a = make_args(p, q, k, {}, {}, checked);  // (no V, no O)
  return with_mask_policy(a, opt, [&](const KernelArgs& pa, const auto& mask) -> Status {
    ex.run(B * Hq, [&](index_t task) {
      const index_t b = task / Hq, h = task % Hq;
      float *tot = nullptr, *late = nullptr;
      sink_mass_task(pa, mask, b, h, want_alpha, thread_workspace(), &tot, &late);
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

}  // namespace sinkattn
