// K/V given as segments (read in place, each with its own layout) and RoPE applied while
// loading (Options::rope), both against the fp64 reference on the concatenated K/V, in the
// prefill and the split-KV decode paths, across thread counts, and their argument checks.

#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "harness.hpp"
#include "segments.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "threads.hpp"

namespace sinkattn {
namespace {

using test::Layout;
using test::RopeCase;
using test::Segmented;
using test::split;

::testing::AssertionResult segmented_matches(const test::Data& d, const Segmented& s, Options opt,
                                             const Executor& ex = Executor::serial(),
                                             std::vector<float>* o_out = nullptr) {
  const bool lse_ok = !std::holds_alternative<Sigmoid>(opt.norm);
  test::Out out = test::make_out(d.p, Layout::BSHD, lse_ok);
  opt.lse = out.lse;
  const Status st = forward(d.p, d.q, s.seg.data(), static_cast<index_t>(s.seg.size()), out.o, opt, ex);
  if (!st.ok()) return ::testing::AssertionFailure() << "forward failed: " << st.message();
  if (o_out) *o_out = out.obuf;
  return test::matches_reference(d, opt, out);
}

Options with_mask(MaskSpec m) {
  Options o;
  o.mask = std::move(m);
  return o;
}

TEST(Segments, EqualTheConcatenatedKv) {
  // (Sq, Skv, cuts): blocks straddling segment ends, empty segments, one-row segments.
  struct Case {
    index_t sq, skv;
    std::vector<index_t> cuts;
  };
  const std::vector<Case> cases = {
      {70, 130, {4, 4, 67}}, {1, 300, {4, 100, 101, 250}},
      {33, 33, {1}},         {5, 2100, {4, 1030, 1030, 2000}},
      {64, 64, {64}},        {17, 9, {0, 3}},
  };
  const std::vector<MaskSpec> masks = {FullMask{}, CausalMask{}, SlidingWindowMask{40, 0, 4}};
  for (const auto& c : cases)
    for (const auto& m : masks)
      for (Layout l : {Layout::BSHD, Layout::BHSD}) {
        const Problem p{2, 4, 2, c.sq, c.skv, 24, 20};
        const test::Data d = test::make_data(p, l, 7);
        const Segmented s = split(d, c.cuts, {l, Layout::BHSD, Layout::BSHD});
        EXPECT_TRUE(segmented_matches(d, s, with_mask(m)))
            << "Sq=" << c.sq << " Skv=" << c.skv << " mask=" << m.index() << " " << test::to_string(l);
      }
}

TEST(Segments, ComposeWithNormalizationsAndDecodeGroups) {
  const Problem p{1, 8, 2, 2, 777, 64, 64};  // decode path: 2 x 4 rows per KV head
  const test::Data d = test::make_data(p, Layout::BSHD, 3);
  const Segmented s = split(d, {4, 300, 301}, {Layout::BSHD});
  std::vector<float> sinks(8);
  for (index_t h = 0; h < 8; ++h) sinks[static_cast<std::size_t>(h)] = 0.3f * static_cast<float>(h) - 1.f;
  Options o = with_mask(SlidingWindowMask{255, 0, 4});
  o.norm = SinkSoftmax{sinks.data()};
  EXPECT_TRUE(segmented_matches(d, s, o));
  o.norm = Sigmoid{-2.f};
  EXPECT_TRUE(segmented_matches(d, s, o));
}

TEST(Segments, ThreadsAgreeBitForBit) {
  for (index_t sq : {1, 100}) {
    const Problem p{1, 4, 2, sq, 3000, 32, 32};
    const test::Data d = test::make_data(p, Layout::BSHD, 5);
    const Segmented s = split(d, {4, 1500, 2999}, {Layout::BSHD, Layout::BHSD});
    std::vector<float> o1, o2;
    ASSERT_TRUE(segmented_matches(d, s, with_mask(CausalMask{}), Executor::serial(), &o1));
    ASSERT_TRUE(segmented_matches(d, s, with_mask(CausalMask{}), test::thread_executor(2), &o2));
    EXPECT_TRUE(test::bit_identical(o1, o2)) << "Sq=" << sq;
  }
}

TEST(Segments, BadArgumentsNameTheSegment) {
  const Problem p{1, 2, 1, 3, 20, 8, 8};
  const test::Data d = test::make_data(p);
  Segmented s = split(d, {10}, {Layout::BSHD});
  test::Out out = test::make_out(p);
  Status st = forward(p, d.q, s.seg.data(), 1, out.o);  // 10 rows, seq_kv 20
  EXPECT_EQ(st.code(), Errc::shape_mismatch);
  EXPECT_NE(st.message().find("seq_kv"), std::string::npos) << st.message();
  st = forward(p, d.q, nullptr, 2, out.o);
  EXPECT_EQ(st.code(), Errc::null_data);
  st = forward(p, d.q, s.seg.data(), -1, out.o);
  EXPECT_EQ(st.code(), Errc::negative_size);
  s.seg[1].v.shape[3] = 7;
  st = forward(p, d.q, s.seg.data(), 2, out.o);
  EXPECT_EQ(st.code(), Errc::shape_mismatch);
  EXPECT_NE(st.message().find("segments[1].v"), std::string::npos) << st.message();
  s.seg[1].v.shape[3] = 8;
  // Row counts whose sum wraps around to seq_kv: refused at the first segment past it.
  std::vector<KvSegment> huge(5, s.seg[0]);
  for (int i = 0; i < 4; ++i)
    for (auto* view : {&huge[i].k, &huge[i].v}) view->shape[1] = index_t{1} << 62, view->stride = {0, 0, 0, 0};
  huge[4].k.shape[1] = huge[4].v.shape[1] = 20;
  st = forward(p, d.q, huge.data(), 5, out.o);
  EXPECT_EQ(st.code(), Errc::shape_mismatch);
  EXPECT_NE(st.message().find("segments[0]"), std::string::npos) << st.message();
  s.seg[0].k.data = nullptr;
  st = forward(p, d.q, s.seg.data(), 2, out.o);
  EXPECT_EQ(st.code(), Errc::null_data);
  EXPECT_NE(st.message().find("segments[0].k"), std::string::npos) << st.message();
}

// ---- RoPE on load ----------------------------------------------------------------------

// Hq 4 over Hkv 2 by default: every prefill case visits each key from two query heads, so
// the loop rotates the keys once up front (kernel/packed_kv.hpp).
::testing::AssertionResult rope_matches(const RopeCase& c, const MaskSpec& mask, std::uint64_t seed,
                                        bool segmented = false, index_t hq = 4, index_t hkv = 2) {
  const Problem p{1, hq, hkv, c.sq, c.skv, c.dim, 16};
  const test::Data d = test::make_data(p, Layout::BSHD, seed);
  const RopeTable table = c.table();
  Options o = with_mask(mask);
  o.rope = c.options(table);
  if (segmented) return segmented_matches(d, split(d, {std::min(c.sink_keys, c.skv)}, {Layout::BHSD}), o);
  test::Out out = test::make_out(p, Layout::BSHD, true);
  o.lse = out.lse;
  const Status st = forward(p, d.q, d.k, d.v, out.o, o);
  if (!st.ok()) return ::testing::AssertionFailure() << "forward failed: " << st.message();
  return test::matches_reference(d, o, out);
}

TEST(RopeOnLoad, MatchesTheReferenceForBothPairings) {
  const std::vector<RopeCase> cases = {
      // prefill, default positions
      {70, 150, 32, 0, RopePairing::neox, -1, 0, -1},
      {70, 150, 32, 0, RopePairing::interleaved, -1, 0, -1},
      // odd head dim, partial rotary
      {33, 80, 21, 12, RopePairing::neox, -1, 0, -1},
      {33, 80, 21, 12, RopePairing::interleaved, -1, 0, -1},
      // StreamingLLM chunk: sinks seen from a capped position, queries further on
      {40, 120, 32, 0, RopePairing::neox, 80, 4, 99},
      {40, 120, 32, 0, RopePairing::interleaved, 80, 4, 99},
      // keys rotated up front in jobs of 512 rows: one starts inside a segment
      {70, 1100, 32, 0, RopePairing::neox, 1030, 4, 1050},
      // decode (2 rows per KV head), with and without the sink cap
      {1, 300, 64, 0, RopePairing::neox, 299, 4, 250},
      {1, 300, 64, 0, RopePairing::interleaved, -1, 0, -1},
      {1, 2100, 48, 32, RopePairing::neox, 2099, 4, 2000},
  };
  std::uint64_t seed = 11;
  for (const auto& c : cases)
    for (const MaskSpec& m : {MaskSpec{FullMask{}}, MaskSpec{SlidingWindowMask{63, 0, c.sink_keys}}}) {
      EXPECT_TRUE(rope_matches(c, m, seed))
          << "Sq=" << c.sq << " Skv=" << c.skv << " D=" << c.dim << " rot=" << c.rotary_dim
          << " pairing=" << int(c.pairing) << " q0=" << c.query_position << " sinks=" << c.sink_keys;
      EXPECT_TRUE(rope_matches(c, m, seed, true)) << "segmented, Sq=" << c.sq << " Skv=" << c.skv;
      ++seed;
    }
}

// One query tile per head (at most 32 rows: a tile on every ISA) and no GQA: each key is
// visited once, and the loop rotates each key block as it loads it.
TEST(RopeOnLoad, KeysVisitedOnceAreRotatedPerBlock) {
  const std::vector<RopeCase> cases = {
      {30, 120, 32, 0, RopePairing::neox, 80, 4, 99},
      {24, 80, 21, 12, RopePairing::interleaved, -1, 0, -1},
      {32, 200, 48, 32, RopePairing::neox, 150, 70, 180},  // the sink cap cuts a key block
  };
  std::uint64_t seed = 31;
  for (const auto& c : cases) {
    const Problem p{1, 2, 2, c.sq, c.skv, c.dim, 16};
    detail::KernelArgs a;
    const RopeTable table = c.table();
    a.p = p;
    a.rope = &table;
    ASSERT_FALSE(detail::kv_visits(a, policy::FullMaskPolicy{p.seq_kv}, 1, detail::wide_tile_keys(a)).revisited)
        << "must rotate per block";
    for (const MaskSpec& m : {MaskSpec{FullMask{}}, MaskSpec{SlidingWindowMask{63, 0, c.sink_keys}}}) {
      EXPECT_TRUE(rope_matches(c, m, seed, false, 2, 2)) << "Sq=" << c.sq << " Skv=" << c.skv << " D=" << c.dim;
      EXPECT_TRUE(rope_matches(c, m, seed, true, 2, 2)) << "segmented, Sq=" << c.sq << " Skv=" << c.skv;
      ++seed;
    }
  }
}

// The keys rotated once, in each layout run() can choose (detail::packed_kv_plan, asserted
// for each limit): all of them, a batch element or a KV head at a time, each kept in the
// calling thread's buffer or allocated for the call, a batch element at a time when the task
// order keeps heads innermost, and per block when a head chunk would starve the executor.
// Each matches the reference and is bit-identical to the single-buffer run, serial and on two
// threads, with K in one view and as segments.
TEST(RopeOnLoad, KeysRotatedInChunksAgreeBitForBit) {
  using Chunk = detail::PackedKvPlan::Chunk;
  struct Limit {  // packed_kv_retained for the scope
    explicit Limit(std::size_t n) { detail::packed_kv_retained = n; }
    ~Limit() { detail::packed_kv_retained = detail::kPackedKvRetained; }
  };
  const RopeCase c{70, 150, 21, 12, RopePairing::neox, 80, 4, 99};  // odd D, partial rotary, sinks
  const RopeTable table = c.table();
  for (const index_t batch : {2, 1}) {
    const Problem p{batch, 4, 2, c.sq, c.skv, c.dim, 16};
    const index_t tiles = (p.seq_q + detail::kBlockQ - 1) / detail::kBlockQ;
    const test::Data d = test::make_data(p, Layout::BSHD, 41);
    // Bytes packed per (b, g): the rotated keys only (150 keys per tile stay in L2, so strided
    // rows are read in place, kernel/packed_kv.hpp).
    Options with_rope;
    with_rope.rope = c.options(table);
    const detail::KernelArgs a0 = detail::make_args(p, d.q, d.k, d.v, {}, with_rope);
    ASSERT_FALSE(detail::kv_visits(a0, policy::FullMaskPolicy{p.seq_kv}, tiles, detail::wide_tile_keys(a0)).wide);
    const std::size_t head =
        static_cast<std::size_t>(p.seq_kv * tile::round_up(p.dim_qk, tile::kWidth)) * sizeof(float);
    BlockMask blocks;
    blocks.block_size = 32;
    ASSERT_TRUE(detail::block_heads_inner(blocks, p)) << "the block mask must run heads innermost";
    const Segmented s = split(d, {3, 64, 100}, {Layout::BHSD, Layout::BSHD});

    for (const MaskSpec& m : {MaskSpec{CausalMask{}}, MaskSpec{SlidingWindowMask{40, 0, 4}}, MaskSpec{blocks}})
      for (const bool segmented : {false, true}) {
        const bool hi = std::holds_alternative<BlockMask>(m);
        const auto run = [&](std::size_t limit, const Executor& ex, std::vector<float>& o) {
          const Limit scope(limit);
          Options opt = with_mask(m);
          opt.rope = c.options(table);
          if (segmented) return segmented_matches(d, s, opt, ex, &o);
          test::Out out = test::make_out(p, Layout::BSHD, true);
          opt.lse = out.lse;
          const Status st = forward(p, d.q, d.k, d.v, out.o, opt, ex);
          if (!st.ok()) return ::testing::AssertionFailure() << "forward failed: " << st.message();
          o = out.obuf;
          return test::matches_reference(d, opt, out);
        };
        std::vector<float> whole;
        ASSERT_TRUE(run(detail::kPackedKvRetained, Executor::serial(), whole));
        struct Want {
          std::size_t limit;
          int threads;
          Chunk chunk;
          bool kept;
        };
        const Chunk per_head = hi ? (batch > 1 ? Chunk::batch : Chunk::all) : Chunk::head;
        const std::vector<Want> wants = {
            {detail::kPackedKvRetained, 1, Chunk::all, true},
            {detail::kPackedKvRetained, 2, Chunk::all, true},
            {2 * head, 1, batch > 1 ? Chunk::batch : Chunk::all, true},
            {head, 1, per_head, per_head == Chunk::head},
            {head, 2, per_head, per_head == Chunk::head},
            {head - 1, 2, per_head, false},
            {head, 8, hi ? per_head : Chunk::none, false},  // 8 threads: 4 tasks per head too few
        };
        for (const Want& w : wants) {
          detail::KernelArgs a = detail::make_args(p, d.q, d.k, d.v, {}, with_rope);
          a.heads_inner = hi;
          {
            const Limit scope(w.limit);
            const auto plan = detail::packed_kv_plan(a, detail::pack_what(a, false), tiles, w.threads);
            ASSERT_EQ(plan.chunk, w.chunk) << "limit " << w.limit << " threads " << w.threads << " B " << batch;
            if (plan.chunk != Chunk::none) {
              ASSERT_EQ(plan.kept, w.kept) << "limit " << w.limit << " B " << batch;
            }
          }
          std::vector<float> o;
          const Executor ex = w.threads == 1 ? Executor::serial() : test::thread_executor(w.threads);
          const std::string what = "limit " + std::to_string(w.limit) + " threads " + std::to_string(w.threads) +
                                   " B " + std::to_string(batch) + " segmented " + std::to_string(segmented) +
                                   " mask " + std::to_string(m.index());
          EXPECT_TRUE(run(w.limit, ex, o)) << what;
          EXPECT_TRUE(test::bit_identical(o, whole)) << what;
        }
      }
  }
}

// A call made on a thread whose kept buffer is in use (an executor that runs another attention
// call on the waiting caller's thread) takes its own buffer: both results stay exact.
// run() takes the plan: a fresh thread's kept buffer grows to the rotated keys when they are
// visited twice (GQA), and stays empty when each is visited once (the per-block rotation).
TEST(RopeOnLoad, RunRotatesUpFrontOnlyWhenKeysAreRevisited) {
  const RopeCase c{30, 150, 32, 0, RopePairing::neox, -1, 0, -1};
  const RopeTable table = c.table();
  for (const index_t hkv : {2, 4}) {
    const Problem p{1, 4, hkv, c.sq, c.skv, c.dim, 16};
    const test::Data d = test::make_data(p, Layout::BSHD, 61);
    Options opt = with_mask(CausalMask{});
    opt.rope = c.options(table);
    std::size_t kept = 0;
    std::thread([&] {
      test::Out out = test::make_out(p, Layout::BSHD, false);
      EXPECT_TRUE(forward(p, d.q, d.k, d.v, out.o, opt).ok());
      kept = detail::kept_kv().ws.capacity();
    }).join();
    const std::size_t rotated = static_cast<std::size_t>(hkv * p.seq_kv * tile::round_up(p.dim_qk, tile::kWidth));
    if (hkv == 2)
      EXPECT_GE(kept, rotated) << "GQA 2: keys visited twice, rotated up front";
    else
      EXPECT_EQ(kept, 0u) << "no GQA, one tile: rotated per block";
  }
}

TEST(RopeOnLoad, ReentrantCallsDoNotShareTheKeptBuffer) {
  const RopeCase c{70, 150, 32, 0, RopePairing::interleaved, -1, 0, -1};
  const RopeTable table = c.table();
  const Problem p{1, 4, 2, c.sq, c.skv, c.dim, 16};
  const test::Data outer = test::make_data(p, Layout::BSHD, 51), inner = test::make_data(p, Layout::BSHD, 52);
  Options opt = with_mask(CausalMask{});
  opt.rope = c.options(table);
  test::Out inner_out = test::make_out(p, Layout::BSHD, false);
  int loops = 0;
  bool nested = false;
  Status inner_status;
  // The outer call's first parallel loop rotates its keys; at the start of the second (its
  // tasks) the inner call runs on the calling thread. Had it taken the kept buffer, it would
  // have overwritten the outer call's rotated keys before its tasks read them.
  const Executor ex = Executor::custom(2, [&](index_t n, const std::function<void(index_t)>& fn) {
    if (++loops == 2) {
      nested = true;
      inner_status = forward(p, inner.q, inner.k, inner.v, inner_out.o, opt);
    }
    for (index_t i = 0; i < n; ++i) fn(i);
  });
  test::Out out = test::make_out(p, Layout::BSHD, false);
  ASSERT_TRUE(forward(p, outer.q, outer.k, outer.v, out.o, opt, ex).ok());
  ASSERT_TRUE(nested);
  ASSERT_TRUE(inner_status.ok()) << inner_status.message();
  EXPECT_TRUE(test::matches_reference(outer, opt, out)) << "outer call";
  EXPECT_TRUE(test::matches_reference(inner, opt, inner_out)) << "inner call";
}

TEST(RopeOnLoad, ZeroPositionIsTheIdentity) {
  // A table of one position and a single key/query at position 0: rotation by 0 changes nothing,
  // so the output equals the plain call bit for bit.
  const Problem p{1, 2, 1, 1, 1, 16, 16};
  const test::Data d = test::make_data(p, Layout::BSHD, 2);
  const RopeTable table(Rope{10000.f, 16, 0, RopePairing::neox}, 1);
  test::Out a = test::make_out(p), b = test::make_out(p);
  Options o;
  ASSERT_TRUE(forward(p, d.q, d.k, d.v, a.o, o).ok());
  o.rope.table = &table;
  ASSERT_TRUE(forward(p, d.q, d.k, d.v, b.o, o).ok());
  EXPECT_TRUE(test::bit_identical(a.obuf, b.obuf));
}

TEST(RopeOnLoad, BadTablesAreClearErrors) {
  const Problem p{1, 2, 1, 4, 20, 16, 16};
  const test::Data d = test::make_data(p);
  test::Out out = test::make_out(p);
  Options o;
  const RopeTable short_table(Rope{10000.f, 16, 0, RopePairing::neox}, 10);
  o.rope.table = &short_table;
  Status st = forward(p, d.q, d.k, d.v, out.o, o);
  EXPECT_EQ(st.code(), Errc::out_of_range);
  EXPECT_NE(st.message().find("rope.table"), std::string::npos) << st.message();
  const RopeTable wrong_dim(Rope{10000.f, 8, 0, RopePairing::neox}, 64);
  o.rope.table = &wrong_dim;
  st = forward(p, d.q, d.k, d.v, out.o, o);
  EXPECT_EQ(st.code(), Errc::shape_mismatch);
  const RopeTable odd_rot(Rope{10000.f, 16, 5, RopePairing::neox}, 64);
  o.rope.table = &odd_rot;
  EXPECT_EQ(forward(p, d.q, d.k, d.v, out.o, o).code(), Errc::out_of_range);
  const RopeTable ok(Rope{10000.f, 16, 0, RopePairing::neox}, 64);
  o.rope.table = &ok;
  o.rope.sink_keys = -2;
  EXPECT_EQ(forward(p, d.q, d.k, d.v, out.o, o).code(), Errc::out_of_range);
}

TEST(RopeOnLoad, ApplyRopeIsTheSameRotation) {
  // Rotating Q and K up front (apply_rope, post-RoPE caching) and attending without RoPE on
  // load gives what RoPE on load gives (without a sink cap both see the same positions).
  const Problem p{1, 4, 2, 50, 90, 32, 32};
  test::Data d = test::make_data(p, Layout::BSHD, 4);
  const RopeTable table(Rope{10000.f, 32, 0, RopePairing::interleaved}, 200);
  test::Out a = test::make_out(p), b = test::make_out(p);
  Options o = with_mask(CausalMask{});
  o.rope.table = &table;
  ASSERT_TRUE(forward(p, d.q, d.k, d.v, a.o, o).ok());
  ASSERT_TRUE(apply_rope(d.mq(), p.seq_kv - p.seq_q, table).ok());
  ASSERT_TRUE(apply_rope(d.mk(), 0, table).ok());
  o.rope.table = nullptr;
  ASSERT_TRUE(forward(p, d.q, d.k, d.v, b.o, o).ok());
  double max_diff = 0;
  for (std::size_t i = 0; i < a.obuf.size(); ++i)
    max_diff = std::max(max_diff, double(std::abs(a.obuf[i] - b.obuf[i])));
  EXPECT_LT(max_diff, 1e-6);
  EXPECT_EQ(apply_rope(d.mk(), 150, table).code(), Errc::out_of_range);
}

}  // namespace
}  // namespace sinkattn
