#pragma once
// MoBA block selection (Mixture of Block Attention, Lu et al. 2025) as block-sparse lists.
//
//   sinkattn::MobaSelection sel;
//   Status s = sinkattn::moba_select(q, k, {/*block*/ 512, /*top_k*/ 3, /*causal*/ true}, sel);
//   opt.mask = sel.mask();                  // a BlockSparseMask borrowing sel's lists
//   s = sinkattn::forward(p, q, k, v, o, opt, ex);
//
// What is selected, per (batch b, query head h, query block qb of `block` rows):
//   - keys are cut into blocks of `block` keys; each block is represented by the mean of its
//     keys (the last block by the mean of the keys it has), per KV head g = h / (Hq / Hkv): the
//     query heads of one group score the same pooled keys (GQA), each head selects its own list;
//   - gate score of key block kb: the mean over the block's query rows of q_i . mean(k_kb). MoBA
//     gates per query token; our lists are per query block, and the mean of the rows' scores is
//     exact and cheap by linearity (= mean(q) . mean(k_kb)). The max over rows would keep a block
//     that one row wants; we chose the mean: one dot product per block pair, and a selection that
//     follows the block's queries as a whole. No softmax scale: it does not change the order;
//   - the query rows' own key blocks (positions p_i = i + Skv - Sq, bottom-right aligned like
//     CausalMask; one block, or two when Skv - Sq is not a multiple of `block`) are always
//     listed. With causal, keys right of a row's position are masked inside them by a
//     CausalElementMask (which the fast path turns into a key cap, policy/mask_block_sparse.hpp);
//   - top_k more blocks among the candidates, highest score first (ties: the lower block
//     index first, among scores equal as doubles: two scores equal in exact arithmetic can round
//     apart through the means and come out in either order; a NaN score counts as -inf).
//     Causal: the candidates are the blocks strictly before the first own block (wholly in
//     the past of every row of the query block: future blocks are never selected).
//     Non-causal: every block that is not an own block.
//   Note MoBA's code counts the current block in its k (gate = +inf, then top-k): its
//   top-k = 3 is our top_k = 2. Rows with no key position (p_i < 0 for every row, Sq > Skv)
//   get an empty list: output 0, LSE -inf.
//
// Lists are ascending, without repeats. Scores are computed in double; the selection runs
// serially (O(B Skv Hkv D + B Hq nqb nkb D), small beside the attention it prunes).

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "sinkattn/core/options.hpp"
#include "sinkattn/core/status.hpp"
#include "sinkattn/core/tensor_view.hpp"
#include "sinkattn/core/types.hpp"
#include "sinkattn/policy/mask_block_sparse.hpp"

namespace sinkattn {

struct MobaOptions {
  index_t block = 512;  // rows of a query block and keys of a key block
  index_t top_k = 3;    // blocks selected besides the own block(s)
  bool causal = true;
};

// The lists of one selection (CSR over r = (b * Hq + h) * n_q_blocks + qb, like
// BlockSparseMask) and what mask() needs to describe them.
struct MobaSelection {
  index_t block = 0;
  index_t shift = 0;  // Skv - Sq: query row i sits at key position i + shift
  bool causal = true;
  std::vector<index_t> offsets;
  std::vector<index_t> indices;

  // A BlockSparseMask borrowing this selection's lists: keep the selection alive and unchanged
  // while the mask is in use.
  BlockSparseMask mask() const {
    BlockSparseMask m;
    m.q_block = block;
    m.kv_block = block;
    m.offsets = offsets.data();
    m.indices = indices.data();
    if (causal) m.element_mask = CausalElementMask{shift};
    return m;
  }
};

namespace detail {

inline std::string moba_str(index_t v) { return std::to_string(v); }

inline Status moba_check(const TensorView<const float>& q, const TensorView<const float>& k, const MobaOptions& opt) {
  if (opt.block <= 0 || opt.block > kMaxIndex)
    return Status(Errc::out_of_range, "moba.block is " + moba_str(opt.block) + " (must be in (0, 2^40])");
  if (opt.top_k < 0) return Status(Errc::out_of_range, "moba.top_k is " + moba_str(opt.top_k) + " (must be >= 0)");
  static const char* const dims[4] = {"batch", "seq", "heads", "dim"};
  for (int d = 0; d < 4; ++d) {
    if (q.shape[d] < 0)
      return Status(Errc::negative_size,
                    std::string("q: shape[") + moba_str(d) + "] (" + dims[d] + ") is " + moba_str(q.shape[d]));
    if (k.shape[d] < 0)
      return Status(Errc::negative_size,
                    std::string("k: shape[") + moba_str(d) + "] (" + dims[d] + ") is " + moba_str(k.shape[d]));
    if (q.shape[d] > kMaxIndex || k.shape[d] > kMaxIndex)
      return Status(Errc::out_of_range, std::string(q.shape[d] > kMaxIndex ? "q" : "k") + ": shape[" + moba_str(d) +
                                            "] (" + dims[d] + ") exceeds 2^40 (kMaxIndex)");
  }
  if (k.shape[0] != q.shape[0])
    return Status(Errc::shape_mismatch,
                  "k: shape[0] (batch) is " + moba_str(k.shape[0]) + ", expected q's batch " + moba_str(q.shape[0]));
  if (k.shape[3] != q.shape[3])
    return Status(Errc::shape_mismatch,
                  "k: shape[3] (dim) is " + moba_str(k.shape[3]) + ", expected q's dim " + moba_str(q.shape[3]));
  const index_t hq = q.shape[2], hkv = k.shape[2];
  if (hq > 0 && (hkv == 0 || hq % hkv != 0))
    return Status(Errc::heads_not_divisible,
                  "q: shape[2] (heads) is " + moba_str(hq) + ", not a multiple of k's heads " + moba_str(hkv));
  if (!q.empty() && q.data == nullptr) return Status(Errc::null_data, "q: data is null");
  if (!k.empty() && k.data == nullptr) return Status(Errc::null_data, "k: data is null");
  return {};
}

}  // namespace detail

// Builds the MoBA lists of q [B, Sq, Hq, D] and k [B, Skv, Hkv, D] (any strides) into `out`.
// Errors name the bad argument (moba.block, moba.top_k, q/k shapes); `out` is then untouched.
inline Status moba_select(const TensorView<const float>& q, const TensorView<const float>& k, const MobaOptions& opt,
                          MobaSelection& out) {
  if (Status s = detail::moba_check(q, k, opt); !s.ok()) return s;
  const index_t B = q.shape[0], Sq = q.shape[1], Hq = q.shape[2], D = q.shape[3];
  const index_t Skv = k.shape[1], Hkv = k.shape[2];
  const index_t blk = opt.block, shift = Skv - Sq;
  const index_t nqb = (Sq + blk - 1) / blk, nkb = (Skv + blk - 1) / blk;
  const index_t group = Hkv > 0 ? std::max<index_t>(Hq / Hkv, 1) : 1;

  MobaSelection sel;
  sel.block = blk;
  sel.shift = shift;
  sel.causal = opt.causal;
  sel.offsets.reserve(static_cast<std::size_t>(B * Hq * nqb + 1));
  sel.offsets.push_back(0);

  std::vector<double> kbar(static_cast<std::size_t>(nkb * D));  // (nkb, D): pooled keys of one (b, g)
  std::vector<double> qbar(static_cast<std::size_t>(D));
  std::vector<double> score(static_cast<std::size_t>(nkb));
  std::vector<index_t> cand, list;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hq; ++h) {
      const index_t g = h / group;
      if (h % group == 0) {  // a new KV head: pool its keys once for the whole group
        std::fill(kbar.begin(), kbar.end(), 0.0);
        for (index_t j = 0; j < Skv; ++j) {
          double* row = kbar.data() + (j / blk) * D;
          const float* kj = k.ptr(b, j, g);
          for (index_t d = 0; d < D; ++d) row[d] += kj[d * k.stride[3]];
        }
        for (index_t kb = 0; kb < nkb; ++kb) {
          const double n = static_cast<double>(std::min(blk, Skv - kb * blk));
          for (index_t d = 0; d < D; ++d) kbar[kb * D + d] /= n;
        }
      }
      for (index_t qb = 0; qb < nqb; ++qb) {
        const index_t r0 = qb * blk, r1 = std::min(r0 + blk, Sq);
        const index_t P0 = r0 + shift, P1 = r1 - 1 + shift;  // key positions of the first and last row
        list.clear();
        // Own blocks: those holding the rows' positions (clipped to the keys).
        const index_t lo = std::max<index_t>(P0, 0), hi = std::min(P1, Skv - 1);
        const index_t own0 = lo <= hi ? lo / blk : 0, own1 = lo <= hi ? hi / blk : -1;
        for (index_t kb = own0; kb <= own1; ++kb) list.push_back(kb);
        cand.clear();
        if (opt.causal) {
          if (P0 >= 0 && own0 <= own1)
            for (index_t kb = 0; kb < own0; ++kb) cand.push_back(kb);
        } else {
          for (index_t kb = 0; kb < nkb; ++kb)
            if (kb < own0 || kb > own1) cand.push_back(kb);
        }
        if (opt.top_k > 0 && !cand.empty()) {
          std::fill(qbar.begin(), qbar.end(), 0.0);
          for (index_t i = r0; i < r1; ++i) {
            const float* qi = q.ptr(b, i, h);
            for (index_t d = 0; d < D; ++d) qbar[d] += qi[d * q.stride[3]];
          }
          for (index_t d = 0; d < D; ++d) qbar[d] /= static_cast<double>(r1 - r0);
          for (index_t kb : cand) {
            double s = 0.0;
            for (index_t d = 0; d < D; ++d) s += qbar[d] * kbar[kb * D + d];
            score[kb] = std::isnan(s) ? -std::numeric_limits<double>::infinity() : s;
          }
          const auto take =
              static_cast<std::ptrdiff_t>(std::min<index_t>(opt.top_k, static_cast<index_t>(cand.size())));
          std::partial_sort(cand.begin(), cand.begin() + take, cand.end(), [&](index_t x, index_t y) {
            return score[x] > score[y] || (score[x] == score[y] && x < y);
          });
          list.insert(list.end(), cand.begin(), cand.begin() + take);
        }
        std::sort(list.begin(), list.end());
        sel.indices.insert(sel.indices.end(), list.begin(), list.end());
        sel.offsets.push_back(static_cast<index_t>(sel.indices.size()));
      }
    }
  out = std::move(sel);
  return {};
}

}  // namespace sinkattn
