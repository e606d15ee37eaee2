#pragma once
// Block-sparse lists (FlexAttention's BlockMask, MoBA; SEMANTICS.md section 2): for (b, h) and
// query block qb (q_block rows, raw row index i), the visible key blocks (kv_block keys) are
// indices[offsets[r] .. offsets[r + 1]), r = (b * Hq + h) * n_q_blocks + qb, optionally
// restricted further by an element mask.
//
// The lists depend on (b, h): BlockSparseMaskPolicy::bind(b, h) gives the per-(b, h) view the
// loops use (policy::bind, policy/mask.hpp). The list block sizes need not match the kernel's
// tiles: a kernel block is Full only when it lies wholly inside listed blocks for every query
// block the tile touches and there is no element mask; it is Empty when it meets no listed
// block; else Partial (the exact test runs per element, apply_tile).

#include <algorithm>
#include <functional>
#include <limits>

#include "sinkattn/core/types.hpp"
#include "sinkattn/policy/mask.hpp"
#include "sinkattn/policy/score.hpp"

namespace sinkattn::policy {

struct BlockSparseView {
  index_t seq_kv = 0, q_block = 1, kv_block = 1, n_q_blocks = 0;
  index_t row0 = 0;  // CSR row of query block 0 of this (b, h)
  index_t b = 0, h = 0;
  const index_t* offsets = nullptr;
  const index_t* indices = nullptr;
  const std::function<bool(index_t, index_t, index_t, index_t)>* element = nullptr;  // null: none

  const index_t* list_begin(index_t qb) const { return indices + offsets[row0 + qb]; }
  const index_t* list_end(index_t qb) const { return indices + offsets[row0 + qb + 1]; }
  bool listed(index_t qb, index_t kb) const { return std::find(list_begin(qb), list_end(qb), kb) != list_end(qb); }
  bool element_ok(index_t i, index_t j) const { return element == nullptr || (*element)(b, h, i, j); }

  bool visible(index_t i, index_t j) const { return listed(i / q_block, j / kv_block) && element_ok(i, j); }

  BlockKind classify(index_t i0, index_t i1, index_t j0, index_t j1) const {
    const index_t qa = i0 / q_block, qz = (i1 - 1) / q_block, ka = j0 / kv_block, kz = (j1 - 1) / kv_block;
    bool any = false, all = element == nullptr;
    for (index_t qb = qa; qb <= qz; ++qb) {
      index_t hits = 0;  // listed key blocks of [ka, kz] (each counted once)
      for (index_t kb = ka; kb <= kz; ++kb) hits += listed(qb, kb);
      any = any || hits > 0;
      all = all && hits == kz - ka + 1;
    }
    return all ? BlockKind::full : any ? BlockKind::partial : BlockKind::empty;
  }

  // The span of the listed key blocks of the query blocks of rows [i0, i1).
  index_t kv_begin(index_t i0, index_t i1) const {
    index_t lo = std::numeric_limits<index_t>::max();
    for (index_t qb = i0 / q_block; qb <= (i1 - 1) / q_block; ++qb)
      for (const index_t* e = list_begin(qb); e != list_end(qb); ++e) lo = std::min(lo, *e * kv_block);
    return std::min(lo, kv_end(i0, i1));
  }
  index_t kv_end(index_t i0, index_t i1) const {
    index_t hi = 0;
    for (index_t qb = i0 / q_block; qb <= (i1 - 1) / q_block; ++qb)
      for (const index_t* e = list_begin(qb); e != list_end(qb); ++e) hi = std::max(hi, (*e + 1) * kv_block);
    return std::min(hi, seq_kv);
  }

  index_t count_visible(index_t i) const {
    const index_t qb = i / q_block;
    index_t n = 0;
    for (const index_t* e = list_begin(qb); e != list_end(qb); ++e) {
      if (std::find(list_begin(qb), e, *e) != e) continue;  // a repeated entry counts once
      const index_t j0 = *e * kv_block, j1 = std::min(j0 + kv_block, seq_kv);
      if (element == nullptr) {
        n += std::max<index_t>(0, j1 - j0);
      } else {
        for (index_t j = j0; j < j1; ++j) n += element_ok(i, j);
      }
    }
    return n;
  }

  // Partial tile: per query block, which list blocks of the tile's keys are listed (one list
  // scan per block, not per element), then the element mask on the listed keys.
  void apply_tile(const ScoreTile& t) const {
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    const index_t ka = t.j0 / kv_block, kz = (t.j0 + t.nk - 1) / kv_block;
    bool ok[kMaxSpan];
    for (index_t l0 = 0; l0 < t.nq;) {
      const index_t i = t.i0 + l0, qb = i / q_block;
      const index_t l1 = std::min(t.nq, (qb + 1) * q_block - t.i0);  // rows of this query block
      const bool exact = kz - ka < kMaxSpan;
      if (exact)
        for (index_t kb = ka; kb <= kz; ++kb) ok[kb - ka] = listed(qb, kb);
      for (index_t r = 0; r < t.nk; ++r) {
        const index_t j = t.j0 + r, kb = j / kv_block;
        const bool in = exact ? ok[kb - ka] : listed(qb, kb);
        for (index_t l = l0; l < l1; ++l)
          if (!in || !element_ok(t.i0 + l, j)) t.at(l, r) = kNegInf;
      }
      l0 = l1;
    }
  }
  static constexpr index_t kMaxSpan = 72;  // list blocks one tile row can span (kBlockKV = 64 keys)
};

// The unbound mask: what forward() holds; the loops call bind(b, h).
struct BlockSparseMaskPolicy {
  index_t seq_q = 0, seq_kv = 0, heads_q = 0;
  index_t q_block = 1, kv_block = 1;
  const index_t* offsets = nullptr;
  const index_t* indices = nullptr;
  const std::function<bool(index_t, index_t, index_t, index_t)>* element = nullptr;

  BlockSparseView bind(index_t b, index_t h) const {
    const index_t nqb = (seq_q + q_block - 1) / q_block;
    return {seq_kv, q_block, kv_block, nqb, (b * heads_q + h) * nqb, b, h, offsets, indices, element};
  }
};

}  // namespace sinkattn::policy
