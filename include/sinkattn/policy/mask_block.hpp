#pragma once
// Block-diagonal attention (SEMANTICS.md section 2; reference/visibility.hpp fixes the
// conventions): query position p_i = i + shift (shift = Skv - Sq + offset), key position j;
//   - keys j < global_keys are visible to every query with p_i >= 0 or not;
//   - positions below 0 are in no block (they see the global keys only);
//   - blocks are equal (block_size) or ragged (ascending starts, the first 0, the last block
//     extending to infinity);
//   - with last_block_attends_all, queries in the block holding key Skv - 1 see every key;
//   - with causal, every visible pair (global keys and the last block included) has j <= p_i.
//
// A query tile visits two key ranges: the global keys and the blocks of its rows (all keys
// when a row lies in the last block); everything between them is never loaded.

#include <algorithm>

#include "sinkattn/core/types.hpp"
#include "sinkattn/policy/mask.hpp"

namespace sinkattn::policy {

struct BlockMaskPolicy {
  index_t seq_kv = 0;
  index_t shift = 0;                // p_i = i + shift
  index_t block_size = 0;           // > 0: equal blocks
  const index_t* bounds = nullptr;  // else ragged: block starts bounds[0..n_bounds), bounds[0] == 0
  index_t n_bounds = 0;
  index_t global_keys = 0;
  bool last_block_attends_all = false;
  bool causal = false;

  static constexpr index_t kInf = index_t(1) << 50;

  // Block of a position; -1 below 0.
  index_t block_of(index_t x) const {
    if (x < 0) return -1;
    if (block_size > 0) return x / block_size;
    return static_cast<index_t>(std::upper_bound(bounds, bounds + n_bounds, x) - bounds) - 1;
  }
  index_t block_begin(index_t b) const { return block_size > 0 ? b * block_size : bounds[b]; }
  index_t block_end(index_t b) const {
    if (block_size > 0) return (b + 1) * block_size;
    return b + 1 < n_bounds ? bounds[b + 1] : kInf;
  }
  // The block whose queries see every key, or -2 (no such block).
  index_t last_block() const { return last_block_attends_all && seq_kv > 0 ? block_of(seq_kv - 1) : -2; }

  bool visible(index_t i, index_t j) const {
    const index_t p = i + shift;
    if (causal && j > p) return false;
    if (j < global_keys) return true;
    const index_t qb = block_of(p);
    if (qb < 0) return false;
    return qb == last_block() || qb == block_of(j);
  }

  BlockKind classify(index_t i0, index_t i1, index_t j0, index_t j1) const {
    const index_t P0 = i0 + shift, P1 = i1 - 1 + shift;
    if (causal && j0 > P1) return BlockKind::empty;  // no row reaches the first key
    const bool causal_all = !causal || j1 - 1 <= P0;
    if (j1 <= global_keys) return causal_all ? BlockKind::full : BlockKind::partial;
    const index_t jj0 = std::max(j0, global_keys);  // the non-global keys [jj0, j1)
    const index_t lb = last_block();
    if (P0 >= 0 && causal_all) {
      const index_t qb0 = block_of(P0), qb1 = block_of(P1);
      if (qb0 == qb1 && (qb0 == lb || (block_of(jj0) == qb0 && block_of(j1 - 1) == qb0))) return BlockKind::full;
    }
    const bool global_any = j0 < global_keys;  // (causal: j0 <= P1 holds here)
    if (P1 < 0) return global_any ? BlockKind::partial : BlockKind::empty;
    // Rows with p >= 0 lie in blocks [qa, qz]; the non-global keys in blocks [ka, kz].
    const index_t qa = block_of(std::max<index_t>(P0, 0)), qz = block_of(P1);
    const index_t ka = block_of(jj0), kz = block_of(j1 - 1);
    const bool band_any = (qa <= kz && ka <= qz) || (qa <= lb && lb <= qz);
    return global_any || band_any ? BlockKind::partial : BlockKind::empty;
  }

  // Causal cap on the keys of rows up to position P1 (exclusive end).
  index_t cap(index_t P1) const { return causal ? std::clamp<index_t>(P1 + 1, 0, seq_kv) : seq_kv; }
  // End of the global keys worth visiting for rows [i0, i1).
  index_t global_end(index_t, index_t i1) const { return std::min(global_keys, cap(i1 - 1 + shift)); }
  // The blocks of rows [i0, i1): [band_begin, band_end) (empty when every row has p < 0).
  index_t band_begin(index_t i0, index_t i1) const {
    const index_t P0 = std::max<index_t>(i0 + shift, 0), P1 = i1 - 1 + shift;
    if (P1 < 0) return band_end(i0, i1);
    const index_t lb = last_block();
    if (block_of(P0) <= lb && lb <= block_of(P1)) return 0;
    return std::min(block_begin(block_of(P0)), band_end(i0, i1));
  }
  index_t band_end(index_t i0, index_t i1) const {
    const index_t P0 = std::max<index_t>(i0 + shift, 0), P1 = i1 - 1 + shift;
    if (P1 < 0) return 0;
    const index_t lb = last_block();
    const index_t end = block_of(P0) <= lb && lb <= block_of(P1) ? seq_kv : block_end(block_of(P1));
    return std::min(end, cap(P1));
  }
  index_t kv_begin(index_t i0, index_t i1) const {
    return global_end(i0, i1) > 0 ? 0 : std::min(band_begin(i0, i1), band_end(i0, i1));
  }
  index_t kv_end(index_t i0, index_t i1) const { return std::max(global_end(i0, i1), band_end(i0, i1)); }

  // The first key >= j that rows [i0, i1) may see: jumps the gap between globals and blocks.
  index_t next_kv(index_t i0, index_t i1, index_t j) const {
    return j >= global_end(i0, i1) ? std::max(j, band_begin(i0, i1)) : j;
  }

  // Global blocks, then the rows' blocks (first block aligned down to a multiple of bkv, not
  // below the globals), ascending; Empty blocks are skipped.
  template <class F>
  void for_each_block(index_t i0, index_t i1, index_t bkv, F&& f) const {
    const auto visit = [&](index_t lo, index_t hi) {
      for (index_t j0 = lo; j0 < hi; j0 += bkv) {
        const index_t j1 = std::min(j0 + bkv, hi);
        const BlockKind kind = classify(i0, i1, j0, j1);
        if (kind != BlockKind::empty) f(j0, j1, kind);
      }
    };
    const index_t ge = global_end(i0, i1), bb = band_begin(i0, i1), be = band_end(i0, i1);
    if (bb <= ge || be <= bb) {
      visit(0, std::max(ge, be));
      return;
    }
    visit(0, ge);
    visit(std::max(ge, bb / bkv * bkv), be);
  }

  index_t count_visible(index_t i) const {
    const index_t p = i + shift, c = cap(p), g = std::min(global_keys, c);
    const index_t qb = block_of(p);
    if (qb < 0) return g;
    if (qb == last_block()) return c;
    const index_t own = std::min(block_end(qb), c) - std::max(block_begin(qb), global_keys);
    return g + std::max<index_t>(0, own);
  }
};

}  // namespace sinkattn::policy
