// sinkattn::sink_mass (kernel/sink_mass.hpp) against reference::sink_mass under the harness's
// tolerance rule (|ours - ref64| <= 2 |ref32 - ref64| + atol, ref32 = the reference in
// float): shapes that straddle the SIMD width and the tiles, odd head dims, GQA, every mask
// kind, the learned sink, score modifiers, both layouts, huge logits, rows that see nothing,
// empty problems, thread-count determinism and the argument checks.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "harness.hpp"
#include "segments.hpp"
#include "sinkattn/kernel/sink_mass.hpp"
#include "sinkattn/reference/sinks.hpp"
#include "threads.hpp"

namespace sinkattn {
namespace test {
namespace {

struct MassOut {
  Status status;
  std::vector<float> mass, alpha;
};

// cache_floats: how many floats of first-sweep scores a task may keep (sink_mass's own
// choice, none: every tile recomputes them, or a few blocks: the longer tiles recompute).
// segs: the keys as these segments of d's K instead of d.k.
MassOut run_mass(const Data& d, const Options& opt, const Executor& ex = Executor::serial(),
                 index_t cache_floats = sinkattn::detail::kMassCacheFloats, const Segmented* segs = nullptr) {
  const Problem& p = d.p;
  MassOut r;
  const auto n = static_cast<size_t>(p.batch * p.heads_q * p.seq_kv);
  r.mass.assign(n, std::nan(""));
  r.alpha.assign(n, std::nan(""));
  const auto mass = TensorView<float>::lse(r.mass.data(), p.batch, p.heads_q, p.seq_kv);
  const auto alpha = TensorView<float>::lse(r.alpha.data(), p.batch, p.heads_q, p.seq_kv);
  const auto nseg = segs ? static_cast<index_t>(segs->seg.size()) : 0;
  if (cache_floats == sinkattn::detail::kMassCacheFloats)
    r.status = segs ? sink_mass(p, d.q, segs->seg.data(), nseg, mass, alpha, opt, ex)
                    : sink_mass(p, d.q, d.k, mass, alpha, opt, ex);
  else
    r.status = sinkattn::detail::sink_mass_impl(
        p, d.q, segs ? sinkattn::detail::MassKeys{{}, true, segs->seg.data(), nseg} : sinkattn::detail::MassKeys{d.k},
        mass, alpha, opt, ex, cache_floats);
  return r;
}

::testing::AssertionResult matches_reference(const Data& d, const Options& opt, double atol = 1e-5,
                                             const Segmented* segs = nullptr) {
  const Problem& p = d.p;
  const auto n = static_cast<size_t>(p.batch * p.heads_q * p.seq_kv);
  std::vector<double> m64(n), a64(n);
  std::vector<float> m32(n), a32(n);
  const Status s64 =
      reference::sink_mass<double>(p, d.q, d.k, opt, TensorView<double>::lse(m64.data(), p.batch, p.heads_q, p.seq_kv),
                                   TensorView<double>::lse(a64.data(), p.batch, p.heads_q, p.seq_kv));
  const Status s32 =
      reference::sink_mass<float>(p, d.q, d.k, opt, TensorView<float>::lse(m32.data(), p.batch, p.heads_q, p.seq_kv),
                                  TensorView<float>::lse(a32.data(), p.batch, p.heads_q, p.seq_kv));
  if (!s64.ok() || !s32.ok()) return ::testing::AssertionFailure() << "reference: " << s64.message();
  static const char* const kNames[4] = {"b", "h", "j", "_"};
  std::ostringstream msg;
  bool ok = true;
  const auto view = [&](const std::vector<float>& v) {
    return TensorView<const float>::lse(v.data(), p.batch, p.heads_q, p.seq_kv);
  };
  // Sweep 2 from the cached scores, from recomputed ones, and a mix (two blocks cached).
  const index_t two_blocks = 2 * (sinkattn::detail::kBlockKV * sinkattn::detail::kBlockQ + sinkattn::detail::kBlockQ);
  for (const index_t cache : {sinkattn::detail::kMassCacheFloats, index_t{0}, two_blocks}) {
    const MassOut ours = run_mass(d, opt, Executor::serial(), cache, segs);
    if (!ours.status.ok()) return ::testing::AssertionFailure() << "sink_mass: " << ours.status.message();
    msg << "(cache " << cache << " floats)\n";
    detail::compare("mass", view(ours.mass), TensorView<double>::lse(m64.data(), p.batch, p.heads_q, p.seq_kv),
                    TensorView<float>::lse(m32.data(), p.batch, p.heads_q, p.seq_kv), atol, kNames, msg, ok);
    detail::compare("alpha", view(ours.alpha), TensorView<double>::lse(a64.data(), p.batch, p.heads_q, p.seq_kv),
                    TensorView<float>::lse(a32.data(), p.batch, p.heads_q, p.seq_kv), atol, kNames, msg, ok);
  }
  if (!ok) return ::testing::AssertionFailure() << msg.str();
  return ::testing::AssertionSuccess();
}

std::vector<MaskSpec> masks_for(const Problem& p) {
  std::vector<MaskSpec> m = {FullMask{}, CausalMask{}, SlidingWindowMask{20, 0, 3, 0}};
  BlockMask ragged;
  ragged.boundaries = {0, 5, 40, 41};
  ragged.global_keys = 2;
  ragged.causal = true;
  if (p.seq_q == p.seq_kv && p.seq_kv > 41) m.emplace_back(std::move(ragged));
  BlockMask equal;
  equal.block_size = 16;
  equal.last_block_attends_all = true;
  m.emplace_back(std::move(equal));
  return m;
}

// Every normalization of the fast path: the softmax family, sigmoid with and without its row
// normalization, softpick, scalable softmax, affine-scaled with given and derived beta.
std::vector<NormSpec> all_norms(const Problem& p, std::vector<float>& params) {
  const index_t rows = p.batch * p.seq_q * p.heads_q;
  params.assign(static_cast<size_t>(2 * rows + 2 * p.heads_q), 0.f);
  float* alpha = params.data();
  float* beta = alpha + rows;
  float* sinks = beta + rows;
  float* svals = sinks + p.heads_q;
  for (index_t n = 0; n < rows; ++n) alpha[n] = 0.5f + 0.05f * float(n % 7), beta[n] = 0.01f * float(n % 5);
  for (index_t h = 0; h < p.heads_q; ++h) {
    sinks[h] = h % 4 == 3 ? -std::numeric_limits<float>::infinity() : 0.5f - 1.5f * float(h % 4) + 2.f * float(h % 2);
    svals[h] = 0.7f + 0.2f * float(h % 3);
  }
  std::vector<NormSpec> norms = {
      Softmax{},  SinkSoftmax{sinks},    Sigmoid{-0.5f, nullptr, false, 0.f}, Sigmoid{0.25f, sinks, true, 1e-3f},
      Softpick{}, ScalableSoftmax{svals}};
  AffineScaled given;
  given.alpha = TensorView<const float>::bshd(alpha, p.batch, p.seq_q, p.heads_q, 1);
  given.beta = TensorView<const float>::bshd(beta, p.batch, p.seq_q, p.heads_q, 1);
  norms.push_back(given);
  AffineScaled derived;
  derived.alpha = given.alpha;
  derived.alpha_ma = 0.8f;
  derived.beta_over_skv = true;
  norms.push_back(derived);
  return norms;
}

TEST(SinkMass, ShapesMasksAndNormalizationsMatchTheReference) {
  const std::vector<std::pair<index_t, index_t>> lengths = {{1, 1}, {15, 17}, {17, 15}, {64, 64}, {65, 130}, {130, 65}};
  for (const auto& [sq, skv] : lengths)
    for (const index_t dqk : {13, 64}) {
      const Problem p{2, 4, 2, sq, skv, dqk, 3};
      const auto d = make_data(p, Layout::BSHD, static_cast<std::uint64_t>(sq * 131 + skv + dqk));
      std::vector<float> params;
      const std::vector<NormSpec> norms = all_norms(p, params);
      for (const MaskSpec& mask : masks_for(p))
        for (size_t n = 0; n < norms.size(); ++n) {
          Options opt;
          opt.mask = mask;
          opt.norm = norms[n];
          EXPECT_TRUE(matches_reference(d, opt))
              << "Sq " << sq << " Skv " << skv << " D " << dqk << " mask " << mask.index() << " norm " << n;
        }
    }
}

TEST(SinkMass, NeighborhoodAndBlockSparseMasks) {
  {
    const Problem p{1, 2, 1, 8 * 9, 3 + 8 * 9, 16, 4};
    const auto d = make_data(p, Layout::BSHD, 21);
    NeighborhoodMask na;
    na.rank = 2;
    na.extent = {8, 9, 1};
    na.kernel = {3, 5, 1};
    na.dilation = {2, 1, 1};
    na.causal = {true, false, false};
    na.extra_keys = 3;
    Options opt;
    opt.mask = na;
    EXPECT_TRUE(matches_reference(d, opt));
  }
  {
    const Problem p{2, 2, 2, 100, 90, 8, 4};
    const auto d = make_data(p, Layout::BHSD, 22);
    // q blocks of 32 (4 per head), kv blocks of 16 (6): (b, h, qb) lists a pattern that varies.
    const BlockLists lists = block_lists(2 * 2 * 4, 6, [](index_t r, index_t kb) { return (kb + r) % 3 != 0; });
    BlockSparseMask m;
    m.q_block = 32;
    m.kv_block = 16;
    m.offsets = lists.offsets.data();
    m.indices = lists.indices.data();
    m.element_mask = [](index_t, index_t, index_t i, index_t j) { return (i + j) % 5 != 0; };
    Options opt;
    opt.mask = m;
    EXPECT_TRUE(matches_reference(d, opt));
  }
}

TEST(SinkMass, ScoreModifiersLayoutsAndHugeLogits) {
  const Problem p{1, 4, 4, 70, 70, 32, 8};
  const std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
  std::vector<float> bias(static_cast<size_t>(4 * 70 * 70));
  for (size_t n = 0; n < bias.size(); ++n) bias[n] = 0.1f * static_cast<float>(int(n % 11) - 5);
  for (const Layout layout : {Layout::BSHD, Layout::BHSD}) {
    const auto d = make_data(p, layout, 23);
    Options opt;
    opt.mask = CausalMask{};
    opt.score.softcap = 5.f;
    opt.score.alibi_slopes = slopes.data();
    opt.score.bias = {bias.data(), {1, 4, 70, 70}, {4 * 70 * 70, 70 * 70, 70, 1}};
    EXPECT_TRUE(matches_reference(d, opt)) << to_string(layout);
  }
  // Logits in the hundreds: the LSE pass and the weights stay finite and exact.
  const auto big = make_data(p, Layout::BSHD, 24, 6.f);
  Options opt;
  opt.score.scale = 1.f;
  EXPECT_TRUE(matches_reference(big, opt));
}

// RoPE on load: both pairings, partial rotary with an odd head dim, and a StreamingLLM chunk
// whose sink keys see the query at a capped position (4 keys, and 70: a cut inside a block).
TEST(SinkMass, RopeOnLoad) {
  const std::vector<RopeCase> cases = {
      {70, 150, 32, 0, RopePairing::neox, -1, 0, -1},  {70, 150, 32, 0, RopePairing::interleaved, -1, 0, -1},
      {33, 80, 21, 12, RopePairing::neox, -1, 0, -1},  {33, 80, 21, 12, RopePairing::interleaved, -1, 0, -1},
      {40, 120, 32, 0, RopePairing::neox, 80, 4, 99},  {40, 150, 32, 0, RopePairing::interleaved, 110, 70, 120},
      {1, 300, 64, 0, RopePairing::neox, 299, 4, 250},
  };
  std::uint64_t seed = 40;
  for (const RopeCase& c : cases) {
    const Problem p{1, 4, 2, c.sq, c.skv, c.dim, 4};
    const auto d = make_data(p, Layout::BSHD, seed++);
    const RopeTable table = c.table();
    const std::vector<float> sinks = {0.5f, -1.f, 3.f, 0.f};
    for (const MaskSpec& m :
         {MaskSpec{FullMask{}}, MaskSpec{CausalMask{}}, MaskSpec{SlidingWindowMask{63, 0, c.sink_keys}}})
      for (int n = 0; n < 2; ++n) {
        Options opt;
        opt.mask = m;
        opt.rope = c.options(table);
        if (n == 1) opt.norm = SinkSoftmax{sinks.data()};
        EXPECT_TRUE(matches_reference(d, opt)) << "Sq " << c.sq << " Skv " << c.skv << " D " << c.dim << " rot "
                                               << c.rotary_dim << " sinks " << c.sink_keys << " mask " << m.index();
      }
  }
}

TEST(SinkMass, RowsThatSeeNothingAddNothing) {
  // A -inf bias over every key of query rows 3 and 40: their LSE is -inf, their weights 0.
  const Problem p{1, 2, 1, 50, 60, 8, 4};
  const auto d = make_data(p, Layout::BSHD, 25);
  std::vector<float> bias(static_cast<size_t>(2 * 50 * 60), 0.f);
  for (index_t h = 0; h < 2; ++h)
    for (index_t j = 0; j < 60; ++j) {
      bias[static_cast<size_t>((h * 50 + 3) * 60 + j)] = -std::numeric_limits<float>::infinity();
      bias[static_cast<size_t>((h * 50 + 40) * 60 + j)] = -std::numeric_limits<float>::infinity();
    }
  Options opt;
  opt.score.bias = {bias.data(), {1, 2, 50, 60}, {2 * 50 * 60, 50 * 60, 60, 1}};
  EXPECT_TRUE(matches_reference(d, opt));
  const auto r = run_mass(d, opt);
  double total = 0;
  for (index_t j = 0; j < 60; ++j) total += r.mass[static_cast<size_t>(j)];
  EXPECT_NEAR(total, 48.0, 1e-4);  // head 0: 48 rows with a softmax each
}

// A NaN in query row 5 of head 1 (causal): the keys that row sees get NaN mass, the keys it
// does not see and the other head stay finite and exact.
TEST(SinkMass, NanReachesOnlyTheKeysItsRowSees) {
  const Problem p{1, 2, 2, 20, 20, 16, 4};
  const auto d = make_data(p, Layout::BSHD, 29);
  Options opt;
  opt.mask = CausalMask{};
  for (const index_t cache : {sinkattn::detail::kMassCacheFloats, index_t{0}}) {  // cached / recomputed sweep 2
    auto nan = d;
    nan.mq()(0, 5, 1, 3) = std::nanf("");
    const auto clean = run_mass(d, opt, Executor::serial(), cache);
    const auto r = run_mass(nan, opt, Executor::serial(), cache);
    ASSERT_TRUE(clean.status.ok() && r.status.ok());
    for (index_t j = 0; j < 20; ++j) {
      EXPECT_EQ(r.mass[static_cast<size_t>(j)], clean.mass[static_cast<size_t>(j)]) << j << " cache " << cache;
      const float m1 = r.mass[static_cast<size_t>(20 + j)];
      if (j <= 5)
        EXPECT_TRUE(std::isnan(m1)) << j << " cache " << cache;
      else
        EXPECT_EQ(m1, clean.mass[static_cast<size_t>(20 + j)]) << j << " cache " << cache;
    }
  }
}

// An inf in a key row that the element mask hides from every row: the real rows give it -inf,
// and the padding lanes of the 20-row tile (zero queries: 0 * inf = NaN) must add nothing.
TEST(SinkMass, PaddingLanesAddNothingForNonFiniteKeys) {
  const Problem p{1, 2, 1, 20, 20, 8, 4};
  auto d = make_data(p, Layout::BSHD, 31);
  for (index_t x = 0; x < 8; ++x) d.mk()(0, 3, 0, x) = std::numeric_limits<float>::infinity();
  const std::vector<index_t> offsets = {0, 1, 2}, indices = {0, 0};
  BlockSparseMask bs;
  bs.q_block = 32;
  bs.kv_block = 32;
  bs.offsets = offsets.data();
  bs.indices = indices.data();
  bs.element_mask = [](index_t, index_t, index_t, index_t j) { return j != 3; };
  std::vector<float> params;
  for (const NormSpec& norm : all_norms(p, params)) {
    Options opt;
    opt.mask = bs;
    opt.norm = norm;
    EXPECT_TRUE(matches_reference(d, opt)) << "norm " << norm.index();
  }
}

// K as segments (a streaming cache's pieces) in mixed layouts, one of them empty: the mass of
// the keys concatenated, with and without RoPE on load (its capped sink position cut inside
// a segment), with each sweep-2 cache setting.
TEST(SinkMass, KvSegmentsEqualTheConcatenatedKeys) {
  const Problem p{2, 4, 2, 70, 150, 21, 4};
  const auto d = make_data(p, Layout::BSHD, 45);
  const Segmented s = split(d, {3, 64, 64, 100}, {Layout::BHSD, Layout::BSHD});
  std::vector<float> params;
  const auto norms = all_norms(p, params);
  for (const MaskSpec& m : {MaskSpec{FullMask{}}, MaskSpec{CausalMask{}}, MaskSpec{SlidingWindowMask{40, 0, 4, 0}}})
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{4}, std::size_t{6}}) {
      Options opt;
      opt.mask = m;
      opt.norm = norms[n];
      EXPECT_TRUE(matches_reference(d, opt, 1e-5, &s)) << "mask " << m.index() << " norm " << n;
    }
  const RopeCase c{70, 150, 21, 12, RopePairing::interleaved, 80, 70, 120};
  const RopeTable table = c.table();
  Options rope;
  rope.mask = CausalMask{};
  rope.rope = c.options(table);
  EXPECT_TRUE(matches_reference(d, rope, 1e-5, &s)) << "RoPE on load";
  // Only K is read: segments without V.
  Segmented k_only = s;
  for (KvSegment& sg : k_only.seg) sg.v = {};
  EXPECT_TRUE(matches_reference(d, rope, 1e-5, &k_only)) << "segments without V";
  // Any thread count gives the same bits.
  const auto one = run_mass(d, rope, Executor::serial(), sinkattn::detail::kMassCacheFloats, &s);
  const auto three = run_mass(d, rope, thread_executor(3), sinkattn::detail::kMassCacheFloats, &s);
  ASSERT_TRUE(one.status.ok() && three.status.ok());
  EXPECT_TRUE(bit_identical(one.mass, three.mass));
  EXPECT_TRUE(bit_identical(one.alpha, three.alpha));
}

TEST(SinkMass, EmptyProblemsAndThreadCountDeterminism) {
  for (const Problem& p : {Problem{1, 2, 1, 0, 9, 8, 4}, Problem{1, 2, 1, 9, 0, 8, 4}, Problem{0, 2, 1, 9, 9, 8, 4}}) {
    const auto d = make_data(p, Layout::BSHD, 26);
    const auto r = run_mass(d, Options{});
    ASSERT_TRUE(r.status.ok()) << r.status.message();
    for (float m : r.mass) EXPECT_EQ(m, 0.f);
    for (float a : r.alpha) EXPECT_EQ(a, 0.f);
  }
  const Problem p{2, 4, 2, 200, 150, 24, 4};
  const auto d = make_data(p, Layout::BSHD, 27);
  Options opt;
  opt.mask = CausalMask{};
  const auto one = run_mass(d, opt);
  const auto three = run_mass(d, opt, thread_executor(3));
  ASSERT_TRUE(one.status.ok() && three.status.ok());
  EXPECT_TRUE(bit_identical(one.mass, three.mass));
  EXPECT_TRUE(bit_identical(one.alpha, three.alpha));
}

TEST(SinkMass, BadArgumentsNameTheArgument) {
  const Problem p{1, 2, 1, 10, 12, 8, 4};
  const auto d = make_data(p, Layout::BSHD, 28);
  std::vector<float> m(24), a(24), wrong(22);
  const auto mv = TensorView<float>::lse(m.data(), 1, 2, 12);
  const auto expect = [](const Status& s, Errc code, const std::string& word) {
    EXPECT_EQ(s.code(), code) << s.message();
    EXPECT_NE(s.message().find(word), std::string::npos) << s.message();
  };
  expect(sink_mass(p, d.q, d.k, TensorView<float>::lse(wrong.data(), 1, 2, 11)), Errc::shape_mismatch, "mass");
  expect(sink_mass(p, d.q, d.k, mv, TensorView<float>::lse(wrong.data(), 1, 2, 11)), Errc::shape_mismatch, "alpha");
  expect(sink_mass(p, d.q, d.k, mv, mv), Errc::aliasing, "alpha");
  expect(sink_mass(p, d.q, d.k, TensorView<float>::lse(nullptr, 1, 2, 12)), Errc::null_data, "mass");
  Options sig;
  sig.norm = Sigmoid{0.f, nullptr, true, -1.f};
  expect(sink_mass(p, d.q, d.k, mv, {}, sig), Errc::out_of_range, "norm.eps");
  Options affine;
  affine.norm = AffineScaled{};  // no alpha
  expect(sink_mass(p, d.q, d.k, mv, {}, affine), Errc::shape_mismatch, "norm.alpha");
  Options bad_window;
  bad_window.mask = SlidingWindowMask{-3, 0, 0, 0};
  expect(sink_mass(p, d.q, d.k, mv, {}, bad_window), Errc::out_of_range, "mask.left");
  Problem bad_heads = p;
  bad_heads.heads_kv = 3;
  expect(sink_mass(bad_heads, d.q, d.k, mv), Errc::heads_not_divisible, "heads");
  const auto short_k = TensorView<const float>::bshd(d.kbuf.data(), 1, 11, 1, 8);
  expect(sink_mass(p, d.q, short_k, mv), Errc::shape_mismatch, "k");
  // Segments: count, null, total rows, a segment's shape, a segment under an output.
  const Segmented s = split(d, {5}, {Layout::BSHD});
  expect(sink_mass(p, d.q, s.seg.data(), -1, mv), Errc::negative_size, "segments");
  expect(sink_mass(p, d.q, nullptr, 2, mv), Errc::null_data, "segments");
  expect(sink_mass(p, d.q, s.seg.data(), 1, mv), Errc::shape_mismatch, "segments");
  std::vector<KvSegment> wrong_dim = s.seg;
  wrong_dim[1].k = TensorView<const float>::bshd(s.kbuf[1].data(), 1, 7, 1, 7);
  expect(sink_mass(p, d.q, wrong_dim.data(), 2, mv), Errc::shape_mismatch, "segments[1].k");
  std::vector<float> shared(40);  // a segment's 5 x 8 K floats, the first 24 also the mass
  std::vector<KvSegment> under_mass = s.seg;
  under_mass[0].k = TensorView<const float>::bshd(shared.data(), 1, 5, 1, 8);
  expect(sink_mass(p, d.q, under_mass.data(), 2, TensorView<float>::lse(shared.data(), 1, 2, 12)), Errc::aliasing,
         "segments[0].k");
}

}  // namespace
}  // namespace test
}  // namespace sinkattn
