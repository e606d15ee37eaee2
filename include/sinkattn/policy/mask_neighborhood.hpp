#pragma once
// Neighborhood attention 1-D/2-D/3-D (NATTEN semantics, SEMANTICS.md section 2): tokens
// row-major over extent[0] x ... x extent[rank-1] (last dimension fastest); a pair is visible
// iff it is visible in every dimension (kernel k, dilation d, stride s, causal flag; the
// window shifts at the borders). Requires Sq == prod(extent), Skv == extra + prod(extent).
//
// Classification works on per-dimension coordinate ranges: a query tile (a range of row
// indices) and a key block are bounded by coordinate boxes; per dimension, the union and the
// intersection of the query coordinates' key windows decide Empty (a dimension where the
// union misses the key box) and Full (no dilation and, in every dimension, the intersection
// covers the key box). Boxes over-approximate the index ranges, so both tests are safe.
// The 64-row tiles are rows of the flattened grid; 2-D/3-D and dilated grids run on
// multi-dimensional tiles instead (mask_neighborhood_tiled.hpp), this policy keeps 1-D and
// the inputs that path cannot permute.
//
// Extra keys (NeighborhoodMask::extra_keys): keys [0, extra) are visible to every query and
// grid token t is key extra + t. The grid methods below work on grid indices; the mask
// interface (visible, classify, kv range, for_each_block, count_visible) adds the offset.

#include <algorithm>
#include <array>

#include "sinkattn/core/types.hpp"
#include "sinkattn/policy/mask.hpp"

namespace sinkattn::policy {

struct NeighborhoodMaskPolicy {
  int rank = 1;
  std::array<index_t, 3> extent{1, 1, 1}, kernel{1, 1, 1}, dilation{1, 1, 1}, stride{1, 1, 1};
  std::array<bool, 3> causal{false, false, false};
  index_t extra = 0;  // extra keys before the grid, visible to all

  index_t tokens() const {
    index_t n = 1;
    for (int d = 0; d < rank; ++d) n *= extent[d];
    return n;
  }

  // Key coordinates (raw, along dimension dim) query coordinate qc sees: [lo, hi] (with
  // dilation, every d-th coordinate of that range, those of qc's group).
  void window(int dim, index_t qc, index_t& lo, index_t& hi) const {
    const index_t L = extent[dim], k = kernel[dim], dl = dilation[dim], s = stride[dim];
    const index_t group = qc % dl, len = (L - group + dl - 1) / dl, q = qc / dl;
    index_t a, b;  // in group coordinates
    if (causal[dim]) {
      const index_t leader = std::min((q / s) * s + s - 1, len - 1);
      a = std::max<index_t>(0, leader - k + 1);
      b = q;
    } else {
      const index_t left = k / 2, right = k / 2 + (k % 2) - 1;
      const index_t leader = std::min((q / s) * s + s / 2, len - 1);
      const index_t center = std::max(left, std::min(leader, len - 1 - right));
      a = center - left;
      b = center + right;
    }
    lo = a * dl + group;
    hi = b * dl + group;
  }

  bool visible_1d(int dim, index_t qc, index_t kc) const {
    const index_t dl = dilation[dim];
    if (kc % dl != qc % dl) return false;
    index_t lo, hi;
    window(dim, qc, lo, hi);
    return lo <= kc && kc <= hi;
  }

  bool visible(index_t i, index_t j) const { return j < extra || grid_visible(i, j - extra); }
  bool grid_visible(index_t i, index_t j) const {
    for (int dim = rank - 1; dim >= 0; --dim) {
      const index_t L = extent[dim];
      if (!visible_1d(dim, i % L, j % L)) return false;
      i /= L;
      j /= L;
    }
    return true;
  }

  // Per-dimension coordinate bounding box of the flat index range [x0, x1).
  void box(index_t x0, index_t x1, std::array<index_t, 3>& lo, std::array<index_t, 3>& hi) const {
    index_t a = x0, b = x1 - 1;
    bool spans = false;  // a higher dimension already differs: this one covers its whole extent
    std::array<index_t, 3> ca{}, cb{};
    for (int dim = rank - 1; dim >= 0; --dim) {
      ca[dim] = a % extent[dim];
      cb[dim] = b % extent[dim];
      a /= extent[dim];
      b /= extent[dim];
    }
    for (int dim = 0; dim < rank; ++dim) {
      if (spans || ca[dim] > cb[dim]) {
        lo[dim] = 0;
        hi[dim] = extent[dim] - 1;
        spans = true;
      } else {
        lo[dim] = ca[dim];
        hi[dim] = cb[dim];
        spans = spans || ca[dim] != cb[dim];
      }
    }
  }

  // Union [ulo, uhi] and intersection [ilo, ihi] of the windows of query coordinates
  // [qlo, qhi] along dim.
  // Without dilation both window ends are non-decreasing in the query coordinate (the leader,
  // the clamped center and, causal, q itself are), so the two end queries decide: O(1) per
  // call instead of a loop with divisions per coordinate, which cost a block's worth of work
  // per tile when a tile visits only a few key blocks (blocked NA).
  void windows(int dim, index_t qlo, index_t qhi, index_t& ulo, index_t& uhi, index_t& ilo, index_t& ihi) const {
    window(dim, qlo, ulo, ihi);
    if (dilation[dim] == 1) {
      window(dim, qhi, ilo, uhi);
      return;
    }
    ilo = ulo;
    uhi = ihi;
    for (index_t q = qlo + 1; q <= qhi; ++q) {
      index_t lo, hi;
      window(dim, q, lo, hi);
      ulo = std::min(ulo, lo);
      uhi = std::max(uhi, hi);
      ilo = std::max(ilo, lo);
      ihi = std::min(ihi, hi);
    }
  }

  BlockKind classify(index_t i0, index_t i1, index_t j0, index_t j1) const {
    if (j1 <= extra) return BlockKind::full;
    const BlockKind g = grid_classify(i0, i1, std::max<index_t>(j0 - extra, 0), j1 - extra);
    return j0 < extra && g != BlockKind::full ? BlockKind::partial : g;
  }
  BlockKind grid_classify(index_t i0, index_t i1, index_t j0, index_t j1) const {
    std::array<index_t, 3> qlo{}, qhi{}, klo{}, khi{};
    box(i0, i1, qlo, qhi);
    box(j0, j1, klo, khi);
    bool full = true;
    for (int dim = 0; dim < rank; ++dim) {
      index_t ulo, uhi, ilo, ihi;
      windows(dim, qlo[dim], qhi[dim], ulo, uhi, ilo, ihi);
      if (uhi < klo[dim] || khi[dim] < ulo) return BlockKind::empty;
      full = full && dilation[dim] == 1 && ilo <= klo[dim] && khi[dim] <= ihi;
    }
    return full ? BlockKind::full : BlockKind::partial;
  }

  // Keys between the smallest and the largest corner of the union box (and the extra keys).
  index_t kv_begin(index_t i0, index_t i1) const { return extra > 0 ? 0 : kv_corner(i0, i1, false); }
  index_t kv_end(index_t i0, index_t i1) const { return extra + kv_corner(i0, i1, true) + 1; }
  // Split-KV decode: from the extra keys straight to the union box.
  index_t next_kv(index_t i0, index_t i1, index_t j) const {
    return j < extra ? j : std::max(j, extra + kv_corner(i0, i1, false));
  }
  // The extra keys (Full blocks), then the blocks of the union box's key range.
  template <class F>
  void for_each_block(index_t i0, index_t i1, index_t bkv, F&& f) const {
    for (index_t j0 = 0; j0 < extra; j0 += bkv) f(j0, std::min(j0 + bkv, extra), BlockKind::full);
    const index_t end = kv_end(i0, i1);
    for (index_t j0 = extra + kv_corner(i0, i1, false); j0 < end; j0 += bkv) {
      const index_t j1 = std::min(j0 + bkv, end);
      const BlockKind kind = grid_classify(i0, i1, j0 - extra, j1 - extra);
      if (kind != BlockKind::empty) f(j0, j1, kind);
    }
  }
  index_t kv_corner(index_t i0, index_t i1, bool upper) const {
    std::array<index_t, 3> qlo{}, qhi{};
    box(i0, i1, qlo, qhi);
    index_t x = 0;
    for (int dim = 0; dim < rank; ++dim) {
      index_t ulo, uhi, ilo, ihi;
      windows(dim, qlo[dim], qhi[dim], ulo, uhi, ilo, ihi);
      x = x * extent[dim] + (upper ? uhi : ulo);
    }
    return x;
  }

  index_t count_visible(index_t i) const {
    index_t n = 1;  // the grid keys, a product over dimensions; plus the extra keys
    for (int dim = rank - 1; dim >= 0; --dim) {
      const index_t L = extent[dim], qc = i % L;
      i /= L;
      index_t c = 0;
      for (index_t kc = 0; kc < L; ++kc) c += visible_1d(dim, qc, kc);
      n *= c;
    }
    return extra + n;
  }
};

}  // namespace sinkattn::policy
