// The SIMD tile layer against plain scalar loops, for sizes that straddle the vector width
// and the register tiles. Built once per ISA (see CMakeLists.txt).

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "harness.hpp"
#include "sinkattn/kernel/fp_env.hpp"
#include "sinkattn/kernel/workspace.hpp"
#include "sinkattn/tile/gemm.hpp"
#include "sinkattn/tile/math.hpp"
#include "sinkattn/tile/ops.hpp"

namespace sinkattn {
namespace {

using tile::kQRows;
using tile::kWidth;
using tile::vf;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Aligned scratch for one test (the kernels require vector-aligned tiles).
struct Buf {
  detail::Workspace ws;
  float* get(index_t n) {
    float* p = ws.try_floats(static_cast<std::size_t>(n));
    if (p == nullptr) std::abort();  // (a few KiB: cannot happen in these tests)
    return p;
  }
};

TEST(TileMath, Exp2MatchesStdWithinTwoUlpsOverTheWholeRange) {
  double worst = 0;
  for (float x = -126.f; x < 127.f; x += 0.0137f) {
    const double want = std::exp2(static_cast<double>(x));
    const double got = tile::exp2(vf(x)).get(0);
    worst = std::max(worst, std::abs(got - want) / want);
  }
  EXPECT_LT(worst, 2.5e-7);
}

TEST(TileMath, Exp2EdgeValues) {
  EXPECT_EQ(tile::exp2(vf(-kInf)).get(0), 0.f);  // masked keys weigh exactly nothing
  EXPECT_EQ(tile::exp2(vf(-1000.f)).get(0), 0.f);
  EXPECT_EQ(tile::exp2(vf(0.f)).get(0), 1.f);
  EXPECT_EQ(tile::exp2(vf(3.f)).get(0), 8.f);
  EXPECT_EQ(tile::exp2(vf(kInf)).get(0), kInf);
  EXPECT_EQ(tile::exp2(vf(200.f)).get(0), kInf);
  EXPECT_TRUE(std::isnan(tile::exp2(vf(std::nanf(""))).get(0)));
  EXPECT_EQ(tile::exp2(vf(-3e38f)).get(0), 0.f);  // far beyond any clamp: still exact
  EXPECT_EQ(tile::exp2(vf(3e38f)).get(0), kInf);
#if defined(__AVX512F__)
  // With vscalefps the top binade stays finite up to 2^128 (x rounds to n = 128 from 127.5
  // on); the AVX2 form, whose exponent field saturates, gives inf above 127.
  for (float x = 127.f; x < 128.f; x += 0.0173f) {
    const double want = std::exp2(static_cast<double>(x)), got = tile::exp2(vf(x)).get(0);
    EXPECT_LT(std::abs(got - want) / want, 2.5e-7) << x;
  }
#endif
  // Specials beside finite values in one vector: each lane gets its own result.
  alignas(64) float in[tile::kWidth], out[tile::kWidth];
  const float specials[] = {-kInf, kInf, std::nanf(""), -1000.f, 200.f, 0.f};
  const float special_want[] = {0.f, kInf, std::nanf(""), 0.f, kInf, 1.f};
  for (int l = 0; l < tile::kWidth; ++l) in[l] = l % 2 ? specials[(l / 2) % 6] : -0.37f * static_cast<float>(l);
  tile::exp2(vf::load_aligned(in)).store_aligned(out);
  for (int l = 0; l < tile::kWidth; ++l) {
    if (l % 2 == 0) {
      const double want = std::exp2(static_cast<double>(in[l]));
      EXPECT_LT(std::abs(out[l] - want) / want, 2.5e-7) << l;
    } else if (std::isnan(special_want[(l / 2) % 6])) {
      EXPECT_TRUE(std::isnan(out[l])) << l;
    } else {
      EXPECT_EQ(out[l], special_want[(l / 2) % 6]) << l << ": " << in[l];
    }
  }
}

// The softmax's exp2: exp2's bits on [-126, 127], exactly 0 for -inf and far below, NaN
// through; between -127 and -126 at most 2^-126 (a denormal, 0 under flush-to-zero).
TEST(TileMath, Exp2NonpositiveIsExp2WhereTheSoftmaxCallsIt) {
  for (float x = -126.f; x <= 127.f; x += 0.00731f) {
    const float a = tile::exp2_nonpositive(vf(x)).get(0), b = tile::exp2(vf(x)).get(0);
    ASSERT_EQ(std::memcmp(&a, &b, sizeof a), 0) << x;
  }
  for (float x : {-126.f, -0.5f, -1e-30f, 0.f, -0.f, 1.f})
    EXPECT_EQ(tile::exp2_nonpositive(vf(x)).get(0), tile::exp2(vf(x)).get(0)) << x;
  EXPECT_EQ(tile::exp2_nonpositive(vf(-kInf)).get(0), 0.f);
  for (float x : {-1000.f, -3e38f}) EXPECT_EQ(tile::exp2_nonpositive(vf(x)).get(0), 0.f) << x;
  // From -127 down to the clamp the result may be a denormal (AVX-512's vscalefps keeps
  // 2^-127 .. 2^-149; AVX2's exponent field gives 0): below 2^-126 either way.
  for (float x = -150.f; x < -126.f; x += 0.01f) {
    const float r = tile::exp2_nonpositive(vf(x)).get(0);
    EXPECT_TRUE(r >= 0.f && r <= std::ldexp(1.f, -126)) << x << " -> " << r;
  }
  EXPECT_TRUE(std::isnan(tile::exp2_nonpositive(vf(std::nanf(""))).get(0)));
  EXPECT_TRUE(std::isnan(tile::exp2_nonpositive(vf(-std::nanf(""))).get(0)));
  {
    // In a kernel task (flush-to-zero on) those weights are exactly 0. (volatile: the
    // compiler must not fold the call under its default floating-point environment.)
    const sinkattn::detail::FlushToZeroScope ftz;
    for (volatile float x : {-126.5f, -127.f, -140.f, -150.f})
      EXPECT_EQ(tile::exp2_nonpositive(vf(x)).get(0), 0.f) << x;
  }
}

TEST(TileMath, SigmoidTanhAndReductions) {
  for (float x : {-30.f, -3.f, -0.5f, 0.f, 0.25f, 2.f, 30.f}) {
    EXPECT_NEAR(tile::sigmoid(vf(x)).get(0), 1.0 / (1.0 + std::exp(-double(x))), 2e-7) << x;
    EXPECT_NEAR(tile::tanh(vf(x)).get(0), std::tanh(double(x)), 3e-7) << x;
  }
  EXPECT_EQ(tile::sigmoid(vf(-kInf)).get(0), 0.f);
  EXPECT_EQ(tile::sigmoid(vf(kInf)).get(0), 1.f);
  alignas(64) float lanes[kWidth];
  for (int i = 0; i < kWidth; ++i) lanes[i] = static_cast<float>((i * 7) % kWidth) - 3.f;
  const vf x = vf::load_aligned(lanes);
  float s = 0, m = -kInf;
  for (float e : lanes) s += e, m = std::max(m, e);
  EXPECT_EQ(tile::hsum(x), s);
  EXPECT_EQ(tile::hmax(x), m);
  // The largest lane in every position, among -inf lanes and among finite ones.
  for (int at = 0; at < kWidth; ++at)
    for (float rest : {-kInf, -5.f}) {
      for (int i = 0; i < kWidth; ++i) lanes[i] = i == at ? -4.5f : rest - static_cast<float>(i);
      EXPECT_EQ(tile::hmax(vf::load_aligned(lanes)), -4.5f) << at << " " << rest;
    }
  for (int i = 0; i < kWidth; ++i) lanes[i] = -kInf;
  EXPECT_EQ(tile::hmax(vf::load_aligned(lanes)), -kInf);
  for (int at = 0; at < kWidth; ++at) {  // NaN lanes are skipped (std::fmax), wherever they are
    float want = -kInf;
    for (int i = 0; i < kWidth; ++i) {
      lanes[i] = i == at ? std::nanf("") : static_cast<float>((i * 7) % kWidth) - 9.f;
      if (i != at) want = std::max(want, lanes[i]);
    }
    EXPECT_EQ(tile::hmax(vf::load_aligned(lanes)), want) << at;
  }
}

TEST(TileGemm, TransposeSumPutsTheSumOfVectorIIntoLaneI) {
  alignas(64) float rows[kWidth][kWidth];
  vf v[kWidth];
  for (int i = 0; i < kWidth; ++i) {
    for (int j = 0; j < kWidth; ++j) rows[i][j] = static_cast<float>(i * 100 + j * j);
    v[i] = vf::load_aligned(rows[i]);
  }
  alignas(64) float out[kWidth];
  tile::transpose_sum(v).store_aligned(out);
  for (int i = 0; i < kWidth; ++i) {
    float want = 0;
    for (int j = 0; j < kWidth; ++j) want += rows[i][j];
    EXPECT_EQ(out[i], want) << "lane " << i;
  }
}

// S^T = K Q^T for every (nk, d, vecs) in a grid that crosses the register tile heights.
TEST(TileGemm, MmaKqtMatchesScalarLoops) {
  Buf b1, b2;
  for (index_t d : {1, 7, 16, 17, 33, 128})
    for (index_t nk : {1, 2, 3, 4, 5, 6, 7, 12, 13, 64})
      for (int vecs = 1; vecs <= tile::kQVecs; ++vecs) {
        const index_t ld_k = d + 3;  // rows not contiguous with each other
        const auto k = test::random_vector(static_cast<std::size_t>(nk * ld_k), 11 + d + nk, -1, 1);
        float* qt = b1.get(d * kQRows);
        const auto q = test::random_vector(static_cast<std::size_t>(d * kQRows), 7 + d, -1, 1);
        std::copy(q.begin(), q.end(), qt);
        float* st = b2.get(nk * kQRows);
        std::fill(st, st + nk * kQRows, kInf);
        tile::mma_kqt(st, kQRows, k.data(), ld_k, nk, qt, d, vecs);
        for (index_t j = 0; j < nk; ++j)
          for (index_t l = 0; l < kQRows; ++l) {
            if (l >= vecs * kWidth) {
              ASSERT_EQ(st[j * kQRows + l], kInf) << "lanes past vecs must be left alone";
              continue;
            }
            double want = 0;
            for (index_t x = 0; x < d; ++x) want += double(k[j * ld_k + x]) * qt[x * kQRows + l];
            ASSERT_NEAR(st[j * kQRows + l], want, 1e-5 * (1 + d))
                << "d=" << d << " nk=" << nk << " j=" << j << " l=" << l;
          }
      }
}

// O = diag(f) O + P V in both P orientations, with and without the row factors f, for row
// counts and value widths that cross the tiles; and the two ends of a prefill task's blocks
// (tile::PvIo): O starting from zero (whatever O held), the result written to rows of their
// own, scaled, some rows dropped, O left untouched, and the same streamed past the caches. V
// rows evenly strided (mma_pv) or through one pointer per row, in reverse order (mma_pv_rows
// with RowPointers: a list block's keys).
TEST(TileGemm, MmaPvMatchesScalarLoopsInBothOrientations) {
  Buf bo, bp, bout, bstream;
  for (index_t nq : {1, 2, 3, 4, 5, 6, 7, 13, 64})
    for (index_t nk : {1, 3, 16, 64})
      for (index_t dv_vecs : {1, 2, 3, 4, 5, 9})
        for (int variant = 0; variant < 32; ++variant) {
          const bool transposed = variant % 2 == 0, scaled = variant % 4 >= 2;
          const bool from_zero = variant % 8 >= 4, to_out = variant % 16 >= 8, by_pointer = variant >= 16;
          const index_t dv = dv_vecs * kWidth, ld_o = dv, ld_v = dv + 5;
          const index_t pj = transposed ? kQRows : 1, pr = transposed ? 1 : nk + 2;
          float* p = bp.get(std::max(nk * kQRows, nq * (nk + 2)));
          const auto pv = test::random_vector(static_cast<std::size_t>(std::max(nk * kQRows, nq * (nk + 2))), 5, 0, 1);
          std::copy(pv.begin(), pv.end(), p);
          const auto v = test::random_vector(static_cast<std::size_t>(nk * ld_v), 9 + nk, -1, 1);
          float* o = bo.get(nq * ld_o);
          auto o0 = test::random_vector(static_cast<std::size_t>(nq * ld_o), 3, -1, 1);
          if (from_zero) o0[0] = std::numeric_limits<float>::quiet_NaN();  // must not be read
          std::copy(o0.begin(), o0.end(), o);
          // Factors as the online softmax makes them: some rows 1, the others in (0, 1).
          const auto f = test::random_vector(static_cast<std::size_t>(nq), 11 + nq, 0, 1);
          std::vector<float> row_scale(f.begin(), f.end());
          for (index_t r = 0; r < nq; r += 3) row_scale[static_cast<std::size_t>(r)] = 1.f;
          // Output rows of their own, 3 floats off the buffer's alignment and ld + 7 apart;
          // every fifth row dropped (a padding slot); scales in (0, 2).
          const index_t ld_out = dv + 7;
          float* out = bout.get(nq * ld_out + 3) + 3;
          std::fill(out, out + nq * ld_out, -7.f);
          std::vector<float*> out_rows(static_cast<std::size_t>(nq));
          for (index_t r = 0; r < nq; ++r)
            out_rows[static_cast<std::size_t>(r)] = r % 5 == 4 ? nullptr : out + r * ld_out;
          const auto out_scale = test::random_vector(static_cast<std::size_t>(nq), 13 + nq, 0, 2);
          tile::PvIo io;
          io.from_zero = from_zero;
          io.row_scale = scaled ? row_scale.data() : nullptr;
          if (to_out) {
            io.out = out_rows.data();
            io.out_scale = out_scale.data();
          }
          // Key j's row: row j of v, or (by pointer) row nk - 1 - j.
          const auto vrow = [&](index_t j) { return by_pointer ? nk - 1 - j : j; };
          std::vector<const float*> v_ptrs(static_cast<std::size_t>(nk));
          for (index_t j = 0; j < nk; ++j) v_ptrs[static_cast<std::size_t>(j)] = v.data() + vrow(j) * ld_v;
          const auto run = [&](const tile::PvIo& ends) {
            if (by_pointer)
              tile::mma_pv_rows(o, ld_o, nq, p, pj, pr, tile::RowPointers{v_ptrs.data()}, nk, dv_vecs, ends);
            else
              tile::mma_pv(o, ld_o, nq, p, pj, pr, v.data(), ld_v, nk, dv_vecs, ends);
          };
          run(io);
          for (index_t r = 0; r < nq; ++r)
            for (index_t x = 0; x < dv; ++x) {
              const auto at = static_cast<std::size_t>(r * ld_o + x);
              double want = from_zero ? 0.0 : double(o0[at]) * (scaled ? row_scale[static_cast<std::size_t>(r)] : 1.0);
              for (index_t j = 0; j < nk; ++j) want += double(p[j * pj + r * pr]) * v[vrow(j) * ld_v + x];
              const auto where = ::testing::Message() << "nq=" << nq << " nk=" << nk << " dv_vecs=" << dv_vecs
                                                      << " variant=" << variant << " r=" << r << " x=" << x;
              if (!to_out) {
                ASSERT_NEAR(o[at], want, 1e-5 * (1 + nk)) << where;
                continue;
              }
              // O untouched (bitwise: NaN included), the row written scaled, or dropped.
              ASSERT_EQ(std::memcmp(&o[at], &o0[at], sizeof(float)), 0) << where;
              const float got = out[r * ld_out + x];
              if (r % 5 == 4)
                ASSERT_EQ(got, -7.f) << where;
              else
                ASSERT_NEAR(got, want * out_scale[static_cast<std::size_t>(r)], 2e-5 * (1 + nk)) << where;
            }
          // Nothing written between or after the output rows.
          if (!to_out) continue;
          for (index_t r = 0; r < nq; ++r)
            for (index_t x = dv; x < ld_out; ++x) ASSERT_EQ(out[r * ld_out + x], -7.f) << "r=" << r << " x=" << x;
          // The same rows streamed past the caches (PvIo::stream, vector-aligned rows): the
          // same bits, the dropped rows untouched.
          float* streamed = bstream.get(nq * dv);
          std::fill(streamed, streamed + nq * dv, -7.f);
          std::vector<float*> stream_rows(static_cast<std::size_t>(nq));
          for (index_t r = 0; r < nq; ++r)
            stream_rows[static_cast<std::size_t>(r)] = r % 5 == 4 ? nullptr : streamed + r * dv;
          io.out = stream_rows.data();
          io.stream = true;
          run(io);
          tile::stream_fence();
          for (index_t r = 0; r < nq; ++r)
            for (index_t x = 0; x < dv; ++x) {
              const float want = r % 5 == 4 ? -7.f : out[r * ld_out + x];
              ASSERT_EQ(std::memcmp(&streamed[r * dv + x], &want, sizeof(float)), 0)
                  << "streamed: nq=" << nq << " nk=" << nk << " dv_vecs=" << dv_vecs << " variant=" << variant
                  << " r=" << r << " x=" << x;
            }
        }
}

TEST(TileGemm, DotKeysMatchesScalarLoops) {
  Buf bq, bs;
  for (index_t dvecs : {1, 2, 3, 8}) {
    const index_t d = dvecs * kWidth, ld_k = d + 1;
    float* q = bq.get(d);
    const auto qv = test::random_vector(static_cast<std::size_t>(d), 1, -1, 1);
    std::copy(qv.begin(), qv.end(), q);
    const auto k = test::random_vector(static_cast<std::size_t>(kWidth * ld_k), 2 + d, -1, 1);
    float* s = bs.get(kWidth);
    tile::dot_keys(s, q, k.data(), ld_k, dvecs);
    for (index_t j = 0; j < kWidth; ++j) {
      double want = 0;
      for (index_t x = 0; x < d; ++x) want += double(q[x]) * k[j * ld_k + x];
      EXPECT_NEAR(s[j], want, 1e-5 * d) << "j=" << j << " d=" << d;
    }
  }
}

// Two rows at a time: the same bits as one row at a time (the decode loop mixes both), and
// the right row in each output.
TEST(TileGemm, DotKeysTwoRowsEqualsOneRowAtATime) {
  Buf bq, bs;
  for (index_t dvecs : {1, 2, 3, 8}) {
    const index_t d = dvecs * kWidth, ld_k = d + 3;
    float* q = bq.get(2 * d);
    const auto qv = test::random_vector(static_cast<std::size_t>(2 * d), 5 + d, -1, 1);
    std::copy(qv.begin(), qv.end(), q);
    const auto k = test::random_vector(static_cast<std::size_t>(kWidth * ld_k), 6 + d, -1, 1);
    float* s = bs.get(4 * kWidth);  // [row 0, row 1] two at a time, then one at a time
    tile::dot_keys_2rows(s, s + kWidth, q, q + d, k.data(), ld_k, dvecs);
    tile::dot_keys(s + 2 * kWidth, q, k.data(), ld_k, dvecs);
    tile::dot_keys(s + 3 * kWidth, q + d, k.data(), ld_k, dvecs);
    for (index_t i = 0; i < 2 * kWidth; ++i) EXPECT_EQ(s[i], s[2 * kWidth + i]) << "i=" << i << " d=" << d;
    double want = 0;  // row 1, last key: not row 0's
    for (index_t x = 0; x < d; ++x) want += double(q[d + x]) * k[(kWidth - 1) * ld_k + x];
    EXPECT_NEAR(s[2 * kWidth - 1], want, 1e-5 * d);
  }
}

TEST(TileOps, PackingZeroesThePaddingAndHonoursStrides) {
  Buf b;
  const index_t rows = 5, cols = 19, stride_d = 3, ld_src = cols * stride_d + 2;
  const auto src = test::random_vector(static_cast<std::size_t>(rows * ld_src), 4, -1, 1);
  const index_t pad = tile::round_up(cols, kWidth);
  float* dst = b.get(rows * pad);
  std::fill(dst, dst + rows * pad, kInf);
  tile::pack_rows(dst, pad, src.data(), ld_src, stride_d, rows, cols, pad);
  for (index_t r = 0; r < rows; ++r)
    for (index_t x = 0; x < pad; ++x) EXPECT_EQ(dst[r * pad + x], x < cols ? src[r * ld_src + x * stride_d] : 0.f);

  Buf bt;
  float* qt = bt.get(cols * kQRows);
  tile::pack_transposed(qt, src.data(), ld_src, stride_d, rows, cols);
  for (index_t x = 0; x < cols; ++x)
    for (index_t l = 0; l < kQRows; ++l) EXPECT_EQ(qt[x * kQRows + l], l < rows ? src[l * ld_src + x * stride_d] : 0.f);
}

TEST(TileOps, PackTransposedContiguousRowsAllTails) {
  // Contiguous head dims take the block transpose (AVX-512: 16x16 blocks, AVX: 8 rows x 4
  // columns; 128-bit inserts, in-lane shuffles) for whole blocks and the scalar loop for the
  // row and column tails: every split against the definition, up to a full tile of kQRows rows.
  Buf bt;
  float* qt = bt.get(80 * kQRows);
  for (index_t rows : {1, 7, 8, 9, 15, 16, 17, 31, 32, 40, 64})
    for (index_t cols : {3, 8, 11, 16, 19, 48, 72}) {
      if (rows > kQRows) continue;
      const index_t ld_src = 4 * cols + 5;  // token-major rows of several heads
      const auto src = test::random_vector(static_cast<std::size_t>(rows * ld_src), 11, -1, 1);
      std::fill(qt, qt + cols * kQRows, kInf);
      tile::pack_transposed(qt, src.data(), ld_src, 1, rows, cols, 0.37f);
      for (index_t x = 0; x < cols; ++x)
        for (index_t l = 0; l < kQRows; ++l)
          ASSERT_EQ(qt[x * kQRows + l], l < rows ? src[l * ld_src + x] * 0.37f : 0.f)
              << "rows=" << rows << " cols=" << cols << " x=" << x << " l=" << l;
    }
}

TEST(TileOps, PackTransposedRowsThroughPointers) {
  // A query slot map's rows: scattered over a pool in any order, padding slots on a zero row.
  Buf bt;
  float* qt = bt.get(80 * kQRows);
  for (index_t rows : {1, 9, 16, 17, 33, 64})
    for (index_t cols : {5, 16, 19, 64, 72}) {
      if (rows > kQRows) continue;
      const index_t pool = 3 * rows, ld = 4 * cols + 3;
      const auto src = test::random_vector(static_cast<std::size_t>(pool * ld), 13 + rows, -1, 1);
      const std::vector<float> zero(static_cast<std::size_t>(cols), 0.f);
      std::vector<const float*> row(static_cast<std::size_t>(rows));
      for (index_t r = 0; r < rows; ++r)  // every 5th row padding, the others a stride-7 walk
        row[static_cast<std::size_t>(r)] = r % 5 == 4 ? zero.data() : src.data() + (r * 7 % pool) * ld;
      std::fill(qt, qt + cols * kQRows, kInf);
      tile::pack_transposed_rows(
          qt, [&](index_t r) { return row[static_cast<std::size_t>(r)]; }, rows, cols, 0.5f);
      for (index_t x = 0; x < cols; ++x)
        for (index_t l = 0; l < kQRows; ++l)
          ASSERT_EQ(qt[x * kQRows + l], l < rows ? row[static_cast<std::size_t>(l)][x] * 0.5f : 0.f)
              << "rows=" << rows << " cols=" << cols << " x=" << x << " l=" << l;
    }
}

TEST(TileGemm, RowStreamsCopyEveryRowOnceDuringEitherProduct) {
  // Copy streams (the V panel's packing, spread over a product's register tiles) through a
  // row map with padding entries (< 0: skipped) and plain strided, over S^T and over P.V, for
  // row counts that leave partial steps: each destination row is its source row, skipped rows
  // are untouched, and the products still come out right.
  const index_t d = 2 * kWidth, bytes = d * static_cast<index_t>(sizeof(float)), ld_src = 3 * d + 1;
  const auto src = test::random_vector(static_cast<std::size_t>(80 * ld_src), 21, -1, 1);
  Buf bk, bqt, bst, bo, bv, bc0, bc1;
  for (index_t n : {1, 5, 6, 7, 13, 40, 64}) {
    std::vector<index_t> map(static_cast<std::size_t>(n));
    for (index_t r = 0; r < n; ++r) map[static_cast<std::size_t>(r)] = r % 4 == 3 ? -1 : (r * 11) % 80;
    float* c0 = bc0.get(n * d);
    float* c1 = bc1.get(n * d);
    tile::RowStream pf[2];
    pf[0] = {src.data(), ld_src, n, bytes, c0, d, map.data()};
    pf[1] = {src.data() + 1, ld_src, n, bytes, c1, d, nullptr};
    const auto check = [&](const char* where) {
      for (index_t r = 0; r < n; ++r)
        for (index_t x = 0; x < d; ++x) {
          const index_t m = map[static_cast<std::size_t>(r)];
          ASSERT_EQ(c0[r * d + x], m < 0 ? kInf : src[m * ld_src + x]) << where << " n=" << n << " r=" << r;
          ASSERT_EQ(c1[r * d + x], src[r * ld_src + 1 + x]) << where << " n=" << n << " r=" << r;
        }
    };
    // S^T over nk = n keys, then P.V over nq = n query rows (the two step counts differ).
    const auto kv = test::random_vector(static_cast<std::size_t>(n * d), 22 + n, -1, 1);
    float* k = bk.get(n * d);
    std::copy(kv.begin(), kv.end(), k);
    float* qt = bqt.get(d * kQRows);
    std::fill(qt, qt + d * kQRows, 0.25f);
    float* st = bst.get(std::max<index_t>(n, kWidth) * kQRows);
    std::fill(c0, c0 + n * d, kInf);
    std::fill(c1, c1 + n * d, kInf);
    tile::mma_kqt(st, kQRows, k, d, n, qt, d, tile::kQVecs, pf, 2);
    check("S^T");
    for (index_t j = 0; j < n; ++j) {
      double want = 0;
      for (index_t x = 0; x < d; ++x) want += 0.25 * k[j * d + x];
      ASSERT_NEAR(st[j * kQRows], want, 1e-5) << "n=" << n << " j=" << j;
    }
    // The same spread over every register tile (per_tile), for every lane-vector count: the
    // last pass of a group may be partial (vecs not a multiple of tile::kColsQK).
    for (int vecs = 1; vecs <= tile::kQVecs; ++vecs) {
      std::fill(c0, c0 + n * d, kInf);
      std::fill(c1, c1 + n * d, kInf);
      tile::mma_kqt_rows(st, kQRows, tile::StridedRows{k, d}, n, qt, d, vecs, pf, 2, /*per_tile=*/true);
      check(vecs == tile::kQVecs ? "S^T per tile, all vectors" : "S^T per tile, some vectors");
    }
    std::fill(c0, c0 + n * d, kInf);
    std::fill(c1, c1 + n * d, kInf);
    float* o = bo.get(n * d);
    std::fill(o, o + n * d, 0.f);
    float* v = bv.get(kWidth * d);
    std::fill(v, v + kWidth * d, 1.f);
    tile::mma_pv(o, d, n, st, kQRows, 1, v, d, 1, d / kWidth, {}, pf, 2);  // one key: O = S^T row 0
    check("P.V");
    for (index_t r = 0; r < n; ++r) ASSERT_EQ(o[r * d], st[r]) << "n=" << n << " r=" << r;
  }
}

// col_max over every slab of lane vectors [c0, c1) and key counts across the unrolled forms:
// the running max of the slab's lanes (starting values included), the other vectors untouched.
TEST(TileOps, ColMaxOverLaneSlabs) {
  Buf b;
  const index_t ld = kQRows + kWidth;  // a row stride longer than the tile
  const index_t nk_max = 13;
  float* st = b.get(nk_max * ld);
  const auto v = test::random_vector(static_cast<std::size_t>(nk_max * ld), 9, -4, 4);
  std::copy(v.begin(), v.end(), st);
  const auto start = test::random_vector(static_cast<std::size_t>(kQRows), 10, -4, 6);
  for (int c0 = 0; c0 < tile::kQVecs; ++c0) {
    for (int c1 = c0; c1 <= tile::kQVecs; ++c1) {
      for (index_t nk : {index_t{0}, index_t{1}, index_t{6}, nk_max}) {
        alignas(64) float mm[kQRows];
        std::copy(start.begin(), start.end(), mm);
        tile::Lanes m;
        for (int c = 0; c < tile::kQVecs; ++c) m.v[c] = vf::load_aligned(mm + c * kWidth);
        tile::col_max(m, st, ld, nk, c0, c1);
        m.store(mm);
        for (index_t l = 0; l < kQRows; ++l) {
          float want = start[static_cast<std::size_t>(l)];
          if (l >= c0 * kWidth && l < c1 * kWidth)
            for (index_t j = 0; j < nk; ++j) want = std::max(want, st[j * ld + l]);
          ASSERT_EQ(mm[l], want) << "c0=" << c0 << " c1=" << c1 << " nk=" << nk << " lane " << l;
        }
      }
    }
  }
}

TEST(TileOps, LaneReductionsExpAndRowScaling) {
  Buf b;
  const index_t nk = 7;
  float* st = b.get(nk * kQRows);
  const auto v = test::random_vector(static_cast<std::size_t>(nk * kQRows), 8, -4, 4);
  std::copy(v.begin(), v.end(), st);
  st[3 * kQRows + 1] = -kInf;
  tile::Lanes m = tile::Lanes::fill(-kInf);
  tile::col_max(m, st, kQRows, nk, 0, tile::kQVecs);
  alignas(64) float mm[kQRows];
  m.store(mm);
  for (index_t l = 0; l < kQRows; ++l) {
    float want = -kInf;
    for (index_t j = 0; j < nk; ++j) want = std::max(want, st[j * kQRows + l]);
    EXPECT_EQ(mm[l], want);
  }
  tile::Lanes sum = tile::Lanes::fill(0.f);
  std::vector<float> before(st, st + nk * kQRows);
  tile::exp2_sub_colsum(st, kQRows, nk, 0, tile::kQVecs, m, sum);
  alignas(64) float ss[kQRows];
  sum.store(ss);
  for (index_t l = 0; l < kQRows; ++l) {
    double want = 0;
    for (index_t j = 0; j < nk; ++j) {
      const double e = std::exp2(double(before[j * kQRows + l]) - mm[l]);
      EXPECT_NEAR(st[j * kQRows + l], e, 3e-7);
      want += e;
    }
    EXPECT_NEAR(ss[l], want, 1e-6 * nk);
  }
  EXPECT_EQ(st[3 * kQRows + 1], 0.f);

  const index_t dv_vecs = 3, ld = dv_vecs * kWidth;
  float* o = b.get(4 * ld);
  for (index_t i = 0; i < 4 * ld; ++i) o[i] = 1.f + static_cast<float>(i);
  const float f[4] = {2.f, 0.f, 0.5f, -1.f};
  tile::scale_rows(o, ld, 4, dv_vecs, f);
  for (index_t r = 0; r < 4; ++r)
    for (index_t x = 0; x < ld; ++x) EXPECT_EQ(o[r * ld + x], (1.f + static_cast<float>(r * ld + x)) * f[r]);

  std::vector<float> dst(3 * 37, -1.f);
  tile::store_scaled(dst.data(), 3, o, 37, 2.f);
  for (index_t x = 0; x < 37; ++x) EXPECT_EQ(dst[x * 3], o[x] * 2.f);
  EXPECT_EQ(dst[1], -1.f);
}

}  // namespace
}  // namespace sinkattn
