// The reference's normalizations, scores and gate against hand-computed values and exact
// identities (SEMANTICS.md sections 1, 3, 4 and 7).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "harness.hpp"
#include "sinkattn/reference/attention.hpp"
#include "tiny.hpp"

namespace sinkattn {
namespace test {
namespace {

constexpr double kTight = 1e-14;

// ---- Softmax and the sink ------------------------------------------------------------------

TEST(RefSoftmax, TwoKeysHandComputed) {
  const auto r = tiny({1.f, -1.f}, Options{});
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  const double e = std::exp(1.0), ie = std::exp(-1.0);
  EXPECT_NEAR(r.o[0], e / (e + ie), kTight);
  EXPECT_NEAR(r.o[1], ie / (e + ie), kTight);
  EXPECT_NEAR(r.lse[0], std::log(e + ie), kTight);
}

TEST(RefSoftmax, ValuesAreWeighted) {
  // v0 = (2, -1), v1 = (4, 3): O = w0 v0 + w1 v1.
  const auto r = tiny({1.f, -1.f}, Options{}, true, 1, {2.f, -1.f, 4.f, 3.f}, 2);
  ASSERT_TRUE(r.status.ok());
  const double w0 = 1.0 / (1.0 + std::exp(-2.0)), w1 = 1.0 - w0;
  EXPECT_NEAR(r.o[0], 2 * w0 + 4 * w1, kTight);
  EXPECT_NEAR(r.o[1], -1 * w0 + 3 * w1, kTight);
}

TEST(RefSoftmax, DefaultScaleIsInverseSqrtD) {
  // Dqk = 4, q = k0 = (1,1,1,1), k1 = 0: x0 = 4 / sqrt(4) = 2, x1 = 0.
  Problem p{1, 1, 1, 1, 2, 4, 2};
  // k is filled at run time, not from the list {1, 1, 1, 1, 0, 0, 0, 0}: GCC 12.2 at -O2 with
  // AVX-512 (our -march=native) folds that list's 32-byte copy into one 256-bit integer constant
  // whose zero upper half its CONST_WIDE_INT leaves implicit, and ix86_convert_const_wide_int_
  // to_broadcast then stores a broadcast of the low half, i.e. eight 1s (fixed in later GCC by
  // rejecting such constants). Both logits became 2 and o[0] 0.5; the reference was right.
  std::vector<float> q(4, 1.f), k(8, 0.f), v = {1, 0, 0, 1};
  std::fill_n(k.begin(), 4, 1.f);
  std::vector<double> o(2);
  ASSERT_TRUE(reference::attention<double>(p, TensorView<const float>::bshd(q.data(), 1, 1, 1, 4),
                                           TensorView<const float>::bshd(k.data(), 1, 2, 1, 4),
                                           TensorView<const float>::bshd(v.data(), 1, 2, 1, 2),
                                           TensorView<double>::bshd(o.data(), 1, 1, 1, 2), Options{})
                  .ok());
  EXPECT_NEAR(o[0], 1.0 / (1.0 + std::exp(-2.0)), kTight);
}

TEST(RefSink, HandComputed) {
  const float s = 0.5f;
  Options opt;
  opt.norm = SinkSoftmax{&s};
  const auto r = tiny({1.f, -1.f}, opt);
  ASSERT_TRUE(r.status.ok());
  const double den = std::exp(1.0) + std::exp(-1.0) + std::exp(0.5);
  EXPECT_NEAR(r.o[0], std::exp(1.0) / den, kTight);
  EXPECT_NEAR(r.o[1], std::exp(-1.0) / den, kTight);
  EXPECT_NEAR(r.lse[0], std::log(den), kTight);  // the returned LSE includes the sink
}

TEST(RefSink, SinkIsNotScaledNorSoftcapped) {
  const float s = 2.f;
  Options opt;
  opt.norm = SinkSoftmax{&s};
  opt.score.scale = 0.5f;
  opt.score.softcap = 1.f;  // would turn a scaled/capped sink into < 1
  const auto r = tiny({0.f}, opt);
  ASSERT_TRUE(r.status.ok());
  EXPECT_NEAR(r.o[0], 1.0 / (1.0 + std::exp(2.0)), kTight);
}

// O_sink = O_softmax * sigmoid(LSE - S) and LSE_sink = logaddexp(LSE, S), over a random causal
// GQA problem and sinks of every sign (and -inf = plain softmax).
TEST(RefSink, IdentityWithSoftmax) {
  const Problem p{2, 4, 2, 17, 33, 16, 8};
  const auto d = make_data(p, Layout::BSHD, 7);
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> sinks = {-1.f, 0.f, 2.5f, -inf};
  Options soft;
  soft.mask = CausalMask{};
  Options sink = soft;
  sink.norm = SinkSoftmax{sinks.data()};
  const auto a = run_reference<double>(d, soft, true);
  const auto b = run_reference<double>(d, sink, true);
  ASSERT_TRUE(a.status.ok() && b.status.ok());
  for (index_t bb = 0; bb < p.batch; ++bb)
    for (index_t h = 0; h < p.heads_q; ++h)
      for (index_t i = 0; i < p.seq_q; ++i) {
        const double lse = a.lse(bb, h, i, 0), S = sinks[h];
        const double factor = std::isinf(S) ? 1.0 : sigm(lse - S);
        const double want_lse = std::isinf(S) ? lse : std::max(lse, S) + std::log1p(std::exp(-std::abs(lse - S)));
        EXPECT_NEAR(b.lse(bb, h, i, 0), want_lse, 1e-12);
        for (index_t e = 0; e < p.dim_v; ++e) {
          if (std::isinf(S)) {
            EXPECT_EQ(b.o(bb, i, h, e), a.o(bb, i, h, e)) << "S = -inf must be plain softmax";
          } else {
            EXPECT_NEAR(b.o(bb, i, h, e), a.o(bb, i, h, e) * factor, 1e-13);
          }
        }
      }
}

// ---- Sigmoid -------------------------------------------------------------------------------

TEST(RefSigmoid, HandComputed) {
  const float hb = 0.25f;
  Sigmoid s;
  s.bias = -0.5f;
  s.head_bias = &hb;
  Options opt;
  opt.norm = s;
  const auto r = tiny({1.f, -1.f}, opt, false);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  EXPECT_NEAR(r.o[0], sigm(0.75), kTight);
  EXPECT_NEAR(r.o[1], sigm(-1.25), kTight);
}

TEST(RefSigmoid, RowNormalization) {
  Sigmoid s;
  s.normalize = true;
  s.eps = 0.125f;
  Options opt;
  opt.norm = s;
  const auto r = tiny({1.f, -1.f, 3.f}, opt, false);
  ASSERT_TRUE(r.status.ok());
  const double den = sigm(1) + sigm(-1) + sigm(3) + 0.125;
  EXPECT_NEAR(r.o[0], sigm(1) / den, kTight);
  EXPECT_NEAR(r.o[1], sigm(-1) / den, kTight);
  EXPECT_NEAR(r.o[2], sigm(3) / den, kTight);
}

TEST(RefSigmoid, NoMaxNoRowSum) {
  // Unlike softmax, adding a constant to every logit changes the weights.
  Options opt;
  opt.norm = Sigmoid{};
  const auto a = tiny({0.f, 0.f}, opt, false), b = tiny({2.f, 2.f}, opt, false);
  EXPECT_NEAR(a.o[0], 0.5, kTight);
  EXPECT_NEAR(b.o[0], sigm(2), kTight);
}

// ---- Softpick ------------------------------------------------------------------------------

TEST(RefSoftpick, HandComputed) {
  Softpick sp;
  sp.eps = 0.f;
  Options opt;
  opt.norm = sp;
  const auto r = tiny({1.f, -1.f, 0.f}, opt, false);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  const double a = std::expm1(1.0), b = std::expm1(-1.0);
  EXPECT_NEAR(r.o[0], a / (a + std::abs(b)), kTight);
  EXPECT_EQ(r.o[1], 0.0);  // ReLU: negative e^x - 1 gives nothing, but counts in the denominator
  EXPECT_EQ(r.o[2], 0.0);
}

TEST(RefSoftpick, EpsIsAddedToTheMathematicalDenominator) {
  // One key, x = 0.5 > 0 (the row-max rescaling path): w = (e^0.5 - 1) / (e^0.5 - 1 + eps).
  Softpick sp;
  sp.eps = 0.5f;
  Options opt;
  opt.norm = sp;
  const auto r = tiny({0.5f}, opt, false);
  const double t = std::expm1(0.5);
  EXPECT_NEAR(r.o[0], t / (t + 0.5), kTight);
}

TEST(RefSoftpick, HugeLogitsStayFinite) {
  Options opt;
  opt.norm = Softpick{};
  const auto r = tiny({1000.f, 999.5f, -10000.f}, opt, false);
  const double z = 1.0 + std::exp(-0.5) + std::exp(-1000.0);
  EXPECT_NEAR(r.o[0], 1.0 / z, 1e-12);
  EXPECT_NEAR(r.o[1], std::exp(-0.5) / z, 1e-12);
  EXPECT_EQ(r.o[2], 0.0);
}

TEST(RefSoftpick, AllNegativeRowIsZero) {
  Options opt;
  opt.norm = Softpick{};
  const auto r = tiny({-1.f, -3.f, -10000.f}, opt, false);
  for (double x : r.o) EXPECT_EQ(x, 0.0);
}

TEST(RefSoftpick, MinusInfLogitsAreExcludedFromTheDenominator) {
  // A -inf bias on key 1 must give the same row as if key 1 did not exist (|e^-inf - 1| = 1
  // would otherwise enter the denominator).
  Softpick sp;
  sp.eps = 0.f;
  Options opt;
  opt.norm = sp;
  std::vector<float> bias = {0.f, -kInfF};
  opt.score.bias = TensorView<const float>(bias.data(), {1, 1, 1, 2}, {0, 0, 0, 1});
  const auto with = tiny({1.f, 0.5f}, opt, false);
  opt.score.bias = {};
  const auto without = tiny({1.f}, opt, false);
  EXPECT_NEAR(with.o[0], without.o[0], kTight);
  EXPECT_NEAR(with.o[0], 1.0, kTight);  // a lone positive key takes all its mass when eps = 0
  EXPECT_EQ(with.o[1], 0.0);
}

// ---- Scalable softmax ----------------------------------------------------------------------

TEST(RefSSMax, HandComputed) {
  // N = 2, s = 2: logits scaled by 2 log 2, so e^{+-x'} = 4^{+-1}.
  const float s = 2.f;
  Options opt;
  opt.norm = ScalableSoftmax{&s};
  const auto r = tiny({1.f, -1.f}, opt);
  ASSERT_TRUE(r.status.ok());
  EXPECT_NEAR(r.o[0], 16.0 / 17.0, kTight);
  EXPECT_NEAR(r.o[1], 1.0 / 17.0, kTight);
  EXPECT_NEAR(r.lse[0], std::log(4.25), kTight);  // LSE of the scaled logits
}

TEST(RefSSMax, NCountsVisibleKeysPerRow) {
  // Causal, Sq = Skv = 3: row i sees i + 1 keys, so row 1 scales by s log 2, row 2 by s log 3.
  const float s = 1.f;
  Options opt;
  opt.norm = ScalableSoftmax{&s};
  opt.mask = CausalMask{};
  const auto r = tiny({1.f, 0.f, 2.f}, opt, true, 3);
  ASSERT_TRUE(r.status.ok());
  EXPECT_NEAR(r.o[0 * 3 + 0], 1.0, kTight);  // one key: log 1 = 0, weight 1
  const double f1 = std::log(2.0);
  EXPECT_NEAR(r.o[1 * 3 + 0], std::exp(f1) / (std::exp(f1) + 1.0), kTight);
  const double f2 = std::log(3.0);
  const double z = std::exp(f2) + 1.0 + std::exp(2 * f2);
  EXPECT_NEAR(r.o[2 * 3 + 2], std::exp(2 * f2) / z, kTight);
  EXPECT_NEAR(r.lse[2], std::log(z), kTight);
}

// ---- Affine-scaled -------------------------------------------------------------------------

TEST(RefAffine, DefaultBetaOverVisibleCount) {
  std::vector<float> alpha = {0.75f};
  AffineScaled a;
  a.alpha = TensorView<const float>(alpha.data(), {1, 1, 1, 1}, {1, 1, 1, 1});
  Options opt;
  opt.norm = a;
  const auto r = tiny({1.f, -1.f}, opt);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  const double w0 = 1.0 / (1.0 + std::exp(-2.0)), beta = (1.0 - 0.75) / 2;
  // V = identity, so sum_j v_j = (1, 1).
  EXPECT_NEAR(r.o[0], 0.75 * w0 + beta, kTight);
  EXPECT_NEAR(r.o[1], 0.75 * (1 - w0) + beta, kTight);
  EXPECT_NEAR(r.lse[0], std::log(std::exp(1.0) + std::exp(-1.0)), kTight);  // LSE of the softmax part
}

TEST(RefAffine, BetaOverSkvAndGivenBeta) {
  // Causal with Sq = 1 < Skv... use offset -1 so the row sees key 0 only: N = 1, Skv = 2.
  std::vector<float> alpha = {0.5f}, beta = {0.25f};
  AffineScaled a;
  a.alpha = TensorView<const float>(alpha.data(), {1, 1, 1, 1}, {1, 1, 1, 1});
  a.alpha_ma = 2.f;
  Options opt;
  opt.norm = a;
  opt.mask = CausalMask{-1};
  auto r = tiny({1.f, -1.f}, opt);
  EXPECT_NEAR(r.o[0], 0.5 * 1.0 + (2.0 - 0.5) / 1, kTight);
  EXPECT_EQ(r.o[1], 0.0);  // masked key: neither in the softmax nor in sum_j v_j
  a.beta_over_skv = true;
  opt.norm = a;
  r = tiny({1.f, -1.f}, opt);
  EXPECT_NEAR(r.o[0], 0.5 + (2.0 - 0.5) / 2, kTight);
  a.beta = TensorView<const float>(beta.data(), {1, 1, 1, 1}, {1, 1, 1, 1});
  opt.norm = a;
  r = tiny({1.f, -1.f}, opt);
  EXPECT_NEAR(r.o[0], 0.5 + 0.25, kTight);
}

// ---- Gate ----------------------------------------------------------------------------------

TEST(RefGate, HeadwiseAndElementwise) {
  std::vector<float> g1 = {0.f}, g2 = {1.f, -2.f};
  Options opt;
  opt.gate = SigmoidGate{TensorView<const float>(g1.data(), {1, 1, 1, 1}, {1, 1, 1, 1})};
  auto r = tiny({1.f, -1.f}, opt, false);
  const double w0 = 1.0 / (1.0 + std::exp(-2.0));
  EXPECT_NEAR(r.o[0], 0.5 * w0, kTight);
  EXPECT_NEAR(r.o[1], 0.5 * (1 - w0), kTight);
  opt.gate = SigmoidGate{TensorView<const float>(g2.data(), {1, 1, 1, 2}, {2, 2, 2, 1})};
  r = tiny({1.f, -1.f}, opt, false);
  EXPECT_NEAR(r.o[0], sigm(1) * w0, kTight);
  EXPECT_NEAR(r.o[1], sigm(-2) * (1 - w0), kTight);
}

TEST(RefGate, AppliedAfterAffine) {
  std::vector<float> alpha = {0.75f}, g = {0.5f};
  AffineScaled a;
  a.alpha = TensorView<const float>(alpha.data(), {1, 1, 1, 1}, {1, 1, 1, 1});
  Options opt;
  opt.norm = a;
  const auto plain = tiny({1.f, -1.f}, opt);
  opt.gate = SigmoidGate{TensorView<const float>(g.data(), {1, 1, 1, 1}, {1, 1, 1, 1})};
  const auto gated = tiny({1.f, -1.f}, opt);
  EXPECT_NEAR(gated.o[0], plain.o[0] * sigm(0.5), kTight);
  EXPECT_NEAR(gated.o[1], plain.o[1] * sigm(0.5), kTight);
  EXPECT_EQ(gated.lse[0], plain.lse[0]);  // the gate does not touch the LSE
}

// ---- Scores: softcap, bias, ALiBi ----------------------------------------------------------

TEST(RefScore, SoftcapBeforeBias) {
  // x0 = 30 tanh(100 / 30) + 5, x1 = 0 + 0; a -inf bias on key 2 stays masked.
  std::vector<float> bias = {5.f, 0.f, -kInfF};
  Options opt;
  opt.score.softcap = 30.f;
  opt.score.bias = TensorView<const float>(bias.data(), {1, 1, 1, 3}, {0, 0, 0, 1});
  const auto r = tiny({100.f, 0.f, 7.f}, opt);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  const double x0 = 30.0 * std::tanh(100.0 / 30.0) + 5.0;
  EXPECT_NEAR(r.o[0], 1.0 / (1.0 + std::exp(-x0)), kTight);
  EXPECT_EQ(r.o[2], 0.0);
  EXPECT_NEAR(r.lse[0], std::log(std::exp(x0) + 1.0), 1e-13);
}

TEST(RefScore, AlibiUsesOffsetAlignedPositions) {
  // Sq = 2, Skv = 3, all logits 0: row 1 (p = 2) sees -0.5 |2 - j|, row 0 (p = 1) -0.5 |1 - j|.
  const float slope = 0.5f;
  Options opt;
  opt.score.alibi_slopes = &slope;
  const auto r = tiny({0.f, 0.f, 0.f}, opt, true, 2);
  ASSERT_TRUE(r.status.ok());
  const double z1 = std::exp(-1.0) + std::exp(-0.5) + 1.0;
  EXPECT_NEAR(r.o[3 + 0], std::exp(-1.0) / z1, kTight);
  EXPECT_NEAR(r.o[3 + 2], 1.0 / z1, kTight);
  const double z0 = 2 * std::exp(-0.5) + 1.0;
  EXPECT_NEAR(r.o[0 + 1], 1.0 / z0, kTight);
  EXPECT_NEAR(r.lse[0], std::log(z0), kTight);
}

// ---- LSE availability ----------------------------------------------------------------------

TEST(RefLse, RejectedForSigmoidAndSoftpick) {
  for (NormSpec n : {NormSpec{Sigmoid{}}, NormSpec{Softpick{}}}) {
    Options opt;
    opt.norm = n;
    const auto r = tiny({1.f, 2.f}, opt, true);
    EXPECT_EQ(r.status.code(), Errc::invalid_argument);
    EXPECT_NE(r.status.message().find("lse"), std::string::npos) << r.status.message();
    EXPECT_TRUE(tiny({1.f, 2.f}, opt, false).status.ok());
  }
}

TEST(RefLse, OptionsLseIsIgnored) {
  // opt.lse belongs to the kernel; with Sigmoid it would be invalid for the kernel, but the
  // reference neither checks nor writes it.
  float sentinel = 123.f;
  Options opt;
  opt.norm = Sigmoid{};
  opt.lse = TensorView<float>(&sentinel, {1, 1, 1, 1}, {1, 1, 1, 1});
  const auto r = tiny({1.f, 2.f}, opt, false);
  EXPECT_TRUE(r.status.ok()) << r.status.message();
  EXPECT_EQ(sentinel, 123.f);
}

// ---- Fully masked rows, huge logits, -inf, NaN, mass -------------------------------------

// Every normalization we can build for a problem with H heads (lse: whether it is defined).
struct NormCase {
  const char* name;
  NormSpec norm;
  bool lse;
};

std::vector<NormCase> all_norms(const std::vector<float>& per_head, const Tensor& alpha) {
  Sigmoid sn;
  sn.normalize = true;
  sn.eps = 0.f;
  AffineScaled af;
  af.alpha = alpha.cview();
  return {{"softmax", Softmax{}, true},
          {"sink", SinkSoftmax{per_head.data()}, true},
          {"sigmoid", Sigmoid{}, false},
          {"sigmoid_norm", sn, false},
          {"affine", af, true},
          {"softpick", Softpick{}, false},
          {"ssmax", ScalableSoftmax{per_head.data()}, true}};
}

TEST(RefEdge, FullyMaskedRowIsZeroAndLseMinusInf) {
  // Causal with Sq = 4 > Skv = 2: p_i = i - 2, rows 0 and 1 see no key.
  const Problem p{1, 2, 1, 4, 2, 8, 4};
  const auto d = make_data(p);
  const std::vector<float> per_head = {0.5f, -1.f};
  const auto alpha = make_tensor({1, 4, 2, 1}, 3, 0.f, 1.f);
  const auto gate = make_tensor({1, 4, 2, 4}, 4, -2.f, 2.f);
  for (const auto& c : all_norms(per_head, alpha)) {
    Options opt;
    opt.mask = CausalMask{};
    opt.norm = c.norm;
    opt.gate = SigmoidGate{gate.cview()};
    const auto r = run_reference<double>(d, opt, c.lse);
    const auto r32 = run_reference<float>(d, opt, c.lse);
    ASSERT_TRUE(r.status.ok()) << c.name << ": " << r.status.message();
    for (index_t h = 0; h < p.heads_q; ++h) {
      for (index_t i = 0; i < 2; ++i) {
        for (index_t e = 0; e < p.dim_v; ++e) {
          EXPECT_EQ(r.o(0, i, h, e), 0.0) << c.name << " i=" << i;
          EXPECT_EQ(r32.o(0, i, h, e), 0.f) << c.name << " i=" << i;
        }
        if (!c.lse) continue;
        // The sink keeps its mass: LSE = logaddexp(-inf, S) = S (see attention.hpp).
        const double want = std::string(c.name) == "sink" ? double(per_head[h]) : -kInf;
        EXPECT_EQ(r.lse(0, h, i, 0), want) << c.name;
        EXPECT_EQ(double(r32.lse(0, h, i, 0)), want) << c.name;
      }
      for (index_t i = 2; i < 4; ++i)
        for (index_t e = 0; e < p.dim_v; ++e) EXPECT_TRUE(std::isfinite(r.o(0, i, h, e))) << c.name;
    }
  }
}

TEST(RefEdge, SinkMinusInfOnFullyMaskedRowGivesMinusInf) {
  const float s = -kInfF;
  Options opt;
  opt.norm = SinkSoftmax{&s};
  opt.mask = CausalMask{-1};  // Sq = Skv = 1: p_0 = -1 sees nothing
  const auto r = tiny({1.f}, opt);
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.o[0], 0.0);
  EXPECT_EQ(r.lse[0], -kInf);
}

TEST(RefEdge, HugeLogitsStayFinite) {
  // Logits around +-1e4 through the scale, for every normalization, in fp64 and naive fp32.
  const Problem p{1, 2, 2, 9, 13, 4, 3};
  const auto d = make_data(p, Layout::BSHD, 11);
  const std::vector<float> per_head = {1.f, 2.f};
  const auto alpha = make_tensor({1, 9, 2, 1}, 5, 0.f, 1.f);
  for (const auto& c : all_norms(per_head, alpha)) {
    for (float scale : {1e4f, -1e4f}) {
      Options opt;
      opt.norm = c.norm;
      opt.score.scale = scale;
      const auto r = run_reference<double>(d, opt, c.lse);
      const auto r32 = run_reference<float>(d, opt, c.lse);
      ASSERT_TRUE(r.status.ok()) << c.name << ": " << r.status.message();
      for (size_t n = 0; n < r.obuf.size(); ++n) {
        ASSERT_TRUE(std::isfinite(r.obuf[n])) << c.name << " scale " << scale;
        ASSERT_TRUE(std::isfinite(r32.obuf[n])) << c.name << " scale " << scale;
      }
      for (size_t n = 0; n < r.lsebuf.size(); ++n) ASSERT_TRUE(std::isfinite(r.lsebuf[n])) << c.name;
    }
  }
}

TEST(RefEdge, HugeBiasPicksTheMaxKey) {
  std::vector<float> bias = {1e4f, -1e4f, 1e4f - 1.f};
  Options opt;
  opt.score.bias = TensorView<const float>(bias.data(), {1, 1, 1, 3}, {0, 0, 0, 1});
  const auto r = tiny({0.f, 0.f, 0.f}, opt);
  EXPECT_NEAR(r.o[0], 1.0 / (1.0 + std::exp(-1.0)), kTight);
  EXPECT_EQ(r.o[1], 0.0);
  EXPECT_NEAR(r.lse[0], 1e4 + std::log1p(std::exp(-1.0)), 1e-11);
}

TEST(RefEdge, MinusInfBiasEqualsRemovingTheKey) {
  std::vector<float> bias = {0.f, -kInfF, 0.f};
  Options opt;
  opt.score.bias = TensorView<const float>(bias.data(), {1, 1, 1, 3}, {0, 0, 0, 1});
  const auto r = tiny({0.5f, 3.f, -0.25f}, opt);
  const auto ref = tiny({0.5f, -0.25f}, Options{});
  EXPECT_EQ(r.o[1], 0.0);
  EXPECT_NEAR(r.o[0], ref.o[0], kTight);
  EXPECT_NEAR(r.o[2], ref.o[1], kTight);
  EXPECT_NEAR(r.lse[0], ref.lse[0], kTight);
}

TEST(RefEdge, NaNOnlyAffectsItsRow) {
  const Problem p{2, 2, 1, 6, 9, 8, 5};
  auto d = make_data(p, Layout::BHSD, 5);
  d.mq()(1, 3, 0, 2) = std::numeric_limits<float>::quiet_NaN();
  // A NaN bias on a masked pair must not matter either.
  auto bias = make_tensor({2, 2, 6, 9}, 9, -1.f, 1.f);
  bias(0, 1, 0, 8) = std::numeric_limits<float>::quiet_NaN();  // row 0 sees j <= 3 only
  const std::vector<float> per_head = {0.5f, -1.f};
  const auto alpha = make_tensor({2, 6, 2, 1}, 3, 0.f, 1.f);
  for (const auto& c : all_norms(per_head, alpha)) {
    Options opt;
    opt.norm = c.norm;
    opt.mask = CausalMask{};
    opt.score.bias = bias.cview();
    const auto r = run_reference<double>(d, opt, c.lse);
    ASSERT_TRUE(r.status.ok()) << c.name << ": " << r.status.message();
    for (index_t b = 0; b < 2; ++b)
      for (index_t i = 0; i < 6; ++i)
        for (index_t h = 0; h < 2; ++h) {
          const bool poisoned = b == 1 && i == 3 && h == 0;
          for (index_t e = 0; e < p.dim_v; ++e)
            EXPECT_EQ(std::isnan(r.o(b, i, h, e)), poisoned) << c.name << " b=" << b << " i=" << i << " h=" << h;
          if (c.lse) {
            EXPECT_EQ(std::isnan(r.lse(b, h, i, 0)), poisoned) << c.name;
          }
        }
  }
}

TEST(RefEdge, RowsSumToOneWithUnitValues) {
  // V = 1: softmax and SSMax give O = 1 for every row that sees a key; affine with the default
  // beta and alpha_ma = 1 gives alpha + (1 - alpha) = 1; the sink gives sigmoid(LSE - S).
  const Problem p{1, 2, 2, 20, 20, 8, 3};
  auto d = make_data(p, Layout::BSHD, 2);
  std::fill(d.vbuf.begin(), d.vbuf.end(), 1.f);
  const std::vector<float> per_head = {0.5f, 1.5f};
  const auto alpha = make_tensor({1, 20, 2, 1}, 3, 0.f, 1.f);
  SlidingWindowMask win;
  win.left = 4;
  win.right = 2;
  win.sink_tokens = 1;
  for (const auto& c : all_norms(per_head, alpha)) {
    const std::string name = c.name;
    if (name == "sigmoid" || name == "softpick") continue;
    Options opt;
    opt.norm = c.norm;
    opt.mask = win;
    const auto r = run_reference<double>(d, opt, c.lse);
    Options soft = opt;
    soft.norm = Softmax{};
    const auto s = run_reference<double>(d, soft, true);
    for (index_t i = 0; i < p.seq_q; ++i)
      for (index_t h = 0; h < p.heads_q; ++h)
        for (index_t e = 0; e < p.dim_v; ++e) {
          const double want = name == "sink" ? sigm(s.lse(0, h, i, 0) - per_head[h]) : 1.0;
          EXPECT_NEAR(r.o(0, i, h, e), want, 1e-14) << name << " i=" << i;
        }
  }
}

TEST(RefEdge, FloatPathAgreesWithDouble) {
  const Problem p{1, 4, 2, 33, 47, 32, 16};
  const auto d = make_data(p, Layout::BSHD, 3);
  Options opt;
  opt.mask = CausalMask{};
  const auto r64 = run_reference<double>(d, opt, true);
  const auto r32 = run_reference<float>(d, opt, true);
  for (size_t n = 0; n < r64.obuf.size(); ++n) EXPECT_NEAR(r64.obuf[n], r32.obuf[n], 1e-5);
  for (size_t n = 0; n < r64.lsebuf.size(); ++n) EXPECT_NEAR(r64.lsebuf[n], r32.lsebuf[n], 1e-5);
  // And the fp32 path really is fp32: it differs from fp64 somewhere.
  double diff = 0;
  for (size_t n = 0; n < r64.obuf.size(); ++n) diff = std::max(diff, std::abs(r64.obuf[n] - r32.obuf[n]));
  EXPECT_GT(diff, 0.0);
}

}  // namespace
}  // namespace test
}  // namespace sinkattn
