// Issue 6: block-sparse lists walked directly (BlockSparseView::for_each_block) and the MoBA
// selector (policy/moba.hpp).
//   - for_each_block against visible(i, j) over all pairs (check_mask): unsorted, repeated and
//     empty lists, list blocks 16/48/64/100 under the kernel's 64 x 64 tiles, an element mask,
//     the recognised causal element mask; the visited keys are exactly the listed ones;
//   - MoBA: the selection against a naive one computed here in double (mean over the query
//     rows of the per-row scores, not the selector's pooled query), the kernel against the fp64
//     reference with that selection, the causal fast path bit-identical to the same predicate
//     as an opaque element mask, 1 and 2 threads bit-identical, errors that name the argument.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "forward_check.hpp"
#include "harness.hpp"
#include "mask_properties.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "sinkattn/policy/mask_block_sparse.hpp"
#include "sinkattn/policy/moba.hpp"
#include "threads.hpp"

namespace sinkattn {
namespace {

using policy::BlockKind;
using test::Layout;
using test::run_and_compare;

std::uint64_t next(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct Csr {
  std::vector<index_t> offsets{0}, indices;
};

// Lists in random order with repeats; every 7th row empty; density in percent of the key blocks.
Csr messy_lists(index_t rows, index_t nkb, std::uint64_t seed, int density) {
  Csr c;
  std::uint64_t s = seed;
  for (index_t r = 0; r < rows; ++r) {
    std::vector<index_t> row;
    if (r % 7 != 5) {
      for (index_t kb = 0; kb < nkb; ++kb)
        if (static_cast<int>(next(s) % 100) < density) row.push_back(kb);
      const std::size_t n = row.size();
      for (std::size_t e = 0; e < n; e += 3) row.push_back(row[e]);                          // repeats
      for (std::size_t e = row.size(); e > 1; --e) std::swap(row[e - 1], row[next(s) % e]);  // shuffle
    }
    c.indices.insert(c.indices.end(), row.begin(), row.end());
    c.offsets.push_back(static_cast<index_t>(c.indices.size()));
  }
  return c;
}

policy::BlockSparseMaskPolicy policy_of(const BlockSparseMask& m, index_t sq, index_t skv, index_t heads) {
  return {sq, skv, heads, m.q_block, m.kv_block, m.offsets, m.indices, m.element_mask ? &m.element_mask : nullptr};
}

TEST(BlockSparseForEachBlock, AgreesWithVisibleOverAllPairs) {
  const std::vector<std::pair<index_t, index_t>> shapes = {{1, 1}, {64, 64}, {130, 300}, {200, 129}, {257, 400}};
  const index_t list_blocks[] = {16, 48, 64, 100};
  const index_t B = 1, H = 2;
  for (auto [sq, skv] : shapes)
    for (index_t kvblk : list_blocks)
      for (index_t qblk : {kvblk, index_t(37)})
        for (int density : {0, 25, 100})
          for (int element : {0, 1, 2}) {  // none, an opaque element mask, the causal element mask
            const index_t nqb = (sq + qblk - 1) / qblk, nkb = (skv + kvblk - 1) / kvblk;
            const Csr csr =
                messy_lists(B * H * nqb, nkb, static_cast<std::uint64_t>(sq * 7919 + skv * 31 + kvblk), density);
            BlockSparseMask m{qblk, kvblk, csr.offsets.data(), csr.indices.data(), {}};
            if (element == 1)
              m.element_mask = [](index_t b, index_t h, index_t i, index_t j) {
                return (i * 5 + j * 3 + h + b) % 4 != 0;
              };
            if (element == 2) m.element_mask = CausalElementMask{skv - sq};
            const auto pol = policy_of(m, sq, skv, H);
            SCOPED_TRACE(::testing::Message()
                         << "qblk=" << qblk << " kvblk=" << kvblk << " density=" << density << " element=" << element);
            const auto v = pol.bind(0, 1);  // head 1: its lists start past head 0's
            ASSERT_EQ(v.causal, element == 2) << "CausalElementMask recognised in bind()";
            test::check_mask(v, MaskSpec{m}, sq, skv, 64, 64, B, H, 0, 1);  // the kernel's tiles
            if (sq < 257) test::check_mask(v, MaskSpec{m}, sq, skv, 16, 16, B, H, 0, 1);
            if (::testing::Test::HasFatalFailure()) return;
          }
}

// The loop visits the listed keys and nothing else: per query tile, the visited keys are the
// union of the tile's lists (clipped to Skv), each once.
TEST(BlockSparseForEachBlock, VisitsExactlyTheListedKeys) {
  const index_t sq = 300, skv = 1000;
  for (index_t kvblk : {16, 48, 64, 100}) {
    const index_t qblk = 48, nqb = (sq + qblk - 1) / qblk, nkb = (skv + kvblk - 1) / kvblk;
    const Csr csr = messy_lists(nqb, nkb, 5 + static_cast<std::uint64_t>(kvblk), 30);
    const BlockSparseMask m{qblk, kvblk, csr.offsets.data(), csr.indices.data(), {}};
    const auto v = policy_of(m, sq, skv, 1).bind(0, 0);
    for (index_t i0 = 0; i0 < sq; i0 += 64) {
      const index_t i1 = std::min(sq, i0 + 64);
      std::set<index_t> want;
      for (index_t qb = i0 / qblk; qb <= (i1 - 1) / qblk; ++qb)
        for (index_t e = csr.offsets[qb]; e < csr.offsets[qb + 1]; ++e)
          for (index_t j = csr.indices[e] * kvblk; j < std::min(skv, (csr.indices[e] + 1) * kvblk); ++j) want.insert(j);
      std::set<index_t> got;
      index_t pieces = 0;
      v.for_each_block(i0, i1, 64, [&](index_t j0, index_t j1, BlockKind) {
        ++pieces;
        for (index_t j = j0; j < j1; ++j) EXPECT_TRUE(got.insert(j).second) << "key " << j << " visited twice";
      });
      EXPECT_EQ(got, want) << "kvblk=" << kvblk << " i0=" << i0;
      EXPECT_LE(pieces, static_cast<index_t>(want.size() + 63) / 64 + static_cast<index_t>(want.size()) / kvblk + 1);
    }
  }
}

// Tile-aligned lists in a long sequence: one listed block -> one Full piece, whatever Skv.
TEST(BlockSparseForEachBlock, CostFollowsTheListsNotTheSequence) {
  const index_t s = 1 << 16, n = s / 256;
  std::vector<index_t> offsets{0}, indices;
  for (index_t qb = 0; qb < n; ++qb) {
    indices.push_back((qb * 37) % n);
    indices.push_back((qb * 37) % n);  // a repeat
    offsets.push_back(static_cast<index_t>(indices.size()));
  }
  const policy::BlockSparseMaskPolicy pol{s, s, 1, 256, 256, offsets.data(), indices.data(), nullptr};
  const auto v = pol.bind(0, 0);
  for (index_t qb = 0; qb < n; qb += 17) {
    std::vector<index_t> starts;
    v.for_each_block(qb * 256 + 64, qb * 256 + 128, 64, [&](index_t j0, index_t j1, BlockKind k) {
      EXPECT_EQ(k, BlockKind::full);
      EXPECT_EQ(j1 - j0, 64);
      starts.push_back(j0);
    });
    const index_t kb = (qb * 37) % n;
    EXPECT_EQ(starts, (std::vector<index_t>{kb * 256, kb * 256 + 64, kb * 256 + 128, kb * 256 + 192}));
  }
}

TEST(BlockSparseKernel, MessyListsAgainstTheReference) {
  for (const Problem& p : {Problem{1, 2, 1, 200, 300, 33, 33}, Problem{2, 2, 2, 70, 500, 64, 64}}) {
    const auto data = test::make_data(p, Layout::BSHD, static_cast<std::uint64_t>(p.seq_q));
    for (index_t kvblk : {16, 48, 64, 100})
      for (bool element : {false, true}) {
        const index_t qblk = 48, nqb = (p.seq_q + qblk - 1) / qblk, nkb = (p.seq_kv + kvblk - 1) / kvblk;
        const Csr csr = messy_lists(p.batch * p.heads_q * nqb, nkb, 11 + static_cast<std::uint64_t>(kvblk), 35);
        Options opt;
        BlockSparseMask m{qblk, kvblk, csr.offsets.data(), csr.indices.data(), {}};
        if (element) m.element_mask = CausalElementMask{p.seq_kv - p.seq_q - 20};
        opt.mask = m;
        EXPECT_TRUE(run_and_compare(data, opt)) << "kvblk=" << kvblk << " element=" << element;
      }
  }
}

// ---- MoBA ------------------------------------------------------------------------------------

// The naive selection, in double, written from the definition: score(kb) = mean over the rows
// of the query block of q_i . mean(k over block kb).
struct Naive {
  std::vector<index_t> own;
  std::vector<std::pair<index_t, double>> cand;  // (block, score)
};

Naive naive_row(const test::Data& d, const MobaOptions& o, index_t b, index_t h, index_t qb) {
  const Problem& p = d.p;
  const index_t blk = o.block, nkb = (p.seq_kv + blk - 1) / blk, shift = p.seq_kv - p.seq_q;
  const index_t r0 = qb * blk, r1 = std::min(p.seq_q, r0 + blk), g = p.kv_head(h);
  Naive n;
  std::set<index_t> own;
  for (index_t i = r0; i < r1; ++i) {
    const index_t pos = i + shift;
    if (pos >= 0 && pos < p.seq_kv) own.insert(pos / blk);
  }
  n.own.assign(own.begin(), own.end());
  for (index_t kb = 0; kb < nkb; ++kb) {
    if (own.count(kb)) continue;
    if (o.causal && (own.empty() || r0 + shift < 0 || kb >= *own.begin())) continue;
    const index_t j0 = kb * blk, j1 = std::min(p.seq_kv, j0 + blk);
    double total = 0;
    for (index_t i = r0; i < r1; ++i) {
      double s = 0;
      for (index_t dd = 0; dd < p.dim_qk; ++dd) {
        double mk = 0;
        for (index_t j = j0; j < j1; ++j) mk += d.k(b, j, g, dd);
        s += static_cast<double>(d.q(b, i, h, dd)) * (mk / static_cast<double>(j1 - j0));
      }
      total += s;
    }
    n.cand.emplace_back(kb, total / static_cast<double>(r1 - r0));
  }
  return n;
}

// The selector's lists against the naive selection: own blocks always in, exactly
// min(top_k, candidates) candidates, and no unselected candidate scores higher than a selected
// one (up to rounding: near-ties may go either way).
void expect_selection(const test::Data& d, const MobaOptions& o, const MobaSelection& sel) {
  const Problem& p = d.p;
  const index_t nqb = (p.seq_q + o.block - 1) / o.block;
  ASSERT_EQ(sel.offsets.size(), static_cast<std::size_t>(p.batch * p.heads_q * nqb + 1));
  for (index_t b = 0; b < p.batch; ++b)
    for (index_t h = 0; h < p.heads_q; ++h)
      for (index_t qb = 0; qb < nqb; ++qb) {
        SCOPED_TRACE(::testing::Message() << "b=" << b << " h=" << h << " qb=" << qb);
        const index_t r = (b * p.heads_q + h) * nqb + qb;
        const std::vector<index_t> got(sel.indices.begin() + sel.offsets[r], sel.indices.begin() + sel.offsets[r + 1]);
        ASSERT_TRUE(std::is_sorted(got.begin(), got.end()));
        ASSERT_EQ(std::adjacent_find(got.begin(), got.end()), got.end()) << "a repeated block";
        const Naive n = naive_row(d, o, b, h, qb);
        for (index_t kb : n.own) ASSERT_TRUE(std::binary_search(got.begin(), got.end(), kb)) << "own block " << kb;
        double lo = std::numeric_limits<double>::infinity(), hi = -lo;
        index_t picked = 0;
        for (auto [kb, s] : n.cand) {
          if (std::binary_search(got.begin(), got.end(), kb)) {
            ++picked;
            lo = std::min(lo, s);
          } else {
            hi = std::max(hi, s);
          }
        }
        ASSERT_EQ(picked + static_cast<index_t>(n.own.size()), static_cast<index_t>(got.size()))
            << "a block that is neither own nor a candidate (a future block under causal?)";
        ASSERT_EQ(picked, std::min<index_t>(o.top_k, static_cast<index_t>(n.cand.size())));
        if (picked > 0) {
          ASSERT_GE(lo, hi - 1e-9 * (1 + std::abs(hi))) << "a better block left out";
        }
      }
}

struct MobaCase {
  Problem p;
  MobaOptions o;
};

const std::vector<MobaCase> kMobaCases = {
    {{1, 4, 2, 300, 300, 33, 33}, {64, 2, true}},     // odd D, GQA, Sq not a multiple of the block
    {{2, 2, 1, 200, 260, 17, 24}, {48, 3, true}},     // Skv - Sq = 60: rows straddle two own blocks
    {{1, 2, 2, 130, 130, 64, 64}, {16, 3, false}},    // non-causal
    {{1, 4, 1, 1, 500, 32, 32}, {64, 2, true}},       // one decode row (prefill loop, see the header)
    {{1, 2, 1, 150, 100, 16, 16}, {32, 1, true}},     // Sq > Skv: the first rows see no key
    {{1, 2, 2, 257, 257, 40, 40}, {100, 0, true}},    // top_k = 0: own blocks only
    {{1, 3, 3, 200, 200, 24, 24}, {64, 10, true}},    // top_k above the candidates: all the past
    {{1, 8, 2, 640, 640, 128, 128}, {128, 2, true}},  // tile-aligned blocks
};

TEST(Moba, SelectionMatchesTheNaiveSelection) {
  for (const auto& c : kMobaCases) {
    SCOPED_TRACE(::testing::Message() << "Sq=" << c.p.seq_q << " Skv=" << c.p.seq_kv << " block=" << c.o.block
                                      << " top_k=" << c.o.top_k << " causal=" << c.o.causal);
    const auto data = test::make_data(c.p, Layout::BHSD, static_cast<std::uint64_t>(c.p.seq_kv + c.o.block));
    MobaSelection sel;
    ASSERT_TRUE(moba_select(data.q, data.k, c.o, sel).ok());
    EXPECT_EQ(sel.block, c.o.block);
    expect_selection(data, c.o, sel);
  }
}

TEST(Moba, KernelMatchesTheReferenceWithTheSelection) {
  for (const auto& c : kMobaCases) {
    SCOPED_TRACE(::testing::Message() << "Sq=" << c.p.seq_q << " Skv=" << c.p.seq_kv << " block=" << c.o.block
                                      << " top_k=" << c.o.top_k << " causal=" << c.o.causal);
    const auto data = test::make_data(c.p, Layout::BSHD, static_cast<std::uint64_t>(c.p.seq_q * 3 + c.o.top_k));
    MobaSelection sel;
    ASSERT_TRUE(moba_select(data.q, data.k, c.o, sel).ok());
    Options opt;
    opt.mask = sel.mask();
    EXPECT_TRUE(run_and_compare(data, opt));
    // The same causal predicate as an opaque std::function (every block Partial, a call per
    // pair) gives the same bits as the recognised CausalElementMask (key cap, Full blocks).
    if (c.o.causal) {
      test::Out fast = test::make_out(c.p, Layout::BSHD, true), slow = test::make_out(c.p, Layout::BSHD, true);
      Options o1 = opt, o2 = opt;
      o1.lse = fast.lse;
      o2.lse = slow.lse;
      auto m = sel.mask();
      const index_t shift = sel.shift;
      m.element_mask = [shift](index_t, index_t, index_t i, index_t j) { return j <= i + shift; };
      o2.mask = m;
      ASSERT_TRUE(forward(c.p, data.q, data.k, data.v, fast.o, o1).ok());
      ASSERT_TRUE(forward(c.p, data.q, data.k, data.v, slow.o, o2).ok());
      EXPECT_TRUE(test::bit_identical(fast.obuf, slow.obuf));
      EXPECT_TRUE(test::bit_identical(fast.lsebuf, slow.lsebuf));
    }
  }
}

TEST(Moba, OneAndTwoThreadsBitIdentical) {
  const Problem p{2, 4, 2, 600, 600, 64, 64};
  const auto data = test::make_data(p, Layout::BSHD, 97);
  MobaSelection sel;
  ASSERT_TRUE(moba_select(data.q, data.k, {128, 2, true}, sel).ok());
  Options opt;
  opt.mask = sel.mask();
  test::Out one = test::make_out(p, Layout::BSHD, true), two = test::make_out(p, Layout::BSHD, true);
  Options o2 = opt;
  opt.lse = one.lse;
  o2.lse = two.lse;
  ASSERT_TRUE(forward(p, data.q, data.k, data.v, one.o, opt).ok());
  ASSERT_TRUE(forward(p, data.q, data.k, data.v, two.o, o2, test::thread_executor(2)).ok());
  EXPECT_TRUE(test::bit_identical(one.obuf, two.obuf));
  EXPECT_TRUE(test::bit_identical(one.lsebuf, two.lsebuf));
  EXPECT_TRUE(test::matches_reference(data, opt, one));
}

TEST(Moba, ErrorsNameTheArgument) {
  const auto data = test::make_data(Problem{1, 4, 2, 50, 60, 16, 16});
  MobaSelection sel;
  sel.block = 7;  // untouched on error
  const auto expect = [&](const TensorView<const float>& q, const TensorView<const float>& k, MobaOptions o, Errc code,
                          const std::string& what) {
    const Status s = moba_select(q, k, o, sel);
    EXPECT_EQ(s.code(), code) << s.message();
    EXPECT_NE(s.message().find(what), std::string::npos) << s.message();
    EXPECT_EQ(sel.block, 7);
  };
  expect(data.q, data.k, {0, 2, true}, Errc::out_of_range, "moba.block");
  expect(data.q, data.k, {-4, 2, true}, Errc::out_of_range, "moba.block");
  // (once accepted: the key block count wrapped around to 0 and the pooled keys were read)
  expect(data.q, data.k, {std::numeric_limits<index_t>::max(), 2, true}, Errc::out_of_range, "moba.block");
  expect(data.q, data.k, {16, -1, true}, Errc::out_of_range, "moba.top_k");
  auto k = data.k;
  k.shape[0] = 2;
  expect(data.q, k, {16, 1, true}, Errc::shape_mismatch, "k: shape[0]");
  k = data.k;
  k.shape[3] = 8;
  expect(data.q, k, {16, 1, true}, Errc::shape_mismatch, "k: shape[3]");
  k = data.k;
  k.shape[2] = 3;
  expect(data.q, k, {16, 1, true}, Errc::heads_not_divisible, "heads");
  auto q = data.q;
  q.data = nullptr;
  expect(q, data.k, {16, 1, true}, Errc::null_data, "q:");
}

}  // namespace
}  // namespace sinkattn
