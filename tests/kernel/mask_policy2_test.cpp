// Property tests of the mask policies beyond Full/Causal, over all (i, j): visible(i, j) equals
// the fp64 reference's oracle, the block classification agrees with visible, the visited blocks
// cover every visible pair (and never an Empty one), apply_mask equals visible, next_kv never
// jumps a visible key, and count_visible counts the visible keys of each row.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <set>
#include <vector>

#include "mask_properties.hpp"
#include "sinkattn/kernel/config.hpp"
#include "sinkattn/policy/mask.hpp"
#include "sinkattn/policy/mask_block.hpp"
#include "sinkattn/policy/mask_block_sparse.hpp"
#include "sinkattn/policy/mask_neighborhood.hpp"
#include "sinkattn/policy/mask_window.hpp"
#include "sinkattn/reference/visibility.hpp"

namespace sinkattn {
namespace {

using policy::BlockKind;
using test::check_mask;

policy::SlidingWindowMaskPolicy window_policy(const SlidingWindowMask& w, index_t sq, index_t skv) {
  return {skv, skv - sq + w.offset, w.left, w.right, w.sink_tokens};
}

TEST(SlidingWindowMaskPolicy, AgreesWithTheReferenceForManyWindows) {
  const std::vector<std::pair<index_t, index_t>> shapes = {{1, 1},   {1, 130},  {130, 1},   {17, 65},
                                                           {65, 17}, {64, 200}, {100, 230}, {150, 150}};
  const index_t sides[] = {-1, 0, 1, 64, 100, 300};
  const std::pair<index_t, index_t> tiles[] = {{16, 16}, {64, 16}, {64, 64}};
  for (auto [sq, skv] : shapes)
    for (index_t left : sides)
      for (index_t right : sides)
        for (index_t sinks : {0, 4, 70, 500})
          for (index_t offset : {0, -7, 3}) {
            if (offset != 0 && left != 1 && right != 1) continue;  // offsets with a few windows only
            const SlidingWindowMask w{left, right, sinks, offset};
            SCOPED_TRACE(::testing::Message()
                         << "left=" << left << " right=" << right << " sinks=" << sinks << " offset=" << w.offset);
            for (auto [bq, bkv] : tiles) check_mask(window_policy(w, sq, skv), MaskSpec{w}, sq, skv, bq, bkv);
            if (::testing::Test::HasFatalFailure()) return;
          }
}

TEST(SlidingWindowMaskPolicy, VisitsOnlySinksAndBand) {
  // S = 8192, window 1024 (left 1023), 4 sinks, tiles 64 x 64: each tile visits the sink block
  // and at most 17 band blocks, of which at most 2 are Partial.
  const index_t s = 8192, bq = detail::kBlockQ, bkv = detail::kBlockKV;
  const policy::SlidingWindowMaskPolicy m{s, 0, 1023, 0, 4};
  index_t visited = 0, partial = 0;
  for (index_t i0 = 0; i0 < s; i0 += bq) {
    index_t here = 0, here_partial = 0;
    policy::for_each_kv_block(m, i0, i0 + bq, bkv, [&](index_t, index_t, BlockKind k) {
      ++here;
      here_partial += k == BlockKind::partial;
    });
    EXPECT_LE(here, 18) << "i0=" << i0;
    EXPECT_LE(here_partial, 3) << "i0=" << i0;
    visited += here;
    partial += here_partial;
  }
  const index_t dense = (s / bq) * (s / bkv);
  EXPECT_LT(visited, dense / 6);
  EXPECT_LT(partial, 3 * (s / bq));
}

TEST(SlidingWindowMaskPolicy, NextKvJumpsTheGap) {
  const policy::SlidingWindowMaskPolicy m{100000, 0, 127, 0, 4};  // gpt-oss window 128 + 4 sinks
  // Decode-like: one row at position 99999 sees [0, 4) and [99872, 99999].
  EXPECT_EQ(policy::next_kv(m, 99999, 100000, 0), 0);
  EXPECT_EQ(policy::next_kv(m, 99999, 100000, 3), 3);
  EXPECT_EQ(policy::next_kv(m, 99999, 100000, 4), 99872);
  EXPECT_EQ(policy::next_kv(m, 99999, 100000, 64), 99872);
  EXPECT_EQ(policy::next_kv(m, 99999, 100000, 99900), 99900);
  EXPECT_EQ(m.kv_end(99999, 100000), 100000);
}

policy::BlockMaskPolicy block_policy(const BlockMask& m, index_t sq, index_t skv) {
  return {skv,
          skv - sq + m.offset,
          m.boundaries.empty() ? m.block_size : 0,
          m.boundaries.data(),
          static_cast<index_t>(m.boundaries.size()),
          m.global_keys,
          m.last_block_attends_all,
          m.causal};
}

TEST(BlockMaskPolicy, AgreesWithTheReferenceForEqualAndRaggedBlocks) {
  const std::vector<std::pair<index_t, index_t>> shapes = {{1, 1},   {1, 130},   {130, 1},
                                                           {65, 17}, {100, 230}, {150, 150}};
  const std::vector<std::vector<index_t>> ragged = {{0}, {0, 5, 6, 40, 100, 101, 170}, {0, 64, 128, 192}, {0, 300}};
  const std::pair<index_t, index_t> tiles[] = {{16, 16}, {64, 16}, {64, 64}};
  for (auto [sq, skv] : shapes)
    for (int layout = 0; layout < 3 + static_cast<int>(ragged.size()); ++layout)
      for (index_t globals : {0, 3, 70})
        for (int flags = 0; flags < 4; ++flags)
          for (index_t offset : {0, -9, 5}) {
            BlockMask m;
            const index_t sizes[] = {1, 17, 64};
            if (layout < 3)
              m.block_size = sizes[layout];
            else
              m.boundaries = ragged[static_cast<std::size_t>(layout - 3)];
            m.global_keys = globals;
            m.last_block_attends_all = flags & 1;
            m.causal = flags & 2;
            m.offset = offset;
            SCOPED_TRACE(::testing::Message()
                         << "layout=" << layout << " globals=" << globals << " last_all=" << m.last_block_attends_all
                         << " causal=" << m.causal << " offset=" << offset);
            for (auto [bq, bkv] : tiles) check_mask(block_policy(m, sq, skv), MaskSpec{m}, sq, skv, bq, bkv);
            if (::testing::Test::HasFatalFailure()) return;
          }
}

TEST(BlockMaskPolicy, AlignedBlocksVisitOnlyTheirBlock) {
  // Blocks of 256 keys, S = 2048, tiles 64 x 64: each tile visits exactly the 4 Full blocks of
  // its own block, plus one global block.
  BlockMask m;
  m.block_size = 256;
  const policy::BlockMaskPolicy p = block_policy(m, 2048, 2048);
  for (index_t i0 = 0; i0 < 2048; i0 += 64) {
    index_t n = 0;
    policy::for_each_kv_block(p, i0, i0 + 64, 64, [&](index_t j0, index_t, BlockKind k) {
      EXPECT_EQ(k, BlockKind::full);
      EXPECT_EQ(j0 / 256, i0 / 256);
      ++n;
    });
    EXPECT_EQ(n, 4);
  }
  m.global_keys = 4;
  const policy::BlockMaskPolicy g = block_policy(m, 2048, 2048);
  index_t n = 0;
  policy::for_each_kv_block(g, 1024, 1088, 64, [&](index_t, index_t, BlockKind) { ++n; });
  EXPECT_EQ(n, 5);
  EXPECT_EQ(policy::next_kv(g, 1024, 1088, 4), 1024);
}

// CSR lists for B x Hq x n_q_blocks rows: each key block listed with probability ~density,
// some rows empty, some lists in descending order, an occasional repeated entry.
struct Csr {
  std::vector<index_t> offsets{0}, indices;
};

Csr random_csr(index_t rows, index_t nkb, std::uint64_t seed, int density_pct) {
  Csr c;
  std::uint64_t st = seed * 0x9E3779B97F4A7C15ull + 1;
  auto next = [&st] {
    st ^= st << 13;
    st ^= st >> 7;
    st ^= st << 17;
    return st;
  };
  for (index_t r = 0; r < rows; ++r) {
    std::vector<index_t> row;
    if (next() % 7 != 0)
      for (index_t kb = 0; kb < nkb; ++kb)
        if (static_cast<int>(next() % 100) < density_pct) row.push_back(kb);
    if (r % 2 == 1) std::reverse(row.begin(), row.end());
    if (!row.empty() && next() % 5 == 0) row.push_back(row.front());
    c.indices.insert(c.indices.end(), row.begin(), row.end());
    c.offsets.push_back(static_cast<index_t>(c.indices.size()));
  }
  return c;
}

TEST(BlockSparseMaskPolicy, AgreesWithTheReferenceForRandomLists) {
  const std::vector<std::pair<index_t, index_t>> shapes = {{1, 1}, {1, 300}, {130, 17}, {100, 230}, {150, 150}};
  const std::pair<index_t, index_t> list_blocks[] = {{64, 64}, {16, 16}, {48, 100}, {100, 33}, {1, 7}};
  const std::pair<index_t, index_t> tiles[] = {{16, 16}, {64, 64}};
  const index_t B = 2, H = 2;
  for (auto [sq, skv] : shapes)
    for (auto [qblk, kvblk] : list_blocks)
      for (int density : {20, 60, 100})
        for (bool element : {false, true}) {
          const index_t nqb = (sq + qblk - 1) / qblk, nkb = (skv + kvblk - 1) / kvblk;
          const Csr csr = random_csr(B * H * nqb, nkb, static_cast<std::uint64_t>(sq * 1000 + skv + density), density);
          BlockSparseMask m{qblk, kvblk, csr.offsets.data(), csr.indices.data(), {}};
          if (element)
            m.element_mask = [](index_t b, index_t h, index_t i, index_t j) {
              return (i * 7 + j * 3 + h + b) % 5 != 0;
            };
          const policy::BlockSparseMaskPolicy pol{sq,    skv,       H,         qblk,
                                                  kvblk, m.offsets, m.indices, element ? &m.element_mask : nullptr};
          SCOPED_TRACE(::testing::Message()
                       << "qblk=" << qblk << " kvblk=" << kvblk << " density=" << density << " element=" << element);
          for (index_t b = 0; b < B; ++b)
            for (index_t h = 0; h < H; ++h)
              for (auto [bq, bkv] : tiles) check_mask(pol.bind(b, h), MaskSpec{m}, sq, skv, bq, bkv, B, H, b, h);
          if (::testing::Test::HasFatalFailure()) return;
        }
}

TEST(BlockSparseMaskPolicy, AlignedListsVisitOnlyListedBlocksAsFull) {
  // Lists of 64 x 64 blocks (the kernel's tiles): one listed block per query block -> exactly
  // that block is visited, Full.
  const index_t s = 1024, n = s / 64;
  std::vector<index_t> offsets{0}, indices;
  for (index_t qb = 0; qb < n; ++qb) {
    indices.push_back((qb * 5) % n);
    offsets.push_back(static_cast<index_t>(indices.size()));
  }
  const policy::BlockSparseMaskPolicy pol{s, s, 1, 64, 64, offsets.data(), indices.data(), nullptr};
  const auto v = pol.bind(0, 0);
  for (index_t qb = 0; qb < n; ++qb) {
    index_t visited = 0;
    policy::for_each_kv_block(v, qb * 64, qb * 64 + 64, 64, [&](index_t j0, index_t, BlockKind k) {
      EXPECT_EQ(k, BlockKind::full);
      EXPECT_EQ(j0, ((qb * 5) % n) * 64);
      ++visited;
    });
    EXPECT_EQ(visited, 1);
  }
}

policy::NeighborhoodMaskPolicy na_policy(const NeighborhoodMask& m) {
  return {m.rank, m.extent, m.kernel, m.dilation, m.stride, m.causal};
}

// NATTEN corner cases: even and odd kernels, dilation with extents not divisible by it,
// stride == kernel (blocked), causal mixed with non-causal, extent == kernel.
TEST(NeighborhoodMaskPolicy, AgreesWithTheReferenceOneTwoThreeD) {
  std::vector<NeighborhoodMask> cases;
  for (index_t L : {7, 20, 67})
    for (index_t k : {1, 2, 3, 4, 7})
      for (index_t dl : {1, 2, 3})
        for (index_t st : {index_t(1), index_t(2), k})
          for (bool c : {false, true}) {
            if (k > L || st > k || dl * k > L) continue;
            cases.push_back({1, {L, 1, 1}, {k, 1, 1}, {dl, 1, 1}, {st, 1, 1}, {c, false, false}});
          }
  cases.push_back({2, {9, 13, 1}, {3, 4, 1}, {1, 2, 1}, {1, 3, 1}, {false, true, false}});
  cases.push_back({2, {16, 16, 1}, {5, 5, 1}, {1, 1, 1}, {1, 1, 1}, {false, false, false}});
  cases.push_back({2, {8, 8, 1}, {8, 8, 1}, {1, 1, 1}, {1, 1, 1}, {false, false, false}});    // extent == kernel
  cases.push_back({2, {12, 10, 1}, {4, 5, 1}, {1, 1, 1}, {4, 5, 1}, {false, false, false}});  // blocked
  cases.push_back({3, {5, 6, 7}, {3, 2, 3}, {1, 2, 2}, {2, 1, 3}, {true, false, true}});
  cases.push_back({3, {6, 6, 6}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {false, false, false}});
  const std::pair<index_t, index_t> tiles[] = {{16, 16}, {64, 64}};
  for (const auto& m : cases) {
    index_t n = 1;
    for (int d = 0; d < m.rank; ++d) n *= m.extent[d];
    SCOPED_TRACE(::testing::Message() << "rank=" << m.rank << " extent=" << m.extent[0] << "x" << m.extent[1] << "x"
                                      << m.extent[2] << " kernel=" << m.kernel[0] << "," << m.kernel[1] << ","
                                      << m.kernel[2] << " dil=" << m.dilation[0] << "," << m.dilation[1] << ","
                                      << m.dilation[2] << " stride=" << m.stride[0] << "," << m.stride[1] << ","
                                      << m.stride[2] << " causal=" << m.causal[0] << m.causal[1] << m.causal[2]);
    for (auto [bq, bkv] : tiles) check_mask(na_policy(m), MaskSpec{m}, n, n, bq, bkv);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(NeighborhoodMaskPolicy, TwoDGridVisitsOnlyTheNeighborRows) {
  // 64 x 64 grid, kernel 13 x 13: a tile of 64 rows is one grid row; it visits the 13 key
  // blocks (grid rows) of its neighborhood, none of the other 51.
  const NeighborhoodMask m{2, {64, 64, 1}, {13, 13, 1}, {1, 1, 1}, {1, 1, 1}, {false, false, false}};
  const auto pol = na_policy(m);
  for (index_t y = 0; y < 64; ++y) {
    index_t n = 0;
    policy::for_each_kv_block(pol, y * 64, y * 64 + 64, 64, [&](index_t j0, index_t, BlockKind) {
      EXPECT_LE(std::abs(j0 / 64 - std::clamp<index_t>(y, 6, 57)), 6);
      ++n;
    });
    EXPECT_EQ(n, 13) << "y=" << y;
  }
}

}  // namespace
}  // namespace sinkattn
