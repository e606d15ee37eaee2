#pragma once
// Mask policies: which KV blocks a query tile visits, how each block is classified, and the
// element test for Partial blocks. Full blocks skip masking; Empty blocks are never loaded:
// that is where sparsity becomes speed.
//
// Interface of a mask M (CUTLASS fmha_fusion / FlashAttention mask.h style):
//   bool      M::visible(i, j)                 the scalar truth, used by property tests
//   BlockKind M::classify(i0, i1, j0, j1)      for query rows [i0, i1) x keys [j0, j1)
//   index_t   M::kv_begin(i0, i1), kv_end(...) the key range worth visiting
//   index_t   M::count_visible(i)             visible keys of row i (N_i of SSMax / affine)
// optionally for_each_block / for_each_block_rows (its own block walk, and the rows of the
// tile that see each block) and apply_tile (vectorised Partial masking), and the free
// functions below build the loop and the Partial masking from those.

#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>

#include "sinkattn/core/types.hpp"
#include "sinkattn/policy/score.hpp"

namespace sinkattn::policy {

enum class BlockKind { empty, partial, full };

// Query rows [lo, hi) of a tile, relative to its first row: the rows that compute a block
// (for_each_kv_block_rows). Each visible pair of the tile lies in exactly one block's rows: a
// block may come again right after itself for a later span of rows, when the rows between the
// two spans need none of its keys (neighborhood slabs, policy/mask_neighborhood_tiled.hpp).
struct RowSpan {
  index_t lo = 0, hi = 0;
};

// Every key.
struct FullMaskPolicy {
  index_t seq_kv = 0;
  bool visible(index_t, index_t) const { return true; }
  BlockKind classify(index_t, index_t, index_t, index_t) const { return BlockKind::full; }
  index_t kv_begin(index_t, index_t) const { return 0; }
  index_t kv_end(index_t, index_t) const { return seq_kv; }
  index_t count_visible(index_t) const { return seq_kv; }
};

// j <= i + shift, shift = Skv - Sq + offset (bottom-right aligned).
struct CausalMaskPolicy {
  index_t seq_kv = 0;
  index_t shift = 0;
  bool visible(index_t i, index_t j) const { return j <= i + shift; }
  BlockKind classify(index_t i0, index_t i1, index_t j0, index_t j1) const {
    if (j1 - 1 <= i0 + shift) return BlockKind::full;  // the tile's first row already sees the block's last key
    if (j0 > i1 - 1 + shift) return BlockKind::empty;  // not even the last row sees the first key
    return BlockKind::partial;
  }
  index_t kv_begin(index_t, index_t) const { return 0; }
  index_t kv_end(index_t, index_t i1) const { return std::clamp<index_t>(i1 - 1 + shift + 1, 0, seq_kv); }
  index_t count_visible(index_t i) const { return std::clamp<index_t>(i + shift + 1, 0, seq_kv); }
  // Partial tile: key j is visible to the lanes l >= j - shift - i0, a range per key.
  void apply_tile(const ScoreTile& t) const;
};

// Sets lanes [0, lo) and [hi, t.nq) of key r of a tile to -inf (lo, hi clamped to [0, nq]).
inline void mask_outside_lanes(const ScoreTile& t, index_t r, index_t lo, index_t hi) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  lo = std::clamp<index_t>(lo, 0, t.nq);
  hi = std::clamp<index_t>(hi, lo, t.nq);
  for (index_t l = 0; l < lo; ++l) t.at(l, r) = kNegInf;
  for (index_t l = hi; l < t.nq; ++l) t.at(l, r) = kNegInf;
}

inline void CausalMaskPolicy::apply_tile(const ScoreTile& t) const {
  for (index_t r = 0; r < t.nk; ++r) mask_outside_lanes(t, r, t.j0 + r - shift - t.i0, t.nq);
}

namespace mask_traits {
struct BlockProbe {  // a callable of the for_each_block signature, for the detection below
  void operator()(index_t, index_t, BlockKind) const {}
};
template <class M, class = void>
struct has_for_each_block : std::false_type {};
template <class M>
struct has_for_each_block<
    M, std::void_t<decltype(std::declval<const M&>().for_each_block(index_t(), index_t(), index_t(), BlockProbe()))>>
    : std::true_type {};
struct BlockRowsProbe {  // the same with the rows that see the block (for_each_block_rows)
  void operator()(index_t, index_t, BlockKind, RowSpan) const {}
};
template <class M, class = void>
struct has_for_each_block_rows : std::false_type {};
template <class M>
struct has_for_each_block_rows<M, std::void_t<decltype(std::declval<const M&>().for_each_block_rows(
                                      index_t(), index_t(), index_t(), index_t(), BlockRowsProbe()))>>
    : std::true_type {};
template <class M, class = void>
struct has_bind : std::false_type {};
template <class M>
struct has_bind<M, std::void_t<decltype(std::declval<const M&>().bind(index_t(), index_t()))>> : std::true_type {};
template <class M, class = void>
struct has_apply_tile : std::false_type {};
template <class M>
struct has_apply_tile<M, std::void_t<decltype(std::declval<const M&>().apply_tile(std::declval<const ScoreTile&>()))>>
    : std::true_type {};
template <class M, class = void>
struct has_next_kv : std::false_type {};
template <class M>
struct has_next_kv<M, std::void_t<decltype(std::declval<const M&>().next_kv(index_t(), index_t(), index_t()))>>
    : std::true_type {};
}  // namespace mask_traits

// A mask whose visibility depends on (batch, query head) (block-sparse lists) has a member
// bind(b, h) returning the per-(b, h) mask the loops use; every other mask is its own view.
template <class Mask>
inline constexpr bool kHeadDependent = mask_traits::has_bind<Mask>::value;

template <class Mask>
inline decltype(auto) bind(const Mask& m, index_t b, index_t h) {
  if constexpr (kHeadDependent<Mask>)
    return m.bind(b, h);
  else
    return (m);  // a reference: no copy
}

// The first key >= j that query rows [i0, i1) may see. A mask whose visible keys are several
// ranges (sliding window + sinks) provides a member next_kv(i0, i1, j) so loops over a key
// range (split-KV decode) jump the gaps; otherwise j itself.
template <class Mask>
inline index_t next_kv(const Mask& m, index_t i0, index_t i1, index_t j) {
  if constexpr (mask_traits::has_next_kv<Mask>::value)
    return m.next_kv(i0, i1, j);
  else
    return j;
}

// Calls f(j0, j1, kind) for every non-empty block of at most bkv keys that query rows
// [i0, i1) must visit, in ascending key order. A mask with a member
// for_each_block(i0, i1, bkv, f) provides its own iteration (e.g. sink blocks + band);
// otherwise the blocks of [kv_begin, kv_end) are classified one by one.
template <class Mask, class F>
inline void for_each_kv_block(const Mask& m, index_t i0, index_t i1, index_t bkv, F&& f) {
  if constexpr (mask_traits::has_for_each_block<Mask>::value) {
    m.for_each_block(i0, i1, bkv, f);
  } else {
    const index_t end = m.kv_end(i0, i1);
    for (index_t j0 = m.kv_begin(i0, i1); j0 < end; j0 += bkv) {
      const index_t j1 = std::min(j0 + bkv, end);
      const BlockKind kind = m.classify(i0, i1, j0, j1);
      if (kind != BlockKind::empty) f(j0, j1, kind);
    }
  }
}

// for_each_kv_block, and with each block the rows of the tile that may see it:
// f(j0, j1, kind, RowSpan). A mask with a member for_each_block_rows(i0, i1, bkv, group, f)
// narrows the span in steps of `group` rows (the kernels' SIMD width: rows outside the span
// then cost no FMAs); for the others it is the whole tile.
template <class Mask, class F>
inline void for_each_kv_block_rows(const Mask& m, index_t i0, index_t i1, index_t bkv, index_t group, F&& f) {
  if constexpr (mask_traits::has_for_each_block_rows<Mask>::value) {
    m.for_each_block_rows(i0, i1, bkv, group, f);
  } else {
    for_each_kv_block(m, i0, i1, bkv, [&](index_t j0, index_t j1, BlockKind kind) {
      f(j0, j1, kind, RowSpan{0, i1 - i0});
    });
  }
}

// Sets the logits of invisible pairs of a Partial tile to -inf (they then weigh exactly 0).
// A mask may provide a faster member apply_tile(t) with the same effect.
template <class Mask>
inline void apply_mask(const Mask& m, const ScoreTile& t) {
  if constexpr (mask_traits::has_apply_tile<Mask>::value) {
    m.apply_tile(t);
  } else {
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    for (index_t l = 0; l < t.nq; ++l)
      for (index_t r = 0; r < t.nk; ++r)
        if (!m.visible(t.i0 + l, t.j0 + r)) t.at(l, r) = kNegInf;
  }
}

}  // namespace sinkattn::policy
