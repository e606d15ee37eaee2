#pragma once
// The property check every mask policy must pass, over all (i, j): visible(i, j) equals the
// fp64 reference's oracle, count_visible counts each row, the block classification agrees
// with visible, the visited blocks cover every visible pair (and never an Empty one, and with
// the rows version no row outside a block's row span sees it),
// apply_mask equals visible, and next_kv never jumps a visible key. Policies over permuted or
// padded indices (neighborhood_tiled_test.cpp) pass a SlotMap to the reference's indices.

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <vector>

#include "sinkattn/policy/mask.hpp"
#include "sinkattn/reference/visibility.hpp"

namespace sinkattn::test {

// The policy's query rows and keys as the reference's: q(i) / k(j) is the reference row / key
// of the policy's row i / key j, or -1 for a padding slot (which sees, and is seen by,
// nothing); seq_q / seq_kv are the reference problem's lengths. Empty maps and lengths < 0:
// the identity on the policy's sq x skv.
struct SlotMap {
  std::function<index_t(index_t)> q, k;
  index_t seq_q = -1, seq_kv = -1;
};

// The policy against the reference oracle for `spec` (batch b, head h), then the block-level
// properties for query tiles of bq rows and key blocks of bkv keys, over the policy's sq x skv.
template <class Mask>
inline void check_mask(const Mask& m, const MaskSpec& spec, index_t sq, index_t skv, index_t bq, index_t bkv,
                       index_t batch = 1, index_t heads = 1, index_t b = 0, index_t h = 0, const SlotMap& map = {}) {
  SCOPED_TRACE(::testing::Message() << "sq=" << sq << " skv=" << skv << " bq=" << bq << " bkv=" << bkv << " b=" << b
                                    << " h=" << h);
  const Problem p{batch, heads, heads, map.seq_q >= 0 ? map.seq_q : sq, map.seq_kv >= 0 ? map.seq_kv : skv, 8, 8};
  std::vector<index_t> ref_q(static_cast<std::size_t>(sq)), ref_k(static_cast<std::size_t>(skv));
  for (index_t i = 0; i < sq; ++i) ref_q[static_cast<std::size_t>(i)] = map.q ? map.q(i) : i;
  for (index_t j = 0; j < skv; ++j) ref_k[static_cast<std::size_t>(j)] = map.k ? map.k(j) : j;
  for (index_t i = 0; i < sq; ++i) {
    index_t n = 0;
    for (index_t j = 0; j < skv; ++j) {
      const index_t ri = ref_q[static_cast<std::size_t>(i)], rj = ref_k[static_cast<std::size_t>(j)];
      const bool want = ri >= 0 && rj >= 0 && reference::visible(p, spec, b, h, ri, rj);
      ASSERT_EQ(m.visible(i, j), want) << "visible(" << i << ", " << j << "), reference (" << ri << ", " << rj << ")";
      n += want;
    }
    ASSERT_EQ(m.count_visible(i), n) << "count_visible(" << i << ")";
  }
  for (index_t i0 = 0; i0 < sq; i0 += bq) {
    const index_t i1 = std::min(sq, i0 + bq);
    std::set<index_t> visited;
    index_t last_j1 = 0;
    policy::for_each_kv_block(m, i0, i1, bkv, [&](index_t j0, index_t j1, policy::BlockKind kind) {
      ASSERT_LT(j0, j1);
      ASSERT_GE(j0, last_j1) << "blocks in ascending key order, not overlapping";
      last_j1 = j1;
      ASSERT_LE(j1, skv);
      ASSERT_LE(j1 - j0, bkv);
      ASSERT_NE(kind, policy::BlockKind::empty) << "empty blocks must not be visited";
      ASSERT_EQ(kind, m.classify(i0, i1, j0, j1));
      bool all = true;
      for (index_t i = i0; i < i1; ++i)
        for (index_t j = j0; j < j1; ++j) {
          const bool v = m.visible(i, j);
          all = all && v;
          if (v) visited.insert(i * skv + j);
        }
      if (kind == policy::BlockKind::full) {
        ASSERT_TRUE(all) << "a Full block with an invisible pair at j0=" << j0;
      }
      std::vector<float> st(static_cast<std::size_t>((j1 - j0) * bq), 1.f);
      const policy::ScoreTile t{st.data(), bq, j1 - j0, 1, 0, 0, i0, i1 - i0, j0, j1 - j0, 1, bq, nullptr};
      policy::apply_mask(m, t);
      for (index_t r = 0; r < j1 - j0; ++r)
        for (index_t l = 0; l < i1 - i0; ++l)
          ASSERT_EQ(t.at(l, r) == -std::numeric_limits<float>::infinity(), !m.visible(i0 + l, j0 + r))
              << "apply_mask at (" << i0 + l << ", " << j0 + r << ")";
    });
    for (index_t i = i0; i < i1; ++i)
      for (index_t j = 0; j < skv; ++j)
        if (m.visible(i, j)) {
          ASSERT_TRUE(visited.count(i * skv + j)) << "visible pair (" << i << ", " << j << ") skipped";
          ASSERT_GE(j, m.kv_begin(i0, i1));
          ASSERT_LT(j, m.kv_end(i0, i1));
        }
    // The rows version: the same cover, each block with a span of rows (in steps of the
    // group) that compute it; every visible pair in exactly one block's span. A block may
    // come again right after itself for a later span (a run of groups that need its keys,
    // apart from an earlier run); Full blocks span the whole tile.
    for (const index_t group : {index_t{4}, index_t{16}}) {
      std::map<index_t, int> covered;
      index_t prev_j0 = -1, prev_j1 = 0, prev_hi = 0;
      policy::for_each_kv_block_rows(m, i0, i1, bkv, group,
                                     [&](index_t j0, index_t j1, policy::BlockKind kind, policy::RowSpan rows) {
                                       if (j0 == prev_j0 && j1 == prev_j1) {
                                         ASSERT_GE(rows.lo, prev_hi) << "a block again, for rows it had";
                                       } else {
                                         ASSERT_GE(j0, prev_j1);
                                       }
                                       prev_j0 = j0;
                                       prev_j1 = j1;
                                       prev_hi = rows.hi;
                                       ASSERT_NE(kind, policy::BlockKind::empty);
                                       ASSERT_EQ(kind, m.classify(i0, i1, j0, j1));
                                       ASSERT_LE(0, rows.lo);
                                       ASSERT_LT(rows.lo, rows.hi);
                                       ASSERT_LE(rows.hi, i1 - i0);
                                       ASSERT_EQ(rows.lo % group, 0);
                                       ASSERT_TRUE(rows.hi % group == 0 || rows.hi == i1 - i0);
                                       if (kind == policy::BlockKind::full) {
                                         ASSERT_EQ(rows.lo, 0);
                                         ASSERT_EQ(rows.hi, i1 - i0);
                                       }
                                       for (index_t i = i0 + rows.lo; i < i0 + rows.hi; ++i)
                                         for (index_t j = j0; j < j1; ++j)
                                           if (m.visible(i, j)) ++covered[i * skv + j];
                                     });
      for (const auto& [pair, n] : covered)
        ASSERT_EQ(n, 1) << "pair (" << pair / skv << ", " << pair % skv << ") in two blocks, group " << group;
      ASSERT_EQ(covered.size(), visited.size()) << "the rows version skips visible pairs, group " << group;
    }
    // next_kv(j) never passes a key some row of the tile sees.
    std::vector<index_t> next_seen(static_cast<std::size_t>(skv + 1), skv);  // first key >= j a row sees
    for (index_t j = skv - 1; j >= 0; --j) {
      bool seen = false;
      for (index_t i = i0; i < i1 && !seen; ++i) seen = m.visible(i, j);
      next_seen[j] = seen ? j : next_seen[j + 1];
    }
    for (index_t j = 0; j < skv; ++j) {
      const index_t nx = policy::next_kv(m, i0, i1, j);
      ASSERT_GE(nx, j);
      ASSERT_LE(std::min(nx, skv), next_seen[j]) << "next_kv(" << j << ") jumps a visible key";
    }
    // classify over every aligned block (not only the visited ones).
    for (index_t j0 = 0; j0 < skv; j0 += bkv) {
      const index_t j1 = std::min(skv, j0 + bkv);
      bool any = false, all = true;
      for (index_t i = i0; i < i1; ++i)
        for (index_t j = j0; j < j1; ++j) any = any || m.visible(i, j), all = all && m.visible(i, j);
      const policy::BlockKind k = m.classify(i0, i1, j0, j1);
      if (k == policy::BlockKind::empty) {
        ASSERT_FALSE(any) << "an Empty block holds a visible pair at j0=" << j0;
      }
      if (k == policy::BlockKind::full) {
        ASSERT_TRUE(all) << "a Full block with an invisible pair at j0=" << j0;
      }
      if (any && !all) {
        ASSERT_EQ(k, policy::BlockKind::partial);
      }
    }
  }
}

}  // namespace sinkattn::test
