// The fused kernels (prefill and split-KV decode) with the masks beyond Full/Causal, through
// the runtime entry point sinkattn::forward, against the fp64 reference; thread counts.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "forward_check.hpp"
#include "harness.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "threads.hpp"

namespace sinkattn {
namespace {

using test::Layout;
using test::run_and_compare;
using test::threads_agree;

// A mask composed with learned sinks + gate, SSMax, affine-scaled and sigmoid (issue 6 item 4;
// SSMax and affine read N_i from the policy's count_visible).
void expect_composes_with_norms(const test::Data& data, Options opt) {
  const Problem& p = data.p;
  std::vector<float> sinks = {0.5f, -1.f, 2.f, 0.f}, s(static_cast<std::size_t>(p.heads_q), 0.4f);
  sinks.resize(static_cast<std::size_t>(p.heads_q), 0.f);
  auto gate = test::make_tensor({p.batch, p.seq_q, p.heads_q, p.dim_v}, 8, -2.f, 2.f);
  auto alpha = test::make_tensor({p.batch, p.seq_q, p.heads_q, 1}, 21, 0.2f, 1.2f);
  opt.norm = SinkSoftmax{sinks.data()};
  opt.gate = SigmoidGate{gate.cview()};
  EXPECT_TRUE(run_and_compare(data, opt)) << "sinks + gate";
  opt.gate = NoGate{};
  opt.norm = ScalableSoftmax{s.data()};
  EXPECT_TRUE(run_and_compare(data, opt)) << "ssmax";
  opt.norm = AffineScaled{alpha.cview(), {}, 1.f, false};
  EXPECT_TRUE(run_and_compare(data, opt)) << "affine";
  opt.norm = Sigmoid{-2.f};
  EXPECT_TRUE(run_and_compare(data, opt, Executor::serial(), false)) << "sigmoid";
}

Options window(index_t left, index_t right, index_t sinks = 0, index_t offset = 0) {
  Options o;
  o.mask = SlidingWindowMask{left, right, sinks, offset};
  return o;
}

struct Win {
  index_t left, right, sinks, offset;
};

// Windows straddling the tiles (64), unbounded sides, windows larger than the sequence and
// more sink tokens than keys.
const std::vector<Win> kWindows = {{0, 0, 0, 0},    {-1, -1, 0, 0}, {127, 0, 0, 0}, {127, 0, 4, 0},  {3, 7, 2, 0},
                                   {64, -1, 0, 0},  {-1, 0, 10, 0}, {63, 63, 1, 0}, {5000, 0, 0, 0}, {10, 10, 5000, 0},
                                   {100, 0, 70, 0}, {20, 5, 3, -9}, {1, 0, 130, 4}, {200, 300, 4, 0}};

TEST(SlidingWindowKernel, PrefillManyWindowsAndShapes) {
  const std::vector<std::pair<index_t, index_t>> shapes = {{65, 130}, {130, 65}, {200, 200}, {113, 203}, {17, 1000}};
  for (auto [sq, skv] : shapes) {
    const auto data = test::make_data(Problem{1, 2, 1, sq, skv, 32, 32}, Layout::BSHD, sq * 7 + skv);
    ASSERT_FALSE(detail::use_decode(data.p));
    for (const Win& w : kWindows)
      EXPECT_TRUE(run_and_compare(data, window(w.left, w.right, w.sinks, w.offset)))
          << "sq=" << sq << " skv=" << skv << " left=" << w.left << " right=" << w.right << " sinks=" << w.sinks
          << " offset=" << w.offset;
  }
}

TEST(SlidingWindowKernel, PrefillBhsdAndOddHeadDims) {
  const auto data = test::relayout(test::make_data(Problem{2, 4, 2, 150, 333, 72, 40}, Layout::BSHD, 3), Layout::BHSD);
  EXPECT_TRUE(run_and_compare(data, window(90, 0, 4)));
  EXPECT_TRUE(run_and_compare(data, window(30, 40, 0)));
}

TEST(SlidingWindowKernel, DecodeAcrossSplits) {
  // Sq * group <= 8: the split-KV path, 1024-key splits; the window and the sinks fall in
  // different splits, the gap between them is jumped.
  static_assert(detail::kDecodeSplitKeys == 1024, "update the lengths below");
  for (auto [sq, group] : std::vector<std::pair<index_t, index_t>>{{1, 4}, {2, 4}, {1, 8}, {8, 1}}) {
    const Problem p{1, 2 * group, 2, sq, 5000, 64, 64};
    ASSERT_TRUE(detail::use_decode(p));
    const auto data = test::make_data(p, Layout::BSHD, 100 + sq * 10 + group);
    for (const Win& w : std::vector<Win>{{1023, 0, 4, 0},
                                         {127, 0, 0, 0},
                                         {2000, 0, 1500, 0},
                                         {-1, 0, 6000, 0},
                                         {10, -1, 4, 0},
                                         {10, 20, 1030, -3},
                                         {0, 0, 0, -5000},  // every row fully masked
                                         {4999, 0, 0, 0}})
      EXPECT_TRUE(run_and_compare(data, window(w.left, w.right, w.sinks, w.offset)))
          << "sq=" << sq << " group=" << group << " left=" << w.left << " right=" << w.right << " sinks=" << w.sinks
          << " offset=" << w.offset;
  }
}

TEST(SlidingWindowKernel, GptOssWindowWithLearnedSinks) {
  // gpt-oss: window 128 (left = 127, right = 0) on alternate layers, a learned sink logit per head.
  std::vector<float> sinks = {0.5f, -1.f, 2.f, 0.f, 1.5f, -0.5f, 3.f, 1.f};
  for (const Problem& p :
       {Problem{1, 8, 2, 300, 300, 64, 64}, Problem{1, 8, 2, 1, 3000, 64, 64}, Problem{1, 8, 4, 2, 2500, 64, 64}}) {
    const auto data = test::make_data(p, Layout::BSHD, p.seq_kv);
    Options opt = window(127, 0);
    opt.norm = SinkSoftmax{sinks.data()};
    EXPECT_TRUE(run_and_compare(data, opt)) << "sq=" << p.seq_q;
    opt.mask = SlidingWindowMask{127, 0, 4, 0};  // StreamingLLM sinks on top
    EXPECT_TRUE(run_and_compare(data, opt)) << "sq=" << p.seq_q;
  }
}

TEST(SlidingWindowKernel, Gemma2WindowWithSoftcap) {
  for (const Problem& p : {Problem{1, 4, 2, 260, 260, 64, 64}, Problem{1, 4, 1, 1, 2100, 64, 64}}) {
    const auto data = test::make_data(p, Layout::BSHD, 9, 3.f);
    Options opt = window(100, 0);
    opt.score.softcap = 50.f;
    EXPECT_TRUE(run_and_compare(data, opt)) << "sq=" << p.seq_q;
    opt.score.softcap = 2.f;
    EXPECT_TRUE(run_and_compare(data, opt)) << "sq=" << p.seq_q;
  }
}

TEST(SlidingWindowKernel, ComposesWithEveryNormalization) {
  // N_i (SSMax, affine-scaled) comes from the policy's count_visible.
  for (const Problem& p : {Problem{1, 2, 1, 150, 300, 32, 32}, Problem{1, 4, 1, 1, 2200, 32, 32}}) {
    const auto data = test::make_data(p, Layout::BSHD, 5);
    std::vector<float> s(4, 0.4f), sinks(4, 1.f);
    auto alpha = test::make_tensor({p.batch, p.seq_q, p.heads_q, 1}, 21, 0.2f, 1.2f);
    const std::vector<std::pair<std::string, NormSpec>> norms = {
        {"softmax", Softmax{}},
        {"sink", SinkSoftmax{sinks.data()}},
        {"sigmoid", Sigmoid{-3.f}},
        {"sigmoid_norm", Sigmoid{0.f, nullptr, true, 1e-6f}},
        {"softpick", Softpick{}},
        {"ssmax", ScalableSoftmax{s.data()}},
        {"affine", AffineScaled{alpha.cview(), {}, 1.f, false}}};
    for (const auto& [name, norm] : norms) {
      Options opt = window(70, 3, 5);
      opt.norm = norm;
      const bool lse = name != "sigmoid" && name != "sigmoid_norm" && name != "softpick";
      EXPECT_TRUE(run_and_compare(data, opt, Executor::serial(), lse)) << name << " sq=" << p.seq_q;
    }
  }
}

TEST(SlidingWindowKernel, FullyMaskedRowsGiveZeroAndMinusInf) {
  // Sq > Skv with right = 0: rows with p_i < 0 see nothing (no sinks either: j <= p_i + right).
  const auto data = test::make_data(Problem{1, 2, 1, 130, 65, 16, 16});
  test::Out out = test::make_out(data.p, Layout::BSHD, true);
  Options opt = window(10, 0, 4);
  opt.lse = out.lse;
  ASSERT_TRUE(forward(data.p, data.q, data.k, data.v, out.o, opt).ok());
  EXPECT_TRUE(test::matches_reference(data, opt, out));
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < 65; ++i) {
      EXPECT_EQ(out.lse(0, h, i, 0), -std::numeric_limits<float>::infinity());
      for (index_t x = 0; x < 16; ++x) EXPECT_EQ(out.o(0, i, h, x), 0.f);
    }
}

TEST(SlidingWindowKernel, OneAndTwoThreadsBitIdentical) {
  for (const Problem& p : {Problem{2, 4, 2, 300, 700, 64, 64}, Problem{1, 8, 2, 1, 5000, 64, 64}}) {
    const auto data = test::make_data(p, Layout::BSHD, 77);
    EXPECT_TRUE(threads_agree(data, window(200, 0, 4)));
  }
}

Options blocks(index_t size, std::vector<index_t> bounds = {}, index_t globals = 0, bool last_all = false,
               bool causal = false, index_t offset = 0) {
  Options o;
  BlockMask m;
  m.block_size = size;
  m.boundaries = std::move(bounds);
  m.global_keys = globals;
  m.last_block_attends_all = last_all;
  m.causal = causal;
  m.offset = offset;
  o.mask = m;
  return o;
}

TEST(BlockKernel, PrefillEqualAndRaggedBlocks) {
  const std::vector<std::pair<index_t, index_t>> shapes = {{65, 130}, {130, 65}, {200, 200}, {113, 203}};
  for (auto [sq, skv] : shapes) {
    const auto data = test::make_data(Problem{1, 2, 1, sq, skv, 32, 32}, Layout::BSHD, sq * 5 + skv);
    for (int flags = 0; flags < 4; ++flags) {
      const bool last_all = flags & 1, causal = flags & 2;
      for (index_t globals : {0, 4, 100}) {
        SCOPED_TRACE(::testing::Message() << "sq=" << sq << " skv=" << skv << " last_all=" << last_all
                                          << " causal=" << causal << " globals=" << globals);
        EXPECT_TRUE(run_and_compare(data, blocks(64, {}, globals, last_all, causal)));
        EXPECT_TRUE(run_and_compare(data, blocks(17, {}, globals, last_all, causal, -5)));
        EXPECT_TRUE(run_and_compare(data, blocks(1000, {}, globals, last_all, causal)));
        // RAG passages of varying length.
        EXPECT_TRUE(run_and_compare(data, blocks(0, {0, 7, 8, 50, 130, 131, 190}, globals, last_all, causal)));
        EXPECT_TRUE(run_and_compare(data, blocks(0, {0, 64, 128}, globals, last_all, causal, 3)));
      }
    }
  }
}

TEST(BlockKernel, DecodeAcrossSplits) {
  for (auto [sq, group] : std::vector<std::pair<index_t, index_t>>{{1, 4}, {2, 4}}) {
    const Problem p{1, 2 * group, 2, sq, 5000, 64, 64};
    ASSERT_TRUE(detail::use_decode(p));
    const auto data = test::make_data(p, Layout::BSHD, 200 + sq);
    EXPECT_TRUE(run_and_compare(data, blocks(1024, {}, 4)));
    EXPECT_TRUE(run_and_compare(data, blocks(300, {}, 0, false, true)));
    EXPECT_TRUE(run_and_compare(data, blocks(0, {0, 100, 2000, 4999}, 1500, false, true)));
    EXPECT_TRUE(run_and_compare(data, blocks(0, {0, 100, 2000, 4000}, 3, true, false)));
    EXPECT_TRUE(run_and_compare(data, blocks(64, {}, 0, false, false, -6000)));  // fully masked rows
  }
}

TEST(BlockKernel, ComposesWithSinksGateAndNorms) {
  // Block + learned sinks + gate (issue 6 item 4), and the N_i-dependent normalizations.
  const Problem p{1, 4, 2, 200, 200, 32, 32};
  const auto data = test::make_data(p, Layout::BSHD, 31);
  expect_composes_with_norms(data, blocks(0, {0, 30, 90, 150}, 4, true, true));
}

TEST(BlockKernel, OneAndTwoThreadsBitIdentical) {
  for (const Problem& p : {Problem{2, 4, 2, 300, 700, 64, 64}, Problem{1, 8, 2, 1, 5000, 64, 64}}) {
    const auto data = test::make_data(p, Layout::BSHD, 78);
    EXPECT_TRUE(threads_agree(data, blocks(0, {0, 100, 250, 600}, 4, true, false)));
  }
}

// Task order (detail::block_heads_inner, kernel/config.hpp): heads innermost while a query
// tile's keys over all KV heads fit in half of this core's L2, not with the last block
// attending to all; both orders agree with the reference and across thread counts.
TEST(BlockKernel, BothTaskOrdersAgreeWithTheReference) {
  const auto mask_of = [](const Options& o) { return std::get<BlockMask>(o.mask); };
  // 64 keys x (32 + 32) floats x 2 KV heads = 32 KiB per tile: inner.
  const Problem small{2, 4, 2, 300, 300, 32, 32};
  EXPECT_TRUE(detail::block_heads_inner(mask_of(blocks(64)), small));
  EXPECT_FALSE(detail::block_heads_inner(mask_of(blocks(64, {}, 0, true)), small));
  // Ragged blocks count the longest one (here 150 keys: inner).
  EXPECT_TRUE(detail::block_heads_inner(mask_of(blocks(0, {0, 100, 250})), small));
  // A block whose keys over both KV heads fill the whole L2: outer.
  const auto fill = static_cast<index_t>(detail::l2_cache_bytes() / ((32 + 32) * sizeof(float) * 2));
  const Problem large{1, 4, 2, 300, fill + 64, 32, 32};
  EXPECT_FALSE(detail::block_heads_inner(mask_of(blocks(fill)), large));
  for (const Problem& p : {small, large}) {
    const auto data = test::make_data(p, Layout::BSHD, 91);
    const Options o = blocks(p.seq_kv == 300 ? 64 : fill, {}, 4, false, true);
    SCOPED_TRACE(::testing::Message() << "Skv=" << p.seq_kv);
    EXPECT_TRUE(run_and_compare(data, o));
    EXPECT_TRUE(threads_agree(data, o));
  }
}

// CSR lists for B x Hq x n_q_blocks rows: a deterministic pattern with empty rows (fully
// masked query blocks), the diagonal block, and a few others.
struct Lists {
  std::vector<index_t> offsets{0}, indices;
};

Lists make_lists(const Problem& p, index_t qblk, index_t kvblk) {
  Lists l;
  const index_t nqb = (p.seq_q + qblk - 1) / qblk, nkb = (p.seq_kv + kvblk - 1) / kvblk;
  for (index_t r = 0; r < p.batch * p.heads_q * nqb; ++r) {
    if (r % 5 != 3) {
      const index_t qb = r % nqb;
      for (index_t kb = 0; kb < nkb; ++kb)
        if (kb == std::min(qb * qblk / kvblk, nkb - 1) || (kb * 7 + r) % 4 == 0) l.indices.push_back(kb);
    }
    l.offsets.push_back(static_cast<index_t>(l.indices.size()));
  }
  return l;
}

Options sparse(const Lists& l, index_t qblk, index_t kvblk, bool element = false) {
  Options o;
  BlockSparseMask m{qblk, kvblk, l.offsets.data(), l.indices.data(), {}};
  if (element) m.element_mask = [](index_t b, index_t h, index_t i, index_t j) { return (i + 2 * j + h + b) % 3 != 0; };
  o.mask = m;
  return o;
}

TEST(BlockSparseKernel, PrefillAndDecodeShapes) {
  // Decode shapes (Sq * group <= 8) take the prefill loop: the lists differ per head.
  for (const Problem& p : {Problem{2, 4, 2, 200, 300, 32, 32}, Problem{1, 2, 1, 130, 65, 16, 16},
                           Problem{1, 8, 2, 1, 3000, 64, 64}, Problem{2, 4, 1, 2, 1500, 64, 64}}) {
    const auto data = test::make_data(p, Layout::BSHD, p.seq_q + p.seq_kv);
    for (auto [qblk, kvblk] : std::vector<std::pair<index_t, index_t>>{{64, 64}, {16, 16}, {48, 100}, {1, 128}})
      for (bool element : {false, true}) {
        const Lists l = make_lists(p, qblk, kvblk);
        EXPECT_TRUE(run_and_compare(data, sparse(l, qblk, kvblk, element)))
            << "sq=" << p.seq_q << " skv=" << p.seq_kv << " qblk=" << qblk << " kvblk=" << kvblk
            << " element=" << element;
      }
  }
}

TEST(BlockSparseKernel, ComposesWithSinksGateAndNorms) {
  const Problem p{1, 4, 2, 200, 200, 32, 32};
  const auto data = test::make_data(p, Layout::BSHD, 41);
  const Lists l = make_lists(p, 32, 32);
  expect_composes_with_norms(data, sparse(l, 32, 32, true));
}

TEST(BlockSparseKernel, OneAndTwoThreadsBitIdentical) {
  for (const Problem& p : {Problem{2, 4, 2, 300, 700, 64, 64}, Problem{1, 8, 2, 1, 3000, 64, 64}}) {
    const auto data = test::make_data(p, Layout::BSHD, 79);
    const Lists l = make_lists(p, 64, 64);
    EXPECT_TRUE(threads_agree(data, sparse(l, 64, 64)));
  }
}

TEST(NeighborhoodKernel, OneTwoThreeDAgainstTheReference) {
  std::vector<NeighborhoodMask> cases = {
      {1, {200, 1, 1}, {7, 1, 1}, {1, 1, 1}, {1, 1, 1}, {false, false, false}},
      {1, {130, 1, 1}, {6, 1, 1}, {3, 1, 1}, {2, 1, 1}, {true, false, false}},
      {2, {16, 20, 1}, {5, 4, 1}, {1, 2, 1}, {1, 1, 1}, {false, true, false}},
      {2, {24, 24, 1}, {8, 8, 1}, {1, 1, 1}, {8, 8, 1}, {false, false, false}},  // blocked
      {3, {6, 8, 10}, {3, 3, 5}, {2, 1, 1}, {1, 3, 1}, {false, true, false}},
  };
  for (const auto& m : cases) {
    index_t n = 1;
    for (int d = 0; d < m.rank; ++d) n *= m.extent[d];
    const auto data = test::make_data(Problem{1, 2, 1, n, n, 32, 32}, Layout::BSHD, static_cast<std::uint64_t>(n));
    Options opt;
    opt.mask = m;
    EXPECT_TRUE(run_and_compare(data, opt)) << "rank=" << m.rank << " n=" << n;
    std::vector<float> s(2, 0.5f);
    opt.norm = Sigmoid{-2.f};  // neighborhood + sigmoid (issue 6 item 4)
    EXPECT_TRUE(run_and_compare(data, opt, Executor::serial(), false)) << "rank=" << m.rank << " n=" << n;
    opt.norm = ScalableSoftmax{s.data()};
    EXPECT_TRUE(run_and_compare(data, opt, test::thread_executor(2))) << "rank=" << m.rank << " n=" << n;
  }
}

}  // namespace
}  // namespace sinkattn
