// sinkattn::forward_act (kernel/act.hpp) against reference::attention_act under the harness's
// tolerance rule (|ours - ref64| <= 2 |ref32 - ref64| + atol, ref32 = the reference in float):
// shapes that straddle the tiles, odd head dims, GQA, every mask kind, the learned sink, score
// modifiers, both gates, beta at 0, between and above 1, sink keys some rows cannot see, huge
// logits, empty problems, thread-count determinism and the argument checks.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "harness.hpp"
#include "segments.hpp"
#include "sinkattn/kernel/act.hpp"
#include "sinkattn/reference/sinks.hpp"
#include "threads.hpp"

namespace sinkattn {
namespace test {
namespace {

// segs: K/V as these segments of d's instead of d.k, d.v.
std::vector<float> run_act(const Data& d, const Options& opt, const ActCalibration& act, Status* st,
                           const Executor& ex = Executor::serial(), const Segmented* segs = nullptr) {
  const Problem& p = d.p;
  std::vector<float> o(static_cast<size_t>(p.batch * p.seq_q * p.heads_q * p.dim_v), std::nanf(""));
  const auto ov = TensorView<float>::bshd(o.data(), p.batch, p.seq_q, p.heads_q, p.dim_v);
  *st = segs ? forward_act(p, d.q, segs->seg.data(), static_cast<index_t>(segs->seg.size()), ov, opt, act, ex)
             : forward_act(p, d.q, d.k, d.v, ov, opt, act, ex);
  return o;
}

::testing::AssertionResult matches_reference(const Data& d, const Options& opt, const ActCalibration& act,
                                             double atol = 1e-5, const Segmented* segs = nullptr) {
  const Problem& p = d.p;
  Status st;
  const auto ours = run_act(d, opt, act, &st, Executor::serial(), segs);
  if (!st.ok()) return ::testing::AssertionFailure() << "forward_act: " << st.message();
  const auto n = static_cast<size_t>(p.batch * p.seq_q * p.heads_q * p.dim_v);
  std::vector<double> r64(n);
  std::vector<float> r32(n);
  const auto v64 = TensorView<double>::bshd(r64.data(), p.batch, p.seq_q, p.heads_q, p.dim_v);
  const auto v32 = TensorView<float>::bshd(r32.data(), p.batch, p.seq_q, p.heads_q, p.dim_v);
  const Status s64 = reference::attention_act<double>(p, d.q, d.k, d.v, v64, opt, act);
  const Status s32 = reference::attention_act<float>(p, d.q, d.k, d.v, v32, opt, act);
  if (!s64.ok() || !s32.ok()) return ::testing::AssertionFailure() << "reference: " << s64.message();
  static const char* const kNames[4] = {"b", "s", "h", "d"};
  std::ostringstream msg;
  bool ok = true;
  detail::compare("o", TensorView<const float>::bshd(ours.data(), p.batch, p.seq_q, p.heads_q, p.dim_v), v64, v32, atol,
                  kNames, msg, ok);
  if (!ok) return ::testing::AssertionFailure() << msg.str();
  return ::testing::AssertionSuccess();
}

std::vector<MaskSpec> masks() {
  std::vector<MaskSpec> m = {FullMask{}, CausalMask{}, SlidingWindowMask{12, 0, 2, 0}};
  BlockMask blocks;
  blocks.block_size = 16;
  blocks.global_keys = 1;
  m.emplace_back(std::move(blocks));
  return m;
}

TEST(ForwardAct, ShapesMasksNormalizationsAndBetas) {
  const std::vector<std::pair<index_t, index_t>> lengths = {{1, 9}, {15, 17}, {64, 64}, {65, 130}, {130, 65}};
  const std::vector<float> sinks = {0.5f, -1.f, 3.f, -std::numeric_limits<float>::infinity()};
  for (const auto& [sq, skv] : lengths)
    for (const index_t dqk : {13, 32}) {
      const Problem p{2, 4, 2, sq, skv, dqk, 5};
      const auto d = make_data(p, Layout::BSHD, static_cast<std::uint64_t>(sq * 7 + skv + dqk));
      // Sink keys early and late: later ones are hidden from early causal rows.
      const std::vector<index_t> s = {1, std::min<index_t>(4, skv - 1), skv - 1};
      const ActCalibration act{s.data(), s[1] == s[0] || s[2] == s[1] ? 1 : 3, 0.3};
      for (const MaskSpec& mask : masks())
        for (int n = 0; n < 2; ++n) {
          if (skv < 2) continue;
          Options opt;
          opt.mask = mask;
          if (n == 1) opt.norm = SinkSoftmax{sinks.data()};
          EXPECT_TRUE(matches_reference(d, opt, act))
              << "Sq " << sq << " Skv " << skv << " D " << dqk << " mask " << mask.index() << " norm " << n;
        }
      for (const double beta : {0.0, 1.0, 1.7}) {
        Options opt;
        opt.mask = CausalMask{};
        EXPECT_TRUE(matches_reference(d, opt, ActCalibration{s.data(), 1, beta})) << beta;
      }
    }
}

TEST(ForwardAct, NeighborhoodBlockSparseScoresAndGates) {
  const Problem p{1, 2, 1, 8 * 8, 8 * 8, 16, 8};
  const auto d = make_data(p, Layout::BHSD, 31);
  const std::vector<index_t> s = {3, 9, 27};
  const ActCalibration act{s.data(), 3, 0.5};
  NeighborhoodMask na;
  na.rank = 2;
  na.extent = {8, 8, 1};
  na.kernel = {5, 3, 1};
  Options opt;
  opt.mask = na;
  EXPECT_TRUE(matches_reference(d, opt, act));
  // 2 heads x 2 query blocks of 32; 4 key blocks of 16.
  const BlockLists lists = block_lists(2 * 2, 4, [](index_t r, index_t kb) { return (kb + r) % 2 == 0 || kb == 0; });
  BlockSparseMask bs;
  bs.q_block = 32;
  bs.kv_block = 16;
  bs.offsets = lists.offsets.data();
  bs.indices = lists.indices.data();
  Options sparse;
  sparse.mask = bs;
  EXPECT_TRUE(matches_reference(d, sparse, act));
  // softcap and ALiBi, with an elementwise and a headwise gate.
  const std::vector<float> slopes = {0.3f, 0.1f};
  std::vector<float> g(static_cast<size_t>(64 * 2 * 8));
  for (size_t n = 0; n < g.size(); ++n) g[n] = 0.25f * static_cast<float>(int(n % 9) - 4);
  Options scored;
  scored.mask = CausalMask{};
  scored.score.softcap = 4.f;
  scored.score.alibi_slopes = slopes.data();
  scored.gate = SigmoidGate{TensorView<const float>::bshd(g.data(), 1, 64, 2, 8)};
  EXPECT_TRUE(matches_reference(d, scored, act));
  scored.gate = SigmoidGate{TensorView<const float>::bshd(g.data(), 1, 64, 2, 1)};
  EXPECT_TRUE(matches_reference(d, scored, act));
}

TEST(ForwardAct, HugeLogitsAndRowsThatSeeNothing) {
  const Problem p{1, 2, 2, 40, 40, 16, 4};
  const auto big = make_data(p, Layout::BSHD, 32, 4.f);  // logits up to ~256
  const std::vector<index_t> s = {2, 5};
  Options opt;
  opt.score.scale = 1.f;
  EXPECT_TRUE(matches_reference(big, opt, ActCalibration{s.data(), 2, 0.25}));
  // A window of one key to the left (row 0 sees only key 0, outside S) shifted so that the first
  // rows see no key at all: their output stays 0.
  const auto d = make_data(p, Layout::BSHD, 33);
  Options window;
  window.mask = SlidingWindowMask{1, 0, 0, -3};
  EXPECT_TRUE(matches_reference(d, window, ActCalibration{s.data(), 2, 0.5}));
  const std::vector<float> sinks = {1.f, -0.5f};
  window.norm = SinkSoftmax{sinks.data()};
  EXPECT_TRUE(matches_reference(d, window, ActCalibration{s.data(), 2, 0.5}));
  // S holding nearly all of each row's mass (keys 2 and 5 made to match every query): the
  // others' share comes from step 1's own LSE, not from 1 - P_S.
  auto dominated = make_data(p, Layout::BSHD, 37);
  for (index_t g = 0; g < 2; ++g)
    for (index_t x = 0; x < 16; ++x) {
      dominated.mk()(0, 2, g, x) = 3.f * dominated.q(0, 0, g, x);
      dominated.mk()(0, 5, g, x) = 3.f * dominated.q(0, 1, g, x);
    }
  EXPECT_TRUE(matches_reference(dominated, Options{}, ActCalibration{s.data(), 2, 0.25}));
}

// RoPE on load: both pairings, partial rotary with an odd head dim, and a StreamingLLM chunk
// whose sink keys see the query at a capped position (ACT's keys on both sides of that cut).
TEST(ForwardAct, RopeOnLoad) {
  const std::vector<RopeCase> cases = {
      {70, 150, 32, 0, RopePairing::neox, -1, 0, -1},
      {33, 80, 21, 12, RopePairing::interleaved, -1, 0, -1},
      {40, 120, 32, 0, RopePairing::neox, 80, 4, 99},
      {40, 150, 32, 0, RopePairing::interleaved, 110, 70, 120},
  };
  const std::vector<index_t> keys = {1, 3, 71};
  const std::vector<float> sinks = {0.5f, -1.f, 3.f, 0.f};
  std::uint64_t seed = 50;
  for (const RopeCase& c : cases) {
    const Problem p{1, 4, 2, c.sq, c.skv, c.dim, 8};
    const auto d = make_data(p, Layout::BSHD, seed++, 2.f);
    const RopeTable table = c.table();
    for (const MaskSpec& m : {MaskSpec{FullMask{}}, MaskSpec{SlidingWindowMask{63, 0, c.sink_keys}}})
      for (int n = 0; n < 2; ++n) {
        Options opt;
        opt.mask = m;
        opt.rope = c.options(table);
        if (n == 1) opt.norm = SinkSoftmax{sinks.data()};
        EXPECT_TRUE(matches_reference(d, opt, ActCalibration{keys.data(), 3, 0.3}))
            << "Sq " << c.sq << " Skv " << c.skv << " D " << c.dim << " sinks " << c.sink_keys << " mask " << m.index();
      }
  }
}

// A caller's score bias: a key-padding mask (one value per (b, key), zero head and row
// strides) and a full [B, Hq, Sq, Skv] bias with -inf on a sink key for some rows and on
// every key of one row, with causal and windowed masks, GQA, both normalizations.
TEST(ForwardAct, WithTheCallersScoreBias) {
  const Problem p{2, 4, 2, 37, 70, 13, 9};
  const auto d = make_data(p, Layout::BSHD, 61, 2.f);
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> pad(static_cast<size_t>(2 * 70), 0.f);
  for (index_t j = 60; j < 70; ++j) pad[static_cast<size_t>(70 + j)] = ninf;  // batch 1: 60 keys
  pad[5] = -1.5f;
  std::vector<float> full(static_cast<size_t>(2 * 4 * 37 * 70));
  for (size_t n = 0; n < full.size(); ++n) full[n] = 0.3f * std::sin(0.37f * float(n));
  for (index_t i = 0; i < 37; i += 3) full[static_cast<size_t>((1 * 37 + i) * 70 + 2)] = ninf;     // (0, 1, i, 2)
  for (index_t j = 0; j < 70; ++j) full[static_cast<size_t>(((4 + 2) * 37 + 9) * 70 + j)] = ninf;  // (1, 2, 9, *)
  const std::vector<index_t> keys = {2, 5, 33};
  const std::vector<float> sinks = {0.5f, -1.f, 3.f, 0.f};
  for (int which = 0; which < 2; ++which)
    for (const MaskSpec& m : {MaskSpec{CausalMask{}}, MaskSpec{SlidingWindowMask{20, 0, 3, 0}}})
      for (int n = 0; n < 2; ++n) {
        Options opt;
        opt.mask = m;
        if (which == 0)
          opt.score.bias = TensorView<const float>(pad.data(), {2, 4, 37, 70}, {70, 0, 0, 1});
        else
          opt.score.bias = TensorView<const float>(full.data(), {2, 4, 37, 70}, {4 * 37 * 70, 37 * 70, 70, 1});
        if (n == 1) opt.norm = SinkSoftmax{sinks.data()};
        EXPECT_TRUE(matches_reference(d, opt, ActCalibration{keys.data(), 3, 0.25}))
            << "bias " << which << " mask " << m.index() << " norm " << n;
      }
}

// K/V as segments (a streaming cache's pieces) in mixed layouts, one empty, with sink keys in
// several of them: the result on the keys concatenated, with and without RoPE on load (its
// capped sink position cut inside a segment), across thread counts; and the segment checks.
TEST(ForwardAct, KvSegments) {
  const Problem p{2, 4, 2, 70, 150, 21, 8};
  const auto d = make_data(p, Layout::BSHD, 71, 2.f);
  const Segmented s = split(d, {3, 64, 64, 100}, {Layout::BHSD, Layout::BSHD});
  const std::vector<index_t> keys = {1, 3, 70, 120};  // in segments 0, 1, 3 and 4
  const ActCalibration act{keys.data(), 4, 0.3};
  const std::vector<float> sinks = {0.5f, -1.f, 3.f, 0.f};
  const RopeCase c{70, 150, 21, 12, RopePairing::interleaved, 80, 70, 120};
  const RopeTable table = c.table();
  for (const MaskSpec& m : {MaskSpec{CausalMask{}}, MaskSpec{SlidingWindowMask{40, 0, 4, 0}}})
    for (int n = 0; n < 3; ++n) {
      Options opt;
      opt.mask = m;
      if (n == 1) opt.norm = SinkSoftmax{sinks.data()};
      if (n == 2) opt.rope = c.options(table);
      EXPECT_TRUE(matches_reference(d, opt, act, 1e-5, &s)) << "mask " << m.index() << " variant " << n;
    }
  Options opt;
  opt.mask = CausalMask{};
  Status st1, st3;
  const auto one = run_act(d, opt, act, &st1, Executor::serial(), &s);
  const auto three = run_act(d, opt, act, &st3, thread_executor(3), &s);
  ASSERT_TRUE(st1.ok() && st3.ok());
  EXPECT_TRUE(bit_identical(one, three));

  std::vector<float> o(static_cast<size_t>(p.batch * p.seq_q * p.heads_q * p.dim_v));
  const auto ov = TensorView<float>::bshd(o.data(), p.batch, p.seq_q, p.heads_q, p.dim_v);
  const auto expect = [](const Status& st, Errc code, const std::string& word) {
    EXPECT_EQ(st.code(), code) << st.message();
    EXPECT_NE(st.message().find(word), std::string::npos) << st.message();
  };
  expect(forward_act(p, d.q, s.seg.data(), -1, ov, opt, act), Errc::negative_size, "segments");
  expect(forward_act(p, d.q, nullptr, 0, ov, opt, act), Errc::shape_mismatch, "segments");
  expect(forward_act(p, d.q, s.seg.data(), 2, ov, opt, act), Errc::shape_mismatch, "segments");
  const std::vector<index_t> past_end = {150};
  expect(forward_act(p, d.q, s.seg.data(), static_cast<index_t>(s.seg.size()), ov, opt, {past_end.data(), 1, 0.3}),
         Errc::out_of_range, "act");
}

TEST(ForwardAct, EmptyProblemsAndThreadCountDeterminism) {
  for (const Problem& p : {Problem{1, 2, 1, 0, 9, 8, 4}, Problem{1, 2, 1, 9, 0, 8, 4}}) {
    const auto d = make_data(p, Layout::BSHD, 34);
    Status st;
    const auto o = run_act(d, Options{}, ActCalibration{}, &st);
    ASSERT_TRUE(st.ok()) << st.message();
    for (float x : o) EXPECT_EQ(x, 0.f);
  }
  const Problem p{2, 4, 2, 150, 150, 24, 8};
  const auto d = make_data(p, Layout::BSHD, 35);
  const std::vector<index_t> s = {3, 77};
  Options opt;
  opt.mask = CausalMask{};
  Status s1, s3;
  const auto one = run_act(d, opt, ActCalibration{s.data(), 2, 0.4}, &s1);
  const auto three = run_act(d, opt, ActCalibration{s.data(), 2, 0.4}, &s3, thread_executor(3));
  ASSERT_TRUE(s1.ok() && s3.ok());
  EXPECT_TRUE(bit_identical(one, three));
}

// The score bias with a zero row stride (one value per key: a key-padding mask, ACT's step 1)
// takes its own broadcast path in the score policy: both it and the same bias written out
// match the reference.
TEST(ScoreBias, RowBroadcastBiasEqualsItsDenseCopy) {
  const Problem p{2, 2, 1, 70, 90, 16, 8};
  const auto d = make_data(p, Layout::BSHD, 38);
  std::vector<float> per_key(static_cast<size_t>(2 * 2 * 90)), dense(static_cast<size_t>(2 * 2 * 70 * 90));
  for (size_t n = 0; n < per_key.size(); ++n)
    per_key[n] = n % 13 == 0 ? -std::numeric_limits<float>::infinity() : 0.3f * static_cast<float>(int(n % 5) - 2);
  for (index_t bh = 0; bh < 4; ++bh)
    for (index_t i = 0; i < 70; ++i)
      for (index_t j = 0; j < 90; ++j)
        dense[static_cast<size_t>((bh * 70 + i) * 90 + j)] = per_key[static_cast<size_t>(bh * 90 + j)];
  const std::vector<float> slopes = {0.2f, 0.05f};
  for (const bool causal : {false, true}) {
    Options a, b;
    a.score.bias = {per_key.data(), {2, 2, 70, 90}, {180, 90, 0, 1}};
    b.score.bias = {dense.data(), {2, 2, 70, 90}, {2 * 70 * 90, 70 * 90, 90, 1}};
    a.score.alibi_slopes = b.score.alibi_slopes = slopes.data();
    if (causal) a.mask = b.mask = CausalMask{};
    std::vector<float> oa(static_cast<size_t>(2 * 70 * 2 * 8)), ob(oa.size());
    ASSERT_TRUE(forward(p, d.q, d.k, d.v, TensorView<float>::bshd(oa.data(), 2, 70, 2, 8), a).ok());
    ASSERT_TRUE(forward(p, d.q, d.k, d.v, TensorView<float>::bshd(ob.data(), 2, 70, 2, 8), b).ok());
    // (Not bit-identical: the strided walk may fuse its multiply-add, the broadcast rounds first.)
    EXPECT_TRUE(test::matches_reference(p, d.q, d.k, d.v, b, TensorView<const float>::bshd(ob.data(), 2, 70, 2, 8)));
    EXPECT_TRUE(test::matches_reference(p, d.q, d.k, d.v, a, TensorView<const float>::bshd(oa.data(), 2, 70, 2, 8)));
  }
}

TEST(ForwardAct, BadArgumentsNameTheArgument) {
  const Problem p{1, 2, 1, 10, 12, 8, 4};
  const auto d = make_data(p, Layout::BSHD, 36);
  const auto expect = [&](const Options& opt, const ActCalibration& act, Errc code, const std::string& word) {
    Status st;
    run_act(d, opt, act, &st);
    EXPECT_EQ(st.code(), code) << st.message();
    EXPECT_NE(st.message().find(word), std::string::npos) << st.message();
  };
  const std::vector<index_t> ok = {3}, zero = {0}, out = {12}, twice = {4, 4};
  expect(Options{}, ActCalibration{zero.data(), 1, 0.5}, Errc::out_of_range, "first token");
  expect(Options{}, ActCalibration{out.data(), 1, 0.5}, Errc::out_of_range, "act.keys[0] is 12");
  expect(Options{}, ActCalibration{twice.data(), 2, 0.5}, Errc::invalid_argument, "twice");
  expect(Options{}, ActCalibration{ok.data(), 1, -1.0}, Errc::out_of_range, "act.beta");
  expect(Options{}, ActCalibration{nullptr, 1, 0.5}, Errc::null_data, "act.keys");
  Options sig;
  sig.norm = Sigmoid{};
  expect(sig, ActCalibration{ok.data(), 1, 0.5}, Errc::unsupported, "norm");
  std::vector<float> lse(20);
  Options with_lse;
  with_lse.lse = TensorView<float>::lse(lse.data(), 1, 2, 10);
  expect(with_lse, ActCalibration{ok.data(), 1, 0.5}, Errc::unsupported, "lse");
  std::vector<float> bias(static_cast<size_t>(2 * 10 * 12), 0.f);
  Options biased;
  biased.score.bias = {bias.data(), {1, 2, 10, 11}, {240, 120, 12, 1}};
  expect(biased, ActCalibration{ok.data(), 1, 0.5}, Errc::shape_mismatch, "bias");
  Options bad_window;
  bad_window.mask = SlidingWindowMask{-4, 0, 0, 0};
  expect(bad_window, ActCalibration{ok.data(), 1, 0.5}, Errc::out_of_range, "mask.left");
}

}  // namespace
}  // namespace test
}  // namespace sinkattn
