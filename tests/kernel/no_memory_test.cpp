// Memory that cannot be had. Every entry point returns Errc::out_of_memory naming the buffer
// (never std::bad_alloc, never an abort), or takes a path that needs less where one exists, and
// the next call on the same thread, with memory, is exact again. detail::scratch_limit makes
// requests above it fail as the allocator would; the calls run on fresh threads, whose
// thread-local workspaces are empty and so must allocate. (A request the allocator itself
// refuses: tests/core/no_exceptions.cpp.)

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"
#include "sinkattn/cache/streaming_cache.hpp"
#include "sinkattn/sinkattn.hpp"
#include "threads.hpp"

namespace sinkattn {
namespace {

using test::Data;
using test::make_data;
using test::make_out;
using test::matches_reference;
using test::Out;

// detail::scratch_limit lowered for one scope.
struct Limit {
  explicit Limit(std::size_t bytes) { detail::scratch_limit = bytes; }
  ~Limit() { detail::scratch_limit = std::numeric_limits<std::size_t>::max(); }
  Limit(const Limit&) = delete;
  Limit& operator=(const Limit&) = delete;
};

template <class F>
void on_fresh_thread(F&& f) {
  std::thread t(std::forward<F>(f));
  t.join();
}

::testing::AssertionResult no_memory(const Status& st, const char* names) {
  if (st.code() != Errc::out_of_memory)
    return ::testing::AssertionFailure() << "expected out of memory, got " << to_string(st.code()) << ": "
                                         << st.message();
  if (st.message().find(names) == std::string::npos)
    return ::testing::AssertionFailure() << "the message does not name '" << names << "': " << st.message();
  return ::testing::AssertionSuccess();
}

struct Case {
  const char* name;
  index_t seq_q;  // 1: the split-KV decode loop, else the prefill loop
  bool affine;    // AffineScaled: the V sums' workspace too
};

// Prefill and decode, with and without the V sums: no memory for the tiles fails the call,
// and the same thread then computes the exact result once memory is back.
TEST(NoMemory, PrefillAndDecodeReportTheWorkspaceThenRecover) {
  for (const Case c : {Case{"prefill", 100, false}, Case{"prefill affine", 100, true}, Case{"decode", 1, false},
                       Case{"decode affine", 1, true}}) {
    SCOPED_TRACE(c.name);
    const Problem p{2, 4, 2, c.seq_q, 300, 40, 24};
    const Data d = make_data(p, test::Layout::BSHD, 7);
    Options opt;
    opt.mask = CausalMask{};
    const test::Tensor alpha = test::make_tensor({p.batch, p.seq_q, p.heads_q, 1}, 21, 0.2f, 1.2f);
    if (c.affine) opt.norm = AffineScaled{alpha.cview(), {}, 0.7f, true};
    on_fresh_thread([&] {
      Out out = make_out(p);
      {
        const Limit none(1024);
        EXPECT_TRUE(no_memory(forward(p, d.q, d.k, d.v, out.o, opt), "workspace"));
      }
      ASSERT_TRUE(forward(p, d.q, d.k, d.v, out.o, opt).ok());
      EXPECT_TRUE(matches_reference(d, opt, out));
    });
  }
}

// The V sums have a workspace of their own: with the tiles' workspace already grown on this
// thread, that is the request that fails.
TEST(NoMemory, TheVSumsWorkspaceIsReportedByName) {
  for (const index_t sq : {index_t{100}, index_t{1}}) {
    const Problem p{1, 2, 1, sq, 200, 32, 32};
    const Data d = make_data(p, test::Layout::BSHD, 9);
    Options soft, affine;
    const test::Tensor alpha = test::make_tensor({p.batch, p.seq_q, p.heads_q, 1}, 21, 0.2f, 1.2f);
    affine.norm = AffineScaled{alpha.cview(), {}, 1.1f, false};
    on_fresh_thread([&] {
      Out out = make_out(p);
      // Grows the tiles' workspace (and decode's partial rows: four splits' worth, more than
      // the affine call's one split with its V sums).
      const Problem wide{1, 2, 1, sq, 4000, 32, 32};
      const Data w = make_data(wide, test::Layout::BSHD, 10);
      Out wout = make_out(wide);
      ASSERT_TRUE(forward(wide, w.q, w.k, w.v, wout.o, soft).ok());
      {
        const Limit none(256);  // below the V sums' 144-288 floats on every ISA
        EXPECT_TRUE(no_memory(forward(p, d.q, d.k, d.v, out.o, affine), "V sums")) << sq;
      }
      ASSERT_TRUE(forward(p, d.q, d.k, d.v, out.o, affine).ok());
      EXPECT_TRUE(matches_reference(d, affine, out)) << sq;
    });
  }
}

// Tasks on the executor's other threads find no memory either: the call still returns the
// error once they are all done.
TEST(NoMemory, TasksOnOtherThreadsReportThroughTheCall) {
  const Problem p{2, 4, 4, 200, 200, 64, 64};
  const Data d = make_data(p);
  Options opt;
  opt.mask = SlidingWindowMask{50, 0, 4};
  const Executor two = test::thread_executor(2);
  on_fresh_thread([&] {
    Out out = make_out(p);
    {
      const Limit none(4096);
      EXPECT_TRUE(no_memory(forward(p, d.q, d.k, d.v, out.o, opt, two), "workspace (a prefill task's tiles)"));
    }
    ASSERT_TRUE(forward(p, d.q, d.k, d.v, out.o, opt, two).ok());
    EXPECT_TRUE(matches_reference(d, opt, out));
  });
}

// Where a call copies K/V to read them (keys rotated once for RoPE on load; a neighborhood's
// keys, whose head dim has a stride of 2 here, gathered), no memory for the copies is no
// error: it reads them in place (the neighborhood: on its flat tiles), with the same result.
// `kept` is the thread's buffer for those copies: grown when the call copies, empty when it
// could not.
TEST(NoMemory, CopiesOfKeysAndValuesFallBackToReadingInPlace) {
  const Problem p{1, 2, 1, 1024, 1024, 48, 48};
  const Data dense = make_data(p, test::Layout::BSHD, 3);
  const test::StridedHeadDim strided(dense);
  const Data& d = strided.data;
  const RopeTable table(Rope{500.f, p.dim_qk, 0, RopePairing::neox}, p.seq_kv);
  Options rope;
  rope.mask = CausalMask{};
  rope.rope = RopeOnLoad{&table, -1, 0, -1};
  NeighborhoodMask na;
  na.rank = 2;
  na.extent = {32, 32, 1};
  na.kernel = {5, 7, 1};
  na.dilation = {2, 1, 1};
  Options nbr;
  nbr.mask = na;
  struct Copying {
    const char* name;
    const Options* opt;
    detail::KeptWorkspace& (*kept)();
  };
  for (const Copying c : {Copying{"rope", &rope, &detail::kept_kv}, Copying{"neighborhood", &nbr, &detail::na_kept}}) {
    SCOPED_TRACE(c.name);
    on_fresh_thread([&] {
      Out out = make_out(p);
      ASSERT_TRUE(forward(p, d.q, d.k, d.v, out.o, *c.opt).ok());
      EXPECT_GT(c.kept().ws.capacity(), 0u) << "the call no longer copies: this test tests nothing";
      EXPECT_TRUE(matches_reference(d, *c.opt, out));
    });
    on_fresh_thread([&] {
      Out out = make_out(p);
      {
        const Limit tiles_only(128 * 1024);  // room for the tiles (76 KiB), not the copies (192 KiB and up)
        ASSERT_TRUE(forward(p, d.q, d.k, d.v, out.o, *c.opt).ok());
      }
      EXPECT_EQ(c.kept().ws.capacity(), 0u);
      EXPECT_TRUE(matches_reference(d, *c.opt, out));
    });
  }
}

TEST(NoMemory, SinkMassAndActReportTheirBuffers) {
  const Problem p{1, 2, 1, 70, 90, 16, 16};
  const Data d = make_data(p, test::Layout::BSHD, 5);
  std::vector<float> mass(static_cast<std::size_t>(2 * 90)), again(mass.size());
  const auto view = [&](std::vector<float>& v) { return TensorView<float>::lse(v.data(), 1, 2, 90); };
  ASSERT_TRUE(sink_mass(p, d.q, d.k, view(mass)).ok());
  const std::vector<index_t> sinks = {1, 2, 3};
  const ActCalibration act{sinks.data(), 3, 0.5};
  on_fresh_thread([&] {
    {
      const Limit none(256);
      EXPECT_TRUE(no_memory(sink_mass(p, d.q, d.k, view(again)), "sink_mass"));
      Out out = make_out(p);
      EXPECT_TRUE(no_memory(forward_act(p, d.q, d.k, d.v, out.o, {}, act), "forward_act (the step-1 bias)"));
    }
    ASSERT_TRUE(sink_mass(p, d.q, d.k, view(again)).ok());
    EXPECT_TRUE(test::bit_identical(again, mass));
    Out out = make_out(p);
    EXPECT_TRUE(forward_act(p, d.q, d.k, d.v, out.o, {}, act).ok());
  });
}

TEST(NoMemory, StreamingCacheStorageAndRopeTable) {
  StreamingCacheConfig cfg;
  cfg.dim_qk = cfg.dim_v = 8;
  cfg.window = 64;
  cfg.positions = StreamingCacheConfig::Positions::cache_index;
  StreamingCache cache;
  {
    const Limit none(1024);  // K/V need 2 x 68 x 8 floats
    EXPECT_TRUE(no_memory(StreamingCache::create(cfg, &cache), "cache (K/V storage)"));
  }
  EXPECT_EQ(cache.capacity(), 0);  // untouched
  // Sizes whose product would wrap around are refused before anything is allocated.
  StreamingCacheConfig huge = cfg;
  huge.batch = huge.heads_kv = huge.window = index_t{1} << 30;
  Status st = StreamingCache::create(huge, &cache);
  EXPECT_EQ(st.code(), Errc::out_of_range);
  EXPECT_NE(st.message().find("exceeds 2^60"), std::string::npos) << st.message();
  huge = cfg;
  huge.window = index_t{1} << 41;
  st = StreamingCache::create(huge, &cache);
  EXPECT_EQ(st.code(), Errc::out_of_range);
  EXPECT_NE(st.message().find("config.window"), std::string::npos) << st.message();

  // A chunk longer than the RoPE table holds grows it; no memory for that fails the step
  // before anything is appended.
  ASSERT_TRUE(StreamingCache::create(cfg, &cache).ok());
  const index_t c = 200;
  std::vector<float> q(static_cast<std::size_t>(c * 2 * 8), 0.25f), kv(static_cast<std::size_t>(c * 8), 0.5f),
      o(q.size());
  const auto qv = TensorView<const float>::bshd(q.data(), 1, c, 2, 8);
  const auto kvv = TensorView<const float>::bshd(kv.data(), 1, c, 1, 8);
  const auto ov = TensorView<float>::bshd(o.data(), 1, c, 2, 8);
  {
    const Limit none(1024);
    EXPECT_TRUE(no_memory(cache.attend_and_append(qv, kvv, kvv, ov), "cache (RoPE table)"));
  }
  EXPECT_EQ(cache.tokens_seen(), 0);
  ASSERT_TRUE(cache.attend_and_append(qv, kvv, kvv, ov).ok());
  EXPECT_EQ(cache.tokens_seen(), c);
  EXPECT_GE(cache.rope_table().positions(), c + 1);
}

TEST(NoMemory, RopeTableGrowsOrStaysAsItWas) {
  RopeTable t(Rope{10000.f, 16, 0, RopePairing::neox}, 10);
  const std::vector<float> row9(t.row(9), t.row(9) + 16);
  {
    const Limit none(1024);
    EXPECT_FALSE(t.try_reserve(100));
  }
  EXPECT_EQ(t.positions(), 10);
  EXPECT_EQ(std::vector<float>(t.row(9), t.row(9) + 16), row9);
  EXPECT_FALSE(t.try_reserve(std::numeric_limits<index_t>::max()));  // no product wraps around
  for (index_t n = 11; n < 300; n += 7) ASSERT_TRUE(t.try_reserve(n));
  const RopeTable copy = t;
  EXPECT_EQ(copy.positions(), t.positions());
  RopeTable moved = copy;
  const RopeTable taken = std::move(moved);
  EXPECT_EQ(taken.positions(), t.positions());
  EXPECT_EQ(moved.positions(), 0);  // NOLINT: moved-from is empty, and usable again
  ASSERT_TRUE(moved.try_reserve(20));
  EXPECT_EQ(std::vector<float>(moved.row(9), moved.row(9) + 16), row9);
  EXPECT_EQ(std::vector<float>(copy.row(9), copy.row(9) + 16), row9);
  // Rows computed in steps equal rows computed at once.
  const RopeTable at_once(Rope{10000.f, 16, 0, RopePairing::neox}, t.positions());
  for (index_t r = 0; r < t.positions(); r += 13)
    EXPECT_EQ(std::vector<float>(t.row(r), t.row(r) + 16), std::vector<float>(at_once.row(r), at_once.row(r) + 16));
}

TEST(NoMemory, AllocFloatsRefusesSizesBeyondSizeT) {
  EXPECT_EQ(detail::alloc_floats(std::numeric_limits<std::size_t>::max() / 2), nullptr);
  std::size_t got = 0;
  const detail::FloatBuffer b(detail::alloc_floats(3, &got));
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(got, detail::kMemoryAlign / sizeof(float));  // a whole number of cache lines
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.get()) % detail::kMemoryAlign, 0u);
}

// Cache storage: huge-page aligned from 2 MiB on (and freed with that alignment: ASan checks
// the pairing), under the same limit as any other block.
TEST(NoMemory, HugePageBlocksAreAlignedAndLimited) {
  const std::size_t big = 3 * detail::kHugePage / sizeof(float);
  {
    const detail::FloatBuffer b = detail::alloc_floats_huge(big);
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.get()) % detail::kHugePage, 0u);
    b.get()[0] = 1.f, b.get()[big - 1] = 2.f;  // the whole block is there
    EXPECT_EQ(b.get()[0] + b.get()[big - 1], 3.f);
    const detail::FloatBuffer small = detail::alloc_floats_huge(1000);
    ASSERT_NE(small, nullptr);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(small.get()) % detail::kMemoryAlign, 0u);
  }
  const Limit two_pages(2 * detail::kHugePage);
  EXPECT_EQ(detail::alloc_floats_huge(big), nullptr);
  EXPECT_EQ(detail::alloc_floats_huge(std::numeric_limits<std::size_t>::max() / 2), nullptr);
}

}  // namespace
}  // namespace sinkattn
