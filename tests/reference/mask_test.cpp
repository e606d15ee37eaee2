// The reference's visibility (SEMANTICS.md section 2) against hand-enumerated sets and
// independent brute-force statements, and the rule that masked keys contribute nothing.

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "harness.hpp"
#include "sinkattn/core/validate.hpp"
#include "sinkattn/reference/attention.hpp"
#include "sinkattn/reference/visibility.hpp"
#include "tiny.hpp"

namespace sinkattn {
namespace test {
namespace {

using reference::visible;

// Keys visible to row i of (b = 0, h = 0).
std::set<index_t> keys_of(const Problem& p, const MaskSpec& m, index_t i, index_t b = 0, index_t h = 0) {
  std::set<index_t> s;
  for (index_t j = 0; j < p.seq_kv; ++j)
    if (visible(p, m, b, h, i, j)) s.insert(j);
  return s;
}

std::set<index_t> range(index_t lo, index_t hi) {  // [lo, hi]
  std::set<index_t> s;
  for (index_t j = lo; j <= hi; ++j) s.insert(j);
  return s;
}

Problem square(index_t n) { return Problem{1, 1, 1, n, n, 1, 1}; }

// ---- Causal and sliding window -------------------------------------------------------------

TEST(RefMask, CausalIsBottomRightAligned) {
  const Problem p{1, 1, 1, 3, 5, 1, 1};
  EXPECT_EQ(keys_of(p, CausalMask{}, 0), range(0, 2));
  EXPECT_EQ(keys_of(p, CausalMask{}, 2), range(0, 4));
  EXPECT_EQ(keys_of(p, CausalMask{-1}, 0), range(0, 1));  // offset shifts p_i
  const Problem tall{1, 1, 1, 5, 3, 1, 1};                // Sq > Skv: the first rows see nothing
  EXPECT_TRUE(keys_of(tall, CausalMask{}, 1).empty());
  EXPECT_EQ(keys_of(tall, CausalMask{}, 2), range(0, 0));
}

TEST(RefMask, SlidingWindowWithSinkTokens) {
  const Problem p = square(10);
  SlidingWindowMask m;
  m.left = 2;
  m.right = 1;
  m.sink_tokens = 1;
  EXPECT_EQ(keys_of(p, m, 5), (std::set<index_t>{0, 3, 4, 5, 6}));
  EXPECT_EQ(keys_of(p, m, 0), range(0, 1));
  EXPECT_EQ(keys_of(p, m, 9), (std::set<index_t>{0, 7, 8, 9}));
  m.right = 0;
  m.sink_tokens = 3;  // sink tokens still respect the right edge
  EXPECT_EQ(keys_of(p, m, 1), range(0, 1));
  EXPECT_EQ(keys_of(p, m, 7), (std::set<index_t>{0, 1, 2, 5, 6, 7}));
}

TEST(RefMask, SlidingWindowUnboundedSidesAndGptOss) {
  const Problem p{1, 1, 1, 300, 300, 1, 1};
  SlidingWindowMask causal_like{-1, 0, 0, 0}, full_like{-1, -1, 0, 0}, gpt_oss{127, 0, 0, 0};
  for (index_t i : {0, 1, 127, 128, 200, 299}) {
    EXPECT_EQ(keys_of(p, causal_like, i), keys_of(p, CausalMask{}, i));
    EXPECT_EQ(keys_of(p, full_like, i), range(0, 299));
    EXPECT_EQ(keys_of(p, gpt_oss, i), range(std::max<index_t>(0, i - 127), i)) << i;
  }
  EXPECT_EQ(keys_of(p, gpt_oss, 200).size(), 128u);
}

// ---- Block-diagonal ------------------------------------------------------------------------

TEST(RefMask, BlockEqualAndRagged) {
  const Problem p = square(10);
  BlockMask eq;
  eq.block_size = 4;  // {0-3}, {4-7}, {8-9}
  EXPECT_EQ(keys_of(p, eq, 5), range(4, 7));
  EXPECT_EQ(keys_of(p, eq, 9), range(8, 9));
  BlockMask rag;
  rag.boundaries = {0, 3, 7};  // {0-2}, {3-6}, {7-...}
  EXPECT_EQ(keys_of(p, rag, 5), range(3, 6));
  EXPECT_EQ(keys_of(p, rag, 8), range(7, 9));
  rag.global_keys = 2;
  EXPECT_EQ(keys_of(p, rag, 5), (std::set<index_t>{0, 1, 3, 4, 5, 6}));
  rag.last_block_attends_all = true;
  EXPECT_EQ(keys_of(p, rag, 8), range(0, 9));
  EXPECT_EQ(keys_of(p, rag, 6), (std::set<index_t>{0, 1, 3, 4, 5, 6}));
  rag.causal = true;  // restricts globals and the last block too
  EXPECT_EQ(keys_of(p, rag, 8), range(0, 8));
  EXPECT_EQ(keys_of(p, rag, 4), (std::set<index_t>{0, 1, 3, 4}));
  EXPECT_EQ(keys_of(p, rag, 0), range(0, 0));
}

TEST(RefMask, BlockUsesOffsetAlignedQueryPositions) {
  // Decode-style: Sq = 2 queries at positions 8, 9 of a 10-key sequence.
  const Problem p{1, 1, 1, 2, 10, 1, 1};
  BlockMask m;
  m.block_size = 4;
  EXPECT_EQ(keys_of(p, m, 0), range(8, 9));
  m.offset = -4;  // positions 4, 5
  EXPECT_EQ(keys_of(p, m, 1), range(4, 7));
  m.causal = true;
  EXPECT_EQ(keys_of(p, m, 1), range(4, 5));
}

// ---- Neighborhood (NATTEN) ---------------------------------------------------------------

NeighborhoodMask na1(index_t L, index_t k, index_t d = 1, index_t s = 1, bool causal = false) {
  NeighborhoodMask m;
  m.rank = 1;
  m.extent = {L, 1, 1};
  m.kernel = {k, 1, 1};
  m.dilation = {d, 1, 1};
  m.stride = {s, 1, 1};
  m.causal = {causal, false, false};
  return m;
}

TEST(RefNeighborhood, HandEnumeratedOddAndEvenKernels) {
  // Odd k = 3, L = 5: the window shifts inward at the borders.
  const auto m3 = na1(5, 3);
  EXPECT_EQ(keys_of(square(5), m3, 0), range(0, 2));
  EXPECT_EQ(keys_of(square(5), m3, 2), range(1, 3));
  EXPECT_EQ(keys_of(square(5), m3, 4), range(2, 4));
  // Even k = 4, L = 6: left 2, right 1.
  const auto m4 = na1(6, 4);
  EXPECT_EQ(keys_of(square(6), m4, 0), range(0, 3));
  EXPECT_EQ(keys_of(square(6), m4, 3), range(1, 4));
  EXPECT_EQ(keys_of(square(6), m4, 5), range(2, 5));
  // Extent == kernel: everything.
  for (index_t i = 0; i < 4; ++i) EXPECT_EQ(keys_of(square(4), na1(4, 4), i), range(0, 3));
}

TEST(RefNeighborhood, HandEnumeratedDilationWithIndivisibleExtent) {
  // L = 7, d = 2, k = 3: groups {0,2,4,6} and {1,3,5}.
  const auto m = na1(7, 3, 2);
  EXPECT_EQ(keys_of(square(7), m, 1), (std::set<index_t>{1, 3, 5}));
  EXPECT_EQ(keys_of(square(7), m, 5), (std::set<index_t>{1, 3, 5}));
  EXPECT_EQ(keys_of(square(7), m, 0), (std::set<index_t>{0, 2, 4}));
  EXPECT_EQ(keys_of(square(7), m, 4), (std::set<index_t>{2, 4, 6}));
  EXPECT_EQ(keys_of(square(7), m, 6), (std::set<index_t>{2, 4, 6}));
}

TEST(RefNeighborhood, StrideEqualToKernelIsBlocked) {
  const auto m = na1(6, 3, 1, 3);
  for (index_t i = 0; i < 3; ++i) EXPECT_EQ(keys_of(square(6), m, i), range(0, 2));
  for (index_t i = 3; i < 6; ++i) EXPECT_EQ(keys_of(square(6), m, i), range(3, 5));
}

TEST(RefNeighborhood, HandEnumeratedCausal) {
  const auto m = na1(5, 3, 1, 1, true);
  EXPECT_EQ(keys_of(square(5), m, 0), range(0, 0));
  EXPECT_EQ(keys_of(square(5), m, 1), range(0, 1));
  EXPECT_EQ(keys_of(square(5), m, 4), range(2, 4));
  // Causal with stride 2: the leader is the last query of the stride group.
  const auto s2 = na1(6, 3, 1, 2, true);
  EXPECT_EQ(keys_of(square(6), s2, 0), range(0, 0));
  EXPECT_EQ(keys_of(square(6), s2, 1), range(0, 1));
  EXPECT_EQ(keys_of(square(6), s2, 2), range(1, 2));
  EXPECT_EQ(keys_of(square(6), s2, 3), range(1, 3));
}

TEST(RefNeighborhood, CausalPerDimension2D) {
  // 3 x 4 grid, causal along rows only, kernel 2 x 3.
  NeighborhoodMask m;
  m.rank = 2;
  m.extent = {3, 4, 1};
  m.kernel = {2, 3, 1};
  m.causal = {true, false, false};
  const Problem p = square(12);
  // Query (2, 0): rows {1, 2} (causal, k = 2), columns {0, 1, 2}.
  EXPECT_EQ(keys_of(p, m, 2 * 4 + 0), (std::set<index_t>{4, 5, 6, 8, 9, 10}));
  // Query (0, 3): row {0}, columns {1, 2, 3}.
  EXPECT_EQ(keys_of(p, m, 3), (std::set<index_t>{1, 2, 3}));
}

// An independent statement of NATTEN's window: enumerate the dilation group explicitly and
// cut a k-long window out of it, starting at clamp(leader - k/2, 0, len - k) (non-causal) or
// ending at the query (causal). Returns the visible coordinates.
std::set<index_t> natten_window(index_t L, index_t k, index_t d, index_t s, bool causal, index_t qc) {
  std::vector<index_t> members;  // the dilation group of qc, ascending
  for (index_t c = qc % d; c < L; c += d) members.push_back(c);
  const index_t len = static_cast<index_t>(members.size());
  const index_t qi = static_cast<index_t>(std::find(members.begin(), members.end(), qc) - members.begin());
  std::set<index_t> out;
  if (causal) {
    const index_t leader = std::min(qi - qi % s + s - 1, len - 1);
    for (index_t t = std::max<index_t>(0, leader - k + 1); t <= qi; ++t) out.insert(members[t]);
  } else {
    const index_t leader = std::min(qi - qi % s + s / 2, len - 1);
    const index_t start = std::min(std::max<index_t>(leader - k / 2, 0), len - k);
    for (index_t t = start; t < start + k; ++t) out.insert(members[t]);
  }
  return out;
}

// NATTEN's original (stride-free, odd kernel) window start, with dilation, written from its
// closed form: the classic get_window_start of the NATTEN CUDA kernels.
index_t classic_window_start(index_t i, index_t L, index_t k, index_t d) {
  const index_t ns = k / 2;
  if (d <= 1) {
    index_t start = std::max<index_t>(i - ns, 0);
    if (i + ns >= L) start += L - i - ns - 1;
    return start;
  }
  if (i - ns * d < 0) return i % d;
  if (i + ns * d >= L) {
    const index_t imodd = i % d, a = (L / d) * d, b = L - a;
    if (imodd < b) return L - b + imodd - 2 * ns * d;
    return a + imodd - k * d;
  }
  return i - ns * d;
}

TEST(RefNeighborhood, MatchesBruteForce1D) {
  int cases = 0;
  for (index_t L = 1; L <= 13; ++L)
    for (index_t k = 1; k <= L; ++k)
      for (index_t d = 1; d * k <= L; ++d)
        for (index_t s = 1; s <= k; ++s)
          for (bool causal : {false, true}) {
            const auto m = na1(L, k, d, s, causal);
            ASSERT_TRUE(sinkattn::detail::check_mask(square(L), m).ok());
            for (index_t i = 0; i < L; ++i) {
              ASSERT_EQ(keys_of(square(L), m, i), natten_window(L, k, d, s, causal, i))
                  << "L=" << L << " k=" << k << " d=" << d << " s=" << s << " causal=" << causal << " q=" << i;
              ++cases;
            }
          }
  EXPECT_GT(cases, 1000);
}

TEST(RefNeighborhood, MatchesClassicNattenForOddKernels) {
  for (index_t L = 1; L <= 17; ++L)
    for (index_t k = 1; k <= L; k += 2)
      for (index_t d = 1; d * k <= L; ++d)
        for (index_t i = 0; i < L; ++i) {
          std::set<index_t> want;
          const index_t start = classic_window_start(i, L, k, d);
          for (index_t t = 0; t < k; ++t) want.insert(start + t * d);
          ASSERT_EQ(keys_of(square(L), na1(L, k, d), i), want) << "L=" << L << " k=" << k << " d=" << d << " q=" << i;
        }
}

TEST(RefNeighborhood, WindowHoldsExactlyKKeysPerDimension) {
  // Non-causal, any stride and dilation: every query sees prod(k) keys, borders included.
  struct Case {
    int rank;
    std::array<index_t, 3> L, k, d, s;
  };
  const std::vector<Case> cases = {
      {1, {9, 1, 1}, {4, 1, 1}, {1, 1, 1}, {1, 1, 1}}, {1, {11, 1, 1}, {3, 1, 1}, {3, 1, 1}, {2, 1, 1}},
      {2, {7, 6, 1}, {3, 4, 1}, {1, 1, 1}, {1, 1, 1}}, {2, {7, 9, 1}, {3, 3, 1}, {2, 3, 1}, {1, 3, 1}},
      {3, {4, 5, 6}, {3, 2, 5}, {1, 2, 1}, {1, 1, 2}}, {3, {5, 5, 5}, {5, 1, 2}, {1, 5, 2}, {5, 1, 1}},
  };
  for (const auto& c : cases) {
    NeighborhoodMask m;
    m.rank = c.rank;
    m.extent = c.L;
    m.kernel = c.k;
    m.dilation = c.d;
    m.stride = c.s;
    const index_t n = c.L[0] * c.L[1] * c.L[2];
    ASSERT_TRUE(sinkattn::detail::check_mask(square(n), m).ok())
        << sinkattn::detail::check_mask(square(n), m).message();
    for (index_t i = 0; i < n; ++i)
      ASSERT_EQ(index_t(keys_of(square(n), m, i).size()), c.k[0] * c.k[1] * c.k[2]) << "rank " << c.rank << " q=" << i;
  }
}

TEST(RefNeighborhood, MultiDimIsTheProductOfOneDimWindows) {
  // 3-D grid 4 x 5 x 6 (row-major, last dimension fastest) with mixed options per dimension.
  NeighborhoodMask m;
  m.rank = 3;
  m.extent = {4, 5, 6};
  m.kernel = {2, 3, 3};
  m.dilation = {1, 1, 2};
  m.stride = {2, 1, 3};
  m.causal = {false, true, false};
  const index_t n = 4 * 5 * 6;
  ASSERT_TRUE(sinkattn::detail::check_mask(square(n), m).ok());
  for (index_t a = 0; a < 4; ++a)
    for (index_t b = 0; b < 5; ++b)
      for (index_t c = 0; c < 6; ++c) {
        const index_t i = (a * 5 + b) * 6 + c;
        std::set<index_t> want;
        for (index_t x : natten_window(4, 2, 1, 2, false, a))
          for (index_t y : natten_window(5, 3, 1, 1, true, b))
            for (index_t z : natten_window(6, 3, 2, 3, false, c)) want.insert((x * 5 + y) * 6 + z);
        ASSERT_EQ(keys_of(square(n), m, i), want) << "q=(" << a << "," << b << "," << c << ")";
      }
}

// ---- Block-sparse --------------------------------------------------------------------------

TEST(RefMask, BlockSparseListsAndElementMask) {
  // Sq = 4 (q_block 2 -> 2 query blocks), Skv = 7 (kv_block 3 -> blocks {0-2}, {3-5}, {6}), 2 heads.
  const Problem p{1, 2, 2, 4, 7, 1, 1};
  const std::vector<index_t> offsets = {0, 1, 3, 3, 5};  // rows (h, qb): (0,0) (0,1) (1,0) (1,1)
  const std::vector<index_t> indices = {0, 2, 1, 0, 2};
  BlockSparseMask m;
  m.q_block = 2;
  m.kv_block = 3;
  m.offsets = offsets.data();
  m.indices = indices.data();
  ASSERT_TRUE(sinkattn::detail::check_mask(p, m).ok());
  EXPECT_EQ(keys_of(p, m, 0, 0, 0), range(0, 2));
  EXPECT_EQ(keys_of(p, m, 3, 0, 0), (std::set<index_t>{3, 4, 5, 6}));
  EXPECT_TRUE(keys_of(p, m, 1, 0, 1).empty());
  EXPECT_EQ(keys_of(p, m, 2, 0, 1), (std::set<index_t>{0, 1, 2, 6}));
  m.element_mask = [](index_t, index_t, index_t i, index_t j) { return (i + j) % 2 == 0; };
  EXPECT_EQ(keys_of(p, m, 2, 0, 1), (std::set<index_t>{0, 2, 6}));
  EXPECT_EQ(keys_of(p, m, 3, 0, 0), (std::set<index_t>{3, 5}));
}

// ---- Masked keys contribute nothing ------------------------------------------------------

// Row i of `full` restricted by mask equals a problem holding only the visible keys.
void expect_same_as_removed(const NormSpec& norm, const MaskSpec& mask, const char* name) {
  const Problem p{1, 1, 1, 1, 10, 8, 4};
  const auto d = make_data(p, Layout::BSHD, 21);
  Options opt;
  opt.norm = norm;
  opt.mask = mask;
  const auto r = run_reference<double>(d, opt, false);
  ASSERT_TRUE(r.status.ok()) << name << ": " << r.status.message();

  std::vector<index_t> keep;
  for (index_t j = 0; j < p.seq_kv; ++j)
    if (visible(p, mask, 0, 0, 0, j)) keep.push_back(j);
  ASSERT_FALSE(keep.empty());
  ASSERT_LT(keep.size(), size_t(p.seq_kv));
  Problem small = p;
  small.seq_kv = static_cast<index_t>(keep.size());
  std::vector<float> k, v;
  for (index_t j : keep) {
    for (index_t e = 0; e < p.dim_qk; ++e) k.push_back(d.k(0, j, 0, e));
    for (index_t e = 0; e < p.dim_v; ++e) v.push_back(d.v(0, j, 0, e));
  }
  Options opt2;
  opt2.norm = norm;
  const auto r2 = run_reference<double>(small, d.q, TensorView<const float>::bshd(k.data(), 1, small.seq_kv, 1, 8),
                                        TensorView<const float>::bshd(v.data(), 1, small.seq_kv, 1, 4), opt2, false);
  ASSERT_TRUE(r2.status.ok()) << r2.status.message();
  for (index_t e = 0; e < p.dim_v; ++e) EXPECT_EQ(r.o(0, 0, 0, e), r2.o(0, 0, 0, e)) << name << " e=" << e;
}

TEST(RefMask, MaskedKeysContributeExactlyZero) {
  SlidingWindowMask win;
  win.left = 3;
  win.right = 0;  // the single query (p = 9) sees keys 6..9
  const std::vector<index_t> offsets = {0, 2}, indices = {0, 3};
  BlockSparseMask bs;  // key blocks of 3: {0-2} and {9}, odd keys only
  bs.q_block = 1;
  bs.kv_block = 3;
  bs.offsets = offsets.data();
  bs.indices = indices.data();
  bs.element_mask = [](index_t, index_t, index_t, index_t j) { return j % 2 == 1; };
  const float s = 0.75f;
  for (const MaskSpec& mask : {MaskSpec{win}, MaskSpec{bs}, MaskSpec{CausalMask{-5}}}) {
    expect_same_as_removed(Sigmoid{}, mask, "sigmoid");
    expect_same_as_removed(Softpick{}, mask, "softpick");
    expect_same_as_removed(Softmax{}, mask, "softmax");
    expect_same_as_removed(SinkSoftmax{&s}, mask, "sink");
    expect_same_as_removed(ScalableSoftmax{&s}, mask, "ssmax");  // N_i = visible keys
  }
}

TEST(RefMask, MaskEqualsMinusInfBiasForSoftmax) {
  const Problem p{2, 2, 1, 12, 12, 8, 8};
  const auto d = make_data(p, Layout::BSHD, 4);
  BlockMask m;
  m.boundaries = {0, 5, 9};
  m.global_keys = 1;
  m.causal = true;
  Options masked;
  masked.mask = m;
  auto bias = make_tensor({2, 2, 12, 12}, 1, 0.f, 0.f);
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 2; ++h)
      for (index_t i = 0; i < 12; ++i)
        for (index_t j = 0; j < 12; ++j)
          if (!visible(p, m, b, h, i, j)) bias(b, h, i, j) = -kInfF;
  Options biased;
  biased.score.bias = bias.cview();
  const auto r1 = run_reference<double>(d, masked, true);
  const auto r2 = run_reference<double>(d, biased, true);
  for (size_t n = 0; n < r1.obuf.size(); ++n) EXPECT_NEAR(r1.obuf[n], r2.obuf[n], 1e-15);
  for (size_t n = 0; n < r1.lsebuf.size(); ++n) EXPECT_NEAR(r1.lsebuf[n], r2.lsebuf[n], 1e-14);
}

}  // namespace
}  // namespace test
}  // namespace sinkattn
