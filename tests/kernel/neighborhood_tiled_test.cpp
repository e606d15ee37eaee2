// Neighborhood attention over multi-dimensional query tiles (issue 6; policy/
// mask_neighborhood_tiled.hpp, kernel/permute.hpp): the permuted policy's properties over all
// pairs against the fp64 reference's oracle, and forward() against the fp64 reference for 2-D
// and 3-D grids (kernels, dilation, stride, causal per dimension, ragged boxes, GQA, the
// normalizations, gate, LSE), 1 vs 2 threads bit-identical.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "forward_check.hpp"
#include "harness.hpp"
#include "mask_properties.hpp"
#include "neighborhood_cases.hpp"
#include "next_task_check.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "sinkattn/kernel/permute.hpp"
#include "sinkattn/policy/mask_neighborhood_tiled.hpp"

namespace sinkattn {
namespace {

using test::Layout;
using test::run_and_compare;

NeighborhoodMask na(int rank, std::array<index_t, 3> ext, std::array<index_t, 3> kernel,
                    std::array<index_t, 3> dilation = {1, 1, 1}, std::array<index_t, 3> stride = {1, 1, 1},
                    std::array<bool, 3> causal = {false, false, false}) {
  return NeighborhoodMask{rank, ext, kernel, dilation, stride, causal};
}

using test::describe;
using test::tokens;

// 2-D and 3-D cases: odd and even kernels, dilation with extents not divisible by it, stride
// == kernel (blocked), causal dimensions beside non-causal ones, extent == kernel, extents
// that are no multiple of the query box (8x8, 4x4x4), and 1-D with dilation.
const std::vector<NeighborhoodMask> kCases = {
    na(2, {20, 23, 1}, {5, 4, 1}),                                              // odd, even; ragged boxes
    na(2, {17, 31, 1}, {3, 7, 1}, {2, 3, 1}),                                   // dilation, L % d != 0
    na(2, {24, 24, 1}, {8, 8, 1}, {1, 1, 1}, {8, 8, 1}),                        // blocked: stride == kernel
    na(2, {18, 13, 1}, {4, 3, 1}, {1, 1, 1}, {4, 3, 1}),                        // blocked, ragged
    na(2, {16, 20, 1}, {5, 6, 1}, {1, 1, 1}, {2, 3, 1}, {true, false, false}),  // causal x non-causal
    na(2, {9, 7, 1}, {9, 7, 1}),                                                // extent == kernel
    na(2, {3, 40, 1}, {3, 9, 1}, {1, 2, 1}, {1, 1, 1}, {false, true, false}),   // flat grid
    na(3, {6, 9, 11}, {3, 4, 5}, {2, 1, 2}, {1, 2, 1}, {false, false, true}),
    na(3, {10, 9, 8}, {7, 3, 5}),
    na(3, {5, 5, 5}, {5, 5, 5}, {1, 1, 1}, {5, 1, 5}, {true, false, false}),
    na(1, {150, 1, 1}, {7, 1, 1}, {4, 1, 1}),  // 1-D takes the tiled path only with dilation
    na(1, {130, 1, 1}, {6, 1, 1}, {3, 1, 1}, {2, 1, 1}, {true, false, false}),
};

// ---- Properties of the policy over all (i, j) -------------------------------------------

// The plan's slot orders are permutations of the tokens (queries padded to whole tiles), and
// the policy over query tiles of bq slots and key blocks of bkv passes check_mask against the
// reference's oracle on the original tokens (padding sees and is seen by nothing).
void check_tiled(const NeighborhoodMask& m, index_t bq, index_t bkv) {
  SCOPED_TRACE(describe(m) + " bq=" + std::to_string(bq) + " bkv=" + std::to_string(bkv));
  detail::NaPlan plan;
  detail::na_build_plan(plan, m, bq, bkv);
  const policy::NeighborhoodTiledMaskPolicy pol{&plan};
  const index_t n = tokens(m), nq = plan.q.size(), nk = plan.k.size();
  ASSERT_EQ(nk, n);
  ASSERT_EQ(nq % bq, 0);
  // Each original token appears exactly once in each order.
  for (const auto* order : {&plan.q.token, &plan.k.token}) {
    std::vector<int> seen(static_cast<std::size_t>(n), 0);
    for (index_t t : *order)
      if (t >= 0) ++seen[static_cast<std::size_t>(t)];
    for (index_t t = 0; t < n; ++t) ASSERT_EQ(seen[static_cast<std::size_t>(t)], 1) << "token " << t;
  }
  const std::vector<index_t>&qt = plan.q.token, &kt = plan.k.token;
  test::SlotMap map;
  map.q = [&qt](index_t i) { return qt[static_cast<std::size_t>(i)]; };
  map.k = [&kt](index_t j) { return kt[static_cast<std::size_t>(j)]; };
  map.seq_q = map.seq_kv = n;
  test::check_mask(pol, m, nq, nk, bq, bkv, 1, 1, 0, 0, map);
}

TEST(NeighborhoodTiledPolicy, PropertiesOverAllPairs) {
  for (const auto& m : kCases) {
    check_tiled(m, detail::kBlockQ, detail::kBlockKV);
    check_tiled(m, 16, 24);  // tiles and blocks of other sizes (other ISAs, runs cut short)
  }
}

// The key lists (na_build_lists) over all pairs: per query tile, each lane computes every key
// its query sees exactly once (the blocks whose rows hold the lane), no key twice, and the
// blocks called Full hold only visible pairs; padding lanes see nothing; each key's
// visibility bits (NaPlan::list_vis) are visible() over every lane of its tile. With tiles and lanes
// of the kernels' sizes and of others (16 slots, 4 or 8 lanes).
void check_lists(const NeighborhoodMask& m, index_t bq, index_t bkv, index_t group) {
  SCOPED_TRACE(describe(m) + " extra " + std::to_string(m.extra_keys) + " bq=" + std::to_string(bq) +
               " bkv=" + std::to_string(bkv) + " group=" + std::to_string(group));
  detail::NaPlan plan;
  detail::na_build_plan(plan, m, bq, bkv);
  detail::na_build_lists(plan, bq, bkv, group);
  const policy::NeighborhoodTiledMaskPolicy pol{&plan};
  const index_t nk = plan.extra + plan.k.size();
  ASSERT_EQ(plan.list_tile, bq);
  ASSERT_EQ(static_cast<index_t>(plan.list_first.size()), plan.q.size() / bq + 1);
  std::vector<int> count(static_cast<std::size_t>(bq * nk));
  for (index_t i0 = 0; i0 < plan.q.size(); i0 += bq) {
    ASSERT_TRUE(pol.has_lists(i0, bq));
    std::fill(count.begin(), count.end(), 0);
    pol.for_each_block_list(i0, [&](index_t j0, const index_t* list, index_t n, policy::BlockKind kind,
                                    policy::RowSpan rows, const std::uint64_t* vis) {
      std::vector<index_t> keys(static_cast<std::size_t>(n));
      for (index_t r = 0; r < n; ++r) keys[static_cast<std::size_t>(r)] = list ? list[r] : j0 + r;
      ASSERT_NE(vis, nullptr);  // the visibility bits: every lane of the tile, per key
      for (index_t r = 0; r < n; ++r)
        for (index_t l = 0; l < bq; ++l)
          ASSERT_EQ(vis[r] >> l & 1u, pol.visible(i0 + l, keys[r]) ? 1u : 0u)
              << "bits of slot " << i0 + l << " key " << keys[r];
      ASSERT_GT(n, 0);
      ASSERT_LE(n, bkv);
      ASSERT_TRUE(kind == policy::BlockKind::full || kind == policy::BlockKind::partial);
      ASSERT_TRUE(0 <= rows.lo && rows.lo < rows.hi && rows.hi <= bq);
      ASSERT_EQ(rows.lo % group, 0);
      for (index_t r = 0; r < n; ++r) {
        ASSERT_TRUE(0 <= keys[r] && keys[r] < nk);
        for (index_t l = rows.lo; l < rows.hi; ++l) {
          ++count[static_cast<std::size_t>(l * nk + keys[r])];
          if (kind == policy::BlockKind::full) {
            ASSERT_TRUE(pol.visible(i0 + l, keys[r])) << "full block, slot " << i0 + l << " key " << keys[r];
          }
        }
      }
    });
    for (index_t l = 0; l < bq; ++l)
      for (index_t j = 0; j < nk; ++j) {
        const int c = count[static_cast<std::size_t>(l * nk + j)];
        ASSERT_LE(c, 1) << "slot " << i0 + l << " computes key " << j << " twice";
        if (pol.visible(i0 + l, j)) {
          ASSERT_EQ(c, 1) << "slot " << i0 + l << " misses key " << j;
        }
      }
  }
}

TEST(NeighborhoodTiledPolicy, KeyListsCoverEveryVisiblePairOnce) {
  std::vector<NeighborhoodMask> masks = kCases;
  masks.push_back(na(2, {64, 64, 1}, {13, 13, 1}));
  masks.push_back(na(3, {16, 16, 16}, {7, 7, 7}));
  NeighborhoodMask extra = na(2, {20, 23, 1}, {5, 4, 1});
  extra.extra_keys = 70;  // more than one block of extra keys
  masks.push_back(extra);
  for (const auto& m : masks) {
    check_lists(m, detail::kBlockQ, detail::kBlockKV, tile::kWidth);
    check_lists(m, 16, 24, 4);
    check_lists(m, 64, 64, 8);
  }
}

// apply_tile from the lists' visibility bits (ScoreTile::vis) against its window compares:
// the same -inf on the same scores for every list block, from the tile's first lane and from
// its second vector of lanes (the bits shifted), extra keys and padding slots included.
TEST(NeighborhoodTiledPolicy, VisibilityBitsMaskLikeTheWindowCompares) {
  NeighborhoodMask extra = na(2, {20, 23, 1}, {5, 4, 1});
  extra.extra_keys = 70;
  const std::vector<NeighborhoodMask> masks = {
      na(2, {64, 64, 1}, {13, 13, 1}), na(3, {16, 16, 16}, {7, 7, 7}), extra,
      na(2, {20, 18, 1}, {7, 5, 1}, {2, 1, 1}, {1, 1, 1}, {true, false, false})};
  const index_t bq = detail::kBlockQ;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  for (const auto& m : masks) {
    SCOPED_TRACE(describe(m));
    detail::NaPlan plan;
    detail::na_build_plan(plan, m, bq, detail::kBlockKV);
    detail::na_build_lists(plan, bq, detail::kBlockKV, tile::kWidth);
    const policy::NeighborhoodTiledMaskPolicy pol{&plan};
    ASSERT_EQ(plan.list_vis.size(), plan.list_keys.size());
    index_t masked = 0, kept = 0;
    for (index_t i0 = 0; i0 < plan.q.size(); i0 += bq)
      pol.for_each_block_list(i0, [&](index_t j0, const index_t* list, index_t n, policy::BlockKind, policy::RowSpan,
                                      const std::uint64_t* vis) {
        ASSERT_NE(vis, nullptr);
        for (const index_t l0 : {index_t{0}, index_t{tile::kWidth}}) {
          std::vector<float> bits(static_cast<std::size_t>(n * bq));
          for (float& x : bits) x = nd(rng);
          std::vector<float> compares = bits;
          const int vecs = static_cast<int>((bq - l0) / tile::kWidth);
          policy::ScoreTile t{bits.data() + l0, bq, n, vecs, 0, 0, i0 + l0, bq - l0, j0, n, 1, bq, list, vis};
          pol.apply_tile(t);
          t.st = compares.data() + l0;
          t.vis = nullptr;
          pol.apply_tile(t);
          for (std::size_t x = 0; x < bits.size(); ++x) {
            ASSERT_EQ(bits[x], compares[x]) << "key row " << x / bq << " lane " << x % bq << " from lane " << l0;
            (std::isinf(bits[x]) ? masked : kept) += 1;
          }
        }
      });
    EXPECT_GT(masked, 0);
    EXPECT_GT(kept, 0);
  }
}

// Large kernels over small slabs: each vector of lanes a sub-box of the query box (4x2 of
// 8 lanes for 13x13) computes fewer lane pairs than a line of the box; the lists stay exact.
const std::vector<NeighborhoodMask> kSlabCases = {
    na(2, {64, 64, 1}, {13, 13, 1}),
    na(3, {16, 16, 16}, {7, 7, 7}),
    na(2, {24, 24, 1}, {9, 9, 1}),
    na(3, {12, 12, 12}, {5, 5, 5}),
    na(2, {20, 18, 1}, {7, 5, 1}, {2, 1, 1}, {1, 1, 1}, {true, false, false}),
};

double lane_pairs_per_visible_pair(const detail::NaPlan& pl) {
  const policy::NeighborhoodTiledMaskPolicy pol{&pl};
  double lanes = 0, visible = 0;
  for (const auto& b : pl.list_blocks) lanes += static_cast<double>((b.end - b.begin) * (b.rows.hi - b.rows.lo));
  for (index_t i = 0; i < pl.q.size(); ++i) visible += static_cast<double>(pol.count_visible(i));
  return lanes / visible;
}

// The plan of m for 64-slot tiles and blocks of 64 keys, with key lists for vectors of `group`
// lanes (na_build_lists' switches as given).
detail::NaPlan plan_with_lists(const NeighborhoodMask& m, index_t group, bool slabs = true, bool prune = true) {
  detail::NaPlan pl;
  detail::na_build_plan(pl, m, 64, 64);
  detail::na_build_lists(pl, 64, 64, group, slabs, prune);
  return pl;
}

TEST(NeighborhoodTiledPolicy, SlabsComputeFewerLanePairsForLargeKernels) {
  for (const auto& m : kSlabCases)
    for (const index_t group : {index_t{4}, index_t{8}, index_t{16}}) {
      SCOPED_TRACE(describe(m) + " group " + std::to_string(group));
      const detail::NaPlan slab = plan_with_lists(m, group), line = plan_with_lists(m, group, false);
      ASSERT_GT(slab.q.slab[0], 0) << "a slab order is chosen";
      EXPECT_EQ(slab.q.slab[0] * slab.q.slab[1] * slab.q.slab[2], group);
      EXPECT_EQ(line.q.slab[0], 0);
      const double s = lane_pairs_per_visible_pair(slab), l = lane_pairs_per_visible_pair(line);
      // (The planner weighs blocks too; the benchmark shapes at 8 or 16 lanes gain most.)
      const bool bench = m.extent[0] == 64 || m.extent[0] == 16;
      EXPECT_LT(s, (bench && group >= 8 ? 0.95 : 1.0) * l)
          << "lane pairs per visible pair: slabs " << s << ", lines " << l;
      if (m.extent == std::array<index_t, 3>{64, 64, 1} && group == 8) {
        EXPECT_EQ(slab.q.slab, (std::array<index_t, 3>{4, 2, 1}));
        EXPECT_LT(s, 1.30);
      }
      check_lists(m, 64, 64, group);  // (builds the same plan again: covered once, exact)
    }
}

// The planner stops summing a candidate order's tiles once they cost more than the best so
// far: the same orders, slabs and lists as the full sums, over masks whose candidates tie
// (blocked), nearly tie (large kernels) or differ by far (dilated, causal, extra keys).
TEST(NeighborhoodTiledPolicy, PrunedSearchChoosesAsTheFullSums) {
  std::vector<NeighborhoodMask> masks = kSlabCases;
  masks.push_back(na(2, {64, 64, 1}, {8, 8, 1}, {1, 1, 1}, {8, 8, 1}));
  masks.push_back(na(2, {30, 30, 1}, {5, 5, 1}));
  masks.push_back(na(3, {10, 9, 8}, {3, 5, 3}, {2, 1, 2}, {1, 2, 1}, {false, true, false}));
  NeighborhoodMask extra = na(2, {24, 24, 1}, {7, 7, 1});
  extra.extra_keys = 5;
  masks.push_back(extra);
  for (const auto& m : masks)
    for (const index_t group : {index_t{4}, index_t{8}, index_t{16}}) {
      SCOPED_TRACE(describe(m) + " group " + std::to_string(group));
      const detail::NaPlan pruned = plan_with_lists(m, group), full = plan_with_lists(m, group, true, false);
      EXPECT_EQ(pruned.k.box, full.k.box);
      EXPECT_EQ(pruned.q.slab, full.q.slab);
      EXPECT_EQ(pruned.q.order, full.q.order);
      EXPECT_EQ(pruned.list_keys, full.list_keys);
      EXPECT_EQ(pruned.list_first, full.list_first);
      ASSERT_EQ(pruned.list_blocks.size(), full.list_blocks.size());
      for (std::size_t b = 0; b < full.list_blocks.size(); ++b) {
        const auto &x = pruned.list_blocks[b], &y = full.list_blocks[b];
        EXPECT_TRUE(x.begin == y.begin && x.end == y.end && x.kind == y.kind && x.rows.lo == y.rows.lo &&
                    x.rows.hi == y.rows.hi)
            << "block " << b;
      }
      EXPECT_FALSE(full.list_blocks.empty());
    }
}

TEST(NeighborhoodTiledPolicy, QueryBoxesAreCubesAndSkipMaskedKeys) {
  // 64 slots: 8x8 in 2-D, 4x4x4 in 3-D (equal kernels), and a 13x13 kernel on a 64x64 grid
  // visits far fewer keys per query tile than the flat 64-row tiles would.
  detail::NaPlan p2, p3;
  detail::na_build_plan(p2, na(2, {64, 64, 1}, {13, 13, 1}), 64, 64);
  detail::na_build_plan(p3, na(3, {16, 16, 16}, {7, 7, 7}), 64, 64);
  EXPECT_EQ(p2.q.box, (std::array<index_t, 3>{8, 8, 1}));
  EXPECT_EQ(p3.q.box, (std::array<index_t, 3>{4, 4, 4}));
  for (const detail::NaPlan* pl : {&p2, &p3}) {
    index_t keys = 0, visible = 0;
    const policy::NeighborhoodTiledMaskPolicy pol{pl};
    for (index_t i0 = 0; i0 < pl->q.size(); i0 += 64) {
      policy::for_each_kv_block(pol, i0, i0 + 64, 64,
                                [&](index_t j0, index_t j1, policy::BlockKind) { keys += j1 - j0; });
      for (index_t i = i0; i < i0 + 64; ++i) visible += pol.count_visible(i);
    }
    const double frac = static_cast<double>(visible) / static_cast<double>(keys * 64);
    EXPECT_GT(frac, 0.25) << "visible pairs / visited pairs, rank " << pl->rank;
    // Per vector of 16 lanes (one slab of the box), fewer still: the pairs the kernel computes.
    index_t lane_pairs = 0;
    for (index_t i0 = 0; i0 < pl->q.size(); i0 += 64)
      policy::for_each_kv_block_rows(pol, i0, i0 + 64, 64, 16,
                                     [&](index_t j0, index_t j1, policy::BlockKind, policy::RowSpan r) {
                                       lane_pairs += (j1 - j0) * (r.hi - r.lo);
                                     });
    EXPECT_GT(static_cast<double>(visible) / static_cast<double>(lane_pairs), pl->rank == 2 ? 0.62 : 0.55)
        << "visible pairs / computed lane pairs, rank " << pl->rank;
  }
}

// ---- forward() against the reference ----------------------------------------------------

bool tiled(const test::Data& d, const Options& opt) {
  return detail::neighborhood_tiled_applies(detail::make_args(d.p, d.q, d.k, d.v, {}, opt),
                                            std::get<NeighborhoodMask>(opt.mask), opt);
}

TEST(NeighborhoodTiledKernel, SoftmaxAndLseAgainstTheReference) {
  for (const auto& m : kCases) {
    const index_t n = tokens(m);
    const auto data = test::make_data(Problem{2, 4, 2, n, n, 32, 32}, Layout::BSHD, static_cast<std::uint64_t>(n) + 1);
    Options opt;
    opt.mask = m;
    ASSERT_TRUE(tiled(data, opt)) << describe(m);
    EXPECT_TRUE(run_and_compare(data, opt)) << describe(m);
  }
}

TEST(NeighborhoodTiledKernel, SlabOrderedTilesAgreeWithTheReference) {
  int slabbed = 0;  // calls whose plan took slabs (the planner's choice, per ISA's tile sizes)
  for (std::size_t c = 2; c < kSlabCases.size(); ++c) {
    const NeighborhoodMask& m = kSlabCases[c];
    SCOPED_TRACE(describe(m));
    const index_t n = tokens(m);
    const auto data = test::make_data(Problem{1, 4, 2, n, n, 24, 40}, Layout::BSHD, static_cast<std::uint64_t>(c));
    Options opt;
    opt.mask = m;
    ASSERT_TRUE(tiled(data, opt));
    slabbed += detail::na_plan_for(m).q.slab[0] > 0;
    EXPECT_TRUE(run_and_compare(data, opt)) << "softmax, LSE";
    std::vector<float> sinks = {0.5f, -1.f, 2.f, 0.f};
    auto gate = test::make_tensor({1, n, 4, 40}, 3, -2.f, 2.f);
    opt.norm = SinkSoftmax{sinks.data()};
    opt.gate = SigmoidGate{gate.cview()};
    EXPECT_TRUE(run_and_compare(data, opt)) << "sinks + gate";
    opt.gate = NoGate{};
    opt.norm = Sigmoid{-2.f};
    EXPECT_TRUE(run_and_compare(data, opt, Executor::serial(), false)) << "sigmoid";
  }
  EXPECT_GE(slabbed, 2) << "calls over slab-ordered plans";
}

TEST(NeighborhoodTiledKernel, HeadMajorLayoutOddHeadDimsAndMqa) {
  const auto m = na(2, {19, 21, 1}, {7, 5, 1}, {2, 1, 1}, {1, 2, 1}, {false, true, false});
  const index_t n = tokens(m);
  const auto data = test::relayout(test::make_data(Problem{1, 3, 1, n, n, 72, 40}, Layout::BSHD, 5), Layout::BHSD);
  Options opt;
  opt.mask = m;
  opt.score.softcap = 3.f;
  ASSERT_TRUE(tiled(data, opt));
  EXPECT_TRUE(run_and_compare(data, opt));
}

TEST(NeighborhoodTiledKernel, ComposesWithNormsSinksAndGate) {
  for (const auto& m : {na(2, {20, 23, 1}, {5, 4, 1}, {1, 2, 1}, {1, 1, 1}, {true, false, false}),
                        na(3, {6, 9, 11}, {3, 4, 5}, {2, 1, 2}, {1, 2, 1}, {false, false, true})}) {
    SCOPED_TRACE(describe(m));
    const index_t n = tokens(m);
    const Problem p{1, 4, 2, n, n, 32, 32};
    const auto data = test::make_data(p, Layout::BSHD, 17);
    std::vector<float> sinks = {0.5f, -1.f, 2.f, 0.f}, s(4, 0.4f);
    auto gate = test::make_tensor({p.batch, p.seq_q, p.heads_q, p.dim_v}, 8, -2.f, 2.f);
    auto gate1 = test::make_tensor({p.batch, p.seq_q, p.heads_q, 1}, 9, -2.f, 2.f);
    Options opt;
    opt.mask = m;
    opt.norm = SinkSoftmax{sinks.data()};
    opt.gate = SigmoidGate{gate.cview()};
    ASSERT_TRUE(tiled(data, opt));
    EXPECT_TRUE(run_and_compare(data, opt)) << "sinks + gate";
    opt.gate = SigmoidGate{gate1.cview()};
    EXPECT_TRUE(run_and_compare(data, opt)) << "sinks + headwise gate";
    opt.gate = NoGate{};
    opt.norm = ScalableSoftmax{s.data()};
    EXPECT_TRUE(run_and_compare(data, opt)) << "ssmax";
    opt.norm = Sigmoid{-2.f};
    EXPECT_TRUE(run_and_compare(data, opt, Executor::serial(), false)) << "sigmoid";
    opt.norm = Sigmoid{0.f, nullptr, true, 1e-6f};
    EXPECT_TRUE(run_and_compare(data, opt, Executor::serial(), false)) << "sigmoid, normalized";
    opt.norm = Softpick{};
    EXPECT_TRUE(run_and_compare(data, opt, Executor::serial(), false)) << "softpick";
  }
}

TEST(NeighborhoodTiledKernel, RowIndexedInputsKeepTheFlatPathAndStayExact) {
  // Bias, ALiBi and affine alpha are indexed by query row: those calls keep the flat tiles.
  const auto m = na(2, {12, 14, 1}, {5, 3, 1}, {2, 1, 1});
  const index_t n = tokens(m);
  const Problem p{1, 2, 1, n, n, 16, 16};
  const auto data = test::make_data(p, Layout::BSHD, 23);
  auto bias = test::make_tensor({1, 2, n, n}, 3, -1.f, 1.f);
  auto alpha = test::make_tensor({1, n, 2, 1}, 21, 0.2f, 1.2f);
  std::vector<float> slopes = {0.1f, 0.3f};
  Options opt;
  opt.mask = m;
  opt.score.bias = bias.cview();
  EXPECT_FALSE(tiled(data, opt));
  EXPECT_TRUE(run_and_compare(data, opt)) << "bias";
  opt.score.bias = {};
  opt.score.alibi_slopes = slopes.data();
  EXPECT_FALSE(tiled(data, opt));
  EXPECT_TRUE(run_and_compare(data, opt)) << "alibi";
  opt.score.alibi_slopes = nullptr;
  opt.norm = AffineScaled{alpha.cview(), {}, 1.f, false};
  EXPECT_FALSE(tiled(data, opt));
  EXPECT_TRUE(run_and_compare(data, opt)) << "affine";
}

TEST(NeighborhoodTiledKernel, OneAndTwoThreadsBitIdentical) {
  for (const auto& m : {na(2, {33, 29, 1}, {9, 6, 1}, {1, 2, 1}), na(3, {9, 10, 11}, {5, 4, 3})}) {
    const index_t n = tokens(m);
    const Problem p{2, 4, 2, n, n, 64, 64};
    const auto data = test::make_data(p, Layout::BSHD, 77);
    auto gate = test::make_tensor({p.batch, p.seq_q, p.heads_q, p.dim_v}, 8, -2.f, 2.f);
    Options opt;
    opt.mask = m;
    opt.gate = SigmoidGate{gate.cview()};
    EXPECT_TRUE(test::threads_agree(data, opt)) << describe(m);
  }
}

// Both task orders (kernel/permute.hpp: heads innermost when one tile's keys over all KV
// heads fit in this core's L2 when gathered, in half of it when read in place): a 16x16 grid
// with a 15x13 kernel (each tile's union some 200-256 keys, by the tile shape of this ISA;
// 100-128 KiB of K/V per KV head at D 64), with 2 KV heads (heads inner either way) and enough
// that one tile's keys over all heads exceed this machine's L2 (heads outer), each on 1 and 2
// threads.
TEST(NeighborhoodTiledKernel, BothTaskOrdersAgreeWithTheReference) {
  const auto m = na(2, {16, 16, 1}, {15, 13, 1});
  detail::NaPlan plan;
  detail::na_build_plan(plan, m, detail::kBlockQ, detail::kBlockKV);
  const double head_bytes = plan.union_keys * (64 + 64) * sizeof(float);  // one KV head's union
  const auto outer =
      std::max<index_t>(static_cast<index_t>(static_cast<double>(detail::l2_cache_bytes()) / head_bytes) + 1, 8);
  for (const index_t hkv : {index_t{2}, outer}) {
    const Problem p{1, 2 * hkv, hkv, 256, 256, 64, 64};  // GQA, 2 query heads per KV head
    const auto data = test::make_data(p, Layout::BSHD, 31);
    Options opt;
    opt.mask = m;
    const detail::KernelArgs a = detail::make_args(p, data.q, data.k, data.v, {}, opt);
    const double bytes = static_cast<double>(hkv) * head_bytes;
    const auto l2 = static_cast<double>(detail::l2_cache_bytes());
    float dummy = 0;  // (na_permuted_args only points the views at the buffers)
    const detail::NaBuffers gathered{&dummy, &dummy};
    EXPECT_EQ(detail::na_permuted_args(a, plan, nullptr).heads_inner, 2 * bytes <= l2)
        << "in place, Hkv=" << hkv << ": union " << plan.union_keys << " keys";
    EXPECT_EQ(detail::na_permuted_args(a, plan, &gathered).heads_inner, bytes <= l2)
        << "gathered, Hkv=" << hkv << ": union " << plan.union_keys << " keys";
    if (hkv == outer) {
      EXPECT_FALSE(detail::na_permuted_args(a, plan, &gathered).heads_inner) << "the outer case must not fit";
    }
    EXPECT_TRUE(test::threads_agree(data, opt)) << "Hkv=" << hkv;
  }
}

// K and V are read at the caller's rows (KernelArgs::kv_rows: K in place, V through row
// pointers or copied per block) instead of from gathered copies: where P.V reads V rows in
// place (detail::kVRowsInPlace, AVX-512) for every mask here (rows at most 576 bytes apart; the
// next test has wider ones), else for blocked neighborhoods only (each key serves about one
// query tile; shared keys, stride 1, are gathered). K/V whose head dim is not contiguous are
// gathered. (The x86-64-v2 copy of this test runs the gathers.)
TEST(NeighborhoodTiledKernel, BlockedNeighborhoodsReadKeysAtTheCallersRows) {
  const auto in_place = [](const test::Data& d, const NeighborhoodMask& m) {
    detail::NaPlan plan;
    detail::na_build_plan(plan, m, detail::kBlockQ, detail::kBlockKV);
    Options opt;
    opt.mask = m;
    return detail::na_keys_in_place(detail::make_args(d.p, d.q, d.k, d.v, {}, opt), plan);
  };
  // The expectations count 64-row query tiles (AVX-512, AVX2); SSE's 32-row tiles split an
  // 8x8 block in two, whose keys then serve two tiles each.
  constexpr bool kTilesOf64 = detail::kBlockQ == 64;
  const std::vector<std::pair<NeighborhoodMask, bool>> cases = {
      {na(2, {24, 24, 1}, {8, 8, 1}, {1, 1, 1}, {8, 8, 1}), true},                        // one 8x8 tile per block
      {na(3, {8, 12, 8}, {4, 4, 4}, {1, 1, 1}, {4, 4, 4}), true},                         // one 4x4x4 tile per block
      {na(2, {32, 32, 1}, {16, 16, 1}, {1, 1, 1}, {16, 16, 1}), false},                   // 4 tiles share a block
      {na(2, {20, 23, 1}, {5, 4, 1}), false},                                             // stride 1
      {na(2, {24, 16, 1}, {8, 8, 1}, {1, 1, 1}, {8, 8, 1}, {true, false, false}), true},  // causal in x
  };
  for (const auto& [m, expect] : cases) {
    SCOPED_TRACE(describe(m));
    const index_t n = tokens(m);
    for (const Layout layout : {Layout::BSHD, Layout::BHSD}) {
      // GQA with odd head dims (a padded V panel), then MQA with a Dv of whole vectors.
      for (const Problem p : {Problem{2, 4, 2, n, n, 72, 40}, Problem{1, 3, 1, n, n, 16, 64}}) {
        const auto data = test::make_data(p, layout, static_cast<std::uint64_t>(n + p.dim_v));
        Options opt;
        opt.mask = m;
        ASSERT_TRUE(tiled(data, opt));
        if (kTilesOf64) {
          EXPECT_EQ(in_place(data, m), expect || detail::kVRowsInPlace) << to_string(layout);
        } else if (!expect) {
          // Smaller tiles share keys at least as much: the gather this copy exists to run.
          EXPECT_FALSE(in_place(data, m)) << to_string(layout);
        }
        EXPECT_TRUE(run_and_compare(data, opt)) << to_string(layout) << " Dqk " << p.dim_qk;
      }
    }
  }
  // K and V with every other float of the head dim: gathered (the kernels read rows of unit stride).
  const auto m = cases[0].first;
  const index_t n = tokens(m);
  const auto data = test::make_data(Problem{1, 2, 2, n, n, 24, 24}, Layout::BSHD, 41);
  if (kTilesOf64) {
    ASSERT_TRUE(in_place(data, m));
  }
  const test::StridedHeadDim strided(data);
  EXPECT_FALSE(in_place(strided.data, m));
  Options opt;
  opt.mask = m;
  EXPECT_TRUE(run_and_compare(strided.data, opt)) << "strided head dim";
}

// Keys that several tiles share are gathered where in-place reads grow costly: on every ISA
// once the token rows lie KiBs apart (detail::kNaGatherBytes: H16 D64 token-major, 4 KiB rows,
// each key in ~2 tiles' unions), while head-major rows of the same problem (256 bytes apart)
// stay in place where P.V reads V rows in place (kVRowsInPlace); the gather is ever the AVX2
// choice for shared keys. Both paths exact.
TEST(NeighborhoodTiledKernel, SharedKeysAreGatheredFromWideTokenRows) {
  const auto m = na(2, {24, 20, 1}, {7, 5, 1});
  const index_t n = tokens(m);
  detail::NaPlan plan;
  detail::na_build_plan(plan, m, detail::kBlockQ, detail::kBlockKV);
  ASSERT_GT(detail::na_tiles_per_key(plan), 1.5);
  for (const Layout layout : {Layout::BSHD, Layout::BHSD}) {
    SCOPED_TRACE(to_string(layout));
    const auto data = test::make_data(Problem{1, 16, 16, n, n, 64, 64}, layout, 29);
    Options opt;
    opt.mask = m;
    const bool in_place = detail::na_keys_in_place(detail::make_args(data.p, data.q, data.k, data.v, {}, opt), plan);
    EXPECT_EQ(in_place, layout == Layout::BHSD && detail::kVRowsInPlace);
    EXPECT_TRUE(run_and_compare(data, opt));
    if (in_place) continue;
    // Without memory for the copies (na_gather_limit 0 here) K/V are read in place, and K/V
    // whose head dim has a non-unit stride, which the kernel cannot read in place, take the flat
    // tiles. Exact either way.
    struct NoCopies {
      NoCopies() { detail::na_gather_limit = 0; }
      ~NoCopies() { detail::na_gather_limit = static_cast<std::size_t>(-1); }
    };
    const NoCopies none;
    EXPECT_TRUE(run_and_compare(data, opt)) << "no memory: in place";
    const test::StridedHeadDim strided(data);
    EXPECT_TRUE(run_and_compare(strided.data, opt)) << "no memory, strided head dim: the flat tiles";
  }
}

// The look-ahead of the permuted call (detail::next_task_streams, and task_o_stream): Q and O
// through the query slot map (padding slots skipped), K and V of the first list block, from
// the gathered copies or at the caller's rows (blocked neighborhoods, with the extra keys in
// front).
TEST(NeighborhoodTiledKernel, LookAheadNamesTheNextTasksRows) {
  std::vector<NeighborhoodMask> masks = kCases;
  masks.push_back(na(2, {24, 24, 1}, {8, 8, 1}, {1, 1, 1}, {8, 8, 1}));  // keys in place
  masks.back().extra_keys = 5;
  int in_place = 0;
  for (const NeighborhoodMask& m : masks) {
    SCOPED_TRACE(describe(m));
    const index_t n = tokens(m) + m.extra_keys;
    const Problem p{1, 4, 2, tokens(m), n, 24, 40};
    const auto d = test::make_data(p, Layout::BSHD, 3);
    test::Out out = test::make_out(p, Layout::BSHD);
    Options opt;
    opt.mask = m;
    const detail::KernelArgs a = detail::make_args(p, d.q, d.k, d.v, out.o, opt);
    ASSERT_TRUE(detail::neighborhood_tiled_applies(a, m, opt));
    detail::NaPlan plan;
    detail::na_build_call_plan(plan, m);
    const policy::NeighborhoodTiledMaskPolicy pol{&plan};
    if (detail::na_keys_in_place(a, plan)) {
      ++in_place;
      EXPECT_TRUE(test::next_task_streams_ok(detail::na_permuted_args(a, plan, nullptr), pol)) << "in place";
    } else {
      detail::Workspace ws;
      const detail::NaBuffers buf = detail::na_buffers(a, plan, ws);
      EXPECT_TRUE(test::next_task_streams_ok(detail::na_permuted_args(a, plan, &buf), pol)) << "gathered";
    }
  }
  EXPECT_GE(in_place, 2);  // the blocked cases read K/V at the caller's rows
}

// The plan is kept per thread for the next call with the same mask (na_plan_for): masks that
// differ in one field only, alternated on one thread, each get their own plan and stay exact.
TEST(NeighborhoodTiledKernel, PlansAreReusedOnlyForTheSameMask) {
  const auto base = na(2, {14, 12, 1}, {5, 3, 1});
  // base, then each variant after base: consecutive masks differ in one field.
  std::vector<NeighborhoodMask> masks(10, base);
  masks[1].kernel = {3, 5, 1};
  masks[3].dilation = {2, 1, 1};
  masks[5].stride = {1, 3, 1};
  masks[7].causal = {false, true, false};
  masks[9].extra_keys = 3;
  const detail::NaPlan* first = &detail::na_plan_for(base);
  EXPECT_EQ(&detail::na_plan_for(base), first);
  for (int round = 0; round < 2; ++round)
    for (const auto& m : masks) {
      SCOPED_TRACE(describe(m) + " extra " + std::to_string(m.extra_keys));
      const index_t n = tokens(m);
      const auto data = test::make_data(Problem{1, 2, 1, n, n + m.extra_keys, 16, 16}, Layout::BSHD, 11);
      Options opt;
      opt.mask = m;
      ASSERT_TRUE(tiled(data, opt));
      EXPECT_TRUE(run_and_compare(data, opt));
      // The cached plan is the one a fresh build gives.
      detail::NaPlan fresh;
      detail::na_build_call_plan(fresh, m);
      const detail::NaPlan& cached = detail::na_plan_for(m);
      EXPECT_EQ(cached.q.token, fresh.q.token);
      EXPECT_EQ(cached.k_rows, fresh.k_rows);
      EXPECT_EQ(cached.qwin, fresh.qwin);
      EXPECT_EQ(cached.list_keys, fresh.list_keys);
    }
}

// Masks that alternate (DiNAT's dilations, a model's stages) keep their plans: up to
// kNaPlansKept of them, least recently used evicted first, and fewer when they are large.
TEST(NeighborhoodTiledKernel, PlansOfAlternatingMasksAreKept) {
  const auto a = na(2, {14, 12, 1}, {5, 3, 1});
  auto b = a;
  b.dilation = {2, 1, 1};
  detail::na_plan_for(a);
  detail::na_plan_for(b);
  const long n0 = detail::na_plan_builds();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(detail::na_plan_for(a).base.dilation[0], 1);
    EXPECT_EQ(detail::na_plan_for(b).base.dilation[0], 2);
  }
  EXPECT_EQ(detail::na_plan_builds(), n0);
  // kNaPlansKept other masks after a (b is older still): a is then the least recently used.
  for (int i = 0; i < detail::kNaPlansKept; ++i) {
    auto c = a;
    c.extra_keys = i + 1;
    EXPECT_EQ(detail::na_plan_for(c).extra, i + 1);
  }
  EXPECT_EQ(detail::na_plan_builds(), n0 + detail::kNaPlansKept);
  EXPECT_EQ(detail::na_plan_for(a).base.dilation[0], 1);
  EXPECT_EQ(detail::na_plan_builds(), n0 + detail::kNaPlansKept + 1);
  // Two plans whose slots exceed kNaPlanSlotsKept together: only the newest stays.
  const index_t big = detail::kNaPlanSlotsKept / 2 + 64;
  auto l1 = na(1, {big, 1, 1}, {9, 1, 1});
  l1.dilation = {2, 1, 1};
  auto l2 = l1;
  l2.dilation = {3, 1, 1};
  detail::na_plan_for(l1);
  detail::na_plan_for(l2);
  const long n1 = detail::na_plan_builds();
  EXPECT_EQ(detail::na_plan_for(l1).base.dilation[0], 2);
  EXPECT_EQ(detail::na_plan_builds(), n1 + 1);
  // The small plans are the ones that went; a is built again, and stays exact.
  detail::na_plan_for(a);
  EXPECT_EQ(detail::na_plan_builds(), n1 + 2);
  const auto data = test::make_data(Problem{1, 2, 1, tokens(a), tokens(a), 16, 16}, Layout::BSHD, 5);
  Options opt;
  opt.mask = a;
  EXPECT_TRUE(run_and_compare(data, opt));
}

TEST(NeighborhoodTiledKernel, DecodeShapesKeepTheFlatPath) {
  // A 2x2 grid, one query head per KV head: 4 rows <= the decode threshold.
  const auto m = na(2, {2, 2, 1}, {2, 2, 1});
  const auto data = test::make_data(Problem{1, 2, 2, 4, 4, 16, 16}, Layout::BSHD, 3);
  Options opt;
  opt.mask = m;
  EXPECT_FALSE(tiled(data, opt));
  EXPECT_TRUE(run_and_compare(data, opt));
}

}  // namespace
}  // namespace sinkattn
