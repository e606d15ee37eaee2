// The normalization policies of the fused loop (sigmoid, softpick, scalable softmax,
// affine-scaled) against the fp64 reference, in the prefill and the split-KV decode
// orientation, alone and combined with masks and score modifiers, and across thread counts.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "harness.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "threads.hpp"

namespace sinkattn {
namespace {

using test::Layout;

bool softmax_family(const Options& opt) {
  return !std::holds_alternative<Sigmoid>(opt.norm) && !std::holds_alternative<Softpick>(opt.norm);
}

// Runs the kernel with 1 and 2 threads, checks both are bit-identical and match the reference.
::testing::AssertionResult check(const test::Data& d, Options opt, double atol = 1e-5) {
  const bool lse = softmax_family(opt);
  test::Out one = test::make_out(d.p, Layout::BSHD, lse), two = test::make_out(d.p, Layout::BSHD, lse);
  opt.lse = one.lse;
  Status s = forward(d.p, d.q, d.k, d.v, one.o, opt, Executor::serial());
  if (!s.ok()) return ::testing::AssertionFailure() << "forward failed: " << s.message();
  opt.lse = two.lse;
  s = forward(d.p, d.q, d.k, d.v, two.o, opt, test::thread_executor(2));
  if (!s.ok()) return ::testing::AssertionFailure() << "forward (2 threads) failed: " << s.message();
  if (!test::bit_identical(one.obuf, two.obuf) || !test::bit_identical(one.lsebuf, two.lsebuf))
    return ::testing::AssertionFailure() << "1 and 2 threads differ";
  opt.lse = one.lse;
  return test::matches_reference(d, opt, one, atol);
}

// Every normalization under test, with the per-head data they borrow.
struct Norms {
  std::vector<float> head_bias, ssmax_s;
  test::Tensor alpha, beta;
  std::vector<std::pair<std::string, NormSpec>> list;

  explicit Norms(const Problem& p) {
    head_bias.resize(static_cast<std::size_t>(p.heads_q));
    ssmax_s.resize(static_cast<std::size_t>(p.heads_q));
    for (index_t h = 0; h < p.heads_q; ++h) {
      head_bias[static_cast<std::size_t>(h)] = 0.5f * static_cast<float>(h % 3) - 0.5f;
      ssmax_s[static_cast<std::size_t>(h)] = 0.3f + 0.2f * static_cast<float>(h % 4);
    }
    alpha = test::make_tensor({p.batch, p.seq_q, p.heads_q, 1}, 21, 0.2f, 1.2f);
    beta = test::make_tensor({p.batch, p.seq_q, p.heads_q, 1}, 22, -0.01f, 0.01f);
    list.push_back({"sigmoid", Sigmoid{sigmoid_bias_for_length(p.seq_kv)}});
    list.push_back({"sigmoid_norm_head", Sigmoid{0.25f, head_bias.data(), true, 1e-6f}});
    list.push_back({"softpick", Softpick{}});
    list.push_back({"ssmax", ScalableSoftmax{ssmax_s.data()}});
    list.push_back({"affine", AffineScaled{alpha.cview(), {}, 1.f, false}});
    list.push_back({"affine_skv", AffineScaled{alpha.cview(), {}, 0.5f, true}});
    list.push_back({"affine_beta", AffineScaled{alpha.cview(), beta.cview(), 1.f, false}});
  }
};

void check_all(const test::Data& d, const Options& base, const std::string& what) {
  Norms norms(d.p);
  for (const auto& [name, spec] : norms.list) {
    Options opt = base;
    opt.norm = spec;
    EXPECT_TRUE(check(d, opt)) << what << " norm=" << name;
  }
}

Options causal(index_t offset = 0) {
  Options o;
  o.mask = CausalMask{offset};
  return o;
}

TEST(Norm, PrefillLengthsStraddlingTiles) {
#ifdef SINKATTN_TEST_QUICK
  const std::vector<index_t> lengths = {1, 17, 65};
#else
  const std::vector<index_t> lengths = test::kLengths;
#endif
  for (index_t sq : lengths)
    for (index_t skv : {index_t(1), index_t(63), index_t(65), index_t(130)}) {
      const auto d = test::make_data(Problem{1, 4, 2, sq, skv, 40, 24}, Layout::BSHD, sq * 1000 + skv);
      const std::string what = "sq=" + std::to_string(sq) + " skv=" + std::to_string(skv);
      check_all(d, Options{}, what + " full");
      check_all(d, causal(), what + " causal");
    }
}

TEST(Norm, PrefillFlashPairsBhsd) {
  for (const auto& [sq, skv] : test::kFlashPairs) {
    if (sq * skv > 300000) continue;  // (1023, 1024) runs in the large test below
    const auto d =
        test::relayout(test::make_data(Problem{1, 2, 1, sq, skv, 64, 64}, Layout::BSHD, sq + skv), Layout::BHSD);
    check_all(d, causal(), "sq=" + std::to_string(sq) + " skv=" + std::to_string(skv));
  }
}

TEST(Norm, PrefillLargeCausalWithDiagonalBlocks) {
  const auto d = test::make_data(Problem{1, 2, 1, 300, 1100, 128, 128}, Layout::BSHD, 5);
  check_all(d, causal(), "large");
}

TEST(Norm, FullyMaskedRows) {
  // offset -40: the first 40 query rows see no key at all (output 0, LSE -inf, no NaN).
  const auto d = test::make_data(Problem{1, 2, 2, 100, 100, 32, 32}, Layout::BSHD, 9);
  check_all(d, causal(-40), "prefill offset -40");
  const auto dd = test::make_data(Problem{1, 4, 1, 2, 3000, 32, 32}, Layout::BSHD, 10);
  check_all(dd, causal(-3000), "decode all masked");
  check_all(dd, causal(-2990), "decode row 0 masked");
}

TEST(Norm, DecodeAcrossSplits) {
  // Sq * group <= 8 takes the split-KV decode path; Skv > 2048 merges several splits.
  for (index_t skv : {index_t(1), index_t(17), index_t(2049), index_t(5000)})
    for (index_t sq : {index_t(1), index_t(2)}) {
      const Problem p{1, 8, 2, sq, skv, 64, 64};
      ASSERT_TRUE(detail::use_decode(p));
      const auto d = test::make_data(p, Layout::BSHD, skv + sq);
      const std::string what = "decode sq=" + std::to_string(sq) + " skv=" + std::to_string(skv);
      check_all(d, Options{}, what + " full");
      check_all(d, causal(), what + " causal");
    }
  // Odd head dims (packed K/V with tails).
  const auto d = test::make_data(Problem{2, 4, 4, 1, 2100, 72, 40}, Layout::BSHD, 3);
  check_all(d, causal(), "decode d72/40");
}

TEST(Norm, LargeLogitsStayFinite) {
  // Logits of a few hundred: e^x overflows fp32 past 88, so softpick's e^x - 1 and the softmax
  // family need their max subtraction, and sigmoid saturates. At this magnitude one fp32 ulp of
  // a logit is ~3e-5, and the kernels round it once more than the naive path (log2(e) folded
  // into the scale): plain softmax misses the 1e-5 atol too (the control below), so the
  // absolute term is a few logit ulps here.
  constexpr double kAtol = 2e-4;
  const auto d = test::make_data(Problem{1, 2, 1, 70, 200, 32, 32}, Layout::BSHD, 12, 3.f);
  Options opt = causal();
  opt.score.scale = 4.f;
  EXPECT_TRUE(check(d, opt, kAtol)) << "softmax control";
  const auto dd = test::make_data(Problem{1, 2, 1, 1, 4100, 32, 32}, Layout::BSHD, 13, 3.f);
  for (const test::Data* data : {&d, &dd}) {
    Norms norms(data->p);
    for (const auto& [name, spec] : norms.list) {
      opt.norm = spec;
      EXPECT_TRUE(check(*data, opt, kAtol)) << "sq=" << data->p.seq_q << " norm=" << name;
    }
  }
}

// A NaN key makes NaN the rows that see it (query heads 2, 3 of KV head 1, causal rows at or
// past it) and no other row, under every normalization and plain softmax, in the prefill and
// the decode orientation. Each policy reaches the NaN its own way: softpick's numerator drops
// it (max(NaN, 0) is 0) and only its denominator keeps it, and a row max that skipped the NaN
// lane would leave an ordinary-looking row.
TEST(Norm, NanKeyPoisonsOnlyTheRowsThatSeeIt) {
  for (const index_t sq : {index_t(1), index_t(100)})
    for (const index_t skv : {index_t(1), index_t(100), index_t(2100)})
      for (const index_t at : {index_t(0), index_t(37), skv - 1}) {
        if (at >= skv || (sq > 1 && skv != sq)) continue;
        const Problem p{1, 4, 2, sq, skv, 32, 32};
        auto d = test::make_data(p, Layout::BSHD, 61 + skv);
        d.mk()(0, at, 1, 5) = std::nanf("");
        Norms norms(p);
        norms.list.push_back({"softmax", Softmax{}});
        for (const auto& [name, spec] : norms.list) {
          Options opt = causal(skv - sq);
          opt.norm = spec;
          test::Out out = test::make_out(p);
          ASSERT_TRUE(forward(p, d.q, d.k, d.v, out.o, opt).ok());
          for (index_t i = 0; i < sq; ++i)
            for (index_t h = 0; h < 4; ++h) {
              const bool sees = h >= 2 && i + skv - sq >= at;
              for (index_t x = 0; x < p.dim_v; ++x)
                ASSERT_EQ(std::isnan(out.o(0, i, h, x)), sees)
                    << name << " sq=" << sq << " skv=" << skv << " at=" << at << " i=" << i << " h=" << h;
            }
        }
      }
}

TEST(Norm, SigmoidCausalAlibi) {
  const auto slopes = alibi_slopes(8, 8.f);
  for (index_t sq : {index_t(1), index_t(130)}) {
    const auto d = test::make_data(Problem{1, 8, 2, sq, 2200, 64, 64}, Layout::BSHD, 31 + sq);
    Options opt = causal();
    opt.score.alibi_slopes = slopes.data();
    opt.norm = Sigmoid{sigmoid_bias_for_length(2200)};
    EXPECT_TRUE(check(d, opt)) << "sq=" << sq;
    opt.norm = Sigmoid{-2.f, nullptr, true, 1e-6f};
    EXPECT_TRUE(check(d, opt)) << "normalized sq=" << sq;
  }
}

TEST(Norm, ScoreModifiersWithEveryNorm) {
  const Problem p{1, 4, 2, 67, 150, 32, 32};
  const auto d = test::make_data(p, Layout::BSHD, 41, 2.f);
  const auto slopes = alibi_slopes(4, 4.f);
  auto bias = test::make_tensor({1, 4, 67, 150}, 42, -1.f, 1.f);
  bias(0, 1, 5, 7) = -std::numeric_limits<float>::infinity();  // a -inf bias entry is legal
  Options opt = causal();
  opt.score.softcap = 5.f;
  opt.score.alibi_slopes = slopes.data();
  opt.score.bias = bias.cview();
  check_all(d, opt, "softcap+alibi+bias");
  const Problem pd{1, 4, 1, 2, 2500, 32, 32};
  const auto dd = test::make_data(pd, Layout::BSHD, 43, 2.f);
  auto bias_d = test::make_tensor({1, 4, 2, 2500}, 44, -1.f, 1.f);
  opt.score.bias = bias_d.cview();
  check_all(dd, opt, "decode softcap+alibi+bias");
}

TEST(Norm, ScalableSoftmaxWithNonPositiveFactors) {
  // s_h <= 0 (and N_i = 1 on row 0 of a square causal problem) make the factor <= 0: masked
  // logits must stay -inf (the guarded pass), not turn into NaN or +inf.
  std::vector<float> s = {-0.5f, 0.f, 0.5f, 1.f};
  for (const Problem& p : {Problem{1, 4, 2, 70, 70, 32, 32}, Problem{1, 4, 1, 2, 2100, 32, 32}}) {
    const auto d = test::make_data(p, Layout::BSHD, 61);
    Options opt = causal();
    opt.norm = ScalableSoftmax{s.data()};
    EXPECT_TRUE(check(d, opt)) << "sq=" << p.seq_q;
  }
}

TEST(Norm, SigmoidHasNoRescaleAndNoLse) {
  static_assert(!policy::SigmoidNorm::kRescales, "the sigmoid O rescale must compile away");
  static_assert(policy::AffineScaledNorm::kSumsV && !policy::OnlineSoftmax::kSumsV, "");
  const auto d = test::make_data(Problem{1, 2, 1, 8, 8, 16, 16});
  test::Out out = test::make_out(d.p, Layout::BSHD, true);
  Options opt;
  opt.norm = Sigmoid{};
  opt.lse = out.lse;
  EXPECT_EQ(forward(d.p, d.q, d.k, d.v, out.o, opt).code(), Errc::invalid_argument);
  opt.norm = Softpick{};
  EXPECT_EQ(forward(d.p, d.q, d.k, d.v, out.o, opt).code(), Errc::invalid_argument);
}

TEST(Norm, MissingTensorsAreClearErrors) {
  const auto d = test::make_data(Problem{1, 2, 1, 8, 8, 16, 16});
  test::Out out = test::make_out(d.p);
  Options opt;
  opt.norm = ScalableSoftmax{};
  Status s = forward(d.p, d.q, d.k, d.v, out.o, opt);
  EXPECT_EQ(s.code(), Errc::null_data);
  EXPECT_NE(s.message().find("norm.s"), std::string::npos) << s.message();
  opt.norm = AffineScaled{};
  s = forward(d.p, d.q, d.k, d.v, out.o, opt);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("alpha"), std::string::npos) << s.message();
}

TEST(Norm, CompileTimeVariant) {
  const auto d = test::make_data(Problem{1, 4, 2, 50, 90, 32, 32}, Layout::BSHD, 51);
  test::Out out = test::make_out(d.p);
  Options opt;
  opt.mask = CausalMask{};
  opt.norm = Softpick{1e-3f};
  using V = Variant<policy::Score<false, false, false>, policy::CausalMaskPolicy, policy::SoftpickNorm, policy::NoSink,
                    policy::NoGate>;
  ASSERT_TRUE(forward<V>(d.p, d.q, d.k, d.v, out.o, policy::CausalMaskPolicy{90, 40}, opt).ok());
  EXPECT_TRUE(test::matches_reference(d, opt, out));
}

TEST(Helpers, AlibiSlopesFollowGgml) {
  const auto s8 = alibi_slopes(8, 8.f);  // the ALiBi paper: 1/2, 1/4, ..., 1/256
  for (int h = 0; h < 8; ++h) EXPECT_FLOAT_EQ(s8[static_cast<std::size_t>(h)], std::pow(0.5f, float(h + 1)));
  const auto s12 = alibi_slopes(12, 8.f);  // n_floor = 8: m1 = 2^(-0.5), odd powers after head 8
  EXPECT_FLOAT_EQ(s12[7], std::pow(0.5f, 8.f));
  EXPECT_FLOAT_EQ(s12[8], std::pow(2.f, -0.5f));
  EXPECT_FLOAT_EQ(s12[9], std::pow(2.f, -1.5f));
  EXPECT_FLOAT_EQ(s12[11], std::pow(2.f, -3.5f));
  for (float x : alibi_slopes(5, 0.f)) EXPECT_EQ(x, 1.f);
  EXPECT_FLOAT_EQ(sigmoid_bias_for_length(4096), -std::log(4096.f));
}

}  // namespace
}  // namespace sinkattn
