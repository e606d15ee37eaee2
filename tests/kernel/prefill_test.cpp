// The fused prefill loop (and everything it dispatches to) against the fp64 reference, with
// the tolerance rule |ours - ref64| <= 2 |naive fp32 - ref64| + atol.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "harness.hpp"
#include "next_task_check.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "threads.hpp"

namespace sinkattn {
namespace {

using test::Layout;

constexpr float kInf = std::numeric_limits<float>::infinity();

Problem problem(index_t b, index_t hq, index_t hkv, index_t sq, index_t skv, index_t dqk, index_t dv) {
  return Problem{b, hq, hkv, sq, skv, dqk, dv};
}

// Runs forward() on d with opt (+ LSE), checks the status and the tolerance rule.
::testing::AssertionResult run_and_compare(const test::Data& d, Options opt, Layout out_layout = Layout::BSHD,
                                           const Executor& ex = Executor::serial(), double atol = 1e-5) {
  test::Out out = test::make_out(d.p, out_layout, /*with_lse=*/true);
  opt.lse = out.lse;
  const Status s = forward(d.p, d.q, d.k, d.v, out.o, opt, ex);
  if (!s.ok()) return ::testing::AssertionFailure() << "forward failed: " << s.message();
  return test::matches_reference(d, opt, out, atol);
}

Options causal(index_t offset = 0) {
  Options o;
  o.mask = CausalMask{offset};
  return o;
}

// Options with a blocked 2-D neighborhood (stride == kernel) over an extent x extent grid: every
// query tile of 64 tokens (k = 8) visits one key block.
Options blocked_2d(index_t extent, index_t k) {
  NeighborhoodMask m;
  m.rank = 2;
  m.extent = {extent, extent, 1};
  m.kernel = {k, k, 1};
  m.stride = {k, k, 1};
  Options o;
  o.mask = m;
  return o;
}

TEST(Prefill, LengthsStraddlingTheTiles) {
  std::uint64_t seed = 1;
  for (index_t sq : test::kLengths)
    for (index_t skv : test::kLengths) {
      const index_t d = (sq + skv) % 2 ? 72 : 33;
      const auto data = test::make_data(problem(1, 2, 1, sq, skv, d, d), Layout::BSHD, seed++);
      EXPECT_TRUE(run_and_compare(data, Options{})) << "dense sq=" << sq << " skv=" << skv;
      EXPECT_TRUE(run_and_compare(data, causal())) << "causal sq=" << sq << " skv=" << skv;
    }
}

TEST(Prefill, FlashAttentionPairs) {
  for (auto [sq, skv] : test::kFlashPairs) {
#ifdef SINKATTN_TEST_QUICK
    if (sq > 512) continue;
#endif
    const auto data = test::make_data(problem(1, 2, 1, sq, skv, 64, 64), Layout::BSHD, sq * 7 + skv);
    EXPECT_TRUE(run_and_compare(data, Options{})) << "dense " << sq << "x" << skv;
    EXPECT_TRUE(run_and_compare(data, causal())) << "causal " << sq << "x" << skv;
  }
}

TEST(Prefill, HeadDims) {
  for (index_t d : {1, 8, 32, 64, 72, 80, 96, 128, 256}) {
    const auto data = test::make_data(problem(1, 2, 2, 70, 83, d, d), Layout::BSHD, d);
    EXPECT_TRUE(run_and_compare(data, causal())) << "d=" << d;
  }
  // Dqk != Dv, both ways.
  EXPECT_TRUE(run_and_compare(test::make_data(problem(1, 1, 1, 40, 77, 96, 40)), Options{}));
  EXPECT_TRUE(run_and_compare(test::make_data(problem(1, 1, 1, 40, 77, 17, 128)), causal()));
}

TEST(Prefill, GqaRatiosAndBatches) {
  for (index_t ratio : {1, 2, 4, 8})
    for (index_t hkv : {1, 2}) {
      const auto data = test::make_data(problem(2, hkv * ratio, hkv, 65, 65, 64, 64), Layout::BSHD, ratio * 10 + hkv);
      EXPECT_TRUE(run_and_compare(data, causal())) << "ratio=" << ratio << " hkv=" << hkv;
    }
}

TEST(Prefill, LayoutsBshdAndBhsdInAndOut) {
  const auto bshd = test::make_data(problem(2, 4, 2, 67, 90, 48, 48), Layout::BSHD, 5);
  const auto bhsd = test::relayout(bshd, Layout::BHSD);
  for (Layout out : {Layout::BSHD, Layout::BHSD}) {
    EXPECT_TRUE(run_and_compare(bshd, causal(), out));
    EXPECT_TRUE(run_and_compare(bhsd, causal(), out));
  }
}

// K and V whose head dim is not contiguous take the packing path.
TEST(Prefill, StridedHeadDim) {
  const Problem p = problem(1, 2, 1, 30, 45, 20, 24);
  auto data = test::make_data(p, Layout::BSHD, 3);
  std::vector<float> kbuf(static_cast<std::size_t>(p.seq_kv * p.dim_qk * 2)),
      vbuf(static_cast<std::size_t>(p.seq_kv * p.dim_v * 3));
  TensorView<float> k{kbuf.data(), {1, p.seq_kv, 1, p.dim_qk}, {0, p.dim_qk * 2, 0, 2}};
  TensorView<float> v{vbuf.data(), {1, p.seq_kv, 1, p.dim_v}, {0, p.dim_v * 3, 0, 3}};
  for (index_t j = 0; j < p.seq_kv; ++j) {
    for (index_t x = 0; x < p.dim_qk; ++x) k(0, j, 0, x) = data.k(0, j, 0, x);
    for (index_t x = 0; x < p.dim_v; ++x) v(0, j, 0, x) = data.v(0, j, 0, x);
  }
  data.k = k;
  data.v = v;
  EXPECT_TRUE(run_and_compare(data, causal()));
}

TEST(Prefill, CausalOffsetsAndFullyMaskedRows) {
  // Sq > Skv: the first rows see no key at all (bottom-right alignment): 0 and LSE -inf.
  for (index_t offset : {-7, -1, 0, 2, 50}) {
    const auto data = test::make_data(problem(1, 2, 1, 90, 40, 32, 32), Layout::BSHD, 40 + offset);
    EXPECT_TRUE(run_and_compare(data, causal(offset))) << "offset=" << offset;
  }
  const Problem p = problem(1, 1, 1, 90, 40, 16, 16);
  const auto data = test::make_data(p);
  test::Out out = test::make_out(p, Layout::BSHD, true);
  Options opt = causal();
  opt.lse = out.lse;
  ASSERT_TRUE(forward(p, data.q, data.k, data.v, out.o, opt).ok());
  for (index_t i = 0; i < 50; ++i) {
    EXPECT_EQ(out.lse(0, 0, i, 0), -kInf) << i;
    for (index_t x = 0; x < p.dim_v; ++x) ASSERT_EQ(out.o(0, i, 0, x), 0.f);
  }
  EXPECT_TRUE(std::isfinite(out.lse(0, 0, 50, 0)));
}

TEST(Prefill, ZeroLengths) {
  for (const Problem& p : {problem(1, 2, 1, 5, 0, 8, 8), problem(1, 2, 1, 0, 5, 8, 8), problem(0, 2, 1, 5, 5, 8, 8)}) {
    const auto data = test::make_data(p);
    test::Out out = test::make_out(p, Layout::BSHD, true);
    Options opt;
    opt.lse = out.lse;
    ASSERT_TRUE(forward(p, data.q, data.k, data.v, out.o, opt).ok());
    for (float x : out.obuf) EXPECT_EQ(x, 0.f);  // Skv = 0: every row fully masked
    for (float x : out.lsebuf) EXPECT_EQ(x, -kInf);
  }
}

TEST(Prefill, ScoreModifiersBiasSoftcapAlibi) {
  const Problem p = problem(2, 4, 2, 70, 90, 40, 40);
  const auto data = test::make_data(p, Layout::BSHD, 9, 2.f);
  // Bias broadcast over batch and heads (zero strides), full per (i, j).
  auto bias = test::make_tensor({1, 1, p.seq_q, p.seq_kv}, 17, -3, 3);
  TensorView<const float> bview{bias.buf.data(), {p.batch, p.heads_q, p.seq_q, p.seq_kv}, {0, 0, p.seq_kv, 1}};
  auto bias_full = test::make_tensor({p.batch, p.heads_q, p.seq_q, p.seq_kv}, 18, -3, 3);
  bias_full.buf[5] = -kInf;  // a -inf bias entry is legal and masks that pair
  std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f};

  for (int combo = 0; combo < 8; ++combo) {
    Options opt = combo % 2 ? causal() : Options{};
    if (combo & 2) opt.score.softcap = 5.f;
    if (combo & 4) opt.score.bias = combo % 2 ? bview : bias_full.cview();
    if (combo == 6 || combo == 3) opt.score.alibi_slopes = slopes.data();
    opt.score.scale = 0.3f;
    EXPECT_TRUE(run_and_compare(data, opt)) << "combo " << combo;
  }
}

TEST(Prefill, LearnedSinkLogits) {
  const Problem p = problem(1, 4, 2, 70, 70, 32, 32);
  const auto data = test::make_data(p, Layout::BSHD, 21);
  std::vector<float> sinks = {0.f, 2.5f, -kInf, -3.f};
  Options opt = causal();
  opt.norm = SinkSoftmax{sinks.data()};
  EXPECT_TRUE(run_and_compare(data, opt));
  opt.score.softcap = 8.f;
  EXPECT_TRUE(run_and_compare(data, opt));
  // The identity O_sink = O_softmax * sigmoid(LSE - S), from our own two outputs.
  test::Out plain = test::make_out(p, Layout::BSHD, true), sink = test::make_out(p, Layout::BSHD, true);
  Options po = causal();
  po.lse = plain.lse;
  Options so = causal();
  so.norm = SinkSoftmax{sinks.data()};
  ASSERT_TRUE(forward(p, data.q, data.k, data.v, plain.o, po).ok());
  ASSERT_TRUE(forward(p, data.q, data.k, data.v, sink.o, so).ok());
  for (index_t h = 0; h < p.heads_q; ++h)
    for (index_t i = 0; i < p.seq_q; ++i) {
      const double g = 1.0 / (1.0 + std::exp(double(sinks[h]) - plain.lse(0, h, i, 0)));
      for (index_t x = 0; x < p.dim_v; ++x) ASSERT_NEAR(sink.o(0, i, h, x), plain.o(0, i, h, x) * g, 2e-6);
    }
}

// Logits of magnitude ~1e4: nothing overflows. O is held to the tolerance rule; the LSE
// (~3e4, where one fp32 ulp is 0.002) to a few ulps, since computing it through log2 units
// costs one or two roundings more than the naive path.
::testing::AssertionResult huge_logits_match(const test::Data& data, Options opt) {
  test::Out out = test::make_out(data.p, Layout::BSHD, true);
  opt.lse = out.lse;
  const Status s = forward(data.p, data.q, data.k, data.v, out.o, opt);
  if (!s.ok()) return ::testing::AssertionFailure() << s.message();
  test::Out o_only = out;
  o_only.lse = {};
  // One fp32 ulp of a logit of 1e4 is 1e-3 (2e-3 in log2 units), so any fp32 path moves the
  // weights by ~1e-3 relative; atol 1e-3 on O (|v| <= 1) is that resolution, not slack.
  const auto o_ok = test::matches_reference(data, opt, o_only, 1e-3);
  if (!o_ok) return o_ok;
  const auto ref = test::run_reference<double>(data, opt, true);
  for (index_t h = 0; h < data.p.heads_q; ++h)
    for (index_t i = 0; i < data.p.seq_q; ++i) {
      const double want = ref.lse(0, h, i, 0), got = out.lse(0, h, i, 0);
      if (!std::isfinite(got) || std::abs(got - want) > 5e-7 * std::abs(want) + 1e-5)
        return ::testing::AssertionFailure() << "lse[h=" << h << ", i=" << i << "]: ours " << got << " ref64 " << want;
    }
  return ::testing::AssertionSuccess();
}

TEST(Prefill, HugeLogitsStayFinite) {
  const Problem p = problem(1, 2, 1, 80, 100, 16, 16);
  const auto data = test::make_data(p, Layout::BSHD, 31);
  for (float scale : {1e4f, -1e4f, 3e3f}) {
    Options opt = causal();
    opt.score.scale = scale;  // logits of magnitude ~1e4
    EXPECT_TRUE(huge_logits_match(data, opt)) << scale;
  }
}

TEST(Prefill, ThreadsGiveBitIdenticalResults) {
  const Problem p = problem(2, 4, 2, 200, 260, 64, 64);
  const auto data = test::make_data(p, Layout::BSHD, 41);
  for (Options opt : {Options{}, causal()}) {
    test::Out one = test::make_out(p, Layout::BSHD, true), two = test::make_out(p, Layout::BSHD, true);
    Options o1 = opt, o2 = opt;
    o1.lse = one.lse;
    o2.lse = two.lse;
    ASSERT_TRUE(forward(p, data.q, data.k, data.v, one.o, o1, Executor::serial()).ok());
    ASSERT_TRUE(forward(p, data.q, data.k, data.v, two.o, o2, test::thread_executor(2)).ok());
    EXPECT_TRUE(test::bit_identical(one.obuf, two.obuf));
    EXPECT_TRUE(test::bit_identical(one.lsebuf, two.lsebuf));
    EXPECT_TRUE(test::matches_reference(data, o1, one));
  }
#if defined(_OPENMP)
  test::Out omp = test::make_out(p), ser = test::make_out(p);
  ASSERT_TRUE(forward(p, data.q, data.k, data.v, omp.o, causal(), Executor::openmp(2)).ok());
  ASSERT_TRUE(forward(p, data.q, data.k, data.v, ser.o, causal()).ok());
  EXPECT_TRUE(test::bit_identical(omp.obuf, ser.obuf));
#endif
}

TEST(Prefill, NanInOneHeadStaysInThatHead) {
  const Problem p = problem(1, 2, 2, 20, 30, 16, 16);
  auto data = test::make_data(p, Layout::BSHD, 51);
  data.mk()(0, 3, 1, 2) = std::nanf("");  // a key of KV head 1 only
  test::Out out = test::make_out(p);
  ASSERT_TRUE(forward(p, data.q, data.k, data.v, out.o).ok());
  for (index_t i = 0; i < p.seq_q; ++i)
    for (index_t x = 0; x < p.dim_v; ++x) {
      EXPECT_FALSE(std::isnan(out.o(0, i, 0, x)));
      EXPECT_TRUE(std::isnan(out.o(0, i, 1, x)));
    }
}

TEST(Prefill, ErrorsNameTheArgument) {
  const Problem p = problem(1, 3, 2, 4, 4, 8, 8);
  const auto data = test::make_data(problem(1, 2, 2, 4, 4, 8, 8));
  test::Out out = test::make_out(problem(1, 2, 2, 4, 4, 8, 8));
  Status s = forward(p, data.q, data.k, data.v, out.o);
  EXPECT_EQ(s.code(), Errc::heads_not_divisible);
  EXPECT_NE(s.message().find("heads_q"), std::string::npos) << s.message();

  const Problem ok = problem(1, 2, 2, 4, 4, 8, 8);
  Options sig;  // a wrong combination: sigmoid weights have no LSE
  sig.norm = Sigmoid{};
  std::vector<float> lse_buf(8);
  sig.lse = TensorView<float>::lse(lse_buf.data(), 1, 2, 4);
  s = forward(ok, data.q, data.k, data.v, out.o, sig);
  EXPECT_EQ(s.code(), Errc::invalid_argument) << s.message();
  EXPECT_NE(s.message().find("lse"), std::string::npos);
#if SINKATTN_HAS_EXCEPTIONS
  EXPECT_THROW(check(forward(p, data.q, data.k, data.v, out.o)), Error);
#endif
}

// The compile-time entry point runs exactly one specialisation.
// Each task prefetches the rows of the task its thread runs next (detail::next_task_streams):
// over flat masks, layouts, GQA and tiles that see no key, those are that task's rows.
TEST(Prefill, LookAheadNamesTheNextTasksRows) {
  const std::vector<index_t> bounds = {0, 50, 70, 160};
  const Options none;  // (a named object: a temporary Options here tripped g++ 12's -Wmaybe-uninitialized)
  for (const Layout layout : {Layout::BSHD, Layout::BHSD})
    for (const Problem p : {problem(2, 4, 2, 200, 230, 40, 24), problem(1, 3, 1, 130, 100, 64, 64)}) {
      const auto d = test::make_data(p, layout, 5);
      test::Out out = test::make_out(p, layout);
      const detail::KernelArgs a = detail::make_args(p, d.q, d.k, d.v, out.o, none);
      const index_t shift = p.seq_kv - p.seq_q;
      SCOPED_TRACE(::testing::Message() << to_string(layout) << " Sq " << p.seq_q << " Skv " << p.seq_kv);
      EXPECT_TRUE(test::next_task_streams_ok(a, policy::FullMaskPolicy{p.seq_kv}));
      EXPECT_TRUE(test::next_task_streams_ok(a, policy::CausalMaskPolicy{p.seq_kv, shift}));
      EXPECT_TRUE(test::next_task_streams_ok(a, policy::CausalMaskPolicy{p.seq_kv, -90}));  // rows that see nothing
      EXPECT_TRUE(test::next_task_streams_ok(a, policy::SlidingWindowMaskPolicy{p.seq_kv, shift, 40, 0, 4}));
      EXPECT_TRUE(test::next_task_streams_ok(
          a, policy::BlockMaskPolicy{p.seq_kv, shift, 0, bounds.data(), 4, 3, false, true}));  // ragged, global
      EXPECT_TRUE(test::next_task_streams_ok(a, policy::BlockMaskPolicy{p.seq_kv, shift, 64, nullptr, 0, 0, true}));
      if (p.seq_q == p.seq_kv || shift > 0) {
        EXPECT_TRUE(test::next_task_streams_ok(
            a, policy::NeighborhoodMaskPolicy{
                   1, {p.seq_kv - shift, 1, 1}, {20, 1, 1}, {3, 1, 1}, {4, 1, 1}, {false, false, false}, shift}));
      }
    }
}

// O written past the caches (Options::output_stores, tile::stream_store) holds the same bits
// as O written through them: where the rows are vector-aligned (streamed) and where they are
// not (written as usual), on one thread and two, over shapes that straddle the tiles, value
// dims that are and are not whole vectors, both layouts, and tasks of one key block (blocked
// 2-D neighborhoods) and of many (causal, dense).
TEST(Prefill, StreamedOutputIsBitIdenticalToCachedStores) {
  struct Case {
    Problem p;
    Options opt;
  };
  const Options na = blocked_2d(16, 8);
  Options na_slabs;
  // Stride 1: slab-ordered tiles, whose last key blocks cover some lane vectors only (the
  // other rows are stored after the loop, streamed too).
  na_slabs.mask = NeighborhoodMask{2, {24, 24, 1}, {9, 9, 1}};
  const std::vector<Case> cases = {
      {problem(1, 2, 2, 1, 1, 64, 64), Options{}},       {problem(2, 4, 2, 65, 130, 32, 32), causal()},
      {problem(1, 3, 3, 200, 200, 64, 64), causal()},    {problem(1, 2, 1, 150, 300, 24, 40), Options{}},
      {problem(1, 2, 2, 70, 70, 128, 128), causal(-20)}, {problem(1, 4, 4, 256, 256, 64, 64), na},
      {problem(1, 2, 2, 256, 256, 24, 48), na},          {problem(1, 2, 1, 576, 576, 32, 32), na_slabs},
  };
  for (const Case& c : cases)
    for (const Layout layout : {Layout::BSHD, Layout::BHSD})
      for (const index_t misalign : {index_t{0}, index_t{1}}) {
        const Problem& p = c.p;
        SCOPED_TRACE(::testing::Message() << to_string(layout) << " Sq " << p.seq_q << " Skv " << p.seq_kv << " Dv "
                                          << p.dim_v << " misaligned by " << misalign << " floats");
        const auto d = test::make_data(p, layout, 17);
        const auto n = static_cast<std::size_t>(p.batch * p.seq_q * p.heads_q * p.dim_v);
        // Two vector-aligned buffers (+ misalign floats), NaN-filled, in the input's layout.
        std::vector<float> store(2 * n + 64, std::numeric_limits<float>::quiet_NaN());
        const std::size_t off = reinterpret_cast<std::uintptr_t>(store.data()) % 64 / sizeof(float);
        float* base = store.data() + (16 - off) % 16;
        float* one = base + misalign;
        float* two = one + n + 16;
        const auto view = [&](float* x) {
          return test::make_view<float>(x, layout, p.batch, p.seq_q, p.heads_q, p.dim_v);
        };
        const bool whole_vectors = p.dim_v % tile::kWidth == 0;
        const bool streams = tile::kStreamStores && misalign == 0 && whole_vectors;
        EXPECT_EQ(detail::output_streams(p, view(one), OutputStores::streamed), streams);

        Options cached = c.opt, streamed = c.opt;
        cached.output_stores = OutputStores::cached;
        streamed.output_stores = OutputStores::streamed;
        EXPECT_EQ(detail::make_args(p, d.q, d.k, d.v, view(one), streamed).stream_o, streams);
        EXPECT_FALSE(detail::make_args(p, d.q, d.k, d.v, view(one), cached).stream_o);
        test::Out ref = test::make_out(p, layout);
        ASSERT_TRUE(forward(p, d.q, d.k, d.v, ref.o, cached).ok());
        ASSERT_TRUE(forward(p, d.q, d.k, d.v, view(one), streamed).ok());
        ASSERT_TRUE(forward(p, d.q, d.k, d.v, view(two), streamed, test::thread_executor(2)).ok());
        EXPECT_EQ(std::memcmp(one, ref.obuf.data(), n * sizeof(float)), 0) << "one thread";
        EXPECT_EQ(std::memcmp(two, ref.obuf.data(), n * sizeof(float)), 0) << "two threads";
        EXPECT_TRUE(test::matches_reference(p, d.q, d.k, d.v, c.opt, view(one)));
      }
}

// `automatic` streams O only where it would not stay cached for the next operation: the call's
// tensors fill the last-level cache and O is larger than an L2 (kernel/config.hpp).
TEST(Prefill, AutomaticOutputStoresStreamOnlyOutputsThatLeaveTheCache) {
  const Problem p = problem(1, 4, 4, 4096, 4096, 64, 64);  // Q, K, V, O: 4 MiB each
  alignas(64) static float row[64];                        // (output_streams reads the view's address and strides only)
  const auto o = TensorView<float>::bshd(row, 1, p.seq_q, p.heads_q, p.dim_v);
  constexpr std::size_t MiB = std::size_t{1} << 20;
  const auto streams = [&](const TensorView<float>& v, OutputStores how, std::size_t llc, std::size_t l2) {
    return detail::output_streams(p, v, how, llc, l2);
  };
  EXPECT_EQ(streams(o, OutputStores::automatic, 16 * MiB, MiB / 2), tile::kStreamStores);  // fills the LLC
  EXPECT_FALSE(streams(o, OutputStores::automatic, 16 * MiB + 64, MiB / 2));               // fits in it
  EXPECT_FALSE(streams(o, OutputStores::automatic, 16 * MiB, 4 * MiB));                    // O fits in an L2
  EXPECT_EQ(streams(o, OutputStores::automatic, 16 * MiB, 4 * MiB - 64), tile::kStreamStores);
  EXPECT_FALSE(streams(o, OutputStores::cached, 1, 1));
  EXPECT_EQ(streams(o, OutputStores::streamed, 1024 * MiB, 1024 * MiB), tile::kStreamStores);
  EXPECT_FALSE(streams(TensorView<float>::bshd(row + 1, 1, p.seq_q, p.heads_q, p.dim_v), OutputStores::streamed, 1, 1));
  const Problem odd = problem(1, 4, 4, 4096, 4096, 64, 33);  // rows not whole vectors
  EXPECT_FALSE(detail::output_streams(odd, TensorView<float>::bshd(row, 1, odd.seq_q, odd.heads_q, odd.dim_v),
                                      OutputStores::streamed));
  EXPECT_FALSE(streams({}, OutputStores::streamed, 1, 1));
}

// Prefetch streams (KernelArgs::prefetch_rows) only where the call's tensors do not fit in the
// L2 (kernel/config.hpp): Q, K, V and O of B1 H4 S1024 D64 take 4 MiB.
TEST(Prefill, RowsArePrefetchedOnlyForTensorsBeyondTheL2) {
  const Problem p = problem(1, 4, 4, 1024, 1024, 64, 64);
  constexpr std::size_t MiB = std::size_t{1} << 20;
  EXPECT_FALSE(detail::prefetch_pays(p, 4 * MiB));
  EXPECT_TRUE(detail::prefetch_pays(p, 4 * MiB - 64));
  EXPECT_TRUE(detail::prefetch_pays(problem(2, 4, 4, 1024, 1024, 64, 64), 4 * MiB));   // batches count
  EXPECT_TRUE(detail::prefetch_pays(problem(1, 4, 2, 1024, 4096, 64, 64), 4 * MiB));   // a longer K/V
  EXPECT_FALSE(detail::prefetch_pays(problem(1, 4, 1, 1024, 1024, 64, 64), 4 * MiB));  // GQA: fewer K/V heads
  detail::prefetch_in_l2 = true;
  EXPECT_TRUE(detail::prefetch_pays(p, 64 * MiB));
  detail::prefetch_in_l2 = false;
  // make_args decides with this core's L2: a 1-token call fits any L2, 256 MiB of tensors none.
  const auto d = test::make_data(problem(1, 2, 2, 1, 1, 16, 16));
  test::Out out = test::make_out(d.p);
  EXPECT_FALSE(detail::make_args(d.p, d.q, d.k, d.v, out.o, Options{}).prefetch_rows);
  EXPECT_TRUE(detail::prefetch_pays(problem(1, 16, 16, 16384, 16384, 64, 64)));
  // One-block tasks' O prefetch: make_args takes the rule's answer, which the override replaces.
  EXPECT_EQ(detail::make_args(d.p, d.q, d.k, d.v, out.o, Options{}).o_prefetch_one_block,
            detail::o_prefetch_one_block());
  for (const int forced : {0, 1}) {
    detail::o_prefetch_one_block_override = forced;
    EXPECT_EQ(detail::make_args(d.p, d.q, d.k, d.v, out.o, Options{}).o_prefetch_one_block, forced == 1);
  }
  detail::o_prefetch_one_block_override = -1;
}

// A call computes the same bits with its prefetch streams as without them, and with one-block
// tasks' O prefetch either way: tasks of one key block (blocked neighborhoods, 64-key blocks)
// and of many (dense, causal GQA), V read in place and V copied into panels by the streams
// (Dv 13: rows of no whole number of vectors), slot-mapped neighborhood tiles with RoPE on
// load (Q gathered row by row), extra keys, a sliding window with sink tokens, block-sparse
// lists, both layouts; the streams also on two threads (each task then asks for the rows of
// the task two ahead); and against the fp64 reference. (Most other tests' calls are small
// enough to run without the streams.)
TEST(Prefill, PrefetchStreamsDoNotChangeTheResult) {
  NeighborhoodMask slabs{2, {24, 24, 1}, {9, 9, 1}};
  NeighborhoodMask extra = slabs;
  extra.extra_keys = 5;
  BlockMask blocks;
  blocks.block_size = 64;
  blocks.global_keys = 3;
  struct Case {
    Problem p;
    Options opt;
  };
  const Options na = blocked_2d(16, 8);
  Options na_slabs, na_extra, blk, window, sparse;
  na_slabs.mask = slabs;
  na_extra.mask = extra;
  blk.mask = blocks;
  window.mask = SlidingWindowMask{100, 0, 4};  // 4 sink tokens and 100 keys back
  // Lists of 64-key blocks per (b, h, query block) of B1 H2 S300: 5 query and key blocks.
  const test::BlockLists lists =
      test::block_lists(2 * 5, 5, [](index_t r, index_t kb) { return (r + kb) % 3 != 1 || kb == r % 5; });
  sparse.mask = BlockSparseMask{64, 64, lists.offsets.data(), lists.indices.data(), nullptr};
  const RopeTable table(Rope{500.f, 32, 32, RopePairing::neox}, 600);
  Options na_rope = na_slabs;
  na_rope.rope = RopeOnLoad{&table, 0, 0, -1};
  const std::vector<Case> cases = {
      {problem(1, 2, 2, 1, 1, 64, 64), Options{}},     {problem(2, 4, 2, 65, 130, 32, 32), causal()},
      {problem(1, 3, 1, 200, 300, 64, 64), Options{}}, {problem(1, 2, 1, 150, 300, 24, 13), causal(150)},
      {problem(1, 4, 4, 256, 256, 64, 64), na},        {problem(1, 2, 2, 256, 256, 24, 13), na},
      {problem(1, 2, 1, 576, 576, 32, 32), na_slabs},  {problem(1, 2, 2, 576, 581, 32, 13), na_extra},
      {problem(1, 2, 2, 576, 576, 32, 32), na_rope},   {problem(1, 4, 2, 300, 300, 64, 64), blk},
      {problem(1, 4, 2, 300, 300, 64, 64), window},    {problem(1, 2, 2, 300, 300, 64, 64), sparse},
  };
  for (const Case& c : cases)
    for (const Layout layout : {Layout::BSHD, Layout::BHSD}) {
      const Problem& p = c.p;
      SCOPED_TRACE(::testing::Message() << to_string(layout) << " Sq " << p.seq_q << " Skv " << p.seq_kv << " Dqk "
                                        << p.dim_qk << " Dv " << p.dim_v);
      const auto d = test::make_data(p, layout, 23);
      test::Out with = test::make_out(p, layout, true), without = test::make_out(p, layout, true),
                two = test::make_out(p, layout, true), flipped = test::make_out(p, layout, true);
      const auto run = [&](test::Out& out, bool prefetch, const Executor& ex, int o_one_block = -1) {
        Options o = c.opt;
        o.lse = out.lse;
        detail::prefetch_in_l2 = prefetch;
        detail::o_prefetch_one_block_override = o_one_block;
        const Status st = forward(p, d.q, d.k, d.v, out.o, o, ex);
        detail::prefetch_in_l2 = false;
        detail::o_prefetch_one_block_override = -1;
        return st;
      };
      ASSERT_TRUE(run(with, true, Executor::serial()).ok());
      ASSERT_TRUE(run(without, false, Executor::serial()).ok());
      ASSERT_TRUE(run(two, true, test::thread_executor(2)).ok());
      // One-block tasks' O prefetch the other way round from this CPU's rule.
      ASSERT_TRUE(run(flipped, true, Executor::serial(), detail::o_prefetch_one_block() ? 0 : 1).ok());
      EXPECT_TRUE(test::bit_identical(with.obuf, without.obuf));
      EXPECT_TRUE(test::bit_identical(with.lsebuf, without.lsebuf));
      EXPECT_TRUE(test::bit_identical(with.obuf, two.obuf)) << "two threads";
      EXPECT_TRUE(test::bit_identical(with.obuf, flipped.obuf)) << "O prefetch of one-block tasks flipped";
      EXPECT_TRUE(test::matches_reference(d, c.opt, without));
    }
}

TEST(Prefill, CompileTimeVariant) {
  using V = Variant<policy::Score<false, false, false>, policy::CausalMaskPolicy, policy::OnlineSoftmax, policy::NoSink,
                    policy::NoGate>;
  const Problem p = problem(1, 2, 1, 50, 60, 24, 24);
  const auto data = test::make_data(p, Layout::BSHD, 61);
  test::Out out = test::make_out(p);
  ASSERT_TRUE(
      forward<V>(p, data.q, data.k, data.v, out.o, policy::CausalMaskPolicy{p.seq_kv, p.seq_kv - p.seq_q}).ok());
  EXPECT_TRUE(test::matches_reference(data, causal(), out));
}

}  // namespace
}  // namespace sinkattn
