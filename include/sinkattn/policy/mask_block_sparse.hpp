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
//
// Iteration (for_each_block): the loop walks the listed key blocks of the query blocks its
// rows touch directly (their union, sorted, merged into runs of adjacent blocks, cut into
// pieces of at most bkv keys), so a query tile costs O(listed blocks log listed blocks), not
// O(Skv / bkv) classifications with a list scan each. A piece is Full when every query block
// of the tile lists every list block of the piece and there is no element mask; else Partial.
//
// A causal element mask (sinkattn::CausalElementMask, e.g. from the MoBA selector) is
// recognised in bind() (std::function::target; libstdc++ needs no RTTI for it) and
// handled as a key cap j <= i + shift: pieces left of every row's diagonal stay Full and
// Partial pieces pay a compare per element instead of a std::function call per pair.
//
// Split-KV decode: block-sparse masks always take the prefill loop (forward.hpp run(): a
// head-dependent mask cannot be shared by the query heads of one KV head), so one-token decode
// steps run a 64-row query tile with one live row. Correct, but slower per token than the
// decode kernel of the other masks.

#include <algorithm>
#include <cstddef>
#include <functional>
#include <limits>
#include <vector>

#include "sinkattn/core/types.hpp"
#include "sinkattn/policy/mask.hpp"
#include "sinkattn/policy/score.hpp"

namespace sinkattn {

// An element mask for BlockSparseMask::element_mask: j <= i + shift (raw row i, key j). The
// fast path recognises it inside the std::function and applies it as a causal key cap.
struct CausalElementMask {
  index_t shift = 0;
  bool operator()(index_t, index_t, index_t i, index_t j) const { return j <= i + shift; }
};

}  // namespace sinkattn

namespace sinkattn::policy {

struct BlockSparseView {
  index_t seq_kv = 0, q_block = 1, kv_block = 1, n_q_blocks = 0;
  index_t row0 = 0;  // CSR row of query block 0 of this (b, h)
  index_t b = 0, h = 0;
  const index_t* offsets = nullptr;
  const index_t* indices = nullptr;
  const std::function<bool(index_t, index_t, index_t, index_t)>* element = nullptr;  // null: none
  bool causal = false;  // a recognised CausalElementMask (element is then null): j <= i + shift
  index_t shift = 0;

  // Scratch for the listed blocks of one query tile, one per thread, grown once and reused (the
  // hot path does not allocate). Taken by swap, so a nested call would only allocate its own.
  // (A static member, not a policy::detail namespace: that would hide sinkattn::detail from
  // the `detail::` names other policy headers use.)
  static std::vector<index_t>& scratch() {
    static thread_local std::vector<index_t> v;
    return v;
  }

  const index_t* list_begin(index_t qb) const { return indices + offsets[row0 + qb]; }
  const index_t* list_end(index_t qb) const { return indices + offsets[row0 + qb + 1]; }
  bool listed(index_t qb, index_t kb) const { return std::find(list_begin(qb), list_end(qb), kb) != list_end(qb); }
  bool element_ok(index_t i, index_t j) const { return element == nullptr || (*element)(b, h, i, j); }

  bool causal_ok(index_t i, index_t j) const { return !causal || j <= i + shift; }
  // Exclusive key end the causal cap leaves to rows [i0, i1).
  index_t cap(index_t i1) const { return causal ? std::clamp<index_t>(i1 - 1 + shift + 1, 0, seq_kv) : seq_kv; }

  bool visible(index_t i, index_t j) const {
    return listed(i / q_block, j / kv_block) && causal_ok(i, j) && element_ok(i, j);
  }

  BlockKind classify(index_t i0, index_t i1, index_t j0, index_t j1) const {
    if (j0 >= cap(i1)) return BlockKind::empty;
    const index_t qa = i0 / q_block, qz = (i1 - 1) / q_block, ka = j0 / kv_block, kz = (j1 - 1) / kv_block;
    bool any = false, all = element == nullptr && causal_ok(i0, j1 - 1);
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
    return std::min(hi, cap(i1));
  }

  // The listed blocks of rows [i0, i1), walked directly: per query block its list sorted and
  // deduplicated, then all of them sorted together, so a list block appears once per query
  // block listing it (count == query blocks: listed for every row of the tile). Runs of
  // adjacent list blocks are cut into pieces of at most bkv keys, ascending, never Empty.
  template <class F>
  void for_each_block(index_t i0, index_t i1, index_t bkv, F&& f) const {
    if (i1 <= i0) return;
    const index_t end = cap(i1);
    if (end <= 0) return;
    std::vector<index_t> v;
    v.swap(scratch());
    v.clear();
    const index_t qa = i0 / q_block, qz = (i1 - 1) / q_block, nq = qz - qa + 1;
    for (index_t qb = qa; qb <= qz; ++qb) {
      const auto s = static_cast<std::ptrdiff_t>(v.size());
      v.insert(v.end(), list_begin(qb), list_end(qb));
      std::sort(v.begin() + s, v.end());
      v.erase(std::unique(v.begin() + s, v.end()), v.end());
    }
    if (nq > 1) std::sort(v.begin(), v.end());
    // Compact in place to 2 * kb + (listed by every query block).
    std::size_t w = 0;
    for (std::size_t e = 0; e < v.size();) {
      std::size_t z = e;
      while (z < v.size() && v[z] == v[e]) ++z;
      v[w++] = 2 * v[e] + (static_cast<index_t>(z - e) == nq ? 1 : 0);
      e = z;
    }
    v.resize(w);
    const bool plain = element == nullptr;  // else every piece is Partial
    for (std::size_t r0 = 0; r0 < w;) {
      std::size_t r1 = r0 + 1;  // the run of adjacent list blocks v[r0 .. r1)
      while (r1 < w && v[r1] / 2 == v[r1 - 1] / 2 + 1) ++r1;
      const index_t kb0 = v[r0] / 2;
      const index_t lo = kb0 * kv_block, hi = std::min((v[r1 - 1] / 2 + 1) * kv_block, end);
      for (index_t j0 = lo; j0 < hi; j0 += bkv) {
        const index_t j1 = std::min(j0 + bkv, hi);
        bool full = plain && causal_ok(i0, j1 - 1);
        for (index_t kb = j0 / kv_block; full && kb <= (j1 - 1) / kv_block; ++kb)
          full = (v[r0 + static_cast<std::size_t>(kb - kb0)] & 1) != 0;
        f(j0, j1, full ? BlockKind::full : BlockKind::partial);
      }
      r0 = r1;
    }
    v.swap(scratch());
  }

  index_t count_visible(index_t i) const {
    const index_t qb = i / q_block;
    index_t n = 0;
    for (const index_t* e = list_begin(qb); e != list_end(qb); ++e) {
      if (std::find(list_begin(qb), e, *e) != e) continue;  // a repeated entry counts once
      const index_t j0 = *e * kv_block, j1 = std::min(j0 + kv_block, causal ? std::min(seq_kv, i + shift + 1) : seq_kv);
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
        // Rows l < lc do not reach key j under the causal cap (i0 + l + shift < j).
        const index_t lc = !in ? l1 : causal ? std::clamp<index_t>(j - shift - t.i0, l0, l1) : l0;
        for (index_t l = l0; l < lc; ++l) t.at(l, r) = kNegInf;
        if (element != nullptr)
          for (index_t l = lc; l < l1; ++l)
            if (!element_ok(t.i0 + l, j)) t.at(l, r) = kNegInf;
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
    BlockSparseView v;
    v.seq_kv = seq_kv;
    v.q_block = q_block;
    v.kv_block = kv_block;
    v.n_q_blocks = nqb;
    v.row0 = (b * heads_q + h) * nqb;
    v.b = b;
    v.h = h;
    v.offsets = offsets;
    v.indices = indices;
    v.element = element;
#if defined(__GLIBCXX__) || defined(__cpp_rtti) || defined(__GXX_RTTI)
    // libstdc++ answers target<T>() by comparing manager pointers (no RTTI needed); other
    // standard libraries need RTTI for it. Without it the mask stays a generic element mask:
    // the same result, every listed block Partial.
    if (element != nullptr) {
      if (const auto* c = element->target<CausalElementMask>()) {
        v.element = nullptr;
        v.causal = true;
        v.shift = c->shift;
      }
    }
#endif
    return v;
  }
};

}  // namespace sinkattn::policy
