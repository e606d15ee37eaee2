// Property tests of the mask policies over all (i, j): the block classification agrees with
// visible(i, j), the visited blocks cover every visible pair, and apply_mask equals visible.

#include <gtest/gtest.h>

#include <limits>
#include <set>
#include <vector>

#include "sinkattn/kernel/config.hpp"
#include "sinkattn/policy/mask.hpp"

namespace sinkattn {
namespace {

using policy::BlockKind;

template <class Mask>
void check_mask(const Mask& m, index_t sq, index_t skv, index_t bq, index_t bkv, const char* what) {
  SCOPED_TRACE(::testing::Message() << what << " sq=" << sq << " skv=" << skv << " bq=" << bq << " bkv=" << bkv);
  for (index_t i0 = 0; i0 < sq; i0 += bq) {
    const index_t i1 = std::min(sq, i0 + bq);
    std::set<index_t> visited;
    policy::for_each_kv_block(m, i0, i1, bkv, [&](index_t j0, index_t j1, BlockKind kind) {
      ASSERT_LT(j0, j1);
      ASSERT_LE(j1, skv);
      ASSERT_LE(j1 - j0, bkv);
      ASSERT_NE(kind, BlockKind::empty) << "empty blocks must not be visited";
      bool any = false, all = true;
      for (index_t i = i0; i < i1; ++i)
        for (index_t j = j0; j < j1; ++j) {
          const bool v = m.visible(i, j);
          any = any || v;
          all = all && v;
          if (v) visited.insert(i * skv + j);
        }
      if (kind == BlockKind::full) {
        ASSERT_TRUE(all) << "a Full block with an invisible pair at j0=" << j0;
      }
      (void)any;
      // apply_mask turns exactly the invisible pairs into -inf.
      std::vector<float> st(static_cast<std::size_t>((j1 - j0) * bq), 1.f);
      const policy::ScoreTile t{st.data(), bq, j1 - j0, 1, 0, 0, i0, i1 - i0, j0, j1 - j0, 1, bq};
      policy::apply_mask(m, t);
      for (index_t r = 0; r < j1 - j0; ++r)
        for (index_t l = 0; l < i1 - i0; ++l)
          ASSERT_EQ(t.at(l, r) == -std::numeric_limits<float>::infinity(), !m.visible(i0 + l, j0 + r));
    });
    // Every visible pair of the tile lies in a visited block; classify agrees on the rest.
    for (index_t i = i0; i < i1; ++i)
      for (index_t j = 0; j < skv; ++j)
        if (m.visible(i, j)) {
          ASSERT_TRUE(visited.count(i * skv + j)) << "visible pair (" << i << ", " << j << ") skipped";
        }
    for (index_t j0 = 0; j0 < skv; j0 += bkv) {
      const index_t j1 = std::min(skv, j0 + bkv);
      bool any = false, all = true;
      for (index_t i = i0; i < i1; ++i)
        for (index_t j = j0; j < j1; ++j) any = any || m.visible(i, j), all = all && m.visible(i, j);
      const BlockKind k = m.classify(i0, i1, j0, j1);
      if (k == BlockKind::empty) {
        ASSERT_FALSE(any) << "an Empty block holds a visible pair";
      }
      if (k == BlockKind::full) {
        ASSERT_TRUE(all);
      }
    }
  }
}

TEST(MaskPolicy, FullAndCausalAgreeWithVisibleForManyShapes) {
  const std::vector<std::pair<index_t, index_t>> shapes = {{1, 1},   {1, 130},   {130, 1}, {17, 65},  {65, 17},
                                                           {64, 64}, {100, 230}, {239, 1}, {113, 203}};
  for (auto [sq, skv] : shapes)
    for (index_t bq : {1, 16, 64})
      for (index_t bkv : {1, 16, 64}) {
        check_mask(policy::FullMaskPolicy{skv}, sq, skv, bq, bkv, "full");
        for (index_t offset : {-5, 0, 3}) {
          const policy::CausalMaskPolicy c{skv, skv - sq + offset};
          check_mask(c, sq, skv, bq, bkv, "causal");
          for (index_t i = 0; i < sq; ++i)
            for (index_t j = 0; j < skv; ++j) ASSERT_EQ(c.visible(i, j), j <= i + skv - sq + offset);
        }
      }
}

TEST(MaskPolicy, CausalSkipsTheUpperTriangle) {
  const index_t s = 1024, bq = detail::kBlockQ, bkv = detail::kBlockKV;
  const policy::CausalMaskPolicy c{s, 0};
  index_t visited = 0, partial = 0;
  for (index_t i0 = 0; i0 < s; i0 += bq)
    policy::for_each_kv_block(c, i0, i0 + bq, bkv, [&](index_t, index_t, BlockKind k) {
      ++visited;
      partial += k == BlockKind::partial;
    });
  // Tile [i0, i1) visits blocks up to key i1 - 1; the blocks wholly left of key i0 + 1 are Full.
  index_t want_visited = 0, want_full = 0;
  for (index_t i0 = 0; i0 < s; i0 += bq) {
    want_visited += (std::min(s, i0 + bq) + bkv - 1) / bkv;
    want_full += (i0 + 1) / bkv;
  }
  EXPECT_EQ(visited, want_visited);
  EXPECT_EQ(partial, want_visited - want_full);
  EXPECT_LT(visited, 0.6 * (s / bq) * (s / bkv + 1));  // about half of the dense blocks
}

}  // namespace
}  // namespace sinkattn
