// Layout and head-sharing invariances of the reference, its argument validation, the test
// harness itself (inputs, outputs, the tolerance rule), and the reference at test scale.

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "harness.hpp"
#include "sinkattn/reference/attention.hpp"
#include "tiny.hpp"

namespace sinkattn {
namespace test {
namespace {

bool bit_equal(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// ---- Invariances ---------------------------------------------------------------------------

TEST(RefLayout, BshdAndBhsdGiveTheSameResult) {
  const Problem p{2, 4, 2, 19, 23, 16, 12};
  const auto a = make_data(p, Layout::BSHD, 9);
  const auto b = make_data(p, Layout::BHSD, 9);
  ASSERT_NE(a.qbuf, b.qbuf);                    // different memory order...
  ASSERT_EQ(a.q(1, 5, 3, 7), b.q(1, 5, 3, 7));  // ...same logical tensor
  const auto c = relayout(a, Layout::BHSD);
  ASSERT_EQ(c.qbuf, b.qbuf);
  Options opt;
  opt.mask = CausalMask{};
  const auto ra = run_reference<double>(a, opt, true);
  const auto rb = run_reference<double>(b, opt, true);
  ASSERT_TRUE(ra.status.ok() && rb.status.ok());
  for (size_t n = 0; n < ra.obuf.size(); ++n) ASSERT_TRUE(bit_equal(ra.obuf[n], rb.obuf[n])) << n;
  for (size_t n = 0; n < ra.lsebuf.size(); ++n) ASSERT_TRUE(bit_equal(ra.lsebuf[n], rb.lsebuf[n])) << n;
}

TEST(RefLayout, OutputLayoutDoesNotMatter) {
  const Problem p{1, 2, 1, 7, 9, 8, 5};
  const auto d = make_data(p);
  std::vector<double> o1(70), o2(70);
  const auto v1 = TensorView<double>::bshd(o1.data(), 1, 7, 2, 5);
  const auto v2 = TensorView<double>::bhsd(o2.data(), 1, 7, 2, 5);
  ASSERT_TRUE(reference::attention<double>(p, d.q, d.k, d.v, v1, Options{}).ok());
  ASSERT_TRUE(reference::attention<double>(p, d.q, d.k, d.v, v2, Options{}).ok());
  for (index_t i = 0; i < 7; ++i)
    for (index_t h = 0; h < 2; ++h)
      for (index_t e = 0; e < 5; ++e) EXPECT_TRUE(bit_equal(v1(0, i, h, e), v2(0, i, h, e)));
}

TEST(RefGqa, GroupOfFourEqualsMhaWithRepeatedKv) {
  const Problem gqa{2, 8, 2, 13, 21, 16, 8};
  Problem mha = gqa;
  mha.heads_kv = 8;
  const auto d = make_data(gqa, Layout::BSHD, 17);
  auto m = make_data(mha, Layout::BSHD, 18);
  for (index_t b = 0; b < 2; ++b)
    for (index_t j = 0; j < 21; ++j)
      for (index_t h = 0; h < 8; ++h) {
        for (index_t e = 0; e < 16; ++e) m.mk()(b, j, h, e) = d.k(b, j, h / 4, e);
        for (index_t e = 0; e < 8; ++e) m.mv()(b, j, h, e) = d.v(b, j, h / 4, e);
      }
  std::copy(d.qbuf.begin(), d.qbuf.end(), m.qbuf.begin());  // same shape and layout
  const std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f, 0.5f, 0.25f, 0.125f, 0.0625f};
  const std::vector<float> sinks = {0.f, 1.f, -1.f, 2.f, 0.5f, -0.5f, 3.f, -3.f};
  Options opt;
  opt.mask = CausalMask{};
  opt.score.alibi_slopes = slopes.data();
  opt.norm = SinkSoftmax{sinks.data()};
  const auto r1 = run_reference<double>(d, opt, true);
  const auto r2 = run_reference<double>(m, opt, true);
  ASSERT_TRUE(r1.status.ok() && r2.status.ok());
  for (size_t n = 0; n < r1.obuf.size(); ++n) ASSERT_TRUE(bit_equal(r1.obuf[n], r2.obuf[n])) << n;
  for (size_t n = 0; n < r1.lsebuf.size(); ++n) ASSERT_TRUE(bit_equal(r1.lsebuf[n], r2.lsebuf[n])) << n;
}

TEST(RefBias, ZeroStrideBroadcastEqualsExpandedBias) {
  const Problem p{2, 3, 3, 6, 10, 8, 4};
  const auto d = make_data(p, Layout::BSHD, 6);
  // One row of Skv values shared by every (b, h, i), and a per-(h, i) matrix shared by batches.
  const auto row = make_tensor({1, 1, 1, 10}, 31, -3.f, 3.f);
  const auto per_head = make_tensor({1, 3, 6, 10}, 32, -3.f, 3.f);
  const TensorView<const float> row_b(row.buf.data(), {2, 3, 6, 10}, {0, 0, 0, 1});
  const TensorView<const float> head_b(per_head.buf.data(), {2, 3, 6, 10}, {0, 60, 10, 1});
  for (const auto& view : {row_b, head_b}) {
    auto full = make_tensor({2, 3, 6, 10}, 0, 0.f, 0.f);
    for (index_t b = 0; b < 2; ++b)
      for (index_t h = 0; h < 3; ++h)
        for (index_t i = 0; i < 6; ++i)
          for (index_t j = 0; j < 10; ++j) full(b, h, i, j) = view(b, h, i, j);
    Options a, e;
    a.score.bias = view;
    e.score.bias = full.cview();
    const auto ra = run_reference<double>(d, a, true);
    const auto re = run_reference<double>(d, e, true);
    ASSERT_TRUE(ra.status.ok()) << ra.status.message();
    for (size_t n = 0; n < ra.obuf.size(); ++n) ASSERT_TRUE(bit_equal(ra.obuf[n], re.obuf[n]));
    // And the bias really changed the result.
    const auto none = run_reference<double>(d, Options{}, true);
    EXPECT_NE(none.obuf, ra.obuf);
  }
}

// ---- Validation ----------------------------------------------------------------------------

Status call(const Problem& p, const Options& opt = {}, bool with_lse = false) {
  // Views shaped after p (data of a generous buffer), so each test breaks one thing.
  static std::vector<float> in(1 << 16, 0.5f);
  static std::vector<double> out(1 << 14), lse(1 << 12);
  const auto q = TensorView<const float>::bshd(in.data(), p.batch, p.seq_q, p.heads_q, p.dim_qk);
  const auto k = TensorView<const float>::bshd(in.data() + 20000, p.batch, p.seq_kv, p.heads_kv, p.dim_qk);
  const auto v = TensorView<const float>::bshd(in.data() + 40000, p.batch, p.seq_kv, p.heads_kv, p.dim_v);
  const auto o = TensorView<double>::bshd(out.data(), p.batch, p.seq_q, p.heads_q, p.dim_v);
  const auto l = with_lse ? TensorView<double>::lse(lse.data(), p.batch, p.heads_q, p.seq_q) : TensorView<double>{};
  return reference::attention<double>(p, q, k, v, o, opt, l);
}

void expect_error(const Status& s, Errc code, const char* needle) {
  EXPECT_EQ(s.code(), code) << s.message();
  EXPECT_NE(s.message().find(needle), std::string::npos) << "'" << needle << "' not in: " << s.message();
}

TEST(RefValidation, ErrorsNameTheArgument) {
  const Problem good{1, 4, 2, 8, 8, 4, 4};
  ASSERT_TRUE(call(good).ok());
  expect_error(call(Problem{1, 4, 3, 8, 8, 4, 4}), Errc::heads_not_divisible, "heads_q");
  expect_error(call(Problem{1, 4, 2, -1, 8, 4, 4}), Errc::negative_size, "seq_q");

  NeighborhoodMask nm;
  nm.extent = {8, 1, 1};
  nm.kernel = {9, 1, 1};
  Options opt;
  opt.mask = nm;
  expect_error(call(good, opt), Errc::out_of_range, "mask.kernel[0]");
  nm.kernel = {3, 1, 1};
  nm.dilation = {3, 1, 1};
  opt.mask = nm;
  expect_error(call(good, opt), Errc::out_of_range, "mask.dilation[0]");
  nm.dilation = {1, 1, 1};
  nm.extent = {4, 1, 1};
  opt.mask = nm;
  expect_error(call(good, opt), Errc::shape_mismatch, "mask.extent");

  Options sink;
  sink.norm = SinkSoftmax{};
  expect_error(call(good, sink), Errc::null_data, "norm.sinks");
  Options sig;
  sig.norm = Sigmoid{};
  expect_error(call(good, sig, true), Errc::invalid_argument, "lse");
  Options aff;
  aff.norm = AffineScaled{};
  expect_error(call(good, aff), Errc::shape_mismatch, "norm.alpha");

  std::vector<float> g(1000);
  Options gate;
  gate.gate = SigmoidGate{TensorView<const float>::bshd(g.data(), 1, 8, 4, 3)};
  expect_error(call(good, gate), Errc::shape_mismatch, "gate.g");
  Options bias;
  bias.score.bias = TensorView<const float>(g.data(), {1, 4, 8, 7}, {0, 56, 7, 1});
  expect_error(call(good, bias), Errc::shape_mismatch, "score.bias");
}

TEST(RefValidation, ViewsAreChecked) {
  const Problem p{1, 2, 2, 4, 4, 4, 4};
  std::vector<float> buf(256, 1.f);
  std::vector<double> out(32), lse(8);
  const auto q = TensorView<const float>::bshd(buf.data(), 1, 4, 2, 4);
  const auto kv = TensorView<const float>::bshd(buf.data() + 64, 1, 4, 2, 4);
  const auto o = TensorView<double>::bshd(out.data(), 1, 4, 2, 4);
  const auto bad_k = TensorView<const float>::bshd(buf.data() + 64, 1, 5, 2, 4);
  expect_error(reference::attention<double>(p, q, bad_k, kv, o, Options{}), Errc::shape_mismatch, "k:");
  const auto bad_lse = TensorView<double>::lse(lse.data(), 1, 2, 3);
  expect_error(reference::attention<double>(p, q, kv, kv, o, Options{}, bad_lse), Errc::shape_mismatch, "lse");
  const TensorView<double> null_o(nullptr, {1, 4, 2, 4}, {32, 8, 4, 1});
  expect_error(reference::attention<double>(p, q, kv, kv, null_o, Options{}), Errc::null_data, "o:");
  const TensorView<double> bcast_o(out.data(), {1, 4, 2, 4}, {0, 0, 4, 1});
  expect_error(reference::attention<double>(p, q, kv, kv, bcast_o, Options{}), Errc::invalid_argument, "o:");
  // An output overlapping an input (float reference: same element type, easy to alias).
  const auto o_on_q = TensorView<float>::bshd(buf.data() + 200, 1, 4, 2, 4);
  expect_error(reference::attention<float>(p, q, kv, TensorView<const float>::bshd(buf.data() + 192, 1, 4, 2, 4),
                                           o_on_q, Options{}),
               Errc::aliasing, "o overlaps input v");
}

TEST(RefValidation, EmptyProblemsAreFine) {
  EXPECT_TRUE(call(Problem{0, 0, 0, 0, 0, 0, 0}).ok());
  // Skv = 0: every row is fully masked.
  const Problem p{1, 1, 1, 2, 0, 4, 3};
  const auto r = run_reference<double>(make_data(p), Options{}, true);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  for (double x : r.obuf) EXPECT_EQ(x, 0.0);
  for (double x : r.lsebuf) EXPECT_EQ(x, -kInf);
}

// ---- The harness ---------------------------------------------------------------------------

TEST(Harness, RandomDataIsDeterministicAndInRange) {
  const auto a = random_vector(1000, 5, -2.f, 3.f), b = random_vector(1000, 5, -2.f, 3.f);
  const auto c = random_vector(1000, 6, -2.f, 3.f);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  double mean = 0;
  for (float x : a) {
    EXPECT_GE(x, -2.f);
    EXPECT_LT(x, 3.f);
    mean += x / 1000.0;
  }
  EXPECT_NEAR(mean, 0.5, 0.2);
  const Problem p{1, 2, 1, 3, 4, 5, 6};
  const auto d = make_data(p, Layout::BSHD, 1, 0.25f);
  EXPECT_EQ(d.qbuf.size(), 30u);
  EXPECT_EQ(d.kbuf.size(), 20u);
  EXPECT_EQ(d.vbuf.size(), 24u);
  for (float x : d.vbuf) EXPECT_LE(std::abs(x), 0.25f);
  EXPECT_NE(d.qbuf, make_data(p, Layout::BSHD, 2, 0.25f).qbuf);
}

TEST(Harness, CopiesRebindTheirViews) {
  const Problem p{1, 1, 1, 2, 2, 2, 2};
  const auto d = make_data(p);
  Data c = d;
  EXPECT_EQ(c.q.data, c.qbuf.data());
  EXPECT_EQ(c.v.data, c.vbuf.data());
  c.mq()(0, 0, 0, 0) = 42.f;
  EXPECT_NE(d.q(0, 0, 0, 0), 42.f);
  const auto o = make_out(p, Layout::BHSD, true);
  Out o2 = o;
  EXPECT_EQ(o2.o.data, o2.obuf.data());
  EXPECT_EQ(o2.lse.data, o2.lsebuf.data());
  EXPECT_EQ(o2.o.stride, o.o.stride);
}

TEST(Harness, OutputsStartAsNaN) {
  const Problem p{2, 3, 1, 4, 5, 6, 7};
  const auto o = make_out(p, Layout::BHSD, true);
  EXPECT_EQ(o.obuf.size(), size_t(2 * 4 * 3 * 7));
  EXPECT_EQ(o.lsebuf.size(), size_t(2 * 3 * 4));
  for (float x : o.obuf) EXPECT_TRUE(std::isnan(x));
  for (float x : o.lsebuf) EXPECT_TRUE(std::isnan(x));
  EXPECT_EQ(o.o.stride, (std::array<index_t, 4>{84, 7, 28, 1}));  // [B, H, S, D] memory
  EXPECT_TRUE(make_out(p).lse.empty());
  // Nothing written: the rule must reject it.
  const auto d = make_data(p);
  EXPECT_FALSE(matches_reference(d, Options{}, o));
}

// Fills `out` with the naive fp32 reference (which satisfies the rule by construction).
Out naive_out(const Data& d, const Options& opt, Layout layout, bool with_lse) {
  Out out = make_out(d.p, layout, with_lse);
  const auto st = reference::attention<float>(d.p, d.q, d.k, d.v, out.o, opt, out.lse);
  EXPECT_TRUE(st.ok()) << st.message();
  return out;
}

TEST(Harness, AcceptsTheNaiveFp32Result) {
  const Problem p{2, 4, 2, 33, 47, 16, 8};
  const auto d = make_data(p, Layout::BHSD, 12);
  Options opt;
  opt.mask = SlidingWindowMask{8, 0, 2, 0};
  EXPECT_TRUE(matches_reference(d, opt, naive_out(d, opt, Layout::BSHD, true)));
  EXPECT_TRUE(matches_reference(d, opt, naive_out(d, opt, Layout::BHSD, false)));
}

TEST(Harness, RejectsAPerturbationBeyondTheBound) {
  const Problem p{1, 2, 1, 5, 9, 8, 4};
  const auto d = make_data(p, Layout::BSHD, 3);
  Options opt;
  auto out = naive_out(d, opt, Layout::BSHD, true);
  const auto r64 = run_reference<double>(d, opt, true);
  const auto r32 = run_reference<float>(d, opt, true);
  const double atol = 1e-5;
  const double bound = 2 * std::abs(double(r32.o(0, 2, 1, 3)) - r64.o(0, 2, 1, 3)) + atol;

  // Just inside the bound passes...
  out.o(0, 2, 1, 3) = static_cast<float>(r64.o(0, 2, 1, 3) + 0.5 * bound);
  EXPECT_TRUE(matches_reference(d, opt, out, atol));
  // ...beyond it fails, naming the element and the numbers.
  out.o(0, 2, 1, 3) = static_cast<float>(r64.o(0, 2, 1, 3) + 4 * bound);
  const auto res = matches_reference(d, opt, out, atol);
  ASSERT_FALSE(res);
  const std::string msg = res.message();
  EXPECT_NE(msg.find("o[b=0, s=2, h=1, d=3]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bound="), std::string::npos) << msg;
  EXPECT_NE(msg.find("ref32="), std::string::npos) << msg;
  EXPECT_NE(msg.find("1 of 40"), std::string::npos) << msg;
  EXPECT_NE(msg.find("max |ours - ref64|"), std::string::npos) << msg;
  // A larger atol admits it again.
  EXPECT_TRUE(matches_reference(d, opt, out, 10 * bound));

  // LSE: same rule, and NaN is never accepted for a finite reference.
  auto out2 = naive_out(d, opt, Layout::BSHD, true);
  out2.lse(0, 1, 4, 0) = std::numeric_limits<float>::quiet_NaN();
  const auto res2 = matches_reference(d, opt, out2, atol);
  ASSERT_FALSE(res2);
  EXPECT_NE(std::string(res2.message()).find("lse[b=0, h=1, s=4, _=0]"), std::string::npos) << res2.message();
}

TEST(Harness, NonFiniteReferencesMustMatchExactly) {
  // Fully masked rows: LSE -inf must be -inf (a large negative number is not enough), O = 0.
  const Problem p{1, 1, 1, 3, 2, 4, 4};
  const auto d = make_data(p);
  Options opt;
  opt.mask = CausalMask{};  // row 0 sees nothing
  auto out = naive_out(d, opt, Layout::BSHD, true);
  ASSERT_EQ(out.lse(0, 0, 0, 0), -kInfF);
  EXPECT_TRUE(matches_reference(d, opt, out));
  out.lse(0, 0, 0, 0) = -1e30f;
  EXPECT_FALSE(matches_reference(d, opt, out));
  out.lse(0, 0, 0, 0) = -kInfF;
  out.o(0, 0, 0, 1) = std::numeric_limits<float>::quiet_NaN();  // NaN where ref64 is 0
  EXPECT_FALSE(matches_reference(d, opt, out));

  // A NaN input: ours must be NaN exactly where the reference is.
  auto bad = make_data(p);
  bad.mq()(0, 2, 0, 0) = std::numeric_limits<float>::quiet_NaN();
  auto out2 = naive_out(bad, Options{}, Layout::BSHD, false);
  EXPECT_TRUE(matches_reference(bad, Options{}, out2));
  out2.o(0, 2, 0, 0) = 0.f;
  EXPECT_FALSE(matches_reference(bad, Options{}, out2));
}

TEST(Harness, ReportsRejectedCalls) {
  const Problem p{1, 1, 1, 2, 2, 4, 4};
  const auto d = make_data(p);
  Options opt;
  opt.norm = Sigmoid{};
  const auto out = make_out(p, Layout::BSHD, true);  // LSE with sigmoid: invalid
  const auto res = matches_reference(d, opt, out);
  ASSERT_FALSE(res);
  EXPECT_NE(std::string(res.message()).find("lse"), std::string::npos) << res.message();
}

TEST(Harness, SizeTables) {
  EXPECT_EQ(kLengths.front(), 1);
  EXPECT_EQ(kLengths.back(), 130);
  EXPECT_EQ(kFlashPairs.size(), 5u);
  EXPECT_EQ(kFlashPairs.back(), (std::pair<index_t, index_t>{1023, 1024}));
}

// ---- Test scale ----------------------------------------------------------------------------

TEST(RefScale, Sq1024Skv1024D128) {
  // The size the kernel tests use: must stay a few seconds even in unoptimized builds.
  const Problem p{1, 4, 2, 1024, 1024, 128, 128};
  auto d = make_data(p, Layout::BSHD, 1);
  std::fill(d.vbuf.begin(), d.vbuf.end(), 1.f);
  Options opt;
  opt.mask = CausalMask{};
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = run_reference<double>(d, opt, true);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(r.status.ok());
  for (double x : r.obuf) ASSERT_NEAR(x, 1.0, 1e-12);
  for (double x : r.lsebuf) ASSERT_TRUE(std::isfinite(x));
  std::printf("reference<double> B=1 Hq=4 Hkv=2 S=1024 D=128 causal: %.2f s\n", secs);
}

}  // namespace
}  // namespace test
}  // namespace sinkattn
