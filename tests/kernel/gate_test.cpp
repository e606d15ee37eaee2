// The sigmoid output gate (Gated Attention; Qwen3-Next) fused into the epilogue: elementwise
// and headwise, strided and interleaved with q in one buffer, combined with sinks, softcap,
// causal and the affine-scaled normalization; prefill and split-KV decode, 1 and 2 threads.

#include <gtest/gtest.h>

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

// Runs with 1 and 2 threads, checks both are bit-identical and match the reference. q may be
// any view (e.g. interleaved with the gate).
::testing::AssertionResult check(const Problem& p, TensorView<const float> q, TensorView<const float> k,
                                 TensorView<const float> v, Options opt, bool lse = true) {
  test::Out one = test::make_out(p, Layout::BSHD, lse), two = test::make_out(p, Layout::BSHD, lse);
  opt.lse = one.lse;
  Status s = forward(p, q, k, v, one.o, opt, Executor::serial());
  if (!s.ok()) return ::testing::AssertionFailure() << "forward failed: " << s.message();
  opt.lse = two.lse;
  s = forward(p, q, k, v, two.o, opt, test::thread_executor(2));
  if (!s.ok()) return ::testing::AssertionFailure() << "forward (2 threads) failed: " << s.message();
  if (!test::bit_identical(one.obuf, two.obuf)) return ::testing::AssertionFailure() << "1 and 2 threads differ";
  opt.lse = one.lse;
  return test::matches_reference(p, q, k, v, opt, one.o, one.lse);
}

::testing::AssertionResult check(const test::Data& d, Options opt, bool lse = true) {
  return check(d.p, d.q, d.k, d.v, opt, lse);
}

// Prefill and decode shapes (decode: Sq * group <= 8, Skv > 2048 so splits are merged).
std::vector<Problem> shapes() {
  return {Problem{1, 4, 2, 130, 150, 64, 64}, Problem{2, 2, 1, 17, 65, 40, 24}, Problem{1, 8, 2, 1, 5000, 64, 64},
          Problem{1, 4, 1, 2, 2100, 32, 48}};
}

TEST(Gate, ElementwiseAndHeadwiseWithSinksCausalSoftcap) {
  for (const Problem& p : shapes()) {
    const auto d = test::make_data(p, Layout::BSHD, p.seq_q + p.seq_kv, 1.5f);
    std::vector<float> sinks(static_cast<std::size_t>(p.heads_q));
    for (std::size_t h = 0; h < sinks.size(); ++h) sinks[h] = 0.5f * static_cast<float>(h) - 1.f;
    sinks[0] = -std::numeric_limits<float>::infinity();
    for (index_t last : {p.dim_v, index_t(1)}) {
      auto g = test::make_tensor({p.batch, p.seq_q, p.heads_q, last}, 7, -4.f, 4.f);
      Options opt;
      opt.mask = CausalMask{};
      opt.score.softcap = 3.f;
      opt.norm = SinkSoftmax{sinks.data()};
      opt.gate = SigmoidGate{g.cview()};
      EXPECT_TRUE(check(d, opt)) << "sq=" << p.seq_q << " skv=" << p.seq_kv << " gate last dim " << last;
      opt.norm = Softmax{};
      opt.mask = FullMask{};
      EXPECT_TRUE(check(d, opt)) << "plain sq=" << p.seq_q << " skv=" << p.seq_kv << " gate last dim " << last;
    }
  }
}

TEST(Gate, AfterTheAffineStep) {
  for (const Problem& p : shapes()) {
    const auto d = test::make_data(p, Layout::BSHD, 3 * p.seq_kv);
    auto alpha = test::make_tensor({p.batch, p.seq_q, p.heads_q, 1}, 8, 0.1f, 1.f);
    auto g = test::make_tensor({p.batch, p.seq_q, p.heads_q, p.dim_v}, 9, -3.f, 3.f);
    Options opt;
    opt.mask = CausalMask{};
    opt.norm = AffineScaled{alpha.cview(), {}, 1.f, false};
    opt.gate = SigmoidGate{g.cview()};
    EXPECT_TRUE(check(d, opt)) << "sq=" << p.seq_q << " skv=" << p.seq_kv;
  }
}

TEST(Gate, WithEveryNormalization) {
  const Problem p{1, 4, 2, 70, 90, 32, 32};
  const auto d = test::make_data(p, Layout::BSHD, 4);
  auto g = test::make_tensor({1, 70, 4, 1}, 10, -2.f, 2.f);
  std::vector<float> s(4, 0.4f);
  for (const NormSpec& n : {NormSpec{Sigmoid{-2.f}}, NormSpec{Softpick{}}, NormSpec{ScalableSoftmax{s.data()}}}) {
    Options opt;
    opt.mask = CausalMask{};
    opt.norm = n;
    opt.gate = SigmoidGate{g.cview()};
    EXPECT_TRUE(check(d, opt, std::holds_alternative<ScalableSoftmax>(n))) << "norm index " << n.index();
  }
}

// Qwen3-Next projects q and the gate together: per head [q (D) | gate (D)] in one buffer. Both
// are read in place through strides.
TEST(Gate, ReadInPlaceFromAnInterleavedQGateBuffer) {
  for (const Problem& p : shapes()) {
    if (p.dim_qk != p.dim_v) continue;
    const index_t B = p.batch, S = p.seq_q, H = p.heads_q, D = p.dim_qk;
    const auto qg = test::random_vector(static_cast<std::size_t>(B * S * H * 2 * D), 77, -1.f, 1.f);
    const std::array<index_t, 4> shape{B, S, H, D}, stride{S * H * 2 * D, H * 2 * D, 2 * D, 1};
    const TensorView<const float> q(qg.data(), shape, stride), gate(qg.data() + D, shape, stride);
    const auto d = test::make_data(p, Layout::BSHD, 5);
    Options opt;
    opt.mask = CausalMask{};
    opt.gate = SigmoidGate{gate};
    EXPECT_TRUE(check(p, q, d.k, d.v, opt)) << "sq=" << p.seq_q;
    // A gate with a non-unit element stride (every other element) takes the scalar path.
    const TensorView<const float> g2(qg.data(), {B, S, H, D / 2}, {S * H * 2 * D, H * 2 * D, 2 * D, 2});
    const Problem ph{p.batch, p.heads_q, p.heads_kv, p.seq_q, p.seq_kv, p.dim_qk, D / 2};
    const auto dh = test::make_data(ph, Layout::BSHD, 6);
    opt.gate = SigmoidGate{g2};
    EXPECT_TRUE(check(dh, opt)) << "strided gate sq=" << p.seq_q;
  }
}

TEST(Gate, WrongShapeOrAliasingIsAClearError) {
  const Problem p{1, 2, 1, 8, 8, 16, 16};
  const auto d = test::make_data(p);
  test::Out out = test::make_out(p);
  auto g = test::make_tensor({1, 8, 2, 3}, 1, -1.f, 1.f);
  Options opt;
  opt.gate = SigmoidGate{g.cview()};
  Status s = forward(p, d.q, d.k, d.v, out.o, opt);
  EXPECT_EQ(s.code(), Errc::shape_mismatch) << s.message();
  opt.gate = SigmoidGate{out.o};  // the gate may not alias the output
  s = forward(p, d.q, d.k, d.v, out.o, opt);
  EXPECT_FALSE(s.ok());
}

TEST(Gate, CompileTimeVariant) {
  const Problem p{1, 4, 2, 40, 100, 32, 32};
  const auto d = test::make_data(p, Layout::BSHD, 12);
  auto g = test::make_tensor({1, 40, 4, 32}, 13, -2.f, 2.f);
  test::Out out = test::make_out(p);
  Options opt;
  opt.gate = SigmoidGate{g.cview()};
  using V = Variant<policy::Score<false, false, false>, policy::FullMaskPolicy, policy::OnlineSoftmax, policy::NoSink,
                    policy::SigmoidGate>;
  ASSERT_TRUE(forward<V>(p, d.q, d.k, d.v, out.o, policy::FullMaskPolicy{100}, opt).ok());
  EXPECT_TRUE(test::matches_reference(d, opt, out));
}

}  // namespace
}  // namespace sinkattn
