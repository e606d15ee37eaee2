// V panels kept per thread from task to task (kernel/v_panels.hpp): the calls whose tiles
// revisit copied key blocks find them again, bit-identical to copying every block, and against
// the fp64 reference; a later call never reads an earlier call's panels. Dv 13 has V copied
// per block on every ISA (rows of no whole number of vectors); Dv 64 token-major on 16-register
// ISAs only (detail::kVRowsInPlace). Block-aligned masks run head after head: forward() would
// take problems this small heads innermost (their tiles fit the L2 over every head;
// kernel/config.hpp), an order that keeps no panels.

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "harness.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "threads.hpp"

namespace sinkattn {
namespace {

using test::Layout;

NeighborhoodMask blocked_1d(index_t extent, index_t k) {
  NeighborhoodMask m;
  m.rank = 1;
  m.extent = {extent, 1, 1};
  m.kernel = {k, 1, 1};
  m.stride = {k, 1, 1};
  return m;
}

// panels on/off for one scope (detail::keep_v_panels).
struct Panels {
  explicit Panels(bool on) { detail::keep_v_panels = on; }
  ~Panels() { detail::keep_v_panels = true; }
  Panels(const Panels&) = delete;
  Panels& operator=(const Panels&) = delete;
};

// forward(); neighborhood and block masks through their policies (detail::with_mask_policy)
// in the task order (b, h, tile) whatever their size.
Status call(const test::Data& d, const test::Out& out, const Options& opt, const Executor& ex) {
  if (!std::holds_alternative<NeighborhoodMask>(opt.mask) && !std::holds_alternative<BlockMask>(opt.mask))
    return forward(d.p, d.q, d.k, d.v, out.o, opt, ex);
  SINKATTN_TRY(validate(d.p, d.q, d.k, d.v, out.o, opt));
  return detail::with_mask_policy(
      detail::make_args(d.p, d.q, d.k, d.v, out.o, opt), opt, [&](const detail::KernelArgs& pa, const auto& mask) {
        using V = Variant<policy::RuntimeScore, std::decay_t<decltype(mask)>, policy::OnlineSoftmax, policy::NoSink,
                          policy::OptionalSigmoidGate>;
        detail::KernelArgs a = pa;
        a.heads_inner = false;
        return detail::run<V>(a, mask, ex);
      });
}

// One call on a fresh thread (no panels from earlier calls): its O and LSE, whether it matched
// the reference, and the blocks its thread found in a panel.
struct Call {
  std::vector<float> o;
  ::testing::AssertionResult ok = ::testing::AssertionSuccess();
  long hits = 0;
};
Call call_fresh(const test::Data& d, Options opt, const Executor& ex = Executor::serial()) {
  Call r;
  const bool lse = !std::holds_alternative<Sigmoid>(opt.norm) && !std::holds_alternative<Softpick>(opt.norm);
  std::thread([&] {
    test::Out out = test::make_out(d.p, Layout::BSHD, lse);
    opt.lse = out.lse;
    const Status s = call(d, out, opt, ex);
    if (!s.ok()) {
      r.ok = ::testing::AssertionFailure() << "forward failed: " << s.message();
      return;
    }
    r.hits = detail::thread_v_panels().hits();
    r.ok = test::matches_reference(d, opt, out);
    r.o = out.obuf;
    r.o.insert(r.o.end(), out.lsebuf.begin(), out.lsebuf.end());
  }).join();
  return r;
}

// Whether this call copies V rows per block (and so may keep panels).
bool copies_v(const test::Data& d) {
  return detail::copies_v_rows(detail::make_args(d.p, d.q, d.k, d.v, {}, Options{}));
}

struct Case {
  std::string name;
  MaskSpec mask;
  index_t seq;
};

std::vector<Case> revisiting_cases() {
  std::vector<Case> c;
  c.push_back({"1-D k=s=128 over 700", blocked_1d(700, 128), 700});
  c.push_back({"1-D k=s=256 over 512", blocked_1d(512, 256), 512});
  BlockMask blocks;
  blocks.block_size = 192;
  c.push_back({"blocks of 192 over 600", blocks, 600});
  BlockMask ragged;
  ragged.boundaries = {0, 100, 356, 420};
  ragged.causal = true;
  c.push_back({"ragged causal blocks", ragged, 500});
  c.push_back({"window 150 left", SlidingWindowMask{150, 0, 0}, 500});
  c.push_back({"causal", CausalMask{}, 333});
  return c;
}

TEST(VPanels, RevisitedBlocksComeFromPanelsBitIdentical) {
  for (const index_t dv : {13, 64})
    for (const Case& c : revisiting_cases()) {
      SCOPED_TRACE(c.name + ", Dv " + std::to_string(dv));
      const Problem p{2, 4, 2, c.seq, c.seq, 24, dv};
      const test::Data d = test::make_data(p, Layout::BSHD, 11);
      Options opt;
      opt.mask = c.mask;
      const Call kept = call_fresh(d, opt);
      ASSERT_TRUE(kept.ok) << "(panels kept)";
      if (copies_v(d)) {
        EXPECT_GT(kept.hits, 0) << "no block was found in a panel";
      }
      Call copied;
      {
        const Panels off(false);
        copied = call_fresh(d, opt);
      }
      ASSERT_TRUE(copied.ok) << "(every block copied)";
      EXPECT_EQ(copied.hits, 0);
      EXPECT_TRUE(test::bit_identical(kept.o, copied.o)) << "panels changed the result";
    }
}

// A sliding window (forward() as it is): tiles revisit the blocks of their neighbours.
TEST(VPanels, EveryNormalizationAndTwoThreads) {
  const Problem p{1, 3, 3, 520, 520, 17, 13};
  const test::Data d = test::make_data(p, Layout::BSHD, 5);
  std::vector<float> s(3, 0.4f), sinks(3, 1.f);
  const test::Tensor alpha = test::make_tensor({p.batch, p.seq_q, p.heads_q, 1}, 21, 0.2f, 1.2f);
  const std::vector<NormSpec> norms = {
      Softmax{},  SinkSoftmax{sinks.data()}, Sigmoid{-3.f},
      Softpick{}, ScalableSoftmax{s.data()}, AffineScaled{alpha.cview(), {}, 1.f, false}};
  for (const NormSpec& n : norms) {
    SCOPED_TRACE(n.index());
    Options opt;
    opt.mask = SlidingWindowMask{200, 10, 0};
    opt.norm = n;
    const Call one = call_fresh(d, opt);
    ASSERT_TRUE(one.ok);
    EXPECT_GT(one.hits, 0);
    const Call two = call_fresh(d, opt, test::thread_executor(2));
    ASSERT_TRUE(two.ok) << "(2 threads)";
    EXPECT_TRUE(test::bit_identical(one.o, two.o)) << "1 and 2 threads differ";
  }
}

// A panel is found only for the same generation, rows and map, and at most as many rows as it
// holds; a new row length (or column count) starts every slot over, zeroed.
TEST(VPanels, TagsDecideHits) {
  detail::VPanels pn;
  const float rows[4] = {};
  const index_t map[2] = {3, 1};
  const index_t ld = 2 * tile::kWidth;
  using Tag = detail::VPanels::Tag;
  const detail::VPanels::Panel first = pn.get(Tag{7, rows, nullptr, 40}, 64, ld, 5);
  ASSERT_NE(first.data, nullptr);
  EXPECT_FALSE(first.hit);
  for (index_t i = 0; i < detail::kBlockKV * ld; ++i) EXPECT_EQ(first.data[i], 0.f) << i;
  first.data[0] = 1.f, first.data[ld - 1] = 2.f;  // a copy (and padding that must not stay)
  EXPECT_TRUE(pn.get(Tag{7, rows, nullptr, 40}, 64, ld, 5).hit);
  const detail::VPanels::Panel fewer = pn.get(Tag{7, rows, nullptr, 12}, 64, ld, 5);
  EXPECT_TRUE(fewer.hit) << "fewer rows of the same block";
  EXPECT_EQ(fewer.data, first.data);
  EXPECT_FALSE(pn.get(Tag{7, rows, nullptr, 41}, 64, ld, 5).hit) << "more rows than copied";
  EXPECT_TRUE(pn.get(Tag{7, rows, nullptr, 41}, 64, ld, 5).hit) << "the caller filled the slot it was given";
  EXPECT_FALSE(pn.get(Tag{8, rows, nullptr, 41}, 64, ld, 5).hit) << "another call";
  EXPECT_FALSE(pn.get(Tag{8, rows + 1, nullptr, 41}, 64, ld, 5).hit) << "other rows";
  EXPECT_FALSE(pn.get(Tag{8, rows + 1, map, 41}, 64, ld, 5).hit) << "through a map";
  EXPECT_TRUE(pn.get(Tag{8, rows + 1, map, 41}, 64, ld, 5).hit);
  const detail::VPanels::Panel other = pn.get(Tag{8, rows + 1, map, 41}, 128, ld, 5);
  EXPECT_FALSE(other.hit) << "another block's slot";
  EXPECT_NE(other.data, first.data);
  EXPECT_TRUE(pn.get(Tag{8, rows + 1, map, 41}, 64, ld, 5).hit) << "its own slot kept";
  const long hits = pn.hits();
  EXPECT_EQ(hits, 5);
  const detail::VPanels::Panel wider = pn.get(Tag{8, rows + 1, map, 41}, 64, ld, 6);
  EXPECT_FALSE(wider.hit) << "new columns";
  EXPECT_EQ(wider.data[0], 0.f);
  EXPECT_EQ(wider.data[ld - 1], 0.f);
  EXPECT_EQ(pn.hits(), hits);
}

// The caller's V may change between calls at the same addresses: a call on a thread that
// holds the last call's panels (same rows, same tags but the generation) reads the new values.
TEST(VPanels, ALaterCallReadsItsOwnValues) {
  const Problem p{1, 2, 1, 600, 600, 24, 13};
  test::Data d = test::make_data(p, Layout::BSHD, 7);
  Options opt;
  opt.mask = SlidingWindowMask{150, 0, 0};
  std::thread([&] {
    for (int n = 0; n < 3; ++n) {
      SCOPED_TRACE(n);
      test::Out out = test::make_out(p, Layout::BSHD, true);
      Options o = opt;
      o.lse = out.lse;
      const long before = detail::thread_v_panels().hits();
      ASSERT_TRUE(call(d, out, o, Executor::serial()).ok());
      EXPECT_TRUE(test::matches_reference(d, o, out));
      EXPECT_GT(detail::thread_v_panels().hits(), before);
      for (float& x : d.vbuf) x = 0.5f - 1.5f * x;  // new values, same buffer (d.v still views it)
    }
  }).join();
}

}  // namespace
}  // namespace sinkattn
