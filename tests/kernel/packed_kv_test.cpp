// K and V rows packed once per call (kernel/packed_kv.hpp) when they are strided: which calls
// pack what, and every mask, normalization, head dim, segment layout and chunking of the packed
// path bit-identical to reading the rows where they are, and against the fp64 reference. The
// path runs by default (detail::pack_strided_kv) only where a query tile's keys exceed half
// the L2; the tests force it for every tile.

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "harness.hpp"
#include "segments.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "threads.hpp"

namespace sinkattn {
namespace {

using test::Layout;

// The packing limits for one scope (detail::pack_strided_kv, pack_wide_keys,
// packed_kv_retained): strided rows packed for every tile by default.
struct Force {
  explicit Force(bool strided = true, index_t wide = 0, std::size_t retained = detail::kPackedKvRetained) {
    detail::pack_strided_kv = strided;
    detail::pack_wide_keys = wide;
    detail::packed_kv_retained = retained;
  }
  ~Force() {
    detail::pack_strided_kv = true;  // (the default)
    detail::pack_wide_keys = -1;
    detail::packed_kv_retained = detail::kPackedKvRetained;
  }
  Force(const Force&) = delete;
  Force& operator=(const Force&) = delete;
};

Options with(MaskSpec m, NormSpec n = Softmax{}) {
  Options o;
  o.mask = std::move(m);
  o.norm = std::move(n);
  return o;
}

bool has_lse(const Options& o) {
  return !std::holds_alternative<Sigmoid>(o.norm) && !std::holds_alternative<Softpick>(o.norm);
}

// One call (K/V as one view, or as `segs`), its output in `o`, checked against the reference.
::testing::AssertionResult run(const test::Data& d, Options opt, const Executor& ex, std::vector<float>& o,
                               const test::Segmented* segs = nullptr) {
  test::Out out = test::make_out(d.p, Layout::BSHD, has_lse(opt));
  opt.lse = out.lse;
  const Status st = segs ? forward(d.p, d.q, segs->seg.data(), static_cast<index_t>(segs->seg.size()), out.o, opt, ex)
                         : forward(d.p, d.q, d.k, d.v, out.o, opt, ex);
  if (!st.ok()) return ::testing::AssertionFailure() << "forward failed: " << st.message();
  o = out.obuf;
  o.insert(o.end(), out.lsebuf.begin(), out.lsebuf.end());
  return test::matches_reference(d, opt, out);
}

// Packed (forced) and in place: both match the reference and agree bit for bit. The packed
// call runs on a fresh thread, whose kept buffer then shows that it packed.
::testing::AssertionResult packed_equals_in_place(const test::Data& d, const Options& opt,
                                                  const test::Segmented* segs = nullptr,
                                                  const Executor& ex = Executor::serial()) {
  std::vector<float> packed, in_place;
  {
    ::testing::AssertionResult r = ::testing::AssertionSuccess();
    std::size_t kept = 0;
    std::thread([&] {
      const Force f;
      r = run(d, opt, ex, packed, segs);
      kept = detail::kept_kv().ws.capacity();
    }).join();
    if (!r) return r << " (packed)";
    if (kept == 0) return ::testing::AssertionFailure() << "nothing was packed";
  }
  {
    const Force f(false);
    ::testing::AssertionResult r = run(d, opt, ex, in_place, segs);
    if (!r) return r << " (in place)";
  }
  if (!test::bit_identical(packed, in_place)) return ::testing::AssertionFailure() << "packed != in place";
  return ::testing::AssertionSuccess();
}

TEST(PackedKv, PacksStridedRowsOnlyWhereTheyAreRevisitedAndWide) {
  const Problem p{1, 4, 2, 70, 150, 21, 16};
  const index_t tiles = (p.seq_q + detail::kBlockQ - 1) / detail::kBlockQ;
  const policy::FullMaskPolicy full{p.seq_kv};
  {  // token-major K and V: both strided; nothing without `strided` (no RoPE)
    const test::Data d = test::make_data(p, Layout::BSHD, 3);
    const detail::KernelArgs a = detail::make_args(p, d.q, d.k, d.v, {}, Options{});
    EXPECT_TRUE(detail::pack_what(a, true).k);
    EXPECT_TRUE(detail::pack_what(a, true).v);
    EXPECT_FALSE(detail::pack_what(a, false).any());
    // revisited: 2 tiles x 150 keys x 2 heads per KV head; wide: a tile sees all 150 keys
    EXPECT_TRUE(detail::kv_visits(a, full, tiles, 149).revisited);
    EXPECT_TRUE(detail::kv_visits(a, full, tiles, 149).wide);
    EXPECT_FALSE(detail::kv_visits(a, full, tiles, 150).wide);
    EXPECT_FALSE(detail::kv_visits(a, full, tiles, -1).wide) << "width not asked (RoPE only)";
    EXPECT_TRUE(detail::kv_visits(a, full, tiles, -1).revisited);
    EXPECT_TRUE(detail::kv_visits(a, full, 1, 0).revisited) << "one tile, two query heads per KV head";
    const Problem p1{1, 2, 2, 70, 150, 21, 16};
    EXPECT_FALSE(detail::kv_visits(detail::make_args(p1, d.q, d.k, d.v, {}, Options{}), full, 1, 0).revisited)
        << "one tile, no GQA";
    // A 20-key window: a tile of 64 queries touches at most three 64-key blocks.
    const Problem pw{1, 4, 2, 1000, 1000, 21, 16};
    const detail::KernelArgs aw = detail::make_args(pw, d.q, d.k, d.v, {}, Options{});
    const index_t tw = (pw.seq_q + detail::kBlockQ - 1) / detail::kBlockQ;
    EXPECT_FALSE(detail::kv_visits(aw, policy::SlidingWindowMaskPolicy{pw.seq_kv, 0, 20, 0, 0}, tw, 192).wide);
    EXPECT_TRUE(detail::kv_visits(aw, policy::FullMaskPolicy{pw.seq_kv}, tw, 192).wide);
    // reused: each key read by kPackTilesPerKey tiles of a head, however narrow the tiles
    // (16 tiles see all 1000 keys; a 20-key window's tiles see at most three blocks each).
    const index_t narrow = pw.seq_kv;  // no tile is wider than this
    EXPECT_TRUE(detail::kv_visits(aw, policy::FullMaskPolicy{pw.seq_kv}, tw, narrow).reused);
    EXPECT_TRUE(detail::kv_visits(aw, policy::FullMaskPolicy{pw.seq_kv}, tw, narrow).pack_strided());
    EXPECT_FALSE(detail::kv_visits(aw, policy::FullMaskPolicy{pw.seq_kv}, tw, -1).reused) << "not asked";
    const auto window = detail::kv_visits(aw, policy::SlidingWindowMaskPolicy{pw.seq_kv, 0, 20, 0, 0}, tw, narrow);
    EXPECT_TRUE(window.revisited);
    EXPECT_FALSE(window.reused);
    EXPECT_FALSE(window.pack_strided());
    EXPECT_FALSE(detail::kv_visits(a, full, tiles, 150).reused) << "2 tiles per key";
    const index_t few = detail::kPackTilesPerKey - 1;  // one tile short of the threshold
    EXPECT_FALSE(detail::kv_visits(aw, policy::FullMaskPolicy{pw.seq_kv}, few, narrow).reused);
    EXPECT_TRUE(detail::kv_visits(aw, policy::FullMaskPolicy{pw.seq_kv}, few + 1, narrow).reused);
  }
  {  // head-major: contiguous K; V contiguous in whole vectors, or not (Dv 13)
    const test::Data d = test::make_data(p, Layout::BHSD, 3);
    const detail::KernelArgs a = detail::make_args(p, d.q, d.k, d.v, {}, Options{});
    EXPECT_FALSE(detail::pack_what(a, true).any());
    const Problem p13{1, 4, 2, 70, 150, 21, 13};
    const test::Data d13 = test::make_data(p13, Layout::BHSD, 3);
    const detail::PackWhat w = detail::pack_what(detail::make_args(p13, d13.q, d13.k, d13.v, {}, Options{}), true);
    EXPECT_FALSE(w.k);
    EXPECT_TRUE(w.v) << "rows of 13 floats: the loop would copy them per block";
  }
  // run() packs into the calling thread's buffer when forced, and not when each tile's keys
  // stay in L2 (the default threshold: half the L2 over 150 keys) and each key is read by two
  // tiles; it packs by default when each key is read by 16 (1000 queries and keys).
  const Problem pr{1, 4, 2, 1000, 1000, 21, 16};
  for (const auto& [pc, forced, want] :
       {std::tuple{p, true, true}, std::tuple{p, false, false}, std::tuple{pr, false, true}}) {
    const test::Data d = test::make_data(pc, Layout::BSHD, 5);
    std::size_t kept = 0;
    std::thread([&, pc = pc, forced = forced] {
      const Force f(true, forced ? 0 : -1);
      test::Out out = test::make_out(pc, Layout::BSHD, false);
      EXPECT_TRUE(forward(pc, d.q, d.k, d.v, out.o, Options{}).ok());
      kept = detail::kept_kv().ws.capacity();
    }).join();
    const auto packed = static_cast<std::size_t>(
        pc.heads_kv * pc.seq_kv * (tile::round_up(pc.dim_qk, tile::kWidth) + tile::round_up(pc.dim_v, tile::kWidth)));
    if (want)
      EXPECT_GE(kept, packed) << "Sq=" << pc.seq_q << " forced=" << forced;
    else
      EXPECT_EQ(kept, 0u) << "Sq=" << pc.seq_q;
  }
}

TEST(PackedKv, EveryMaskAndNormalizationEqualsInPlace) {
  for (const index_t dv : {16, 13})
    for (const index_t batch : {1, 2}) {
      // Sq = Skv: every mask below visits each key at least twice over the two query heads
      // of a KV head (packed_equals_in_place checks that the call packed).
      const Problem p{batch, 4, 2, 150, 150, 21, dv};
      const test::Data d = test::make_data(p, Layout::BSHD, 17 + dv);
      const test::Tensor alpha = test::make_tensor({p.batch, p.seq_q, p.heads_q, 1}, 21, 0.2f, 1.2f);
      const test::Tensor gate = test::make_tensor({p.batch, p.seq_q, p.heads_q, p.dim_v}, 23, -2.f, 2.f);
      const std::vector<float> sinks = {0.5f, -1.f, 2.f, 0.f}, ssmax = {0.3f, 0.5f, 0.7f, 0.9f};
      BlockMask blocks;
      blocks.block_size = 32;
      blocks.global_keys = 3;
      const index_t nb = (p.seq_q + 31) / 32;
      const test::BlockLists lists =
          test::block_lists(p.batch * p.heads_q * nb, nb, [](index_t r, index_t kb) { return (r + kb) % 3 != 1; });
      BlockSparseMask sparse;
      sparse.q_block = 32;
      sparse.kv_block = 32;
      sparse.offsets = lists.offsets.data();
      sparse.indices = lists.indices.data();
      const std::vector<MaskSpec> masks = {FullMask{}, CausalMask{}, SlidingWindowMask{40, 0, 4}, blocks, sparse};
      const std::vector<NormSpec> norms = {Softmax{},     SinkSoftmax{sinks.data()},
                                           Sigmoid{-2.f}, AffineScaled{alpha.cview(), {}, 1.f, false},
                                           Softpick{},    ScalableSoftmax{ssmax.data()}};
      for (const MaskSpec& m : masks)
        for (const NormSpec& n : norms)
          EXPECT_TRUE(packed_equals_in_place(d, with(m, n)))
              << "Dv " << dv << " B " << batch << " mask " << m.index() << " norm " << n.index();
      // The output gate (its epilogue stores Dv columns of the padded accumulator), and RoPE
      // on load: the rotated keys and the copied values in one buffer.
      Options gated = with(CausalMask{});
      gated.gate = SigmoidGate{gate.cview()};
      EXPECT_TRUE(packed_equals_in_place(d, gated)) << "gate, Dv " << dv << " B " << batch;
      const RopeTable table(Rope{500.f, p.dim_qk, 12, RopePairing::neox}, p.seq_kv + 8);
      for (const MaskSpec& m : {MaskSpec{FullMask{}}, MaskSpec{SlidingWindowMask{40, 0, 4}}}) {
        Options rope = with(m);
        rope.rope = RopeOnLoad{&table, -1, 4, 100};
        EXPECT_TRUE(packed_equals_in_place(d, rope)) << "RoPE, Dv " << dv << " B " << batch << " mask " << m.index();
      }
    }
}

// Neighborhood attention on query slots (kernel/permute.hpp) keeps the K/V rows it chose
// (gathered, or in place through a key slot map): nothing is packed, even forced. The flat
// path (here: K/V as segments) packs like any other mask.
TEST(PackedKv, NeighborhoodTilesKeepTheirRowsTheFlatPathPacks) {
  for (const index_t extra : {0, 4}) {
    NeighborhoodMask m;
    m.rank = 2;
    m.extent = {16, 16, 1};
    m.kernel = {5, 3, 1};
    m.dilation = {1, 2, 1};
    m.causal = {true, false, false};
    m.extra_keys = extra;
    const Problem p{1, 4, 2, 256, 256 + extra, 24, 13};
    const test::Data d = test::make_data(p, Layout::BSHD, 29);
    const test::Segmented s = test::split(d, {extra + 100}, {Layout::BSHD});
    for (const bool blocked : {false, true}) {
      if (blocked) {  // 8x8 blocks: each key serves one tile, read through the key slot map
        m.kernel = m.stride = {8, 8, 1};
        m.dilation = {1, 1, 1};
        m.causal = {false, false, false};
      }
      const std::string what =
          std::string(blocked ? "8x8 blocks" : "5x3 dilated") + ", extra keys " + std::to_string(extra);
      for (const bool segmented : {false, true}) {
        std::size_t kept = 1;
        std::vector<float> o;
        std::thread([&] {
          const Force f;
          EXPECT_TRUE(run(d, with(m), Executor::serial(), o, segmented ? &s : nullptr)) << what;
          kept = detail::kept_kv().ws.capacity();
        }).join();
        if (segmented) {
          EXPECT_GT(kept, 0u) << what;
          EXPECT_TRUE(packed_equals_in_place(d, with(m), &s)) << what;
        } else {
          EXPECT_EQ(kept, 0u) << what;
        }
      }
    }
  }
}

// K/V as segments of mixed layouts (packed when any is strided), with an empty one; and 1 vs 3
// threads.
TEST(PackedKv, SegmentsAndThreadsEqualInPlace) {
  const Problem p{2, 4, 2, 70, 150, 21, 13};
  const test::Data d = test::make_data(p, Layout::BSHD, 37);
  const test::Segmented s = test::split(d, {3, 64, 64, 100}, {Layout::BHSD, Layout::BSHD});
  for (const MaskSpec& m : {MaskSpec{FullMask{}}, MaskSpec{SlidingWindowMask{40, 0, 4}}}) {
    EXPECT_TRUE(packed_equals_in_place(d, with(m), &s)) << "segments, mask " << m.index();
    std::vector<float> one, three;
    const Force f;
    EXPECT_TRUE(run(d, with(m), Executor::serial(), one));
    EXPECT_TRUE(run(d, with(m), test::thread_executor(3), three));
    EXPECT_TRUE(test::bit_identical(one, three)) << "mask " << m.index();
  }
}

// Every chunking of the packed K and V (detail::packed_kv_plan, asserted): all, per batch
// element, per KV head, kept or allocated; bit-identical to the one-buffer run.
TEST(PackedKv, ChunksAgreeBitForBit) {
  using Chunk = detail::PackedKvPlan::Chunk;
  const Problem p{2, 4, 2, 70, 150, 21, 13};
  const index_t tiles = (p.seq_q + detail::kBlockQ - 1) / detail::kBlockQ;
  const test::Data d = test::make_data(p, Layout::BSHD, 43);
  const std::size_t head = static_cast<std::size_t>(
      p.seq_kv * (tile::round_up(p.dim_qk, tile::kWidth) + tile::round_up(p.dim_v, tile::kWidth)) * sizeof(float));
  const Options opt = with(CausalMask{});
  std::vector<float> whole;
  {
    const Force f;
    ASSERT_TRUE(run(d, opt, Executor::serial(), whole));
  }
  struct Want {
    std::size_t limit;
    int threads;
    Chunk chunk;
    bool kept;
  };
  const std::vector<Want> wants = {
      {2 * head, 1, Chunk::batch, true}, {head, 1, Chunk::head, true},  {head, 2, Chunk::head, true},
      {head - 1, 2, Chunk::head, false}, {head, 8, Chunk::none, false},
  };
  for (const Want& w : wants) {
    const Force f(true, 0, w.limit);
    const detail::KernelArgs a = detail::make_args(p, d.q, d.k, d.v, {}, opt);
    const detail::PackWhat what = detail::pack_what(a, true);
    ASSERT_TRUE(what.k && what.v);
    const detail::PackedKvPlan plan = detail::packed_kv_plan(a, what, tiles, w.threads);
    ASSERT_EQ(plan.chunk, w.chunk) << "limit " << w.limit << " threads " << w.threads;
    if (plan.chunk != Chunk::none) {
      EXPECT_EQ(plan.kept, w.kept) << "limit " << w.limit;
    }
    std::vector<float> o;
    const Executor ex = w.threads == 1 ? Executor::serial() : test::thread_executor(w.threads);
    EXPECT_TRUE(run(d, opt, ex, o)) << "limit " << w.limit << " threads " << w.threads;
    EXPECT_TRUE(test::bit_identical(o, whole)) << "limit " << w.limit << " threads " << w.threads;
  }
}

// Where K and V together find no room (a KV-head chunk would leave 8 threads too few tasks),
// run() packs K alone: a RoPE call with strided V then still rotates each key once. The
// fallback call, on a fresh thread, packs (its kept buffer grows), holds only K (the buffer is
// smaller than K and V of one batch element) and agrees bit for bit with the call that packed
// both.
TEST(PackedKv, KAloneWhenKAndVFindNoRoom) {
  using Chunk = detail::PackedKvPlan::Chunk;
  const Problem p{2, 4, 2, 70, 150, 20, 13};
  const index_t tiles = (p.seq_q + detail::kBlockQ - 1) / detail::kBlockQ;
  const test::Data d = test::make_data(p, Layout::BSHD, 47);
  const RopeTable table(Rope{500.f, p.dim_qk, 12, RopePairing::neox}, p.seq_kv + 8);
  Options opt = with(CausalMask{});
  opt.rope = RopeOnLoad{&table, -1, 4, 100};
  const auto floats = [&](index_t dim) { return p.seq_kv * tile::round_up(dim, tile::kWidth); };
  const std::size_t k_batch = static_cast<std::size_t>(p.heads_kv * floats(p.dim_qk)) * sizeof(float);
  const std::size_t kv_batch = k_batch + static_cast<std::size_t>(p.heads_kv * floats(p.dim_v)) * sizeof(float);
  const std::size_t limit = (k_batch + kv_batch) / 2;  // one batch element's K fits, its K and V do not
  const Executor ex = test::thread_executor(8);
  {
    const Force f(true, 0, limit);
    const detail::KernelArgs a = detail::make_args(p, d.q, d.k, d.v, {}, opt);
    const detail::PackWhat both = detail::pack_what(a, true);
    ASSERT_TRUE(both.k && both.v);
    EXPECT_EQ(detail::packed_kv_plan(a, both, tiles, ex.concurrency()).chunk, Chunk::none);
    const detail::PackedKvPlan k_alone =
        detail::packed_kv_plan(a, detail::PackWhat{true, false}, tiles, ex.concurrency());
    EXPECT_EQ(k_alone.chunk, Chunk::batch);
    EXPECT_TRUE(k_alone.kept);
  }
  std::vector<float> both, fallback;
  {
    const Force f;
    ASSERT_TRUE(run(d, opt, ex, both));
  }
  std::size_t kept = 0;
  ::testing::AssertionResult r = ::testing::AssertionSuccess();
  std::thread([&] {
    const Force f(true, 0, limit);
    r = run(d, opt, ex, fallback);
    kept = detail::kept_kv().ws.capacity() * sizeof(float);
  }).join();
  ASSERT_TRUE(r);
  EXPECT_GT(kept, 0u) << "nothing was packed";
  EXPECT_LT(kept, kv_batch) << "K and V were packed";
  EXPECT_TRUE(test::bit_identical(fallback, both));
}

}  // namespace
}  // namespace sinkattn
