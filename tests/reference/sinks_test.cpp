// SEMANTICS section 6 in the reference (reference/sinks.hpp): the weights against hand-computed
// softmax weights and against `attention`'s outputs, mass and sink metric on a case with a
// closed form, the fraction of heads, ACT against its limits (beta = 1 is plain attention,
// beta = 0 is attention with S masked out) and a hand-worked row, and the argument checks.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "harness.hpp"
#include "sinkattn/reference/attention.hpp"
#include "sinkattn/reference/sinks.hpp"

namespace sinkattn {
namespace test {
namespace {

// Dense [B][Hq][Sq][Skv] weights through attention_weights, with its status.
struct Weights {
  Status status;
  std::vector<double> buf;
  TensorView<double> view;
  double operator()(index_t b, index_t h, index_t i, index_t j) const { return view(b, h, i, j); }
};

Weights weights_of(const Data& d, const Options& opt) {
  const Problem& p = d.p;
  Weights w;
  w.buf.assign(static_cast<size_t>(p.batch * p.heads_q * p.seq_q * p.seq_kv), std::nan(""));
  w.view = {w.buf.data(),
            {p.batch, p.heads_q, p.seq_q, p.seq_kv},
            {p.heads_q * p.seq_q * p.seq_kv, p.seq_q * p.seq_kv, p.seq_kv, 1}};
  w.status = reference::attention_weights<double>(p, d.q, d.k, opt, w.view);
  return w;
}

TensorView<double> bhs1(std::vector<double>& buf, index_t b, index_t h, index_t s) {
  buf.assign(static_cast<size_t>(b * h * s), std::nan(""));
  return TensorView<double>::lse(buf.data(), b, h, s);
}

// attention_act's output as a [B, Sq, Hq, Dv] buffer; its status into *st when given.
std::vector<double> act_out(const Data& d, const Options& opt, const std::vector<index_t>& s, double beta,
                            Status* st = nullptr) {
  const Problem& p = d.p;
  std::vector<double> o(static_cast<size_t>(p.batch * p.seq_q * p.heads_q * p.dim_v), std::nan(""));
  const ActCalibration act{s.data(), static_cast<index_t>(s.size()), beta};
  const Status r = reference::attention_act<double>(
      p, d.q, d.k, d.v, TensorView<double>::bshd(o.data(), p.batch, p.seq_q, p.heads_q, p.dim_v), opt, act);
  if (st) *st = r;
  EXPECT_TRUE(r.ok() || st) << r.message();
  return o;
}

// ---- Weights -------------------------------------------------------------------------------

TEST(RefSinkWeights, SoftmaxWeightsMatchAHandComputedSoftmax) {
  const Problem p{2, 4, 2, 5, 7, 6, 3};  // GQA: heads 0, 1 read KV head 0
  const auto d = make_data(p, Layout::BHSD, 4);
  const auto w = weights_of(d, Options{});
  ASSERT_TRUE(w.status.ok()) << w.status.message();
  const double scale = 1.0 / std::sqrt(6.0);
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 4; ++h)
      for (index_t i = 0; i < 5; ++i) {
        std::vector<double> e(7);
        double sum = 0;
        for (index_t j = 0; j < 7; ++j) {
          double dot = 0;
          for (index_t x = 0; x < 6; ++x) dot += double(d.q(b, i, h, x)) * double(d.k(b, j, h / 2, x));
          e[j] = std::exp(scale * dot);
          sum += e[j];
        }
        for (index_t j = 0; j < 7; ++j) EXPECT_NEAR(w(b, h, i, j), e[j] / sum, 1e-14) << b << h << i << j;
      }
}

// sum_j w_ij v_j must be attention's output for every normalization and mask: the weights are
// the ones the reference uses, in the right (head, row, key) places.
TEST(RefSinkWeights, WeightsTimesVIsAttentionForEveryNormalization) {
  const Problem p{1, 4, 2, 9, 11, 8, 5};
  const auto d = make_data(p, Layout::BSHD, 7, 1.5f);
  const std::vector<float> sinks = {0.5f, -1.f, 2.f, -std::numeric_limits<float>::infinity()};
  const std::vector<float> svals = {0.7f, 1.1f, 0.9f, 1.3f};
  std::vector<float> alpha(9 * 4), beta(9 * 4);
  for (size_t n = 0; n < alpha.size(); ++n) alpha[n] = 0.5f + 0.05f * float(n % 7), beta[n] = 0.01f * float(n % 5);
  std::vector<NormSpec> norms = {Softmax{},
                                 SinkSoftmax{sinks.data()},
                                 Sigmoid{-0.5f, nullptr, false, 0.f},
                                 Sigmoid{0.25f, nullptr, true, 1e-3f},
                                 Softpick{},
                                 ScalableSoftmax{svals.data()}};
  AffineScaled aff;
  aff.alpha = TensorView<const float>::bshd(alpha.data(), 1, 9, 4, 1);
  aff.beta = TensorView<const float>::bshd(beta.data(), 1, 9, 4, 1);
  norms.push_back(aff);
  std::vector<MaskSpec> masks = {FullMask{}, CausalMask{}, SlidingWindowMask{2, 1, 1, 0}};
  for (const auto& norm : norms)
    for (const auto& mask : masks) {
      Options opt;
      opt.norm = norm;
      opt.mask = mask;
      opt.score.softcap = 3.f;
      const auto w = weights_of(d, opt);
      ASSERT_TRUE(w.status.ok()) << w.status.message();
      const auto ref = run_reference<double>(d, opt);
      ASSERT_TRUE(ref.status.ok());
      for (index_t h = 0; h < 4; ++h)
        for (index_t i = 0; i < 9; ++i)
          for (index_t e = 0; e < 5; ++e) {
            double o = 0;
            for (index_t j = 0; j < 11; ++j) o += w(0, h, i, j) * double(d.v(0, j, h / 2, e));
            ASSERT_NEAR(o, ref.o(0, i, h, e), 1e-12) << norm.index() << " " << mask.index() << " h" << h << " i" << i;
          }
    }
}

TEST(RefSinkWeights, MaskedKeysGetZeroAndASinkKeepsItsShare) {
  const Problem p{1, 2, 2, 6, 6, 4, 4};
  const auto d = make_data(p, Layout::BSHD, 2);
  const std::vector<float> sinks = {1.f, -2.f};
  Options opt;
  opt.mask = CausalMask{};
  opt.norm = SinkSoftmax{sinks.data()};
  const auto w = weights_of(d, opt);
  ASSERT_TRUE(w.status.ok());
  std::vector<double> lse(12);
  std::vector<double> o(6 * 2 * 4);
  ASSERT_TRUE(reference::attention<double>(p, d.q, d.k, d.v, TensorView<double>::bshd(o.data(), 1, 6, 2, 4), opt,
                                           TensorView<double>::lse(lse.data(), 1, 2, 6))
                  .ok());
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < 6; ++i) {
      double total = 0;
      for (index_t j = 0; j < 6; ++j) {
        if (j > i) {
          EXPECT_EQ(w(0, h, i, j), 0.0);
        }
        total += w(0, h, i, j);
      }
      // The row's keys hold 1 - exp(sink - LSE): the rest is the sink's.
      EXPECT_NEAR(total, 1.0 - std::exp(double(sinks[h]) - lse[h * 6 + i]), 1e-14);
      EXPECT_LT(total, 1.0);
    }
}

TEST(RefSinkWeights, GateIsNotPartOfTheWeights) {
  const Problem p{1, 2, 1, 4, 5, 4, 3};
  const auto d = make_data(p, Layout::BSHD, 3);
  std::vector<float> g(4 * 2 * 3, 2.f);
  Options gated;
  gated.gate = SigmoidGate{TensorView<const float>::bshd(g.data(), 1, 4, 2, 3)};
  const auto a = weights_of(d, Options{});
  const auto b = weights_of(d, gated);
  ASSERT_TRUE(a.status.ok() && b.status.ok());
  for (size_t n = 0; n < a.buf.size(); ++n) EXPECT_EQ(a.buf[n], b.buf[n]);
}

// ---- Mass and sink metric ------------------------------------------------------------------

// q = 0: every visible logit is 0, so a causal row i weighs its keys 1 / (i + 1).
TEST(RefSinkMass, UniformCausalRowsHaveAClosedForm) {
  const index_t S = 7;
  Problem p{1, 2, 1, S, S, 4, 4};
  auto d = make_data(p, Layout::BSHD, 5);
  auto mq = d.mq();
  for (index_t i = 0; i < S; ++i)
    for (index_t h = 0; h < 2; ++h)
      for (index_t x = 0; x < 4; ++x) mq(0, i, h, x) = 0.f;
  Options opt;
  opt.mask = CausalMask{};
  std::vector<double> mb, ab;
  const auto mass = bhs1(mb, 1, 2, S);
  const auto alpha = bhs1(ab, 1, 2, S);
  ASSERT_TRUE(reference::sink_mass<double>(p, d.q, d.k, opt, mass, alpha).ok());
  for (index_t h = 0; h < 2; ++h)
    for (index_t j = 0; j < S; ++j) {
      double m = 0;
      for (index_t i = j; i < S; ++i) m += 1.0 / double(i + 1);
      EXPECT_NEAR(mass(0, h, j, 0), m, 1e-14) << j;
      EXPECT_NEAR(alpha(0, h, j, 0), m / double(S - j), 1e-14) << j;
    }
  // The masses of a softmax head add up to its rows.
  double total = 0;
  for (index_t j = 0; j < S; ++j) total += mass(0, 1, j, 0);
  EXPECT_NEAR(total, double(S), 1e-13);
}

// The naive-fp32 instantiation (Real = float) computes the same quantities.
TEST(RefSinkMass, FloatInstantiationAgreesWithDouble) {
  const Problem p{1, 2, 1, 12, 12, 8, 4};
  const auto d = make_data(p, Layout::BSHD, 6);
  Options opt;
  opt.mask = CausalMask{};
  std::vector<double> mb, ab;
  const auto mass = bhs1(mb, 1, 2, 12);
  const auto alpha = bhs1(ab, 1, 2, 12);
  ASSERT_TRUE(reference::sink_mass<double>(p, d.q, d.k, opt, mass, alpha).ok());
  std::vector<float> mf(24), af(24);
  ASSERT_TRUE(reference::sink_mass<float>(p, d.q, d.k, opt, TensorView<float>::lse(mf.data(), 1, 2, 12),
                                          TensorView<float>::lse(af.data(), 1, 2, 12))
                  .ok());
  for (size_t n = 0; n < 24; ++n) {
    EXPECT_NEAR(mf[n], mb[n], 1e-5 * (1 + mb[n])) << n;
    EXPECT_NEAR(af[n], ab[n], 1e-5) << n;
  }
  std::vector<float> o(12 * 2 * 4);
  const std::vector<index_t> s = {3};
  ASSERT_TRUE(reference::attention_act<float>(p, d.q, d.k, d.v, TensorView<float>::bshd(o.data(), 1, 12, 2, 4), opt,
                                              ActCalibration{s.data(), 1, 0.5})
                  .ok());
  const auto od = act_out(d, opt, s, 0.5);
  for (size_t n = 0; n < o.size(); ++n) EXPECT_NEAR(o[n], od[n], 1e-5) << n;
}

// Sq < Skv: rows sit at positions p_i = i + Skv - Sq, and alpha_j averages the rows at or
// after key j only (here without a causal mask, so earlier rows do see key j).
TEST(RefSinkMass, AlphaAveragesTheRowsAtOrAfterTheKeyByPosition) {
  const Problem p{2, 3, 3, 4, 9, 5, 2};
  const auto d = make_data(p, Layout::BHSD, 8);
  const auto w = weights_of(d, Options{});
  ASSERT_TRUE(w.status.ok());
  std::vector<double> mb, ab;
  const auto mass = bhs1(mb, 2, 3, 9);
  const auto alpha = bhs1(ab, 2, 3, 9);
  ASSERT_TRUE(reference::sink_mass<double>(p, d.q, d.k, Options{}, mass, alpha).ok());
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 3; ++h)
      for (index_t j = 0; j < 9; ++j) {
        double m = 0, late = 0;
        index_t n = 0;
        for (index_t i = 0; i < 4; ++i) {
          m += w(b, h, i, j);
          if (i + 5 >= j) late += w(b, h, i, j), ++n;
        }
        EXPECT_NEAR(mass(b, h, j, 0), m, 1e-15);
        EXPECT_NEAR(alpha(b, h, j, 0), n > 0 ? late / double(n) : 0.0, 1e-15) << j;
      }
  EXPECT_NEAR(alpha(1, 2, 8, 0), w(1, 2, 3, 8), 1e-15);  // key 8: only the last row (p = 8)
}

TEST(RefSinkMass, HeadFractionCountsHeadsAboveEps) {
  // alpha [B = 2, H = 4, Skv = 3, 1]
  std::vector<double> a = {0.9, 0.1, 0.31, 0.2, 0.0, 0.5, 0.4, 0.3, 0.29, 0.05, 0.6, 0.7,   // b = 0
                           0.0, 0.0, 0.0,  1.0, 1.0, 1.0, 0.3, 0.3, 0.3,  0.31, 0.2, 0.1};  // b = 1
  const auto alpha = TensorView<const double>::lse(a.data(), 2, 4, 3);
  std::vector<double> f;
  const auto frac = bhs1(f, 2, 1, 3);
  ASSERT_TRUE(reference::sink_head_fraction<double>(alpha, frac).ok());
  const double want[2][3] = {{0.5, 0.25, 0.75}, {0.5, 0.25, 0.25}};
  for (index_t b = 0; b < 2; ++b)
    for (index_t j = 0; j < 3; ++j) EXPECT_EQ(frac(b, 0, j, 0), want[b][j]) << b << j;
  ASSERT_TRUE(reference::sink_head_fraction<double>(alpha, frac, 0.0).ok());
  EXPECT_EQ(frac(1, 0, 0, 0), 0.75);  // b = 1, key 0: 0.0 is not above 0
}

// ---- ACT calibration -----------------------------------------------------------------------

TEST(RefSinkAct, BetaOneIsPlainAttention) {
  const Problem p{1, 4, 2, 8, 10, 6, 5};
  const auto d = make_data(p, Layout::BSHD, 11);
  Options opt;
  opt.mask = CausalMask{};
  const auto o = act_out(d, opt, {1, 4, 7}, 1.0);
  const auto ref = run_reference<double>(d, opt);
  for (size_t n = 0; n < o.size(); ++n) EXPECT_NEAR(o[n], ref.obuf[n], 1e-14) << n;
}

// Softmax with beta = 0: the other keys share the whole row, i.e. attention with S masked out
// (a -inf bias on S's columns), for every row that sees a key outside S.
TEST(RefSinkAct, BetaZeroIsAttentionWithTheSinksMaskedOut) {
  const Problem p{2, 2, 1, 6, 6, 4, 3};
  const auto d = make_data(p, Layout::BHSD, 12);
  const std::vector<index_t> s = {2, 3};
  std::vector<float> bias(2 * 2 * 6 * 6, 0.f);
  for (size_t n = 0; n < bias.size(); ++n)
    if (n % 6 == 2 || n % 6 == 3) bias[n] = -std::numeric_limits<float>::infinity();
  Options opt;
  opt.mask = CausalMask{};
  Options masked = opt;
  masked.score.bias = {bias.data(), {2, 2, 6, 6}, {72, 36, 6, 1}};
  const auto o = act_out(d, opt, s, 0.0);
  const auto ref = run_reference<double>(d, masked);
  for (index_t b = 0; b < 2; ++b)
    for (index_t i = 0; i < 6; ++i)
      for (index_t h = 0; h < 2; ++h)
        for (index_t e = 0; e < 3; ++e) {
          const double got = o[static_cast<size_t>(((b * 6 + i) * 2 + h) * 3 + e)];
          EXPECT_NEAR(got, ref.o(b, i, h, e), 1e-14) << b << i << h << e;
        }
}

// One hand-worked row: q = 0, four keys, each weighs 1/4; S = {2}, beta = 1/2: key 2 keeps
// 1/8, the others get 1/4 * (1 - 1/8) / (3/4) = 7/24 each.
TEST(RefSinkAct, HandWorkedRowAndGateLast) {
  const Problem p{1, 1, 1, 1, 4, 2, 3};
  auto d = make_data(p, Layout::BSHD, 13);
  d.mq()(0, 0, 0, 0) = 0.f;
  d.mq()(0, 0, 0, 1) = 0.f;
  const std::vector<double> w = {7.0 / 24, 7.0 / 24, 1.0 / 8, 7.0 / 24};
  const auto o = act_out(d, Options{}, {2}, 0.5);
  std::vector<float> g = {0.3f, -1.f, 2.f};
  Options gated;
  gated.gate = SigmoidGate{TensorView<const float>::bshd(g.data(), 1, 1, 1, 3)};
  const auto og = act_out(d, gated, {2}, 0.5);
  for (index_t e = 0; e < 3; ++e) {
    double want = 0;
    for (index_t j = 0; j < 4; ++j) want += w[j] * double(d.v(0, j, 0, e));
    EXPECT_NEAR(o[e], want, 1e-15) << e;
    EXPECT_NEAR(og[e], want / (1 + std::exp(-double(g[e]))), 1e-15) << e;
  }
}

// With a learned sink the keys hold T_i < 1; ACT moves mass among the keys only.
TEST(RefSinkAct, RowTotalsStayWithALearnedSink) {
  const Problem p{1, 2, 2, 5, 5, 3, 5};
  auto d = make_data(p, Layout::BSHD, 14);
  // v_j = e_j: the output row is the calibrated weight vector.
  auto mv = d.mv();
  for (index_t j = 0; j < 5; ++j)
    for (index_t g = 0; g < 2; ++g)
      for (index_t e = 0; e < 5; ++e) mv(0, j, g, e) = e == j ? 1.f : 0.f;
  const std::vector<float> sinks = {0.f, 1.5f};
  Options opt;
  opt.norm = SinkSoftmax{sinks.data()};
  const auto w = weights_of(d, opt);
  const auto o = act_out(d, opt, {1, 3}, 0.25);
  for (index_t i = 0; i < 5; ++i)
    for (index_t h = 0; h < 2; ++h) {
      double t = 0, t2 = 0, ps = 0;
      for (index_t j = 0; j < 5; ++j) {
        const double x = o[static_cast<size_t>((i * 2 + h) * 5 + j)];
        t += w(0, h, i, j);
        t2 += x;
        if (j == 1 || j == 3) {
          EXPECT_NEAR(x, 0.25 * w(0, h, i, j), 1e-15);
          ps += w(0, h, i, j);
        }
      }
      EXPECT_NEAR(t2, t, 1e-14);
      EXPECT_LT(t, 1.0);
      EXPECT_NEAR(o[static_cast<size_t>((i * 2 + h) * 5)], w(0, h, i, 0) * (t - 0.25 * ps) / (t - ps), 1e-15);
    }
}

// ---- Argument checks -----------------------------------------------------------------------

TEST(RefSinkChecks, BadArgumentsNameTheArgument) {
  const Problem p{1, 2, 1, 4, 6, 4, 3};
  const auto d = make_data(p, Layout::BSHD, 15);
  const auto msg = [&](const std::vector<index_t>& s, double beta) {
    Status st;
    act_out(d, Options{}, s, beta, &st);
    EXPECT_FALSE(st.ok());
    return st.message();
  };
  EXPECT_NE(msg({1, 6}, 0.5).find("act.keys[1] is 6"), std::string::npos);
  EXPECT_NE(msg({0}, 0.5).find("first token"), std::string::npos);
  EXPECT_NE(msg({2, 2}, 0.5).find("twice"), std::string::npos);
  EXPECT_NE(msg({1}, -0.1).find("act.beta"), std::string::npos);
  EXPECT_NE(msg({1}, std::nan("")).find("act.beta"), std::string::npos);
  {
    std::vector<double> o(24);
    const ActCalibration bad{nullptr, 2, 0.5};
    const Status st =
        reference::attention_act<double>(p, d.q, d.k, d.v, TensorView<double>::bshd(o.data(), 1, 4, 2, 3), {}, bad);
    EXPECT_EQ(st.code(), Errc::null_data);
    EXPECT_NE(st.message().find("act.keys"), std::string::npos);
  }
  std::vector<double> mb, wb(2 * 4 * 5);
  const auto wrong = TensorView<double>{wb.data(), {1, 2, 4, 5}, {40, 20, 5, 1}};  // Skv 5, not 6
  const Status s1 = reference::attention_weights<double>(p, d.q, d.k, Options{}, wrong);
  EXPECT_EQ(s1.code(), Errc::shape_mismatch);
  EXPECT_NE(s1.message().find("w:"), std::string::npos);
  const Status s2 = reference::sink_mass<double>(p, d.q, d.k, Options{}, bhs1(mb, 1, 2, 5));
  EXPECT_EQ(s2.code(), Errc::shape_mismatch);
  EXPECT_NE(s2.message().find("mass:"), std::string::npos);
  std::vector<double> ab;
  const auto alpha = bhs1(ab, 1, 2, 6);
  const Status s3 = reference::sink_head_fraction<double>(alpha, bhs1(mb, 1, 2, 6));
  EXPECT_EQ(s3.code(), Errc::shape_mismatch);
  EXPECT_NE(s3.message().find("frac:"), std::string::npos);
  const Status s4 = reference::sink_head_fraction<double>(alpha, bhs1(mb, 1, 1, 6), std::nan(""));
  EXPECT_EQ(s4.code(), Errc::out_of_range);
  // The weights' own problems come from attention's checks.
  Options bad_norm;
  bad_norm.norm = Sigmoid{0.f, nullptr, true, -1.f};
  const Status s5 = reference::sink_mass<double>(p, d.q, d.k, bad_norm, bhs1(mb, 1, 2, 6));
  EXPECT_EQ(s5.code(), Errc::out_of_range);
  EXPECT_NE(s5.message().find("norm.eps"), std::string::npos);
}

TEST(RefSinkChecks, EmptyProblemsWriteNothingAndSucceed) {
  const Problem p{1, 2, 1, 0, 5, 4, 3};
  const auto d = make_data(p, Layout::BSHD, 16);
  std::vector<double> mb;
  const auto mass = bhs1(mb, 1, 2, 5);
  ASSERT_TRUE(reference::sink_mass<double>(p, d.q, d.k, Options{}, mass).ok());
  for (double m : mb) EXPECT_EQ(m, 0.0);  // no query rows: no mass
  const Problem p0{1, 2, 1, 3, 0, 4, 3};
  const auto d0 = make_data(p0, Layout::BSHD, 17);
  std::vector<double> o(18, std::nan(""));
  const Status st = reference::attention_act<double>(
      p0, d0.q, d0.k, d0.v, TensorView<double>::bshd(o.data(), 1, 3, 2, 3), Options{}, ActCalibration{});
  ASSERT_TRUE(st.ok()) << st.message();
  for (double x : o) EXPECT_EQ(x, 0.0);  // no keys: output 0 (as attention's)
}

}  // namespace
}  // namespace test
}  // namespace sinkattn
