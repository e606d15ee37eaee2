#pragma once
// Tile-level operations around the micro-kernels: packing with tails, lane-wise (per query)
// reductions over the S^T tile, row rescales and the strided output store.
//
// Shapes: a score tile is S^T (nk, kQRows) with `vecs` used vectors of query lanes; an
// accumulator tile is O (nq, dv_vecs * kWidth); both aligned with a leading dimension that
// is a multiple of kWidth.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "sinkattn/tile/gemm.hpp"
#include "sinkattn/tile/math.hpp"
#include "sinkattn/tile/simd.hpp"

namespace sinkattn::tile {

// Lane vectors of one query tile: one value per query row (max, sum, rescale factor, ...).
struct Lanes {
  vf v[kQVecs];
  static Lanes fill(float x) {
    Lanes l;
    for (auto& e : l.v) e = vf(x);
    return l;
  }
  void store(float* dst) const {
    for (int c = 0; c < kQVecs; ++c) v[c].store_unaligned(dst + c * kWidth);
  }
};

#if defined(__AVX512F__)
// GCC 12 flags its own _mm512_undefined_ps() inside the inlined intrinsics
// (-W[maybe-]uninitialized, a false positive in avx512fintrin.h); silenced for the transpose
// and pack_transposed only (popped after it).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace detail {
// Columns [x, x + 16) of the 16 rows src[0..15] (unit stride), transposed and scaled: qt row
// x + c gets lanes [r, r + 16) = scale * src[0..15][x + c]. Each 128-bit lane L of a register
// is loaded with four columns of row 4L + m (one load and three inserts from memory), so
// only the 4x4 blocks inside the lanes are left to shuffle: 32 shuffles per 16x16 block
// instead of 64 for a transpose of whole rows in registers (0.73x the time of a 64x64 pack).
// That is 80 shuffle-port operations per block, about a cycle each on a Zen 4; there masked
// 128-bit broadcasts in place of the inserts took 1.05x the time, broadcasts and blends 1.3x,
// and vpermt2ps over whole rows 1.25x (bench/RESULTS.md, run AP).
SINKATTN_ALWAYS_INLINE void transpose16_cols(float* qt, index_t r, const float* const* src, index_t x, __m512 sv) {
  for (int b = 0; b < 4; ++b) {  // columns x + 4b .. x + 4b + 3
    const index_t col = x + 4 * b;
    __m512 a[4];  // lane L of a[m]: row 4L + m
    for (int m = 0; m < 4; ++m) {
      __m512 z = _mm512_castps128_ps512(_mm_loadu_ps(src[m] + col));
      z = _mm512_insertf32x4(z, _mm_loadu_ps(src[4 + m] + col), 1);
      z = _mm512_insertf32x4(z, _mm_loadu_ps(src[8 + m] + col), 2);
      a[m] = _mm512_insertf32x4(z, _mm_loadu_ps(src[12 + m] + col), 3);
    }
    const __m512d t0 = _mm512_castps_pd(_mm512_unpacklo_ps(a[0], a[1]));  // r0c0 r1c0 r0c1 r1c1
    const __m512d t1 = _mm512_castps_pd(_mm512_unpackhi_ps(a[0], a[1]));  // r0c2 r1c2 r0c3 r1c3
    const __m512d t2 = _mm512_castps_pd(_mm512_unpacklo_ps(a[2], a[3]));  // r2c0 r3c0 r2c1 r3c1
    const __m512d t3 = _mm512_castps_pd(_mm512_unpackhi_ps(a[2], a[3]));  // r2c2 r3c2 r2c3 r3c3
    float* o = qt + col * kQRows + r;
    _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2)), sv));
    _mm512_storeu_ps(o + kQRows, _mm512_mul_ps(_mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2)), sv));
    _mm512_storeu_ps(o + 2 * kQRows, _mm512_mul_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3)), sv));
    _mm512_storeu_ps(o + 3 * kQRows, _mm512_mul_ps(_mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3)), sv));
  }
}
}  // namespace detail
#endif

#if defined(__AVX__)
namespace detail {
// The AVX form of transpose16_cols: columns [x, x + 4) of the 8 rows src[0..7], each 128-bit
// lane L of a register loaded with four columns of row 4L + m, so that the 4x4 blocks inside
// the lanes are all that is left to shuffle (8 shuffles per 8 x 4 block).
SINKATTN_ALWAYS_INLINE void transpose8_cols(float* qt, index_t r, const float* const* src, index_t x, __m256 sv) {
  __m256 a[4];  // lane L of a[m]: row 4L + m
  for (int m = 0; m < 4; ++m)
    a[m] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(src[m] + x)), _mm_loadu_ps(src[4 + m] + x), 1);
  const __m256d t0 = _mm256_castps_pd(_mm256_unpacklo_ps(a[0], a[1]));  // r0c0 r1c0 r0c1 r1c1
  const __m256d t1 = _mm256_castps_pd(_mm256_unpackhi_ps(a[0], a[1]));  // r0c2 r1c2 r0c3 r1c3
  const __m256d t2 = _mm256_castps_pd(_mm256_unpacklo_ps(a[2], a[3]));  // r2c0 r3c0 r2c1 r3c1
  const __m256d t3 = _mm256_castps_pd(_mm256_unpackhi_ps(a[2], a[3]));  // r2c2 r3c2 r2c3 r3c3
  float* o = qt + x * kQRows + r;
  _mm256_storeu_ps(o, _mm256_mul_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(t0, t2)), sv));
  _mm256_storeu_ps(o + kQRows, _mm256_mul_ps(_mm256_castpd_ps(_mm256_unpackhi_pd(t0, t2)), sv));
  _mm256_storeu_ps(o + 2 * kQRows, _mm256_mul_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(t1, t3)), sv));
  _mm256_storeu_ps(o + 3 * kQRows, _mm256_mul_ps(_mm256_castpd_ps(_mm256_unpackhi_pd(t1, t3)), sv));
}
}  // namespace detail
#endif

// qt (d, kQRows) = scale * transpose of nrows rows, row r at row_at(r) (unit stride), lanes
// >= nrows zero so that padded lanes stay finite. The softmax scale rides along here, once
// per query tile, instead of once per score. With AVX-512, 16x16 blocks are transposed in
// registers, with AVX 8x4 blocks; a scalar strided loop here cost ~5 us per 64x64 tile, half
// a key block's work, which weighs on masks whose query tiles visit only a few key blocks
// (blocked, block-sparse, neighborhood tiles: 0.88-0.95x their time on a Zen 2, run V).
// Rows through an accessor: a query slot map (permuted neighborhood tiles) reads its
// scattered rows straight into Q^T, without a gathered copy first.
template <class RowAt>
inline void pack_transposed_rows(float* qt, RowAt&& row_at, index_t nrows, index_t d, float scale = 1.f) {
  index_t rv = 0, xv = 0;  // rows [0, rv) x columns [0, xv) in registers
#if defined(__AVX512F__)
  if (kWidth == 16) {
    rv = nrows / 16 * 16;
    xv = d / 16 * 16;
    const __m512 sv = _mm512_set1_ps(scale);
    for (index_t r = 0; r < rv; r += 16) {
      const float* src[16];
      for (int i = 0; i < 16; ++i) src[i] = row_at(r + i);
      for (index_t x = 0; x < xv; x += 16) detail::transpose16_cols(qt, r, src, x, sv);
    }
  }
#endif
#if defined(__AVX__)
  if (kWidth == 8) {
    rv = nrows / 8 * 8;
    xv = d / 4 * 4;
    const __m256 sv = _mm256_set1_ps(scale);
    for (index_t r = 0; r < rv; r += 8) {
      const float* src[8];
      for (int i = 0; i < 8; ++i) src[i] = row_at(r + i);
      for (index_t x = 0; x < xv; x += 4) detail::transpose8_cols(qt, r, src, x, sv);
    }
  }
#endif
  if (rv == kQRows && xv == d) return;  // a whole tile, all of it in registers: no tail, no padding
  for (index_t x = 0; x < d; ++x) {
    float* dst = qt + x * kQRows;
    for (index_t r = x < xv ? rv : 0; r < nrows; ++r) dst[r] = row_at(r)[x] * scale;
    for (index_t r = nrows; r < kQRows; ++r) dst[r] = 0.f;
  }
}

// The same over rows at src + r * ld_src, element x at x * stride_d.
inline void pack_transposed(float* qt, const float* src, index_t ld_src, index_t stride_d, index_t nrows, index_t d,
                            float scale = 1.f) {
  if (stride_d == 1) {
    pack_transposed_rows(
        qt, [&](index_t r) { return src + r * ld_src; }, nrows, d, scale);
    return;
  }
  for (index_t x = 0; x < d; ++x) {
    float* dst = qt + x * kQRows;
    for (index_t r = 0; r < nrows; ++r) dst[r] = src[r * ld_src + x * stride_d] * scale;
    for (index_t r = nrows; r < kQRows; ++r) dst[r] = 0.f;
  }
}
#if defined(__AVX512F__)
#pragma GCC diagnostic pop
#endif

// dst[0, n) = src[0, n), unit strides: the short row copies of packing and gathers. Inline
// vector moves rather than memcpy: the rows are a few hundred bytes, where the library call
// and its size dispatch cost as much as the copy (bench/RESULTS.md, the K/V gather).
inline void copy_row(float* dst, const float* src, index_t n) {
  index_t x = 0;
  for (; x + kWidth <= n; x += kWidth) vf::load_unaligned(src + x).store_unaligned(dst + x);
  for (; x < n; ++x) dst[x] = src[x];
}

// dst (nrows, cols_pad) = scale * src rows (row r at src + r * ld_src, element x at
// x * stride_d), columns [cols, cols_pad) zero: a contiguous, padded copy for strided or
// tail-y inputs.
inline void pack_rows(float* dst, index_t ld_dst, const float* src, index_t ld_src, index_t stride_d, index_t nrows,
                      index_t cols, index_t cols_pad, float scale = 1.f) {
  for (index_t r = 0; r < nrows; ++r) {
    float* d = dst + r * ld_dst;
    const float* s = src + r * ld_src;
    if (scale != 1.f) {
      for (index_t x = 0; x < cols; ++x) d[x] = s[x * stride_d] * scale;
    } else if (stride_d == 1) {
      copy_row(d, s, cols);
    } else {
      for (index_t x = 0; x < cols; ++x) d[x] = s[x * stride_d];
    }
    for (index_t x = cols; x < cols_pad; ++x) d[x] = 0.f;
  }
}

inline void zero(float* o, index_t ld_o, index_t nrows, index_t cols_pad) {
  for (index_t r = 0; r < nrows; ++r) std::fill(o + r * ld_o, o + r * ld_o + cols_pad, 0.f);
}

// m = max(m, max over rows of st), lane-wise, for the vectors of lanes [c0, c1). The vectors'
// chains of max run side by side, one register each, rather than one vector's whole chain
// after the other's (a chain waits on the latency of every max: 0.5x the time over a 64 x 64
// tile). Each vector still takes its rows in order: the same result, NaN and -0 included.
inline void col_max(Lanes& m, const float* st, index_t ld, index_t nk, int c0, int c1) {
  detail::dispatch_upto<kQVecs>(c1 - c0, [&](auto nn) {  // (no vectors: nothing)
    constexpr int N = decltype(nn)::value;
    const float* s = st + c0 * kWidth;
    vf acc[N];
    SINKATTN_UNROLL
    for (int i = 0; i < N; ++i) acc[i] = m.v[c0 + i];
    for (index_t j = 0; j < nk; ++j) {
      SINKATTN_UNROLL
      for (int i = 0; i < N; ++i) acc[i] = xsimd::max(acc[i], vf::load_aligned(s + j * ld + i * kWidth));
    }
    SINKATTN_UNROLL
    for (int i = 0; i < N; ++i) m.v[c0 + i] = acc[i];
  });
}

// st = 2^(st - m) in place, and sum += column sums of the result (vectors [c0, c1)).
inline void exp2_sub_colsum(float* st, index_t ld, index_t nk, int c0, int c1, const Lanes& m, Lanes& sum) {
  for (int c = c0; c < c1; ++c) {
    vf acc(0.f);
    const vf mc = m.v[c];
    for (index_t j = 0; j < nk; ++j) {
      float* p = st + j * ld + c * kWidth;
      const vf e = exp2_nonpositive(vf::load_aligned(p) - mc);  // (mc: the column's max)
      e.store_aligned(p);
      acc += e;
    }
    sum.v[c] += acc;
  }
}

// Every element of the tile times s.
inline void scale(float* st, index_t ld, index_t nk, int vecs, float s) {
  const vf sv(s);
  for (index_t j = 0; j < nk; ++j)
    for (int c = 0; c < vecs; ++c)
      (vf::load_aligned(st + j * ld + c * kWidth) * sv).store_aligned(st + j * ld + c * kWidth);
}

// Row r of O times factor[r] (the online-softmax rescale).
inline void scale_rows(float* o, index_t ld_o, index_t nq, index_t dv_vecs, const float* factor) {
  for (index_t r = 0; r < nq; ++r) {
    if (factor[r] == 1.f) continue;  // after the first blocks most rows' max no longer moves
    const vf f(factor[r]);
    float* row = o + r * ld_o;
    for (index_t c = 0; c < dv_vecs; ++c) (vf::load_aligned(row + c * kWidth) * f).store_aligned(row + c * kWidth);
  }
}

// dst[x * stride] = src[x] * f for x < n (the epilogue's write into the caller's O).
inline void store_scaled(float* dst, index_t stride, const float* src, index_t n, float f) {
  if (stride == 1) {
    const vf fv(f);
    index_t x = 0;
    for (; x + kWidth <= n; x += kWidth) (vf::load_aligned(src + x) * fv).store_unaligned(dst + x);
    for (; x < n; ++x) dst[x] = src[x] * f;
  } else {
    for (index_t x = 0; x < n; ++x) dst[x * stride] = src[x] * f;
  }
}

// dst[x] = src[x] * f for x < n, written past the caches (stream_store): n a whole number of
// vectors, dst and src vector-aligned; the caller fences (stream_fence).
inline void stream_scaled(float* dst, const float* src, index_t n, float f) {
  const vf fv(f);
  for (index_t x = 0; x < n; x += kWidth) stream_store(dst + x, vf::load_aligned(src + x) * fv);
}

// dst[x * stride] = src[x] * f * sigmoid(g[x * g_stride]) for x < n: the epilogue of the
// elementwise sigmoid output gate (g may be strided, e.g. interleaved with q in one buffer).
inline void store_scaled_gated(float* dst, index_t stride, const float* src, index_t n, float f, const float* g,
                               index_t g_stride) {
  index_t x = 0;
  if (stride == 1 && g_stride == 1) {
    const vf fv(f);
    for (; x + kWidth <= n; x += kWidth)
      (vf::load_aligned(src + x) * fv * sigmoid(vf::load_unaligned(g + x))).store_unaligned(dst + x);
  }
  for (; x < n; ++x) dst[x * stride] = src[x] * f / (1.f + std::exp(-g[x * g_stride]));
}

// 1 / (1 + 2^y), i.e. sigmoid(-y ln 2): exactly 0 at y = +inf, 1 at -inf, NaN for NaN. The
// sigmoid-attention weight, one per score, so no division: an approximate reciprocal (rcp14
// on AVX-512, 12 bits elsewhere) refined by one Newton step (2 FMAs; error ~1 ulp) where a
// vector division would cost ~10 cycles of throughput per 16 scores. The select keeps
// inf * 0 out of the Newton step (rcp14 would leave denormals, not 0, for huge finite d).
inline vf inv_1p_exp2(const vf& y) {
  const vf d = vf(1.f) + exp2(y);
  const vf r = xsimd::reciprocal(d);
  const vf rr = xsimd::fma(r, xsimd::fnma(d, r, vf(1.f)), r);  // r + r (1 - d r)
  return xsimd::select(d == vf(std::numeric_limits<float>::infinity()), vf(0.f), rr);
}

}  // namespace sinkattn::tile
