#pragma once
// The fp64 reference's own statement of which keys a query sees (SEMANTICS.md section 2).
//
// Written for clarity, one predicate per mask kind, sharing no code with the fast path: the
// kernels' tile masks are tested against `visible()` pair by pair. Nothing here is fast; a
// whole attention row costs O(Skv) predicate calls, which is what the reference can afford.
//
// Conventions fixed here (the contract leaves them open, the kernels must agree):
// - Query position p_i = i + (Skv - Sq) + offset for the masks that carry an offset (Causal,
//   SlidingWindow, Block); Neighborhood and BlockSparse use the raw row index i.
// - Block: positions below 0 are in no block (they only see global keys). Ragged blocks: the
//   block of x is the last boundary <= x; the last boundary's block extends to infinity.
//   "The last block" is the block holding the last key position Skv - 1; a query whose
//   p_i lies in that block sees every key (subject to `causal`). `causal` restricts every
//   visible pair, global keys and the last block included, to j <= p_i.

#include <algorithm>
#include <cstdlib>
#include <variant>
#include <vector>

#include "sinkattn/core/options.hpp"
#include "sinkattn/core/types.hpp"

namespace sinkattn {
namespace reference {
namespace detail {

// Floor division for a possibly negative numerator (b > 0).
inline index_t floor_div(index_t a, index_t b) {
  const index_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// ---- Sliding window + sink tokens --------------------------------------------------------
inline bool window_visible(const SlidingWindowMask& m, index_t pos, index_t j) {
  const bool right_ok = m.right < 0 || j <= pos + m.right;
  const bool left_ok = m.left < 0 || j >= pos - m.left;
  const bool is_sink = j < m.sink_tokens;
  return right_ok && (left_ok || is_sink);
}

// ---- Block-diagonal ------------------------------------------------------------------------
// Block index of a position; -1 for negative positions (they are in no block).
inline index_t block_of(const BlockMask& m, index_t x) {
  if (x < 0) return -1;
  if (m.boundaries.empty()) return x / m.block_size;
  // Count of boundaries <= x, minus one (boundaries[0] == 0, strictly ascending).
  const auto it = std::upper_bound(m.boundaries.begin(), m.boundaries.end(), x);
  return static_cast<index_t>(it - m.boundaries.begin()) - 1;
}

inline bool block_visible(const BlockMask& m, index_t seq_kv, index_t pos, index_t j) {
  if (m.causal && j > pos) return false;
  if (j < m.global_keys) return true;
  const index_t qb = block_of(m, pos);
  if (qb < 0) return false;
  if (m.last_block_attends_all && seq_kv > 0 && qb == block_of(m, seq_kv - 1)) return true;
  return qb == block_of(m, j);
}

// ---- Neighborhood (NATTEN), one dimension --------------------------------------------------
// extent L, kernel k, dilation d, stride s; query coordinate qc, key coordinate kc.
inline bool natten_visible_1d(index_t L, index_t k, index_t d, index_t s, bool causal, index_t qc, index_t kc) {
  // Dilation splits the axis into d interleaved groups; q and kv must share a group, and
  // everything below works on the position inside the group.
  const index_t group = qc % d;
  if (kc % d != group) return false;
  const index_t len = (L - group + d - 1) / d;  // members of this group: ceil((L - group) / d)
  const index_t q = qc / d;
  const index_t kv = kc / d;
  if (causal) {
    // Leader: the last query of q's stride group, clipped to the axis.
    const index_t leader = std::min((q / s) * s + s - 1, len - 1);
    return kv <= q && leader - kv < k;
  }
  const index_t left = k / 2;
  const index_t right = k / 2 + (k % 2) - 1;  // odd k: k/2; even k: k/2 - 1
  // Leader: the middle query of q's stride group (right of the middle for even s), clipped.
  const index_t leader = std::min((q / s) * s + s / 2, len - 1);
  // The window is shifted inward at the borders so that it always holds k keys.
  const index_t center = std::max(left, std::min(leader, len - 1 - right));
  const index_t rel = kv - center;
  return -left <= rel && rel <= right;
}

inline bool neighborhood_visible(const NeighborhoodMask& m, index_t i, index_t j) {
  // The extra keys come first in K/V and every query sees them; grid token t is key extra + t.
  if (j < m.extra_keys) return true;
  // Tokens are row-major over extent[0] x ... x extent[rank-1]: the last dimension is fastest.
  index_t qi = i, kj = j - m.extra_keys;
  for (int dim = m.rank - 1; dim >= 0; --dim) {
    const index_t L = m.extent[dim];
    const index_t qc = qi % L, kc = kj % L;
    qi /= L;
    kj /= L;
    if (!natten_visible_1d(L, m.kernel[dim], m.dilation[dim], m.stride[dim], m.causal[dim], qc, kc)) return false;
  }
  return true;
}

// ---- Block-sparse lists --------------------------------------------------------------------
inline index_t block_sparse_row(const Problem& p, const BlockSparseMask& m, index_t b, index_t h, index_t i) {
  const index_t n_q_blocks = (p.seq_q + m.q_block - 1) / m.q_block;
  return (b * p.heads_q + h) * n_q_blocks + i / m.q_block;
}

inline bool block_listed(const BlockSparseMask& m, index_t row, index_t key_block) {
  for (index_t e = m.offsets[row]; e < m.offsets[row + 1]; ++e)
    if (m.indices[e] == key_block) return true;
  return false;
}

inline bool block_sparse_visible(const Problem& p, const BlockSparseMask& m, index_t b, index_t h, index_t i,
                                 index_t j) {
  if (!block_listed(m, block_sparse_row(p, m, b, h, i), j / m.kv_block)) return false;
  return !m.element_mask || m.element_mask(b, h, i, j);
}

// One mask bound to one problem. Holds a pointer to the caller's MaskSpec.
class MaskEval {
 public:
  MaskEval(const Problem& p, const MaskSpec& mask) : p_(p), mask_(&mask) {}

  // Offset-aligned query position for masks with an offset.
  index_t pos(index_t i, index_t offset) const { return i + (p_.seq_kv - p_.seq_q) + offset; }

  bool operator()(index_t b, index_t h, index_t i, index_t j) const {
    switch (mask_->index()) {
      case 0:  // FullMask
        return true;
      case 1: {
        const auto& m = std::get<CausalMask>(*mask_);
        return j <= pos(i, m.offset);
      }
      case 2: {
        const auto& m = std::get<SlidingWindowMask>(*mask_);
        return window_visible(m, pos(i, m.offset), j);
      }
      case 3: {
        const auto& m = std::get<BlockMask>(*mask_);
        return block_visible(m, p_.seq_kv, pos(i, m.offset), j);
      }
      case 4:
        return neighborhood_visible(std::get<NeighborhoodMask>(*mask_), i, j);
      case 5:
        return block_sparse_visible(p_, std::get<BlockSparseMask>(*mask_), b, h, i, j);
    }
    return false;
  }

  // vis[j] = visible(b, h, i, j) for every key j; vis is resized to Skv. Block-sparse looks up
  // its key-block list once per row instead of once per key.
  void row(index_t b, index_t h, index_t i, std::vector<unsigned char>& vis) const {
    vis.assign(static_cast<size_t>(p_.seq_kv), 0);
    if (const auto* m = std::get_if<BlockSparseMask>(mask_)) {
      const index_t r = block_sparse_row(p_, *m, b, h, i);
      for (index_t e = m->offsets[r]; e < m->offsets[r + 1]; ++e) {
        const index_t j0 = m->indices[e] * m->kv_block;
        const index_t j1 = std::min(j0 + m->kv_block, p_.seq_kv);
        for (index_t j = j0; j < j1; ++j) vis[j] = !m->element_mask || m->element_mask(b, h, i, j);
      }
      return;
    }
    for (index_t j = 0; j < p_.seq_kv; ++j) vis[j] = (*this)(b, h, i, j);
  }

 private:
  Problem p_;
  const MaskSpec* mask_;
};

}  // namespace detail

// Visibility of key j for query row i of (batch b, query head h) under `mask` (SEMANTICS
// section 2). The mask must be valid for `p` (see sinkattn::validate); nothing is checked here.
inline bool visible(const Problem& p, const MaskSpec& mask, index_t b, index_t h, index_t i, index_t j) {
  return detail::MaskEval(p, mask)(b, h, i, j);
}

}  // namespace reference
}  // namespace sinkattn
