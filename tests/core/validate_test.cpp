// validate(): every bad argument is refused with the right code and a message that names
// it; legal corner cases (empty problems, BHSD, broadcast strides) pass.

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "sinkattn/sinkattn.hpp"

namespace {

using sinkattn::Errc;
using sinkattn::index_t;
using sinkattn::Options;
using sinkattn::Problem;
using sinkattn::Status;
using sinkattn::TensorView;
using CView = TensorView<const float>;
using MView = TensorView<float>;

// Owns dense BSHD buffers for one problem; tests break one argument at a time.
struct Call {
  Problem p;
  std::vector<float> qb, kb, vb, ob, lseb, sinks;
  CView q, k, v;
  MView o;
  Options opt;

  explicit Call(Problem pp) : p(pp) {
    qb.assign(static_cast<size_t>(p.batch * p.seq_q * p.heads_q * p.dim_qk), 0.f);
    kb.assign(static_cast<size_t>(p.batch * p.seq_kv * p.heads_kv * p.dim_qk), 0.f);
    vb.assign(static_cast<size_t>(p.batch * p.seq_kv * p.heads_kv * p.dim_v), 0.f);
    ob.assign(static_cast<size_t>(p.batch * p.seq_q * p.heads_q * p.dim_v), 0.f);
    lseb.assign(static_cast<size_t>(p.batch * p.heads_q * p.seq_q), 0.f);
    sinks.assign(static_cast<size_t>(p.heads_q), 0.f);
    q = CView::bshd(qb.data(), p.batch, p.seq_q, p.heads_q, p.dim_qk);
    k = CView::bshd(kb.data(), p.batch, p.seq_kv, p.heads_kv, p.dim_qk);
    v = CView::bshd(vb.data(), p.batch, p.seq_kv, p.heads_kv, p.dim_v);
    o = MView::bshd(ob.data(), p.batch, p.seq_q, p.heads_q, p.dim_v);
  }
  MView lse() { return MView::lse(lseb.data(), p.batch, p.heads_q, p.seq_q); }
  Status run() const { return sinkattn::validate(p, q, k, v, o, opt); }
};

// B=2, Hq=4, Hkv=2 (GQA), Sq=5, Skv=7, Dqk=8, Dv=6: every extent distinct so a swapped
// dimension is caught.
Problem base() { return Problem{2, 4, 2, 5, 7, 8, 6}; }

#define EXPECT_FAILS(call, errc, needle)                                                    \
  do {                                                                                      \
    const Status s_ = (call).run();                                                         \
    EXPECT_EQ(s_.code(), (errc)) << "message: " << s_.message();                            \
    EXPECT_NE(s_.message().find(needle), std::string::npos) << "message: " << s_.message(); \
  } while (0)

TEST(Validate, BaseCallIsOk) {
  Call c(base());
  const Status s = c.run();
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(static_cast<bool>(s));
}

// ---- Problem ---------------------------------------------------------------------------
TEST(Validate, NegativeSizesNameTheField) {
  const char* names[] = {"batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "dim_qk", "dim_v"};
  for (int f = 0; f < 7; ++f) {
    Call c(base());
    index_t* fields[] = {&c.p.batch, &c.p.heads_q, &c.p.heads_kv, &c.p.seq_q, &c.p.seq_kv, &c.p.dim_qk, &c.p.dim_v};
    *fields[f] = -1;
    EXPECT_FAILS(c, Errc::negative_size, std::string("problem.") + names[f]);
  }
}

TEST(Validate, HeadsNotDivisible) {
  Problem p = base();
  p.heads_q = 3;
  p.heads_kv = 2;
  Call c(p);
  EXPECT_FAILS(c, Errc::heads_not_divisible, "heads_q");
  Problem p0 = base();
  p0.heads_kv = 0;
  Call c0(p0);
  EXPECT_FAILS(c0, Errc::heads_not_divisible, "heads_kv");
}

TEST(Validate, NegativeViewExtent) {
  Call c(base());
  c.v.shape[1] = -7;
  EXPECT_FAILS(c, Errc::negative_size, "v:");
}

// ---- Null data ---------------------------------------------------------------------------
TEST(Validate, NullDataWithNonZeroExtentNamesTheView) {
  {
    Call c(base());
    c.q.data = nullptr;
    EXPECT_FAILS(c, Errc::null_data, "q:");
  }
  {
    Call c(base());
    c.k.data = nullptr;
    EXPECT_FAILS(c, Errc::null_data, "k:");
  }
  {
    Call c(base());
    c.v.data = nullptr;
    EXPECT_FAILS(c, Errc::null_data, "v:");
  }
  {
    Call c(base());
    c.o.data = nullptr;
    EXPECT_FAILS(c, Errc::null_data, "o:");
  }
  {
    Call c(base());
    c.opt.norm = sinkattn::SinkSoftmax{nullptr};
    EXPECT_FAILS(c, Errc::null_data, "norm.sinks");
  }
}

// ---- Shapes ------------------------------------------------------------------------------
TEST(Validate, ShapeMismatchOfEachTensorNamesIt) {
  struct Case {
    const char* name;
    int dim;
  };
  // Each tensor, each dimension: off by one must be caught and named.
  for (int d = 0; d < 4; ++d) {
    {
      Call c(base());
      c.q.shape[d] += 1;
      EXPECT_FAILS(c, Errc::shape_mismatch, "q: shape[" + std::to_string(d) + "]");
    }
    {
      Call c(base());
      c.k.shape[d] += 1;
      EXPECT_FAILS(c, Errc::shape_mismatch, "k: shape[" + std::to_string(d) + "]");
    }
    {
      Call c(base());
      c.v.shape[d] += 1;
      EXPECT_FAILS(c, Errc::shape_mismatch, "v: shape[" + std::to_string(d) + "]");
    }
    {
      Call c(base());
      c.o.shape[d] += 1;
      EXPECT_FAILS(c, Errc::shape_mismatch, "o: shape[" + std::to_string(d) + "]");
    }
  }
}

TEST(Validate, LseShapeMismatch) {
  Call c(base());
  c.opt.lse = c.lse();
  ASSERT_TRUE(c.run().ok()) << c.run().message();
  c.opt.lse.shape[2] = c.p.seq_q + 1;
  EXPECT_FAILS(c, Errc::shape_mismatch, "lse:");
  Call c2(base());
  c2.opt.lse = c2.lse();
  c2.opt.lse.shape[3] = 2;
  EXPECT_FAILS(c2, Errc::shape_mismatch, "lse:");
}

TEST(Validate, BiasShapeMismatch) {
  Call c(base());
  std::vector<float> bias(static_cast<size_t>(c.p.seq_q * c.p.seq_kv), 0.f);
  // [B, Hq, Sq, Skv] broadcast over batch and heads: legal.
  c.opt.score.bias = CView(bias.data(), {c.p.batch, c.p.heads_q, c.p.seq_q, c.p.seq_kv}, {0, 0, c.p.seq_kv, 1});
  ASSERT_TRUE(c.run().ok()) << c.run().message();
  c.opt.score.bias.shape[3] = c.p.seq_kv - 1;
  EXPECT_FAILS(c, Errc::shape_mismatch, "score.bias");
}

TEST(Validate, GateShapeMismatch) {
  Call c(base());
  std::vector<float> g(static_cast<size_t>(c.p.batch * c.p.seq_q * c.p.heads_q * c.p.dim_v), 0.f);
  // Elementwise and headwise gates are legal.
  c.opt.gate = sinkattn::SigmoidGate{CView::bshd(g.data(), c.p.batch, c.p.seq_q, c.p.heads_q, c.p.dim_v)};
  ASSERT_TRUE(c.run().ok()) << c.run().message();
  c.opt.gate = sinkattn::SigmoidGate{CView::bshd(g.data(), c.p.batch, c.p.seq_q, c.p.heads_q, 1)};
  ASSERT_TRUE(c.run().ok()) << c.run().message();
  // Last dimension neither dim_v nor 1.
  c.opt.gate = sinkattn::SigmoidGate{CView::bshd(g.data(), c.p.batch, c.p.seq_q, c.p.heads_q, 2)};
  EXPECT_FAILS(c, Errc::shape_mismatch, "gate.g");
  // Wrong number of heads.
  c.opt.gate = sinkattn::SigmoidGate{CView::bshd(g.data(), c.p.batch, c.p.seq_q, c.p.heads_kv, c.p.dim_v)};
  EXPECT_FAILS(c, Errc::shape_mismatch, "gate.g");
}

TEST(Validate, AffineAlphaShapeMismatch) {
  Call c(base());
  std::vector<float> a(static_cast<size_t>(c.p.batch * c.p.seq_q * c.p.heads_q), 1.f);
  sinkattn::AffineScaled n;
  n.alpha = CView::bshd(a.data(), c.p.batch, c.p.seq_q, c.p.heads_q, 1);
  c.opt.norm = n;
  ASSERT_TRUE(c.run().ok()) << c.run().message();
  n.alpha.shape[1] += 1;
  c.opt.norm = n;
  EXPECT_FAILS(c, Errc::shape_mismatch, "norm.alpha");
  n.alpha.shape[1] -= 1;
  n.alpha.data = nullptr;
  c.opt.norm = n;
  EXPECT_FAILS(c, Errc::null_data, "norm.alpha");
  c.opt.norm = sinkattn::AffineScaled{};  // alpha missing altogether
  EXPECT_FAILS(c, Errc::shape_mismatch, "norm.alpha");
}

// ---- Aliasing ----------------------------------------------------------------------------
TEST(Validate, OutputOverlappingQueryIsAliasing) {
  Call c(base());
  // O written over Q's buffer (same shape as Q when Dv <= Dqk: use Q's memory directly).
  c.o = MView(c.qb.data(), c.o.shape, {c.p.seq_q * c.p.heads_q * c.p.dim_qk, c.p.heads_q * c.p.dim_qk, c.p.dim_qk, 1});
  EXPECT_FAILS(c, Errc::aliasing, "o overlaps input q");
}

TEST(Validate, OutputOverlappingKeyOrValueIsAliasing) {
  Call c(base());
  // (views of O's own shape and dense strides placed over K's and V's buffers: only their
  // addresses are compared, nothing is written)
  c.o = MView::bshd(c.kb.data() + 1, c.p.batch, c.p.seq_q, c.p.heads_q, c.p.dim_v);
  EXPECT_FAILS(c, Errc::aliasing, "o overlaps input k");
  Call c2(base());
  c2.o = MView::bshd(c2.vb.data() + 3, c2.p.batch, c2.p.seq_q, c2.p.heads_q, c2.p.dim_v);
  EXPECT_FAILS(c2, Errc::aliasing, "o overlaps input v");
}

TEST(Validate, LseOverlappingOutputIsAliasing) {
  Call c(base());
  c.opt.lse = MView::lse(c.ob.data() + 5, c.p.batch, c.p.heads_q, c.p.seq_q);
  EXPECT_FAILS(c, Errc::aliasing, "lse overlaps input o");
}

TEST(Validate, LseOverlappingAnInputIsAliasing) {
  Call c(base());
  c.opt.lse = MView::lse(c.qb.data(), c.p.batch, c.p.heads_q, c.p.seq_q);
  EXPECT_FAILS(c, Errc::aliasing, "lse overlaps input q");
}

TEST(Validate, GateOverlappingOutputIsAliasing) {
  Call c(base());
  c.opt.gate = sinkattn::SigmoidGate{CView(c.ob.data(), {c.p.batch, c.p.seq_q, c.p.heads_q, 1}, {0, 0, 0, 0})};
  EXPECT_FAILS(c, Errc::aliasing, "gate.g");
}

// Every other input the options hand the call (bias, per-head arrays, normalization and gate
// tensors): an output row written over it would change what later rows read.
TEST(Validate, OutputsOverlappingOptionInputsAreAliasing) {
  {
    Call c(base());
    c.opt.score.bias = CView(c.ob.data() + 3, {c.p.batch, c.p.heads_q, c.p.seq_q, c.p.seq_kv}, {0, 0, 0, 0});
    EXPECT_FAILS(c, Errc::aliasing, "o overlaps input score.bias");
  }
  {
    Call c(base());
    c.opt.score.alibi_slopes = c.ob.data() + c.ob.size() - 1;  // Hq floats from O's last one
    EXPECT_FAILS(c, Errc::aliasing, "o overlaps input score.alibi_slopes");
  }
  {
    Call c(base());
    c.opt.norm = sinkattn::SinkSoftmax{c.ob.data()};
    EXPECT_FAILS(c, Errc::aliasing, "o overlaps input norm.sinks");
  }
  {
    Call c(base());
    c.opt.norm = sinkattn::ScalableSoftmax{c.ob.data() + 1};
    EXPECT_FAILS(c, Errc::aliasing, "o overlaps input norm.s");
  }
  {
    Call c(base());
    sinkattn::Sigmoid n;
    n.head_bias = c.ob.data();
    c.opt.norm = n;
    EXPECT_FAILS(c, Errc::aliasing, "o overlaps input norm.head_bias");
  }
  {
    Call c(base());
    sinkattn::AffineScaled n;
    n.alpha = CView(c.ob.data(), {c.p.batch, c.p.seq_q, c.p.heads_q, 1}, {0, 0, 0, 0});
    c.opt.norm = n;
    EXPECT_FAILS(c, Errc::aliasing, "o overlaps input norm.alpha");
    n.alpha = CView(c.sinks.data(), {c.p.batch, c.p.seq_q, c.p.heads_q, 1}, {0, 0, 0, 0});
    n.beta = CView(c.ob.data() + 7, {c.p.batch, c.p.seq_q, c.p.heads_q, 1}, {0, 0, 0, 0});
    c.opt.norm = n;
    EXPECT_FAILS(c, Errc::aliasing, "o overlaps input norm.beta");
  }
  {  // the LSE output against the same inputs
    Call c(base());
    c.opt.lse = c.lse();
    c.opt.gate = sinkattn::SigmoidGate{CView(c.lseb.data() + 2, {c.p.batch, c.p.seq_q, c.p.heads_q, 1}, {0, 0, 0, 0})};
    EXPECT_FAILS(c, Errc::aliasing, "lse overlaps input gate.g");
    c.opt.gate = sinkattn::NoGate{};
    c.opt.norm = sinkattn::SinkSoftmax{c.lseb.data() + 1};
    EXPECT_FAILS(c, Errc::aliasing, "lse overlaps input norm.sinks");
  }
  {  // disjoint buffers pass
    Call c(base());
    c.opt.lse = c.lse();
    c.opt.norm = sinkattn::SinkSoftmax{c.sinks.data()};
    c.opt.score.bias = CView(c.qb.data(), {c.p.batch, c.p.heads_q, c.p.seq_q, c.p.seq_kv}, {0, 0, 0, 0});
    const Status s = c.run();
    EXPECT_TRUE(s.ok()) << s.message();
  }
}

TEST(Validate, InputsMaySharePackedQkvBuffer) {
  // Fused QKV projection output [B, S, 3, H, D]: Q, K and V interleave in one buffer.
  // Inputs may overlap each other; only outputs must be disjoint from inputs.
  const Problem p{1, 2, 2, 6, 6, 4, 4};
  std::vector<float> qkv(static_cast<size_t>(6 * 3 * 2 * 4), 0.f), out(static_cast<size_t>(6 * 2 * 4));
  const std::array<index_t, 4> st{6 * 3 * 2 * 4, 3 * 2 * 4, 4, 1};
  const CView q(qkv.data(), {1, 6, 2, 4}, st), k(qkv.data() + 8, {1, 6, 2, 4}, st),
      v(qkv.data() + 16, {1, 6, 2, 4}, st);
  const Status s = sinkattn::validate(p, q, k, v, MView::bshd(out.data(), 1, 6, 2, 4));
  EXPECT_TRUE(s.ok()) << s.message();
}

// ---- Output strides ----------------------------------------------------------------------
TEST(Validate, ZeroStrideOnOutputIsRefused) {
  Call c(base());
  c.o.stride[1] = 0;
  EXPECT_FAILS(c, Errc::invalid_argument, "o: stride[1]");
  Call c2(base());
  c2.opt.lse = c2.lse();
  c2.opt.lse.stride[1] = 0;
  EXPECT_FAILS(c2, Errc::invalid_argument, "lse: stride[1]");
}

// Strides that interleave dimensions (heads 1 float apart over dim rows 1 float apart) write
// the same element from different indices, as a zero stride does.
TEST(Validate, SelfOverlappingOutputStridesAreRefused) {
  Call c(base());
  c.o.stride[2] = 1;  // heads 1 float apart, each head's Dv = 6 floats also 1 apart
  EXPECT_FAILS(c, Errc::invalid_argument, "o: stride[");
  Call c2(base());
  c2.o.stride[0] = c2.o.stride[1];  // batch 1 and sequence row 1 start at the same float
  EXPECT_FAILS(c2, Errc::invalid_argument, "write the same element");
  Call c3(base());
  c3.opt.lse = c3.lse();
  c3.opt.lse.stride[1] = 2;  // heads 2 apart over sequences of 5
  EXPECT_FAILS(c3, Errc::invalid_argument, "lse: stride[");
  // Disjoint permuted and padded layouts pass: BHSD with rows padded to 8 floats, and the
  // sequence stored innermost (stride 1) with the dim stride past it.
  Call c4(base());
  std::vector<float> big(static_cast<size_t>(2 * 4 * 5 * 8));
  c4.o = MView(big.data(), {2, 5, 4, 6}, {4 * 5 * 8, 8, 5 * 8, 1});
  Status s = c4.run();
  EXPECT_TRUE(s.ok()) << s.message();
  c4.o = MView(big.data(), {2, 5, 4, 6}, {5 * 4 * 6, 1, 5 * 6, 5});
  s = c4.run();
  EXPECT_TRUE(s.ok()) << s.message();
}

TEST(Validate, ZeroStrideOnExtentOneOutputDimensionIsFine) {
  Problem p = base();
  p.batch = 1;
  Call c(p);
  c.o.stride[0] = 0;
  const Status s = c.run();
  EXPECT_TRUE(s.ok()) << s.message();
}

// ---- Masks -------------------------------------------------------------------------------
sinkattn::NeighborhoodMask nat2d(index_t h, index_t w, index_t kh, index_t kw) {
  sinkattn::NeighborhoodMask m;
  m.rank = 2;
  m.extent = {h, w, 1};
  m.kernel = {kh, kw, 1};
  return m;
}

Problem grid_problem(index_t tokens) { return Problem{1, 2, 1, tokens, tokens, 4, 4}; }

TEST(Validate, NeighborhoodOk) {
  Call c(grid_problem(6 * 5));
  auto m = nat2d(6, 5, 3, 5);
  m.dilation = {2, 1, 1};
  m.stride = {3, 2, 1};
  m.causal = {true, false, false};
  c.opt.mask = m;
  const Status s = c.run();
  EXPECT_TRUE(s.ok()) << s.message();
}

TEST(Validate, NeighborhoodKernelLargerThanExtent) {
  Call c(grid_problem(6 * 5));
  c.opt.mask = nat2d(6, 5, 3, 6);
  EXPECT_FAILS(c, Errc::out_of_range, "mask.kernel[1]");
}

TEST(Validate, NeighborhoodStrideLargerThanKernel) {
  Call c(grid_problem(6 * 5));
  auto m = nat2d(6, 5, 3, 3);
  m.stride = {4, 1, 1};
  c.opt.mask = m;
  EXPECT_FAILS(c, Errc::out_of_range, "mask.stride[0]");
}

TEST(Validate, NeighborhoodDilationTimesKernelLargerThanExtent) {
  Call c(grid_problem(6 * 5));
  auto m = nat2d(6, 5, 3, 3);
  m.dilation = {1, 2, 1};  // 2 * 3 > 5
  c.opt.mask = m;
  EXPECT_FAILS(c, Errc::out_of_range, "mask.dilation[1]");
}

TEST(Validate, NeighborhoodGridSizeMustEqualSequence) {
  Call c(grid_problem(31));
  c.opt.mask = nat2d(6, 5, 3, 3);
  EXPECT_FAILS(c, Errc::shape_mismatch, "mask.extent");
}

TEST(Validate, NeighborhoodBadRankAndNonPositiveParameters) {
  Call c(grid_problem(6));
  sinkattn::NeighborhoodMask m;
  m.rank = 4;
  c.opt.mask = m;
  EXPECT_FAILS(c, Errc::out_of_range, "mask.rank");
  m = sinkattn::NeighborhoodMask{};
  m.extent = {6, 1, 1};
  m.kernel = {0, 1, 1};
  c.opt.mask = m;
  EXPECT_FAILS(c, Errc::out_of_range, "mask.kernel[0]");
  m.kernel = {3, 1, 1};
  m.dilation = {0, 1, 1};
  c.opt.mask = m;
  EXPECT_FAILS(c, Errc::out_of_range, "mask.dilation[0]");
}

TEST(Validate, SlidingWindowArgs) {
  Call c(base());
  c.opt.mask = sinkattn::SlidingWindowMask{127, 0, 4, 0};
  ASSERT_TRUE(c.run().ok()) << c.run().message();
  c.opt.mask = sinkattn::SlidingWindowMask{-2, 0, 0, 0};
  EXPECT_FAILS(c, Errc::out_of_range, "mask.left");
  c.opt.mask = sinkattn::SlidingWindowMask{3, -5, 0, 0};
  EXPECT_FAILS(c, Errc::out_of_range, "mask.right");
  c.opt.mask = sinkattn::SlidingWindowMask{3, 0, -1, 0};
  EXPECT_FAILS(c, Errc::out_of_range, "mask.sink_tokens");
}

TEST(Validate, BlockMaskArgs) {
  Call c(base());
  sinkattn::BlockMask m;
  m.block_size = 2;
  c.opt.mask = m;
  ASSERT_TRUE(c.run().ok()) << c.run().message();
  m.block_size = 0;
  c.opt.mask = m;
  EXPECT_FAILS(c, Errc::out_of_range, "mask.block_size");
  m.boundaries = {1, 3};
  c.opt.mask = m;
  EXPECT_FAILS(c, Errc::out_of_range, "mask.boundaries[0]");
  m.boundaries = {0, 3, 3};
  c.opt.mask = m;
  EXPECT_FAILS(c, Errc::out_of_range, "mask.boundaries");
  m.boundaries = {0, 3, 5};
  m.global_keys = -1;
  c.opt.mask = m;
  EXPECT_FAILS(c, Errc::out_of_range, "mask.global_keys");
}

TEST(Validate, BlockSparseArgs) {
  Call c(base());  // B*Hq = 8 rows of (Sq=5 / q_block=4 -> 2) query blocks; Skv=7 / 4 -> 2 key blocks
  std::vector<index_t> offsets(17), indices;
  for (index_t r = 0; r < 16; ++r) {
    indices.push_back(r % 2);
    offsets[static_cast<size_t>(r + 1)] = r + 1;
  }
  sinkattn::BlockSparseMask m;
  m.q_block = 4;
  m.kv_block = 4;
  m.offsets = offsets.data();
  m.indices = indices.data();
  c.opt.mask = m;
  ASSERT_TRUE(c.run().ok()) << c.run().message();
  indices[3] = 2;
  EXPECT_FAILS(c, Errc::out_of_range, "mask.indices[3]");
  indices[3] = 1;
  m.kv_block = 0;
  c.opt.mask = m;
  EXPECT_FAILS(c, Errc::out_of_range, "mask.kv_block");
  m.kv_block = 4;
  m.offsets = nullptr;
  c.opt.mask = m;
  EXPECT_FAILS(c, Errc::null_data, "mask.offsets");
}

// Sizes, positions, offsets and windows beyond 2^40 (kMaxIndex): INT64_MAX passed to mean
// "unbounded" once wrapped around in the kernels' sums (a window of every key came out as
// none) and in the checks themselves (dilation * kernel, the grid's product, q_block's count).
TEST(Validate, ValuesBeyondTheIndexLimitNameTheArgument) {
  constexpr index_t kHuge = std::numeric_limits<index_t>::max();
  {
    Call c(base());
    c.opt.mask = sinkattn::SlidingWindowMask{kHuge, 0, 0, 0};
    EXPECT_FAILS(c, Errc::out_of_range, "mask.left");
    c.opt.mask = sinkattn::SlidingWindowMask{-1, kHuge, 0, 0};
    EXPECT_FAILS(c, Errc::out_of_range, "mask.right");
    c.opt.mask = sinkattn::SlidingWindowMask{4, 0, 0, -kHuge};
    EXPECT_FAILS(c, Errc::out_of_range, "mask.offset");
    c.opt.mask = sinkattn::SlidingWindowMask{sinkattn::kMaxIndex, 0, 0, 0};  // the limit itself is fine
    const Status s = c.run();
    EXPECT_TRUE(s.ok()) << s.message();
  }
  {
    Call c(base());
    c.opt.mask = sinkattn::CausalMask{kHuge};
    EXPECT_FAILS(c, Errc::out_of_range, "mask.offset");
    sinkattn::BlockMask b;
    b.block_size = kHuge;
    c.opt.mask = b;
    EXPECT_FAILS(c, Errc::out_of_range, "mask.block_size");
    b.block_size = 2;
    b.global_keys = kHuge;
    c.opt.mask = b;
    EXPECT_FAILS(c, Errc::out_of_range, "mask.global_keys");
  }
  {  // validate() once passed this and forward() then read the null offsets
    Call c(base());
    sinkattn::BlockSparseMask m;
    m.q_block = kHuge;
    m.kv_block = 4;
    c.opt.mask = m;
    EXPECT_FAILS(c, Errc::out_of_range, "mask.q_block");
  }
  {
    Call c(grid_problem(4));
    sinkattn::NeighborhoodMask m;
    m.extent = {4, 1, 1};
    m.kernel = {2, 1, 1};
    m.dilation = {index_t{1} << 62, 1, 1};
    c.opt.mask = m;
    EXPECT_FAILS(c, Errc::out_of_range, "mask.dilation[0]");
    m.dilation = {3, 1, 1};  // 3 * 2 > 4, from the quotient, not the product
    c.opt.mask = m;
    EXPECT_FAILS(c, Errc::out_of_range, "exceeds extent");
    m.rank = 3;
    m.dilation = {1, 1, 1};
    m.extent = {index_t{1} << 20, index_t{1} << 20, index_t{1} << 20};
    c.opt.mask = m;
    EXPECT_FAILS(c, Errc::out_of_range, "more than 2^40 tokens");
  }
  {
    Problem p = base();
    p.seq_kv = index_t{1} << 41;
    Call c(Problem{1, 1, 1, 1, 1, 1, 1});
    c.p = p;
    EXPECT_FAILS(c, Errc::out_of_range, "problem.seq_kv");
  }
  {  // element counts past 2^60 through zero-stride views of any shape
    Call c(Problem{1, 1, 1, 1, 1, 1, 1});
    c.p = Problem{index_t{1} << 30, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 64, 64};
    EXPECT_FAILS(c, Errc::out_of_range, "2^60 elements");
  }
  {  // strides whose reach along a dimension wraps around (and the aliasing test's sums with it)
    Call c(base());
    c.q.stride[1] = kHuge;
    EXPECT_FAILS(c, Errc::out_of_range, "q: stride[1]");
    Call c2(base());
    c2.o.stride[0] = std::numeric_limits<index_t>::min();
    EXPECT_FAILS(c2, Errc::out_of_range, "o: stride[0]");
  }
  {
    Call c(base());
    sinkattn::Rope r;
    r.dim = c.p.dim_qk;
    const sinkattn::RopeTable table(r, 64);
    c.opt.rope.table = &table;
    c.opt.rope.query_position = kHuge;
    EXPECT_FAILS(c, Errc::out_of_range, "rope.query_position");
    c.opt.rope.query_position = 64 - c.p.seq_q + 1;  // one past the table
    EXPECT_FAILS(c, Errc::out_of_range, "rope.table");
    c.opt.rope.query_position = 64 - c.p.seq_q;
    const Status s = c.run();
    EXPECT_TRUE(s.ok()) << s.message();
  }
}

// ---- Normalizations and scores -------------------------------------------------------------
TEST(Validate, LseWithSigmoidOrSoftpickIsRefused) {
  Call c(base());
  c.opt.norm = sinkattn::Sigmoid{};
  ASSERT_TRUE(c.run().ok()) << c.run().message();
  c.opt.lse = c.lse();
  EXPECT_FAILS(c, Errc::invalid_argument, "lse");
  c.opt.norm = sinkattn::Softpick{};
  EXPECT_FAILS(c, Errc::invalid_argument, "lse");
}

TEST(Validate, LseWithSoftmaxFamilyIsOk) {
  Call c(base());
  c.opt.lse = c.lse();
  c.opt.norm = sinkattn::SinkSoftmax{c.sinks.data()};
  const Status s = c.run();
  EXPECT_TRUE(s.ok()) << s.message();
}

TEST(Validate, BadScoreOptions) {
  Call c(base());
  c.opt.score.scale = std::numeric_limits<float>::infinity();
  EXPECT_FAILS(c, Errc::out_of_range, "score.scale");
  c.opt.score.scale.reset();
  c.opt.score.softcap = -1.f;
  EXPECT_FAILS(c, Errc::out_of_range, "score.softcap");
  c.opt.score.softcap = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FAILS(c, Errc::out_of_range, "score.softcap");
}

// ---- Legal corner cases ------------------------------------------------------------------
TEST(Validate, ZeroLengthProblemWithNullDataIsOk) {
  // Every view that is empty may have null data; the others need memory.
  for (int which = 0; which < 4; ++which) {
    Problem p = base();
    if (which == 0) p.seq_q = 0;
    if (which == 1) p.seq_kv = 0;
    if (which == 2) p.batch = 0;
    if (which == 3) p.seq_q = p.seq_kv = 0;
    auto buf = [](index_t n) { return std::vector<float>(static_cast<size_t>(n)); };
    auto qb = buf(p.batch * p.seq_q * p.heads_q * p.dim_qk), kb = buf(p.batch * p.seq_kv * p.heads_kv * p.dim_qk);
    auto vb = buf(p.batch * p.seq_kv * p.heads_kv * p.dim_v), ob = buf(p.batch * p.seq_q * p.heads_q * p.dim_v);
    auto data = [](std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };
    const Status s = sinkattn::validate(p, CView::bshd(data(qb), p.batch, p.seq_q, p.heads_q, p.dim_qk),
                                        CView::bshd(data(kb), p.batch, p.seq_kv, p.heads_kv, p.dim_qk),
                                        CView::bshd(data(vb), p.batch, p.seq_kv, p.heads_kv, p.dim_v),
                                        MView::bshd(data(ob), p.batch, p.seq_q, p.heads_q, p.dim_v));
    EXPECT_TRUE(s.ok()) << "case " << which << ": " << s.message();
  }
  // The all-zero Problem with default (empty) views.
  const Status s = sinkattn::validate(Problem{}, CView{}, CView{}, CView{}, MView{});
  EXPECT_TRUE(s.ok()) << s.message();
}

TEST(Validate, BhsdViewsAreOk) {
  const Problem p = base();
  Call c(p);
  c.q = CView::bhsd(c.qb.data(), p.batch, p.seq_q, p.heads_q, p.dim_qk);
  c.k = CView::bhsd(c.kb.data(), p.batch, p.seq_kv, p.heads_kv, p.dim_qk);
  c.v = CView::bhsd(c.vb.data(), p.batch, p.seq_kv, p.heads_kv, p.dim_v);
  c.o = MView::bhsd(c.ob.data(), p.batch, p.seq_q, p.heads_q, p.dim_v);
  const Status s = c.run();
  EXPECT_TRUE(s.ok()) << s.message();
  // The logical order stays [B, S, H, D]: element (b, s, h, d) of a BHSD view.
  EXPECT_EQ(c.o.offset(1, 2, 3, 4), 1 * p.heads_q * p.seq_q * p.dim_v + 3 * p.seq_q * p.dim_v + 2 * p.dim_v + 4);
}

TEST(Validate, BroadcastZeroStridesOnInputsAreOk) {
  const Problem p = base();
  Call c(p);
  // One K/V sequence shared by every batch entry; one query vector shared by all heads.
  c.k.stride[0] = 0;
  c.v.stride[0] = 0;
  c.q.stride[2] = 0;
  const Status s = c.run();
  EXPECT_TRUE(s.ok()) << s.message();
}

TEST(Validate, CheckThrowsWithTheStatus) {
  Call c(base());
  c.k.shape[2] = 3;
  const Status s = c.run();
  ASSERT_FALSE(s.ok());
  try {
    sinkattn::check(s);
    FAIL() << "check() did not throw";
  } catch (const sinkattn::Error& e) {
    EXPECT_EQ(e.status().code(), Errc::shape_mismatch);
    EXPECT_NE(std::string(e.what()).find("k:"), std::string::npos);
  }
  EXPECT_NO_THROW(sinkattn::check(Status{}));
}

}  // namespace
