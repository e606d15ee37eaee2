// Neighborhood attention with extra keys (NeighborhoodMask::extra_keys, issue 6): global or
// sink tokens stored as the first rows of K/V, visible to every query, attended in the same
// loop as the neighborhood. The flat policy's properties over all pairs, and forward() on the
// tiled (2-D, 3-D, dilated) and the flat (1-D, row-indexed inputs, decode shapes) paths
// against the fp64 reference, with every normalization that reads the row's keys, and errors.

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "forward_check.hpp"
#include "harness.hpp"
#include "mask_properties.hpp"
#include "neighborhood_cases.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "sinkattn/kernel/permute.hpp"
#include "sinkattn/policy/mask_neighborhood_tiled.hpp"

namespace sinkattn {
namespace {

using test::Layout;

NeighborhoodMask na(int rank, std::array<index_t, 3> ext, std::array<index_t, 3> kernel, index_t extra,
                    std::array<index_t, 3> dilation = {1, 1, 1}, std::array<index_t, 3> stride = {1, 1, 1},
                    std::array<bool, 3> causal = {false, false, false}) {
  return NeighborhoodMask{rank, ext, kernel, dilation, stride, causal, extra};
}

using test::describe;
using test::tokens;

Problem problem(const NeighborhoodMask& m, index_t hq, index_t hkv, index_t dqk, index_t dv, index_t batch = 1) {
  const index_t n = tokens(m);
  return Problem{batch, hq, hkv, n, n + m.extra_keys, dqk, dv};
}

bool tiled(const test::Data& d, const Options& opt) {
  return detail::neighborhood_tiled_applies(detail::make_args(d.p, d.q, d.k, d.v, {}, opt),
                                            std::get<NeighborhoodMask>(opt.mask), opt);
}

// Extra-key counts around the key block (64) and the SIMD width (16), on both paths: rank >= 2
// or dilation take the tiled path, plain 1-D the flat one.
const std::vector<NeighborhoodMask> kCases = {
    na(2, {20, 23, 1}, {5, 4, 1}, 1),
    na(2, {17, 31, 1}, {3, 7, 1}, 66, {2, 3, 1}, {1, 1, 1}, {true, false, false}),
    na(2, {24, 24, 1}, {8, 8, 1}, 17, {1, 1, 1}, {8, 8, 1}),  // blocked
    na(3, {6, 9, 11}, {3, 4, 5}, 7, {2, 1, 2}, {1, 2, 1}, {false, false, true}),
    na(1, {150, 1, 1}, {7, 1, 1}, 5, {4, 1, 1}),                                     // 1-D dilated: tiled
    na(1, {130, 1, 1}, {9, 1, 1}, 130, {1, 1, 1}, {3, 1, 1}, {true, false, false}),  // 1-D: flat
    na(1, {40, 1, 1}, {40, 1, 1}, 64),                                               // extent == kernel
};

// ---- The flat policy over all pairs ------------------------------------------------------

TEST(NeighborhoodExtraKeysPolicy, FlatPolicyAgreesWithTheReference) {
  for (const auto& m : kCases) {
    SCOPED_TRACE(describe(m));
    const policy::NeighborhoodMaskPolicy pol{m.rank, m.extent, m.kernel, m.dilation, m.stride, m.causal, m.extra_keys};
    const index_t n = tokens(m);
    for (auto [bq, bkv] : {std::pair<index_t, index_t>{16, 16}, {64, 64}, {16, 24}})
      test::check_mask(pol, MaskSpec{m}, n, n + m.extra_keys, bq, bkv);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// The tiled policy: key slot j < E is extra key j, slot E + s the grid key in slot s of the
// plan; padding query slots see nothing (not even the extra keys).
TEST(NeighborhoodExtraKeysPolicy, TiledPolicyAgreesWithTheReference) {
  for (const auto& m : kCases) {
    if (m.rank < 2 && m.dilation[0] == 1) continue;  // 1-D without dilation: the flat policy
    for (auto [bq, bkv] : {std::pair<index_t, index_t>{detail::kBlockQ, detail::kBlockKV}, {16, 24}}) {
      SCOPED_TRACE(describe(m));
      detail::NaPlan plan;
      detail::na_build_plan(plan, m, bq, bkv);
      const policy::NeighborhoodTiledMaskPolicy pol{&plan};
      const index_t n = tokens(m), e = m.extra_keys;
      const std::vector<index_t>&qt = plan.q.token, &kt = plan.k.token;
      test::SlotMap map;
      map.q = [&qt](index_t i) { return qt[static_cast<std::size_t>(i)]; };
      map.k = [&kt, e](index_t j) {
        if (j < e) return j;
        const index_t t = kt[static_cast<std::size_t>(j - e)];
        return t < 0 ? t : e + t;  // a padding key slot stays padding
      };
      map.seq_q = n;
      map.seq_kv = n + e;
      test::check_mask(pol, m, plan.q.size(), e + plan.k.size(), bq, bkv, 1, 1, 0, 0, map);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

// ---- forward() against the reference ----------------------------------------------------

TEST(NeighborhoodExtraKeysKernel, SoftmaxAndLseOnBothPaths) {
  for (const auto& m : kCases) {
    const auto data = test::make_data(problem(m, 4, 2, 32, 32, 2), Layout::BSHD, static_cast<std::uint64_t>(tokens(m)));
    Options opt;
    opt.mask = m;
    EXPECT_EQ(tiled(data, opt), m.rank >= 2 || m.dilation[0] > 1) << describe(m);
    EXPECT_TRUE(test::run_and_compare(data, opt)) << describe(m);
  }
}

TEST(NeighborhoodExtraKeysKernel, HeadMajorOddDimsMqaAndSoftcap) {
  const auto m = na(2, {19, 21, 1}, {7, 5, 1}, 33, {2, 1, 1}, {1, 2, 1}, {false, true, false});
  const auto data = test::relayout(test::make_data(problem(m, 3, 1, 72, 40), Layout::BSHD, 5), Layout::BHSD);
  Options opt;
  opt.mask = m;
  opt.score.softcap = 3.f;
  ASSERT_TRUE(tiled(data, opt));
  EXPECT_TRUE(test::run_and_compare(data, opt));
}

TEST(NeighborhoodExtraKeysKernel, ComposesWithNormsSinksAndGate) {
  // SSMax's N_i and the sigmoid / softpick sums run over the extra keys too.
  for (const auto& m : {na(2, {20, 23, 1}, {5, 4, 1}, 9, {1, 2, 1}, {1, 1, 1}, {true, false, false}),
                        na(3, {6, 9, 11}, {3, 4, 5}, 70, {2, 1, 2}, {1, 2, 1}, {false, false, true}),
                        na(1, {100, 1, 1}, {11, 1, 1}, 20)}) {
    SCOPED_TRACE(describe(m));
    const Problem p = problem(m, 4, 2, 32, 32);
    const auto data = test::make_data(p, Layout::BSHD, 17);
    std::vector<float> sinks = {0.5f, -1.f, 2.f, 0.f}, s(4, 0.4f);
    auto gate = test::make_tensor({p.batch, p.seq_q, p.heads_q, p.dim_v}, 8, -2.f, 2.f);
    Options opt;
    opt.mask = m;
    opt.norm = SinkSoftmax{sinks.data()};
    opt.gate = SigmoidGate{gate.cview()};
    EXPECT_TRUE(test::run_and_compare(data, opt)) << "sinks + gate";
    opt.gate = NoGate{};
    opt.norm = ScalableSoftmax{s.data()};
    EXPECT_TRUE(test::run_and_compare(data, opt)) << "ssmax";
    opt.norm = Sigmoid{-2.f};
    EXPECT_TRUE(test::run_and_compare(data, opt, Executor::serial(), false)) << "sigmoid";
    opt.norm = Softpick{};
    EXPECT_TRUE(test::run_and_compare(data, opt, Executor::serial(), false)) << "softpick";
  }
}

TEST(NeighborhoodExtraKeysKernel, RowIndexedInputsOnTheFlatPath) {
  // Bias, ALiBi and affine keep the flat tiles; the extra keys are bias columns [0, E).
  const auto m = na(2, {12, 14, 1}, {5, 3, 1}, 6, {2, 1, 1});
  const Problem p = problem(m, 2, 1, 16, 16);
  const auto data = test::make_data(p, Layout::BSHD, 23);
  auto bias = test::make_tensor({1, 2, p.seq_q, p.seq_kv}, 3, -1.f, 1.f);
  auto alpha = test::make_tensor({1, p.seq_q, 2, 1}, 21, 0.2f, 1.2f);
  std::vector<float> slopes = {0.1f, 0.3f};
  Options opt;
  opt.mask = m;
  opt.score.bias = bias.cview();
  EXPECT_FALSE(tiled(data, opt));
  EXPECT_TRUE(test::run_and_compare(data, opt)) << "bias";
  opt.score.bias = {};
  opt.score.alibi_slopes = slopes.data();
  EXPECT_TRUE(test::run_and_compare(data, opt)) << "alibi";
  opt.score.alibi_slopes = nullptr;
  opt.norm = AffineScaled{alpha.cview(), {}, 1.f, false};
  EXPECT_TRUE(test::run_and_compare(data, opt)) << "affine";
}

TEST(NeighborhoodExtraKeysKernel, DominantExtraKeysAndDecodeShapes) {
  // Extra keys whose logits dwarf the neighborhood's (an attention sink): the online softmax
  // rescales exactly; and a 2x2 grid (decode shapes: the split-KV loop jumps to the box),
  // with enough extra keys for two splits of kDecodeSplitKeys, one of them cut right at the
  // extra / grid boundary (1022 + 4 keys).
  for (const auto& m :
       {na(2, {16, 16, 1}, {3, 3, 1}, 4), na(2, {2, 2, 1}, {2, 2, 1}, 3), na(1, {3, 1, 1}, {2, 1, 1}, 90),
        na(2, {2, 2, 1}, {2, 2, 1}, 1500), na(2, {2, 2, 1}, {2, 2, 1}, 1022)}) {
    SCOPED_TRACE(describe(m));
    auto data = test::make_data(problem(m, 2, 2, 16, 16), Layout::BSHD, 29);
    auto k = data.mk();
    for (index_t h = 0; h < 2; ++h)
      for (index_t j = 0; j < m.extra_keys; ++j)
        for (index_t x = 0; x < 16; ++x) k(0, j, h, x) = 40.f * data.q(0, 0, h, x);
    Options opt;
    opt.mask = m;
    EXPECT_TRUE(test::run_and_compare(data, opt));
  }
}

TEST(NeighborhoodExtraKeysKernel, OneAndTwoThreadsBitIdentical) {
  for (const auto& m : {na(2, {33, 29, 1}, {9, 6, 1}, 65, {1, 2, 1}), na(1, {300, 1, 1}, {31, 1, 1}, 3)}) {
    Options opt;
    opt.mask = m;
    EXPECT_TRUE(test::threads_agree(test::make_data(problem(m, 4, 2, 64, 64, 2), Layout::BSHD, 77), opt))
        << describe(m);
  }
}

TEST(NeighborhoodExtraKeysKernel, ErrorsNameTheArgument) {
  const auto m = na(2, {4, 5, 1}, {3, 3, 1}, 2);
  const auto good = test::make_data(problem(m, 2, 2, 8, 8), Layout::BSHD, 3);
  const auto grid_only = test::make_data(Problem{1, 2, 2, 20, 20, 8, 8}, Layout::BSHD, 3);
  test::Out out = test::make_out(good.p, Layout::BSHD, false);
  Options opt;
  opt.mask = m;
  // Keys without room for the extra ones.
  Status s = forward(grid_only.p, grid_only.q, grid_only.k, grid_only.v, out.o, opt);
  EXPECT_EQ(s.code(), Errc::shape_mismatch);
  EXPECT_NE(s.message().find("mask.extra_keys"), std::string::npos) << s.message();
  auto neg = m;
  neg.extra_keys = -1;
  opt.mask = neg;
  s = forward(good.p, good.q, good.k, good.v, out.o, opt);
  EXPECT_EQ(s.code(), Errc::out_of_range);
  EXPECT_NE(s.message().find("mask.extra_keys is -1"), std::string::npos) << s.message();
  opt.mask = m;
  EXPECT_TRUE(forward(good.p, good.q, good.k, good.v, out.o, opt).ok());
}

}  // namespace
}  // namespace sinkattn
