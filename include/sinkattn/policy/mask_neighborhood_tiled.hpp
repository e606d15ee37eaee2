#pragma once
// Neighborhood attention over multi-dimensional tiles (NATTEN's token permutation).
//
// The flat NeighborhoodMaskPolicy tiles queries as 64 consecutive rows of the row-major grid:
// in 2-D that is one image row of 64 pixels, whose neighborhoods together span 13 rows x 76
// columns for a 13x13 kernel, and most keys between the corners are masked. Here the kernels
// run on PERMUTED tokens instead (kernel/permute.hpp copies K, V in; Q and the gate are read,
// O and LSE written, at the caller's rows through the slot map KernelArgs::q_rows):
//
//   coordinates  per dimension, the dilation groups are laid end to end (c' = offset(group) +
//                raw / dilation), so every window is a contiguous c' range and a dilated
//                problem is as dense as an undilated one;
//   query order  boxes of c' coordinates (8x8 in 2-D, 4x4x4 in 3-D, 64 in 1-D: the shape with
//                kBlockQ tokens whose neighborhood union is smallest for the kernel), boxes
//                row-major, each box padded to exactly kBlockQ slots: one query tile = one box;
//                inside a box each SIMD vector of query lanes is one slab of the box: by
//                default a line of dimension 0 (dimension 1 slowest: 2 x 8 of an 8x8 box, 1 x
//                4 x 4 of a 4x4x4 one), or, where the lists below cost less so, the sub-box
//                whose union of windows is smallest (GridOrder::slab, na_build_lists: 4x2 for
//                8 lanes of 13x13, 2x2x2 for 8 lanes of 7^3);
//   key order    boxes too, unpadded, of a shape chosen per problem (plan below): "pencils"
//                (whole extent of dimension 0 x w1 x w2) so that the keys of a query box's
//                union that lie in one pencil are ONE contiguous run of slots.
//
// for_each_block visits, per query tile, only the key boxes that intersect the union of its
// neighborhoods, restricted to the union's rows, merged into runs and cut to <= bkv keys; a
// block is Full when every query's window (intersection over the tile) contains the block's
// key box (no masking work), Partial otherwise; for_each_block_rows also names the slabs
// whose windows meet each block, and the kernels compute the block for those lanes only (a
// slab's union of windows is ~30% smaller than the box's); apply_tile masks with the plan's
// per-slot window tables (no division per element). Padding slots are invisible (rows and keys).
//
// The kernels take a tile's blocks as key LISTS when the plan has them (na_build_lists, built
// for every forward() call): the runs of thin pencils, nearly exact per vector of lanes, packed
// into blocks of <= bkv keys by the lanes that compute them, so that a 3-D tile makes 10 blocks
// of 58 keys at 0.66 visible / computed lane pairs instead of 21 blocks of 34 at 0.58.
//
// Extra keys (NeighborhoodMask::extra_keys) stay in front of the permuted keys: key slot
// j < extra is extra key j, slot extra + s is the grid key in slot s of plan->k. Every query
// tile visits them first, as Full blocks (Partial in a box with padding rows, which see nothing).

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "sinkattn/core/options.hpp"
#include "sinkattn/core/types.hpp"
#include "sinkattn/policy/mask.hpp"
#include "sinkattn/policy/mask_neighborhood.hpp"
#include "sinkattn/policy/score.hpp"
#include "sinkattn/tile/simd.hpp"

namespace sinkattn::detail {

// One grid dimension in c' coordinates (dilation groups end to end). Unused dimensions of a
// lower-rank grid have extent 1 and the window [0, 0].
struct NaAxis {
  index_t ext = 1;
  std::vector<index_t> to_raw;    // c' -> raw coordinate
  std::vector<int32_t> wlo, whi;  // window of query c' as a c' range (always one group)
};

// A token order of the grid: boxes of `box` c' coordinates in row-major order, the tokens of a
// box contiguous (row-major inside it). Each box takes `slots` slots (its tokens, then
// padding) when slots > 0, exactly its size when slots == 0.
struct GridOrder {
  std::array<index_t, 3> ext{1, 1, 1}, box{1, 1, 1}, nbox{1, 1, 1};
  std::array<int, 3> order{0, 1, 2};     // dimensions inside a box, slowest first (fill)
  std::array<index_t, 3> slab{0, 0, 0};  // sub-boxes of a whole box laid out one after another (0: none)
  index_t slots = 0;
  std::vector<index_t> start;  // per box id: first slot; nboxes + 1 entries
  std::vector<index_t> token;  // slot -> row-major token index of the caller's grid, -1: padding
  std::vector<int32_t> coord;  // slot -> 3 c' coordinates; coord[0] = -1: padding

  index_t size() const { return start.back(); }
  index_t box_id(index_t b0, index_t b1, index_t b2) const { return (b0 * nbox[1] + b1) * nbox[2] + b2; }
  index_t width(int d, index_t b) const { return std::min(box[d], ext[d] - b * box[d]); }

  // Geometry only (start offsets): enough to enumerate runs.
  void layout(const std::array<index_t, 3>& extent, const std::array<index_t, 3>& shape, index_t slots_per_box) {
    ext = extent;
    slots = slots_per_box;
    for (int d = 0; d < 3; ++d) {
      box[d] = std::clamp<index_t>(shape[d], 1, ext[d]);
      nbox[d] = (ext[d] + box[d] - 1) / box[d];
    }
    start.assign(static_cast<std::size_t>(nbox[0] * nbox[1] * nbox[2] + 1), 0);
    index_t s = 0, id = 0;
    for (index_t b0 = 0; b0 < nbox[0]; ++b0)
      for (index_t b1 = 0; b1 < nbox[1]; ++b1)
        for (index_t b2 = 0; b2 < nbox[2]; ++b2) {
          start[static_cast<std::size_t>(id++)] = s;
          s += slots > 0 ? slots : width(0, b0) * width(1, b1) * width(2, b2);
        }
    start.back() = s;
  }

  // The slot tables (token index and c' coordinates per slot). Inside a box the tokens go
  // in the dimension order `order` (slowest first): {0, 1, 2} is row-major, which runs()
  // below relies on (key orders); query orders put the dimension that the key order cuts
  // into pencils slowest, so that each SIMD vector of query lanes holds one thin slab of
  // the box and its own union of windows misses more of the key blocks (for_each_block_rows).
  void fill(const std::array<NaAxis, 3>& ax) {
    const auto n = static_cast<std::size_t>(size());
    token.assign(n, -1);
    coord.assign(3 * n, -1);
    const int o0 = order[0], o1 = order[1], o2 = order[2];
    for (index_t b0 = 0; b0 < nbox[0]; ++b0)
      for (index_t b1 = 0; b1 < nbox[1]; ++b1)
        for (index_t b2 = 0; b2 < nbox[2]; ++b2) {
          auto s = static_cast<std::size_t>(start[static_cast<std::size_t>(box_id(b0, b1, b2))]);
          const std::array<index_t, 3> first{b0 * box[0], b1 * box[1], b2 * box[2]},
              w{width(0, b0), width(1, b1), width(2, b2)};
          // Slabs only in whole boxes (a box cut by the grid's edge keeps the plain order).
          const bool whole = slab[0] > 0 && w == box;
          const std::array<index_t, 3> sl = whole ? slab : w;
          std::array<index_t, 3> c{};
          for (index_t x0 = 0; x0 < w[o0]; x0 += sl[o0])
            for (index_t y0 = 0; y0 < w[o1]; y0 += sl[o1])
              for (index_t z0 = 0; z0 < w[o2]; z0 += sl[o2])
                for (index_t x = x0; x < x0 + sl[o0]; ++x)
                  for (index_t y = y0; y < y0 + sl[o1]; ++y)
                    for (index_t z = z0; z < z0 + sl[o2]; ++z, ++s) {
                      c[o0] = first[o0] + x;
                      c[o1] = first[o1] + y;
                      c[o2] = first[o2] + z;
                      token[s] = (ax[0].to_raw[c[0]] * ext[1] + ax[1].to_raw[c[1]]) * ext[2] + ax[2].to_raw[c[2]];
                      for (int d = 0; d < 3; ++d) coord[3 * s + d] = static_cast<int32_t>(c[d]);
                    }
        }
  }

  // Calls f(a, e) for the maximal contiguous slot runs holding the tokens of the c' box
  // [lo, hi] (and possibly more in dimensions 1, 2: a run covers a box's whole cross-section),
  // in ascending order. Row-major boxes only: the tokens of the rows lo[0]..hi[0] of a box
  // are contiguous.
  template <class F>
  void runs(const std::array<int32_t, 3>& lo, const std::array<int32_t, 3>& hi, F&& f) const {
    index_t r0 = 0, r1 = 0;
    for (index_t b0 = lo[0] / box[0]; b0 <= hi[0] / box[0]; ++b0) {
      const index_t first = std::max<index_t>(lo[0], b0 * box[0]) - b0 * box[0];
      const index_t last = std::min<index_t>(hi[0], b0 * box[0] + width(0, b0) - 1) - b0 * box[0];
      for (index_t b1 = lo[1] / box[1]; b1 <= hi[1] / box[1]; ++b1)
        for (index_t b2 = lo[2] / box[2]; b2 <= hi[2] / box[2]; ++b2) {
          const index_t cs = width(1, b1) * width(2, b2);  // tokens per row of this box
          const index_t s = start[static_cast<std::size_t>(box_id(b0, b1, b2))];
          const index_t a = s + first * cs, e = s + (last + 1) * cs;
          if (a == r1) {
            r1 = e;
          } else {
            if (r0 < r1) f(r0, r1);
            r0 = a;
            r1 = e;
          }
        }
    }
    if (r0 < r1) f(r0, r1);
  }
};

// Everything the tiled policy reads; built once per forward() call (O(tokens)).
struct NaPlan {
  int rank = 1;
  std::array<NaAxis, 3> ax;
  GridOrder q, k;
  std::vector<index_t> k_rows;  // key slot -> the caller's K/V row (extra keys first; keys have no padding)
  index_t extra = 0;            // extra keys before the grid keys
  policy::NeighborhoodMaskPolicy base;
  // Per query slot its window bounds as floats, [lo0, hi0, lo1, hi1, lo2, hi2][slots]
  // (padding slots: the empty window [1, 0]): apply_tile's lane vectors, loaded directly.
  std::vector<float> qwin;
  // Mean grid keys in the union of a query tile's windows (its K/V working set per head).
  double union_keys = 0;
  // Key blocks as lists (na_build_lists; empty: not built): query tile t (slots [t * kBlockQ,
  // (t + 1) * kBlockQ)) visits list_blocks[list_first[t] .. list_first[t + 1]), block b the key
  // indices list_keys[b.begin .. b.end) (extra keys first: j < extra) for its rows b.rows.
  struct ListBlock {
    index_t begin = 0, end = 0;
    bool run = false;  // the keys are consecutive: list_keys[begin] + 0, 1, ...
    policy::BlockKind kind = policy::BlockKind::partial;
    policy::RowSpan rows{};
  };
  index_t list_tile = 0;  // query slots per tile the lists were built for (0: none)
  std::vector<index_t> list_keys;
  // Per list_keys entry (when list_tile <= 64, else empty): bit l set when slot l of its tile
  // sees the key. apply_tile then masks a vector of lanes from its bits (na_list_visibility).
  std::vector<std::uint64_t> list_vis;
  std::vector<ListBlock> list_blocks;
  std::vector<index_t> list_first;
};

// One key's c' coordinates broadcast over the lanes, and whether the windows of query lanes
// [c, c + kWidth) hold it: lo[d], hi[d] the lanes' window bounds in dimension d (NaPlan::qwin
// or a copy), the first kDims dimensions compared (the others' windows are [0, 0]). A padding
// key has k0 = -1, below every lo; a padding query the empty window [1, 0].
struct NaKeyLanes {
  tile::vf k[3];
  explicit NaKeyLanes(const int32_t* kc)
      : k{tile::vf(static_cast<float>(kc[0])), tile::vf(static_cast<float>(kc[1])),
          tile::vf(static_cast<float>(kc[2]))} {}
};
template <int kDims>
inline tile::vb na_windows_hold(const float* const* lo, const float* const* hi, index_t c, const NaKeyLanes& key) {
  using tile::vf;
  auto vis = (vf::load_unaligned(lo[0] + c) <= key.k[0]) & (key.k[0] <= vf::load_unaligned(hi[0] + c));
  if constexpr (kDims >= 2)
    vis = vis & (vf::load_unaligned(lo[1] + c) <= key.k[1]) & (key.k[1] <= vf::load_unaligned(hi[1] + c));
  if constexpr (kDims >= 3)
    vis = vis & (vf::load_unaligned(lo[2] + c) <= key.k[2]) & (key.k[2] <= vf::load_unaligned(hi[2] + c));
  return vis;
}

// What a range of query slots needs from the keys: the union [ulo, uhi] and the intersection
// [ilo, ihi] of their windows (c'), whether it holds padding, and whether it holds any token.
struct NaQuerySpan {
  std::array<int32_t, 3> ulo{}, uhi{}, ilo{}, ihi{};
  bool pad = false, any = false;
};

// (The bounds are kept in registers, locals over an unrolled loop, and copied out at the end:
// in the returned struct, or in arrays indexed by a loop counter, each min / max was a store
// and a reload, and this loop and na_key_box's were most of a plan's build time.)
inline NaQuerySpan na_query_span(const NaPlan& pl, index_t i0, index_t i1) {
  constexpr int32_t kMax = std::numeric_limits<int32_t>::max(), kMin = std::numeric_limits<int32_t>::min();
  int32_t ulo[3] = {kMax, kMax, kMax}, uhi[3] = {kMin, kMin, kMin};
  int32_t ilo[3] = {kMin, kMin, kMin}, ihi[3] = {kMax, kMax, kMax};
  bool pad = false, any = false;
  for (index_t i = i0; i < i1; ++i) {
    const int32_t* c = &pl.q.coord[static_cast<std::size_t>(3 * i)];
    if (c[0] < 0) {
      pad = true;
      continue;
    }
    any = true;
    SINKATTN_UNROLL
    for (int d = 0; d < 3; ++d) {
      const int32_t lo = pl.ax[d].wlo[static_cast<std::size_t>(c[d])],
                    hi = pl.ax[d].whi[static_cast<std::size_t>(c[d])];
      ulo[d] = std::min(ulo[d], lo);
      uhi[d] = std::max(uhi[d], hi);
      ilo[d] = std::max(ilo[d], lo);
      ihi[d] = std::min(ihi[d], hi);
    }
  }
  NaQuerySpan q;
  for (int d = 0; d < 3; ++d) q.ulo[d] = ulo[d], q.uhi[d] = uhi[d], q.ilo[d] = ilo[d], q.ihi[d] = ihi[d];
  q.pad = pad;
  q.any = any;
  return q;
}

// The c' bounding box of key slots [j0, j1) and whether they hold padding / any token.
struct NaKeyBox {
  std::array<int32_t, 3> lo{}, hi{};
  bool pad = false, any = false;
};

inline NaKeyBox na_key_box(const NaPlan& pl, index_t j0, index_t j1) {
  constexpr int32_t kMax = std::numeric_limits<int32_t>::max(), kMin = std::numeric_limits<int32_t>::min();
  int32_t lo[3] = {kMax, kMax, kMax}, hi[3] = {kMin, kMin, kMin};  // (locals: na_query_span)
  bool pad = false, any = false;
  for (index_t j = j0; j < j1; ++j) {
    const int32_t* c = &pl.k.coord[static_cast<std::size_t>(3 * j)];
    if (c[0] < 0) {
      pad = true;
      continue;
    }
    any = true;
    SINKATTN_UNROLL
    for (int d = 0; d < 3; ++d) {
      lo[d] = std::min(lo[d], c[d]);
      hi[d] = std::max(hi[d], c[d]);
    }
  }
  NaKeyBox k;
  for (int d = 0; d < 3; ++d) k.lo[d] = lo[d], k.hi[d] = hi[d];
  k.pad = pad;
  k.any = any;
  return k;
}

// Whether some query of the span may see a key of the box: the union meets it in every
// dimension (safe: the boxes over-approximate the tokens).
inline bool na_meets(const NaQuerySpan& q, const std::array<int32_t, 3>& lo, const std::array<int32_t, 3>& hi) {
  if (!q.any) return false;
  for (int d = 0; d < 3; ++d)
    if (hi[d] < q.ulo[d] || q.uhi[d] < lo[d]) return false;
  return true;
}

// Full / Partial / Empty of query span x key box: Empty when a dimension's key range misses
// the union, Full when (no padding and) every dimension's key range lies inside the
// intersection of the windows.
inline policy::BlockKind na_classify(const NaQuerySpan& q, const NaKeyBox& k) {
  using policy::BlockKind;
  if (!k.any || !na_meets(q, k.lo, k.hi)) return BlockKind::empty;
  bool full = !k.pad && !q.pad;
  for (int d = 0; d < 3; ++d) full = full && q.ilo[d] <= k.lo[d] && k.hi[d] <= q.ihi[d];
  return full ? BlockKind::full : BlockKind::partial;
}

inline policy::BlockKind na_classify(const NaPlan& pl, const NaQuerySpan& q, index_t j0, index_t j1) {
  return q.any ? na_classify(q, na_key_box(pl, j0, j1)) : policy::BlockKind::empty;
}

// Calls f(j0, j1, kind, rows) for the non-empty blocks (<= bkv keys) query slots [i0, i1)
// visit. rows: the slots (relative to i0, in steps of `group`) whose windows may meet the
// block; group <= 0, or more than kMaxGroups groups: all of them. A Partial block whose
// groups all miss it (each dimension met by some query, but no query in all) is skipped; one
// met by groups apart (slabs stacked in a box: policy::RowSpan) comes once per run of them.
template <class F>
inline void na_for_each_block(const NaPlan& pl, index_t i0, index_t i1, index_t bkv, index_t group, F&& f) {
  constexpr int kMaxGroups = 16;
  const NaQuerySpan q = na_query_span(pl, i0, i1);
  if (!q.any) return;
  std::array<NaQuerySpan, kMaxGroups> gs;
  int ng = 0;
  if (group > 0 && (i1 - i0 + group - 1) / group <= kMaxGroups)
    for (index_t g0 = i0; g0 < i1; g0 += group)
      gs[static_cast<std::size_t>(ng++)] = na_query_span(pl, g0, std::min(i1, g0 + group));
  // Where the groups' unions start or end in dimension 0 (the slowest inside a key box): a
  // run is cut there too, so that each piece is computed only for the groups that need it
  // (slabs stacked in dimension 0 need different rows of the same pencil).
  // (Only the cuts inside the tile's union: its runs start and end at its bounds anyway.)
  std::array<int32_t, 2 * kMaxGroups> cuts{};
  int ncut = 0;
  const auto cut_at = [&](int32_t c) {
    if (c <= q.ulo[0] || c > q.uhi[0]) return;
    for (int x = 0; x < ncut; ++x)
      if (cuts[static_cast<std::size_t>(x)] == c) return;
    cuts[static_cast<std::size_t>(ncut++)] = c;
  };
  for (int g = 0; g < ng; ++g)
    if (gs[static_cast<std::size_t>(g)].any) {
      cut_at(gs[static_cast<std::size_t>(g)].ulo[0]);
      cut_at(gs[static_cast<std::size_t>(g)].uhi[0] + 1);
    }
  const auto band = [&](index_t j) {
    const int32_t c0 = pl.k.coord[static_cast<std::size_t>(3 * j)];
    int n = 0;
    for (int x = 0; x < ncut; ++x) n += cuts[static_cast<std::size_t>(x)] <= c0;
    return n;
  };
  const auto pieces = [&](index_t a, index_t e, auto&& g) {
    if (ncut == 0) return g(a, e);
    index_t p0 = a;
    for (int b0 = band(a); p0 < e;) {
      index_t p1 = p0 + 1;
      int b1 = b0;
      while (p1 < e && (b1 = band(p1)) == b0) ++p1;
      g(p0, p1);
      p0 = p1;
      b0 = b1;
    }
  };
  pl.k.runs(q.ulo, q.uhi, [&](index_t ra, index_t re) {
    pieces(ra, re, [&](index_t a, index_t e) {
      for (index_t j0 = a; j0 < e; j0 += bkv) {
        const index_t j1 = std::min(e, j0 + bkv);
        const NaKeyBox kb = na_key_box(pl, j0, j1);
        const policy::BlockKind kind = na_classify(q, kb);
        if (kind == policy::BlockKind::empty) continue;
        if (ng > 0 && kind == policy::BlockKind::partial) {
          // One block per run of consecutive groups that meet it: a group between two that
          // need the keys but that needs none of them itself computes nothing for them.
          for (int g = 0; g < ng;) {
            if (!na_meets(gs[static_cast<std::size_t>(g)], kb.lo, kb.hi)) {
              ++g;
              continue;
            }
            const int lo = g;
            while (g < ng && na_meets(gs[static_cast<std::size_t>(g)], kb.lo, kb.hi)) ++g;
            f(j0, j1, kind, policy::RowSpan{lo * group, std::min(i1 - i0, g * group)});
          }
          continue;
        }
        f(j0, j1, kind, policy::RowSpan{0, i1 - i0});
      }
    });
  });
}

// One key block's fixed cost in keys x one vector of lanes (a pass over the O accumulators,
// the softmax's set-up, the micro-kernels' remainders), for the planners' cost models:
// measured at ~0.41 us per block on 2-D 13x13; 8..32 chose orders that ran alike.
inline constexpr double kNaBlockCost = 16;

// Box shape of `slots` query tokens (per dimension <= extent) whose union of windows is
// smallest per query: greedy doubling of the dimension that lowers prod(b + k - 1) / prod(b)
// most. With equal kernels that gives the cube: 8x8 (2-D), 4x4x4 (3-D), 64 (1-D) for 64
// slots; a long kernel in one dimension gets a flatter box there.
inline std::array<index_t, 3> na_query_box(const NaPlan& pl, const std::array<index_t, 3>& kernel, index_t slots) {
  std::array<index_t, 3> b{1, 1, 1};
  for (;;) {
    int best = -1;
    double best_cost = 0;
    for (int d = 0; d < pl.rank; ++d) {
      const index_t nb = std::min(2 * b[d], pl.ax[d].ext);
      if (nb == b[d] || b[0] * b[1] * b[2] / b[d] * nb > slots) continue;
      double cost = 1;
      for (int e = 0; e < pl.rank; ++e) {
        const index_t be = e == d ? nb : b[e];
        cost *= static_cast<double>(be + kernel[e] - 1) / static_cast<double>(be);
      }
      if (best < 0 || cost < best_cost) best = d, best_cost = cost;
    }
    if (best < 0) return b;
    b[best] = std::min(2 * b[best], pl.ax[best].ext);
  }
}

// The query slot tables of pl.q's order and their window bounds (NaPlan::qwin).
inline void na_fill_queries(NaPlan& pl) {
  pl.q.fill(pl.ax);
  const auto nq = static_cast<std::size_t>(pl.q.size());
  pl.qwin.assign(6 * nq, 0.f);
  for (std::size_t i = 0; i < nq; ++i)
    for (std::size_t d = 0; d < 3; ++d) {
      const int32_t c = pl.q.coord[3 * i + d];
      const bool pad = pl.q.coord[3 * i] < 0;
      pl.qwin[2 * d * nq + i] = pad ? 1.f : static_cast<float>(pl.ax[d].wlo[static_cast<std::size_t>(c)]);
      pl.qwin[(2 * d + 1) * nq + i] = pad ? 0.f : static_cast<float>(pl.ax[d].whi[static_cast<std::size_t>(c)]);
    }
}

// Key order `box` (GridOrder::layout) and the key slot map.
inline void na_set_key_order(NaPlan& pl, const std::array<index_t, 3>& box) {
  pl.k.layout({pl.ax[0].ext, pl.ax[1].ext, pl.ax[2].ext}, box, 0);
  pl.k.fill(pl.ax);
  pl.k_rows.resize(static_cast<std::size_t>(pl.extra) + pl.k.token.size());
  for (index_t j = 0; j < pl.extra; ++j) pl.k_rows[static_cast<std::size_t>(j)] = j;
  for (std::size_t s = 0; s < pl.k.token.size(); ++s)
    pl.k_rows[static_cast<std::size_t>(pl.extra) + s] = pl.extra + pl.k.token[s];
}

// The candidate key orders (GridOrder boxes): the query box, and pencils extent[0] x w1 x w2
// for w in {1, 2, 4, 8, 16} (per dimension the grid has).
inline std::vector<std::array<index_t, 3>> na_key_orders(const NaPlan& pl) {
  std::vector<std::array<index_t, 3>> cands{pl.q.box};
  const std::array<index_t, 3> ext{pl.ax[0].ext, pl.ax[1].ext, pl.ax[2].ext};
  const index_t ws[] = {1, 2, 4, 8, 16};
  for (index_t w1 : ws)
    for (index_t w2 : ws) {
      if (pl.rank < 2 && w1 > 1) continue;
      if (pl.rank < 3 && w2 > 1) continue;
      if ((w1 > 1 && w1 / 2 >= ext[1]) || (w2 > 1 && w2 / 2 >= ext[2])) continue;  // same as a smaller w
      cands.push_back({ext[0], std::min(w1, ext[1]), std::min(w2, ext[2])});
    }
  return cands;
}

// The plan for mask m with query boxes of `slots` tokens (kBlockQ) and key blocks of bkv.
// Key order: among pencils (extent[0] x w1 x w2, w in {1, 2, 4, 8, 16}) and the query box
// shape, the one whose blocks cost least over all query tiles, counting each block as its
// keys plus kNaBlockCost keys of fixed work (softmax pass setup, O rescale, loop overhead).
inline void na_build_plan(NaPlan& pl, const NeighborhoodMask& m, index_t slots, index_t bkv) {
  pl.rank = m.rank;
  pl.extra = m.extra_keys;
  pl.base = policy::NeighborhoodMaskPolicy{m.rank, m.extent, m.kernel, m.dilation, m.stride, m.causal};
  std::array<index_t, 3> ext{1, 1, 1};
  for (int d = 0; d < 3; ++d) {
    NaAxis& a = pl.ax[d];
    a.ext = d < m.rank ? m.extent[d] : 1;
    ext[d] = a.ext;
    a.to_raw.resize(static_cast<std::size_t>(a.ext));
    a.wlo.resize(static_cast<std::size_t>(a.ext));
    a.whi.resize(static_cast<std::size_t>(a.ext));
    if (d >= m.rank) {
      a.to_raw[0] = 0;
      a.wlo[0] = a.whi[0] = 0;
      continue;
    }
    const index_t dl = m.dilation[d];
    std::vector<index_t> to_cp(static_cast<std::size_t>(a.ext));
    index_t c = 0;
    for (index_t g = 0; g < dl; ++g)
      for (index_t r = g; r < a.ext; r += dl, ++c) {
        a.to_raw[static_cast<std::size_t>(c)] = r;
        to_cp[static_cast<std::size_t>(r)] = c;
      }
    for (index_t cp = 0; cp < a.ext; ++cp) {
      index_t lo, hi;
      pl.base.window(d, a.to_raw[static_cast<std::size_t>(cp)], lo, hi);
      a.wlo[static_cast<std::size_t>(cp)] = static_cast<int32_t>(to_cp[static_cast<std::size_t>(lo)]);
      a.whi[static_cast<std::size_t>(cp)] = static_cast<int32_t>(to_cp[static_cast<std::size_t>(hi)]);
    }
  }
  std::array<index_t, 3> kern{1, 1, 1};
  for (int d = 0; d < m.rank; ++d) kern[d] = m.kernel[d];
  const std::array<index_t, 3> qbox = na_query_box(pl, kern, slots);
  pl.q.layout(ext, qbox, slots);
  // Dimension 1 slowest inside a query box: a vector of lanes is one slab of dimension 1,
  // and the key pencils below cut dimension 1 (and 2), so a slab's windows miss the pencils
  // far from it and its lanes skip their blocks (for_each_block_rows).
  if (m.rank >= 2) pl.q.order = {1, 0, 2};
  na_fill_queries(pl);

  // Key order: simulate the visits of every query tile for each candidate. (Counting only
  // the lane vectors that compute each block, for_each_block_rows, picked the same orders
  // on the benchmarked grids at 5-8x the planning time.)
  std::vector<NaQuerySpan> spans;
  for (index_t i0 = 0; i0 < pl.q.size(); i0 += slots) spans.push_back(na_query_span(pl, i0, i0 + slots));
  for (const NaQuerySpan& q : spans)
    if (q.any) {
      double n = 1;
      for (int d = 0; d < 3; ++d) n *= static_cast<double>(q.uhi[d] - q.ulo[d] + 1);
      pl.union_keys += n / static_cast<double>(spans.size());
    }
  const std::vector<std::array<index_t, 3>> cands = na_key_orders(pl);
  GridOrder trial;
  double best = -1;
  std::array<index_t, 3> best_box = qbox;
  for (const auto& kb : cands) {
    trial.layout(ext, kb, 0);
    double cost = 0;
    for (const NaQuerySpan& q : spans)
      if (q.any)
        trial.runs(q.ulo, q.uhi, [&](index_t a, index_t e) {
          cost += static_cast<double>(e - a) + kNaBlockCost * static_cast<double>((e - a + bkv - 1) / bkv);
        });
    if (best < 0 || cost < best) best = cost, best_box = kb;
  }
  na_set_key_order(pl, best_box);
}

}  // namespace sinkattn::detail

namespace sinkattn::policy {

// The mask over permuted indices: query i = slot i of plan->q, key j = slot j of plan->k.
struct NeighborhoodTiledMaskPolicy {
  const detail::NaPlan* plan = nullptr;

  bool visible(index_t i, index_t j) const {
    const int32_t* qc = &plan->q.coord[static_cast<std::size_t>(3 * i)];
    if (j < plan->extra) return qc[0] >= 0;
    const int32_t* kc = &plan->k.coord[static_cast<std::size_t>(3 * (j - plan->extra))];
    if (qc[0] < 0 || kc[0] < 0) return false;
    for (int d = 0; d < 3; ++d) {
      const auto c = static_cast<std::size_t>(qc[d]);
      if (kc[d] < plan->ax[d].wlo[c] || kc[d] > plan->ax[d].whi[c]) return false;
    }
    return true;
  }
  index_t count_visible(index_t i) const {
    const int32_t* qc = &plan->q.coord[static_cast<std::size_t>(3 * i)];
    if (qc[0] < 0) return 0;
    index_t n = 1;
    for (int d = 0; d < 3; ++d) {
      const auto c = static_cast<std::size_t>(qc[d]);
      n *= plan->ax[d].whi[c] - plan->ax[d].wlo[c] + 1;
    }
    return plan->extra + n;
  }
  BlockKind classify(index_t i0, index_t i1, index_t j0, index_t j1) const {
    const detail::NaQuerySpan q = detail::na_query_span(*plan, i0, i1);
    const index_t e = plan->extra;
    if (!q.any) return BlockKind::empty;
    const BlockKind xk = q.pad ? BlockKind::partial : BlockKind::full;  // the extra keys' kind
    if (j1 <= e) return xk;
    const BlockKind g = detail::na_classify(*plan, q, std::max<index_t>(j0 - e, 0), j1 - e);
    if (j0 >= e) return g;
    return g == BlockKind::full && xk == BlockKind::full ? BlockKind::full : BlockKind::partial;
  }
  // Only the split-KV decode loop reads these; it never runs this policy (decode shapes keep
  // the flat policy), so the whole key range is a safe answer.
  index_t kv_begin(index_t, index_t) const { return 0; }
  index_t kv_end(index_t, index_t) const { return plan->extra + plan->k.size(); }

  // (The kernels run each task with flush-to-zero on: kernel/fp_env.hpp.)
  // The blocks, each with the query rows (in steps of `group`) that may see it: a vector of
  // lanes is one slab of its query box (NaPlan), whose windows miss many of the blocks that
  // the box as a whole visits.
  template <class F>
  void for_each_block_rows(index_t i0, index_t i1, index_t bkv, index_t group, F&& f) const {
    const index_t e = plan->extra;
    if (e > 0) {
      const detail::NaQuerySpan q = detail::na_query_span(*plan, i0, i1);
      if (!q.any) return;
      for (index_t j0 = 0; j0 < e; j0 += bkv)
        f(j0, std::min(j0 + bkv, e), q.pad ? BlockKind::partial : BlockKind::full, RowSpan{0, i1 - i0});
    }
    detail::na_for_each_block(*plan, i0, i1, bkv, group, [&](index_t j0, index_t j1, BlockKind kind, RowSpan rows) {
      f(e + j0, e + j1, kind, rows);
    });
  }
  // The blocks of query tile [i0, i0 + plan->list_tile) as key lists (NaPlan::list_*), when
  // the plan has them for tiles of nq slots: f(j0, keys, n, kind, rows, vis) per block, the keys
  // keys[0 .. n), or j0 .. j0 + n - 1 with keys null when they are consecutive (the kernels
  // then read K and V as for a contiguous block).
  bool has_lists(index_t i0, index_t nq) const {
    return plan->list_tile > 0 && nq == plan->list_tile && i0 % plan->list_tile == 0;
  }
  // f's last argument: the keys' visibility bits (NaPlan::list_vis; null when not built), for
  // the ScoreTile of the block (ScoreTile::vis).
  template <class F>
  void for_each_block_list(index_t i0, F&& f) const {
    const auto t = static_cast<std::size_t>(i0 / plan->list_tile);
    const bool bits = plan->list_vis.size() == plan->list_keys.size();
    for (index_t b = plan->list_first[t]; b < plan->list_first[t + 1]; ++b) {
      const detail::NaPlan::ListBlock& blk = plan->list_blocks[static_cast<std::size_t>(b)];
      const index_t* keys = plan->list_keys.data() + blk.begin;
      f(keys[0], blk.run ? nullptr : keys, blk.end - blk.begin, blk.kind, blk.rows,
        bits ? plan->list_vis.data() + blk.begin : nullptr);
    }
  }
  template <class F>
  void for_each_block(index_t i0, index_t i1, index_t bkv, F&& f) const {
    for_each_block_rows(i0, i1, bkv, 0, [&](index_t j0, index_t j1, BlockKind kind, RowSpan) { f(j0, j1, kind); });
  }

  // -inf on invisible pairs. Per tile: each query's window bounds per dimension into lane
  // arrays (floats: exact for coordinates < 2^24); per key: its three c' coordinates
  // broadcast, then six compares and one select per vector of query lanes. No division or
  // table walk per element (a scalar loop here cost more than the block's two products).
  void apply_tile(const ScoreTile& t) const {
    using tile::vf;
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    constexpr index_t kMax = 256;
    const index_t nvec = (t.nq + tile::kWidth - 1) / tile::kWidth, lanes = nvec * tile::kWidth;
    const auto key = [&](index_t r) { return t.keys != nullptr ? t.keys[r] : t.j0 + r; };  // list blocks
    if (t.vis != nullptr && t.q_step == 1 && t.k_step >= lanes && t.nq == lanes) {
      apply_bits(t);
      return;
    }
    if (t.q_step != 1 || lanes > kMax || t.k_step < lanes) {
      for (index_t l = 0; l < t.nq; ++l)
        for (index_t r = 0; r < t.nk; ++r)
          if (!visible(t.i0 + l, key(r))) t.at(l, r) = kNegInf;
      return;
    }
    // The lanes' windows: the plan's table when the tile is whole vectors (query slots come in
    // boxes of kBlockQ, so always in the kernels), else a copy with empty windows past nq.
    alignas(64) float tab[6][kMax];
    const float* lo[3];
    const float* hi[3];
    const std::size_t nslots = static_cast<std::size_t>(plan->q.size());
    if (t.nq == lanes && plan->qwin.size() == 6 * nslots) {
      for (std::size_t d = 0; d < 3; ++d) {
        lo[d] = &plan->qwin[2 * d * nslots + static_cast<std::size_t>(t.i0)];
        hi[d] = &plan->qwin[(2 * d + 1) * nslots + static_cast<std::size_t>(t.i0)];
      }
    } else {
      for (int d = 0; d < 3; ++d) {
        for (index_t l = 0; l < lanes; ++l) {
          const int32_t* qc = l < t.nq ? &plan->q.coord[static_cast<std::size_t>(3 * (t.i0 + l))] : nullptr;
          const bool empty = qc == nullptr || qc[0] < 0;  // padding row or lane: an empty window
          tab[2 * d][l] = empty ? 1.f : static_cast<float>(plan->ax[d].wlo[static_cast<std::size_t>(qc[d])]);
          tab[2 * d + 1][l] = empty ? 0.f : static_cast<float>(plan->ax[d].whi[static_cast<std::size_t>(qc[d])]);
        }
        lo[d] = tab[2 * d];
        hi[d] = tab[2 * d + 1];
      }
    }
    const vf ninf(kNegInf);
    // Only the dimensions the grid has: the others' windows are [0, 0] for every query, and
    // their compares would be a third (2-D) or two thirds (1-D) of the work.
    const auto mask_keys = [&](auto dims) {
      constexpr int kDims = decltype(dims)::value;
      for (index_t r = 0; r < t.nk; ++r) {
        const index_t j = key(r);
        if (j < plan->extra) {  // an extra key: only padding rows are masked
          for (index_t l = 0; l < t.nq; ++l)
            if (plan->q.coord[static_cast<std::size_t>(3 * (t.i0 + l))] < 0) t.at(l, r) = kNegInf;
          continue;
        }
        const detail::NaKeyLanes k(&plan->k.coord[static_cast<std::size_t>(3 * (j - plan->extra))]);
        float* row = &t.at(0, r);
        for (index_t c = 0; c < lanes; c += tile::kWidth)
          xsimd::select(detail::na_windows_hold<kDims>(lo, hi, c, k), vf::load_unaligned(row + c), ninf)
              .store_unaligned(row + c);
      }
    };
    if (plan->ax[2].ext > 1)
      mask_keys(std::integral_constant<int, 3>{});
    else if (plan->ax[1].ext > 1)
      mask_keys(std::integral_constant<int, 2>{});
    else
      mask_keys(std::integral_constant<int, 1>{});
  }

 private:
  // apply_tile for a list block: its keys' visibility bits (NaPlan::list_vis) instead of the
  // window compares, the tile's first lane at bit t.i0 % list_tile. A vector of lanes that
  // sees the key (most of them: 0.8 of a 7^3 tile's lane pairs are visible) is not touched,
  // one that sees nothing is stored -inf without a load. 3-D 7^3 masks cost 7% of the call
  // with the compares (six per vector, the window tables loaded each time).
  void apply_bits(const ScoreTile& t) const {
    using tile::vf;
    constexpr std::uint32_t kAll = (std::uint32_t{1} << tile::kWidth) - 1;  // (kWidth <= 16)
    const vf ninf(-std::numeric_limits<float>::infinity());
    const int shift = static_cast<int>(t.i0 % plan->list_tile);
    const std::uint64_t all = t.nq >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << t.nq) - 1;
    for (index_t r = 0; r < t.nk; ++r) {
      const std::uint64_t m = t.vis[r] >> shift;
      if ((m & all) == all) continue;  // every lane sees the key
      float* row = &t.at(0, r);
      for (index_t c = 0; c < t.nq; c += tile::kWidth) {
        const std::uint32_t bits = static_cast<std::uint32_t>(m >> c) & kAll;
        if (bits == kAll) continue;
        if (bits == 0)
          ninf.store_unaligned(row + c);
        else
          xsimd::select(tile::lanes_of(bits), vf::load_unaligned(row + c), ninf).store_unaligned(row + c);
      }
    }
  }
};

}  // namespace sinkattn::policy

namespace sinkattn::detail {

// Key blocks as lists (NaPlan::list_*). The contiguous blocks of for_each_block_rows are runs
// of one key box (pencil) each, cut at bkv keys: in 3-D the runs of a 4x4x4 tile hold 34 keys
// on average, and each block costs a pass over the O accumulators, the softmax's set-up and
// the micro-kernels' remainders (about as much as 16 keys x one vector of lanes, measured),
// whatever its size. Lists lift the contiguity: the runs of a tile (thin pencils, so that each
// run's lanes are nearly exact) are sorted by the vectors of lanes that compute them and packed
// into blocks of <= bkv keys, a run joining the open block when that costs less than a block of
// its own. The kernels read the blocks' K rows through row pointers and copy their V rows.
// Tile cost in key x vector units; `out` null: cost only.
inline double na_tile_lists(const NaPlan& pl, index_t i0, index_t slots, index_t bkv, index_t group, NaPlan* out) {
  struct Piece {
    index_t j0, j1;
    index_t lo, hi;    // vectors of lanes [lo, hi]
    index_t alo, ahi;  // the vectors a block holding it may span: none that compute its keys elsewhere
    bool full;
  };
  // (Scratch per thread, reused: the planners call this per tile and candidate order.)
  thread_local std::vector<Piece> pieces, sorted;
  thread_local std::vector<index_t> at;
  pieces.clear();
  const index_t nvec = (slots + group - 1) / group;
  na_for_each_block(
      pl, i0, i0 + slots, bkv, group, [&](index_t j0, index_t j1, policy::BlockKind kind, policy::RowSpan r) {
        const index_t lo = r.lo / group, hi = (r.hi + group - 1) / group - 1;
        // The same keys again (na_for_each_block: for the next run of groups):
        // the copies share the vectors out, the gap between them cut in half, so
        // that no vector computes a key in two blocks.
        index_t alo = 0;
        if (!pieces.empty() && pieces.back().j0 == pl.extra + j0 && pieces.back().j1 == pl.extra + j1) {
          alo = (pieces.back().hi + 1 + lo) / 2;
          pieces.back().ahi = alo - 1;
        }
        pieces.push_back({pl.extra + j0, pl.extra + j1, lo, hi, alo, nvec - 1, kind == policy::BlockKind::full});
      });
  // Stably by (lo, hi): a counting sort over the nvec x nvec vector ranges.
  at.assign(static_cast<std::size_t>(nvec * nvec + 1), 0);
  for (const Piece& pc : pieces) ++at[static_cast<std::size_t>(pc.lo * nvec + pc.hi + 1)];
  for (std::size_t x = 1; x < at.size(); ++x) at[x] += at[x - 1];
  sorted.resize(pieces.size());
  for (const Piece& pc : pieces)
    sorted[static_cast<std::size_t>(at[static_cast<std::size_t>(pc.lo * nvec + pc.hi)]++)] = pc;
  pieces.swap(sorted);
  double cost = 0;
  index_t n = 0, lo = 0, hi = -1, alo = 0, ahi = nvec - 1;
  bool full = true;
  std::size_t begin = out ? out->list_keys.size() : 0;
  const auto flush = [&] {
    if (n == 0) return;
    cost += static_cast<double>(n * (hi - lo + 1)) + kNaBlockCost;
    if (out) {
      NaPlan::ListBlock blk;
      blk.begin = static_cast<index_t>(begin);
      blk.end = static_cast<index_t>(out->list_keys.size());
      blk.kind = full ? policy::BlockKind::full : policy::BlockKind::partial;
      blk.run = true;
      for (index_t x = blk.begin + 1; x < blk.end; ++x)
        blk.run = blk.run &&
                  out->list_keys[static_cast<std::size_t>(x)] == out->list_keys[static_cast<std::size_t>(x - 1)] + 1;
      blk.rows = {lo * group, std::min(slots, (hi + 1) * group)};
      out->list_blocks.push_back(blk);
      begin = out->list_keys.size();
    }
    n = 0;
    hi = -1;
    alo = 0;
    ahi = nvec - 1;
    full = true;
  };
  if (pl.extra > 0) {  // the extra keys: every query of the tile sees them (padding rows: none)
    const NaQuerySpan q = na_query_span(pl, i0, i0 + slots);
    if (q.any)
      for (index_t j0 = 0; j0 < pl.extra; j0 += bkv) {
        const index_t j1 = std::min(pl.extra, j0 + bkv);
        if (out)
          for (index_t j = j0; j < j1; ++j) out->list_keys.push_back(j);
        n = j1 - j0, lo = 0, hi = nvec - 1, full = !q.pad;
        flush();
      }
  }
  for (const Piece& pc : pieces) {
    index_t j = pc.j0;
    while (j < pc.j1) {
      const index_t k = pc.j1 - j, take = std::min(k, bkv - n);
      if (n > 0) {
        const index_t nlo = std::min(lo, pc.lo), nhi = std::max(hi, pc.hi);
        const double alone = static_cast<double>(n * (hi - lo + 1) + k * (pc.hi - pc.lo + 1)) + 2 * kNaBlockCost;
        const double joined = static_cast<double>((n + take) * (nhi - nlo + 1) + (k - take) * (pc.hi - pc.lo + 1)) +
                              kNaBlockCost * (k > take ? 2 : 1);
        const index_t nalo = std::max(alo, pc.alo), nahi = std::min(ahi, pc.ahi);
        if (take == 0 || joined > alone || nlo < nalo || nhi > nahi) {
          flush();
          continue;
        }
        lo = nlo, hi = nhi, alo = nalo, ahi = nahi, full = full && pc.full;
      } else {
        lo = pc.lo, hi = pc.hi, alo = pc.alo, ahi = pc.ahi, full = pc.full;
      }
      if (out)
        for (index_t x = j; x < j + take; ++x) out->list_keys.push_back(x);
      n += take;
      j += take;
      if (n == bkv) flush();
    }
  }
  flush();
  return cost;
}

// Slab shapes for vectors of `group` lanes in the query boxes: sub-boxes of `group` tokens
// (dividing the box) whose union of windows is smallest, measured at a box in the middle of
// the grid (dilation, stride and causal windows included), and smaller than the union of the
// plan order's vectors (lines through dimension 2, then 0). An 8-lane vector of an 8x8 box
// over a 13x13 kernel: 4x2 (16 x 14 = 224 keys) rather than one 8-token line (20 x 13 = 260).
inline std::vector<std::array<index_t, 3>> na_query_slabs(const NaPlan& pl, index_t group) {
  std::vector<std::array<index_t, 3>> best;
  const std::array<index_t, 3>& box = pl.q.box;
  if (group <= 0 || box[0] * box[1] * box[2] % group != 0) return best;
  const auto length = [&](int d, index_t n) {  // union of n coordinates' windows from a middle box
    const NaAxis& a = pl.ax[d];
    const index_t c = std::min(a.ext / 2 / box[d] * box[d], a.ext - n);
    return static_cast<double>(a.whi[static_cast<std::size_t>(c + n - 1)] - a.wlo[static_cast<std::size_t>(c)] + 1);
  };
  const index_t p2 = std::min(group, box[2]), p0 = std::min(group / p2, box[0]), p1 = group / p2 / p0;
  const double plain = length(0, p0) * length(1, std::min(p1, box[1])) * length(2, p2);  // to beat
  double best_keys = plain;
  for (index_t s0 = 1; s0 <= box[0]; s0 *= 2)
    for (index_t s1 = 1; s1 <= box[1]; s1 *= 2) {
      if (s0 * s1 > group || group % (s0 * s1) != 0) continue;
      const index_t s2 = group / (s0 * s1);
      if (box[0] % s0 != 0 || box[1] % s1 != 0 || box[2] % s2 != 0) continue;
      const double keys = length(0, s0) * length(1, s1) * length(2, s2);
      if (keys >= plain) continue;
      if (keys < best_keys) best.clear(), best_keys = keys;
      if (keys == best_keys) best.push_back({s0, s1, s2});
    }
  return best;
}

// NaPlan::list_vis from the lists: per entry, the lanes of its tile whose windows hold the
// key (na_windows_hold, as apply_tile compares; extra keys: every lane but padding). Tiles of
// more than 64 slots (none in the kernels: kQRows <= 64) keep no bits.
inline void na_list_visibility(NaPlan& pl) {
  pl.list_vis.clear();
  const index_t slots = pl.list_tile;
  if (slots <= 0 || slots > 64 || slots % tile::kWidth != 0) return;
  pl.list_vis.assign(pl.list_keys.size(), 0);
  const auto nq = static_cast<std::size_t>(pl.q.size());
  const index_t ntiles = pl.q.size() / slots;
  for (index_t t = 0; t < ntiles; ++t) {
    const auto i0 = static_cast<std::size_t>(t * slots);
    const float* lo[3];
    const float* hi[3];
    for (std::size_t d = 0; d < 3; ++d) lo[d] = &pl.qwin[2 * d * nq + i0], hi[d] = &pl.qwin[(2 * d + 1) * nq + i0];
    std::uint64_t tokens = 0;  // the tile's non-padding lanes
    for (index_t l = 0; l < slots; ++l)
      if (pl.q.coord[3 * (i0 + static_cast<std::size_t>(l))] >= 0) tokens |= std::uint64_t{1} << l;
    const auto b0 = static_cast<std::size_t>(pl.list_first[static_cast<std::size_t>(t)]);
    const auto b1 = static_cast<std::size_t>(pl.list_first[static_cast<std::size_t>(t) + 1]);
    if (b1 == b0) continue;  // a tile without blocks (list_blocks[b0] may not exist)
    const auto x0 = static_cast<std::size_t>(pl.list_blocks[b0].begin);
    const auto x1 = static_cast<std::size_t>(pl.list_blocks[b1 - 1].end);
    for (std::size_t x = x0; x < x1; ++x) {
      const index_t j = pl.list_keys[x];
      if (j < pl.extra) {
        pl.list_vis[x] = tokens;
        continue;
      }
      const NaKeyLanes k(&pl.k.coord[static_cast<std::size_t>(3 * (j - pl.extra))]);
      std::uint64_t bits = 0;
      for (index_t c = 0; c < slots; c += tile::kWidth)
        bits |= std::uint64_t{tile::lane_bits(na_windows_hold<3>(lo, hi, c, k))} << c;
      pl.list_vis[x] = bits;
    }
  }
}

// The lists for query tiles of `slots` and blocks of <= bkv keys, vectors of `group` lanes;
// first the query and key orders whose lists cost least. Query orders: each vector of lanes
// one line of the box in dimension 0 (the plan's), or one slab (na_query_slabs) with the
// slabs in either of two orders; key orders: na_key_orders (thin pencils usually win), for
// the slab orders only the plan order's winner and the pencils 1 or 2 wide. slabs false:
// the plan order only; prune false: every candidate's tiles summed in full (tests compare).
inline void na_build_lists(NaPlan& pl, index_t slots, index_t bkv, index_t group, bool slabs = true,
                           bool prune = true) {
  const index_t ntiles = pl.q.size() / slots;
  // A candidate's cost, or any value above `bound` once its tiles so far exceed it (it cannot
  // win then: the tiles' costs are positive; the choice is the same as summing every tile).
  const auto lists_cost = [&](const std::array<index_t, 3>& kb, double bound) {
    na_set_key_order(pl, kb);
    double cost = 0;
    for (index_t t = 0; t < ntiles && !(prune && cost > bound); ++t)
      cost += na_tile_lists(pl, t * slots, slots, bkv, group, nullptr);
    return cost;
  };
  double best = std::numeric_limits<double>::infinity();
  std::array<index_t, 3> best_box = pl.k.box;
  for (const auto& kb : na_key_orders(pl)) {
    const double cost = lists_cost(kb, best);
    if (cost < best) best = cost, best_box = kb;
  }
  const std::array<int, 3> plain_order = pl.q.order;
  std::array<index_t, 3> best_slab = pl.q.slab;
  std::array<int, 3> best_order = plain_order;
  if (slabs && pl.rank >= 2 && slots % group == 0) {
    std::vector<std::array<index_t, 3>> keys{best_box};
    for (const auto& kb : na_key_orders(pl))
      if (kb != best_box && kb != pl.q.box && kb[1] <= 2 && kb[2] <= 2) keys.push_back(kb);
    for (const auto& slab : na_query_slabs(pl, group))
      for (const std::array<int, 3>& order : {std::array<int, 3>{0, 1, 2}, std::array<int, 3>{1, 0, 2}}) {
        pl.q.slab = slab;
        pl.q.order = order;
        na_fill_queries(pl);
        for (const auto& kb : keys) {
          const double cost = lists_cost(kb, best);
          if (cost < best) best = cost, best_box = kb, best_slab = slab, best_order = order;
        }
      }
  }
  if (pl.q.slab != best_slab || pl.q.order != best_order) {
    pl.q.slab = best_slab;
    pl.q.order = best_order;
    na_fill_queries(pl);
  }
  na_set_key_order(pl, best_box);
  pl.list_keys.clear();
  pl.list_blocks.clear();
  pl.list_first.assign(1, 0);
  for (index_t t = 0; t < ntiles; ++t) {
    na_tile_lists(pl, t * slots, slots, bkv, group, &pl);
    pl.list_first.push_back(static_cast<index_t>(pl.list_blocks.size()));
  }
  pl.list_tile = slots;
  na_list_visibility(pl);
}

}  // namespace sinkattn::detail
