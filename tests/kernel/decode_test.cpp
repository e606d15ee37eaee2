// The split-KV decode path (few query rows per KV head) against the fp64 reference, against
// the prefill path, and across thread counts.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "forward_check.hpp"
#include "harness.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "threads.hpp"

namespace sinkattn {
namespace {

using test::Layout;
using test::run_and_compare;

Options causal(index_t offset = 0) {
  Options o;
  o.mask = CausalMask{offset};
  return o;
}

TEST(Decode, TakesTheDecodePathForFewRowsPerKvHead) {
  EXPECT_TRUE(detail::use_decode(Problem{1, 32, 8, 1, 100, 128, 128}));
  EXPECT_TRUE(detail::use_decode(Problem{1, 8, 1, 1, 100, 128, 128}));
  EXPECT_FALSE(detail::use_decode(Problem{1, 8, 8, 64, 100, 128, 128}));
}

TEST(Decode, HeadsPerTaskCoverFourKiBOfATokenRow) {
  using detail::decode_heads_per_task;
  EXPECT_EQ(decode_heads_per_task(Problem{1, 32, 8, 1, 9000, 128, 128}, 9, 1), 8);
  EXPECT_EQ(decode_heads_per_task(Problem{1, 64, 16, 1, 9000, 64, 64}, 9, 1), 16);   // 4 KiB of D64
  EXPECT_EQ(decode_heads_per_task(Problem{1, 32, 32, 1, 9000, 96, 96}, 9, 1), 11);   // ceil(4096 / 384)
  EXPECT_EQ(decode_heads_per_task(Problem{1, 32, 32, 1, 9000, 32, 32}, 9, 1), 16);   // at most 16
  EXPECT_EQ(decode_heads_per_task(Problem{1, 32, 32, 1, 9000, 256, 256}, 9, 1), 8);  // at least 8
  EXPECT_EQ(decode_heads_per_task(Problem{1, 12, 12, 1, 9000, 64, 64}, 9, 1), 12);   // all there are
  EXPECT_EQ(decode_heads_per_task(Problem{1, 4, 4, 1, 9000, 64, 128}, 9, 1), 4);
  // Fewer tasks than the executor runs at once: back to 8 heads.
  EXPECT_EQ(decode_heads_per_task(Problem{1, 16, 16, 1, 900, 64, 64}, 1, 2), 8);
  EXPECT_EQ(decode_heads_per_task(Problem{1, 16, 16, 1, 900, 64, 64}, 1, 1), 16);
  EXPECT_EQ(decode_heads_per_task(Problem{2, 16, 16, 1, 900, 64, 64}, 1, 2), 16);
  // No longer runs to gain (tensors within the L2, or head-major K/V): 8 heads.
  EXPECT_EQ(decode_heads_per_task(Problem{1, 64, 16, 1, 9000, 64, 64}, 9, 1, false), 8);
}

// The grouping of heads into tasks follows the executor (above) but never changes a bit, for
// softmax (O and LSE) and for affine-scaled attention (one running V sum per head).
TEST(Decode, HeadGroupingDoesNotChangeTheResult) {
  detail::prefetch_in_l2 = true;  // the grouping above applies past the L2 only
  for (const Problem& p : {Problem{1, 32, 16, 1, 1000, 64, 64}, Problem{1, 24, 12, 1, 700, 64, 48}}) {
    const auto data = test::make_data(p, Layout::BSHD, 19);
    const test::Tensor alpha = test::make_tensor({p.batch, p.seq_q, p.heads_q, 1}, 23, 0.2f, 1.2f);
    Options affine = causal();
    affine.norm = AffineScaled{alpha.cview(), {}, 1.f, false};
    for (Options opt : {causal(), affine}) {
      const bool lse = std::holds_alternative<Softmax>(opt.norm);
      test::Out one = test::make_out(p, Layout::BSHD, lse), two = test::make_out(p, Layout::BSHD, lse);
      opt.lse = one.lse;
      EXPECT_TRUE(forward(p, data.q, data.k, data.v, one.o, opt).ok());
      opt.lse = two.lse;
      EXPECT_TRUE(forward(p, data.q, data.k, data.v, two.o, opt, test::thread_executor(2)).ok());
      EXPECT_TRUE(test::bit_identical(one.obuf, two.obuf)) << p.heads_kv << " lse " << lse;
      EXPECT_TRUE(test::bit_identical(one.lsebuf, two.lsebuf)) << p.heads_kv;
      opt.lse = one.lse;
      EXPECT_TRUE(test::matches_reference(data, opt, one)) << p.heads_kv << " lse " << lse;
    }
  }
  detail::prefetch_in_l2 = false;
}

TEST(Decode, LengthsAcrossBlocksAndSplits) {
  // Crosses the lane groups (16), the key blocks (64) and the split size (1024).
  static_assert(detail::kDecodeSplitKeys == 1024, "update the lengths below");
  for (index_t skv : {1, 15, 16, 17, 63, 64, 65, 130, 1023, 1024, 1025, 5000}) {
    const auto data = test::make_data(Problem{1, 8, 2, 1, skv, 64, 64}, Layout::BSHD, skv);
    EXPECT_TRUE(run_and_compare(data, Options{})) << "skv=" << skv;
    EXPECT_TRUE(run_and_compare(data, causal())) << "skv=" << skv;
  }
}

TEST(Decode, HeadDimsGroupsAndRows) {
  for (index_t d : {1, 8, 72, 128, 257})
    for (index_t group : {1, 2, 4, 8})
      for (index_t sq : {1, 2}) {
        if (sq * group > detail::kDecodeMaxRows) continue;
        const auto data =
            test::make_data(Problem{2, 2 * group, 2, sq, 300, d, d}, Layout::BSHD, d * 100 + group * 10 + sq);
        EXPECT_TRUE(run_and_compare(data, causal())) << "d=" << d << " group=" << group << " sq=" << sq;
      }
  EXPECT_TRUE(run_and_compare(test::make_data(Problem{1, 4, 1, 1, 200, 96, 40}), Options{}));
  // More KV heads than one task takes (8; 16 at D64 with token-major K/V past the L2): the
  // last task gets the rest.
  EXPECT_TRUE(run_and_compare(test::make_data(Problem{2, 20, 10, 1, 1500, 128, 128}, Layout::BSHD, 5), causal()));
  EXPECT_TRUE(run_and_compare(test::make_data(Problem{1, 20, 10, 1, 1500, 128, 128}, Layout::BHSD, 6), Options{}));
  EXPECT_TRUE(run_and_compare(test::make_data(Problem{2, 40, 20, 1, 1500, 64, 64}, Layout::BSHD, 7), causal()));
  EXPECT_TRUE(run_and_compare(test::make_data(Problem{1, 20, 20, 2, 1500, 64, 48}, Layout::BHSD, 8), Options{}));
}

TEST(Decode, BhsdLayoutAndScoreModifiers) {
  const auto data =
      test::relayout(test::make_data(Problem{1, 8, 2, 2, 2100, 64, 64}, Layout::BSHD, 7, 2.f), Layout::BHSD);
  Options opt = causal(-3);
  opt.score.softcap = 4.f;
  std::vector<float> slopes(8, 0.01f);
  opt.score.alibi_slopes = slopes.data();
  EXPECT_TRUE(run_and_compare(data, opt));
  auto bias = test::make_tensor({1, 8, 2, 2100}, 3, -2, 2);
  Options ob;
  ob.score.bias = bias.cview();
  EXPECT_TRUE(run_and_compare(data, ob));
}

TEST(Decode, SinkLogitAppliedOnceAcrossSplits) {
  const auto data = test::make_data(Problem{1, 4, 1, 1, 7000, 64, 64}, Layout::BSHD, 11);
  std::vector<float> sinks = {0.f, 3.f, -std::numeric_limits<float>::infinity(), 10.f};
  Options opt;
  opt.norm = SinkSoftmax{sinks.data()};
  EXPECT_TRUE(run_and_compare(data, opt));
  EXPECT_TRUE(run_and_compare(data, opt, test::thread_executor(2)));
}

TEST(Decode, FullyMaskedRowsAndEmptyKv) {
  // Offset -10 with Sq = 1, Skv = 5: p = -6, nothing visible.
  const auto data = test::make_data(Problem{1, 4, 2, 1, 5, 16, 16});
  EXPECT_TRUE(run_and_compare(data, causal(-10)));
  const auto empty = test::make_data(Problem{1, 4, 2, 1, 0, 16, 16});
  EXPECT_TRUE(run_and_compare(empty, Options{}));
}

TEST(Decode, HugeLogits) {
  // O to the tolerance rule, LSE (~1e4) to a few fp32 ulps (see the prefill test).
  const auto data = test::make_data(Problem{1, 4, 1, 1, 3000, 32, 32}, Layout::BSHD, 13);
  for (float scale : {1e4f, -1e4f}) {
    Options opt;
    opt.score.scale = scale;
    test::Out out = test::make_out(data.p, Layout::BSHD, true);
    opt.lse = out.lse;
    ASSERT_TRUE(forward(data.p, data.q, data.k, data.v, out.o, opt).ok());
    test::Out o_only = out;
    o_only.lse = {};
    EXPECT_TRUE(test::matches_reference(data, opt, o_only, 1e-3)) << scale;  // see the prefill test
    const auto ref = test::run_reference<double>(data, opt, true);
    for (index_t h = 0; h < 4; ++h)
      EXPECT_NEAR(out.lse(0, h, 0, 0), ref.lse(0, h, 0, 0), 5e-7 * std::abs(ref.lse(0, h, 0, 0))) << scale;
  }
}

// A NaN key poisons the query heads of its KV head only, wherever it lies in its lane group,
// key block and split. Two ways to lose it, both seen: the row max taking the NaN lane (the
// row keeps a max of -inf), and a row whose only key is the NaN (Skv 1: its sum is NaN, which
// the finalisation took for a row with no visible key); either gave zeros.
TEST(Decode, NanInOneKvHeadStaysInItsQueryHeads) {
  for (index_t skv : {1, 16, 30, 64, 100, 1100})
    for (index_t at : {index_t{0}, index_t{15}, skv / 2, skv - 1}) {
      if (at >= skv) continue;
      const Problem p{1, 4, 2, 1, skv, 16, 16};
      auto data = test::make_data(p, Layout::BSHD, 53);
      data.mk()(0, at, 1, 3) = std::nanf("");  // a key of KV head 1 (query heads 2, 3)
      test::Out out = test::make_out(p);
      ASSERT_TRUE(forward(p, data.q, data.k, data.v, out.o).ok());
      for (index_t h = 0; h < 4; ++h)
        for (index_t x = 0; x < p.dim_v; ++x)
          EXPECT_EQ(std::isnan(out.o(0, 0, h, x)), h >= 2) << "skv=" << skv << " at=" << at << " h=" << h;
    }
}

TEST(Decode, BitIdenticalAcrossThreadCounts) {
  const Problem p{2, 16, 4, 1, 9000, 128, 128};
  const auto data = test::make_data(p, Layout::BSHD, 17);
  test::Out one = test::make_out(p, Layout::BSHD, true), two = test::make_out(p, Layout::BSHD, true);
  Options o1 = causal(), o2 = causal();
  o1.lse = one.lse;
  o2.lse = two.lse;
  ASSERT_TRUE(forward(p, data.q, data.k, data.v, one.o, o1).ok());
  ASSERT_TRUE(forward(p, data.q, data.k, data.v, two.o, o2, test::thread_executor(2)).ok());
  EXPECT_TRUE(test::bit_identical(one.obuf, two.obuf));
  EXPECT_TRUE(test::bit_identical(one.lsebuf, two.lsebuf));
}

// Each P.V product asks for the next one's V rows (kernel/decode.hpp) where the call's tensors
// do not fit in the L2. With the requests made at any size (detail::prefetch_in_l2), the
// results are the same bits and match the reference: lengths that end inside a lane group and
// a key block, several KV heads per task and a last task with fewer, a value dimension of no
// whole number of vectors (V packed), three query rows per head (two at a time, then one), a
// sliding window, both layouts. (A prefetch cannot change a value: what this guards is the
// P.V call that interleaves the requests with its register tiles.)
TEST(Decode, PrefetchOfTheNextVRowsDoesNotChangeTheResult) {
  struct Case {
    Problem p;
    Options opt;
  };
  Options window;
  window.mask = SlidingWindowMask{90, 0, 4};
  const std::vector<Case> cases = {{Problem{1, 8, 2, 1, 77, 64, 64}, Options{}},
                                   {Problem{2, 20, 10, 1, 1100, 128, 128}, causal()},
                                   {Problem{1, 16, 4, 1, 300, 48, 13}, causal()},
                                   {Problem{1, 6, 2, 1, 333, 64, 64}, Options{}},
                                   {Problem{1, 6, 3, 2, 500, 32, 32}, window}};
  for (const Case& c : cases)
    for (const Layout layout : {Layout::BSHD, Layout::BHSD}) {
      const Problem& p = c.p;
      SCOPED_TRACE(::testing::Message() << "Hkv " << p.heads_kv << " Skv " << p.seq_kv << " Dv " << p.dim_v);
      const auto data = test::make_data(p, layout, 29);
      ASSERT_TRUE(detail::use_decode(p));
      test::Out with = test::make_out(p, layout, true), without = test::make_out(p, layout, true);
      Options o = c.opt;
      o.lse = without.lse;
      ASSERT_TRUE(forward(p, data.q, data.k, data.v, without.o, o).ok());
      o.lse = with.lse;
      detail::prefetch_in_l2 = true;
      const Status st = forward(p, data.q, data.k, data.v, with.o, o);
      detail::prefetch_in_l2 = false;
      ASSERT_TRUE(st.ok());
      EXPECT_TRUE(test::bit_identical(with.obuf, without.obuf));
      EXPECT_TRUE(test::bit_identical(with.lsebuf, without.lsebuf));
      EXPECT_TRUE(test::matches_reference(data, c.opt, with, 1e-5));
    }
}

// The last row of a causal prefill is a decode step over the same keys: both paths agree.
TEST(Decode, AgreesWithPrefill) {
  const index_t n = 700, d = 64;
  const Problem pre{1, 4, 1, n, n, d, d};
  const auto data = test::make_data(pre, Layout::BSHD, 19);
  test::Out full = test::make_out(pre);
  ASSERT_FALSE(detail::use_decode(pre));
  ASSERT_TRUE(forward(pre, data.q, data.k, data.v, full.o, causal()).ok());

  const Problem dec{1, 4, 1, 1, n, d, d};
  ASSERT_TRUE(detail::use_decode(dec));
  TensorView<const float> q_last{data.q.ptr(0, n - 1, 0), {1, 1, 4, d}, data.q.stride};
  test::Out step = test::make_out(dec);
  ASSERT_TRUE(forward(dec, q_last, data.k, data.v, step.o, causal()).ok());
  for (index_t h = 0; h < 4; ++h)
    for (index_t x = 0; x < d; ++x) EXPECT_NEAR(step.o(0, 0, h, x), full.o(0, n - 1, h, x), 2e-6);
}

}  // namespace
}  // namespace sinkattn
