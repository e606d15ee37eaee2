// Property tests of the Full and Causal mask policies (see mask_properties.hpp), and that causal
// visits only the lower triangle.

#include <gtest/gtest.h>

#include <limits>
#include <set>
#include <vector>

#include "mask_properties.hpp"
#include "sinkattn/kernel/config.hpp"
#include "sinkattn/policy/mask.hpp"

namespace sinkattn {
namespace {

using policy::BlockKind;

TEST(MaskPolicy, FullAndCausalAgreeWithVisibleForManyShapes) {
  const std::vector<std::pair<index_t, index_t>> shapes = {{1, 1},   {1, 130},   {130, 1}, {17, 65},  {65, 17},
                                                           {64, 64}, {100, 230}, {239, 1}, {113, 203}};
  for (auto [sq, skv] : shapes)
    for (index_t bq : {1, 16, 64})
      for (index_t bkv : {1, 16, 64}) {
        test::check_mask(policy::FullMaskPolicy{skv}, FullMask{}, sq, skv, bq, bkv);
        for (index_t offset : {-5, 0, 3})
          test::check_mask(policy::CausalMaskPolicy{skv, skv - sq + offset}, CausalMask{offset}, sq, skv, bq, bkv);
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
