#pragma once
// The two micro-kernels of the fused loop, written as register-blocked outer products.
//
// Layout choice: the score tile is kept TRANSPOSED, S^T (keys x queries), with the query
// rows along the SIMD lanes. Then
//   - S^T = K . Q^T broadcasts one K element against vectors of a packed Q^T; K is read in
//     place (any row stride, any head dim, no tail handling), and Q^T is packed once per
//     query tile and reused over the whole KV sequence;
//   - the per-query max and sum of the online softmax are lane-wise (vertical) operations
//     over the rows of S^T: no horizontal reductions in the loop;
//   - O += P . V broadcasts one P element (= S^T[j][i]) against vectors of a V row.
// Both are the classic broadcast-FMA GEMM micro-kernel. Register budget on AVX-512
// (32 zmm): 6 rows x 4 vectors = 24 accumulators + 4 operand vectors + 1 broadcast = 29.
// Zen 4 retires one 512-bit FMA per cycle with latency 4, so 24 independent chains keep the
// FMA pipes busy with room to spare; with 16 registers (AVX2/SSE) 6 x 2 = 12 accumulators +
// 2 + 1 fit without spills.

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "sinkattn/tile/simd.hpp"

namespace sinkattn::tile {

// Query lanes of one tile = kQVecs vectors: 64 rows on AVX-512 and on AVX2. Every query tile
// streams the K and V rows it sees once, so the tile's height sets the K/V traffic per FLOP:
// with 4 AVX2 vectors (32 rows) dense attention over 8192 keys at D128 took 1.25x the time
// of 8 vectors on a Zen 3 (K and V of a head, 8 MiB, stream from L3 per tile).
inline constexpr int kQVecs = kRegisters >= 32 ? 4 : 8;
inline constexpr index_t kQRows = kQVecs * kWidth;
// Register tiles of the two micro-kernels: rows (of K resp. query rows of O) x vectors (of
// query lanes resp. of the value dimension). With 32 registers 6 x 4; with 16, 6 x 2 = 12
// accumulators + 2 operand vectors + 1 broadcast = 15 registers. (2 x 4 has the same load
// count per FMA but only 8 accumulators: exactly the 2 ports x 4 cycles of latency of a Zen 3,
// no slack: 6 x 2 takes 0.82x the time of 2 x 4 for dense attention there, 4 x 3 for P.V
// 0.95x, 8 x 2 for S^T spills; bench/RESULTS.md, run H.)
inline constexpr int kRowsQK = 6;
inline constexpr int kColsQK = kRegisters >= 32 ? kQVecs : 2;
inline constexpr int kRowsPV = 6;
inline constexpr int kColsPV = kRegisters >= 32 ? 4 : 2;

// Asks for every 64-byte line of [p, p + bytes) ahead of use. Rows need not start on a line
// (malloc'd tensors are often 16 bytes off): a 256-byte row then spans five lines, and a
// fifth line left out stalled the row's first use as if nothing had been prefetched.
template <int Write = 0, int Locality = 2>
inline void prefetch_lines(const void* p, index_t bytes) {
  const auto end = reinterpret_cast<std::uintptr_t>(p) + static_cast<std::uintptr_t>(bytes);
  for (auto line = reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t{63}; line < end; line += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(line), Write, Locality);
}

// nrows rows of `bytes` bytes each (row r at p + r * ld floats), into L2 (prefetcht1).
inline void prefetch_rows(const float* p, index_t ld, index_t nrows, index_t bytes) {
  for (index_t r = 0; r < nrows; ++r) prefetch_lines(p + r * ld, bytes);
}

// Rows a micro-kernel should prefetch while it runs. Token-major layouts put consecutive
// K/V rows of a head kilobytes apart, each in its own 4 KiB page, where the hardware
// prefetchers stop; a block's 1000-odd prefetches issued in one burst would stall on the
// fill buffers, so the kernel spreads them over its row groups, between the FMAs.
// With copy_to set, the rows are copied there instead (row r to copy_to + r * copy_ld): a
// packing copy spread the same way, whose loads then overlap with the FMAs instead of
// stalling a separate copy loop.
inline constexpr int kMaxRowStreams = 4;  // per mma_kqt or mma_pv call
struct RowStream {
  const float* p = nullptr;
  index_t ld = 0, rows = 0, bytes = 0;
  float* copy_to = nullptr;
  index_t copy_ld = 0;
  const index_t* map = nullptr;  // row r at p + map[r] * ld instead (null: p + r * ld); < 0: none
};

// The K or V rows of a block as the micro-kernels read them: evenly strided, or one pointer
// per row (keys in a permuted order, read in place).
struct StridedRows {
  const float* k;
  index_t ld;
  float at(index_t r, index_t x) const { return k[r * ld + x]; }
  const float* row(index_t r) const { return k + r * ld; }
  StridedRows from(index_t j) const { return {k + j * ld, ld}; }
};
struct RowPointers {
  const float* const* p;
  float at(index_t r, index_t x) const { return p[r][x]; }
  const float* row(index_t r) const { return p[r]; }
  RowPointers from(index_t j) const { return {p + j}; }
};

// Where one mma_pv call's O tile starts from and where it goes. The defaults are the plain
// O += P . V in place. A prefill task's first key block starts from zero (nothing to clear and
// load), its last writes the finished rows straight into the caller's O. For short tasks (a
// neighborhood tile that sees one key block) the separate zeroing and store passes cost 2.4%
// and 3.2% of the call (bench/RESULTS.md, run L).
struct PvIo {
  bool from_zero = false;            // O is not read: the sum starts at 0
  const float* row_scale = nullptr;  // else O row r *= row_scale[r] as it is loaded (null: 1)
  float* const* out = nullptr;       // non-null: row r's result goes to out[r] (unit stride,
  const float* out_scale = nullptr;  //   all dv_vecs * kWidth floats) times out_scale[r], not
                                     //   back to O; null entries are dropped
  bool stream = false;               // out rows written past the caches (stream_store;
                                     //   vector-aligned rows; the caller fences)
  PvIo rows_from(index_t i) const {  // the same for the rows from i on
    PvIo s = *this;
    if (row_scale != nullptr) s.row_scale += i;
    if (out != nullptr) s.out += i, s.out_scale += i;
    return s;
  }
};

namespace detail {

// The rows of streams pf[0 .. npf) spread evenly over `steps` steps of a micro-kernel:
// operator()(step) issues that step's share of every stream (prefetches or copies).
class StreamShares {
 public:
  StreamShares(const RowStream* pf, int npf, index_t steps) : pf_(pf), npf_(npf) {
    assert(npf <= kMaxRowStreams);
    for (int s = 0; s < npf; ++s) per_[s] = (pf[s].rows + steps - 1) / std::max<index_t>(steps, 1);
  }
  void operator()(index_t step) const {
    for (int s = 0; s < npf_; ++s) {
      const RowStream& st = pf_[s];
      const index_t r0 = step * per_[s];
      if (r0 >= st.rows) continue;
      const index_t n = std::min(per_[s], st.rows - r0);
      if (st.map != nullptr) {  // rows in a permuted order
        for (index_t r = r0; r < r0 + n; ++r) {
          if (st.map[r] < 0) continue;  // a padding slot (permuted neighborhood tiles)
          const float* row = st.p + st.map[r] * st.ld;
          if (st.copy_to == nullptr)
            prefetch_lines(row, st.bytes);
          else
            std::memcpy(st.copy_to + r * st.copy_ld, row, static_cast<std::size_t>(st.bytes));
        }
      } else if (st.copy_to == nullptr) {
        prefetch_rows(st.p + r0 * st.ld, st.ld, n, st.bytes);
      } else {
        for (index_t r = r0; r < r0 + n; ++r)
          std::memcpy(st.copy_to + r * st.copy_ld, st.p + r * st.ld, static_cast<std::size_t>(st.bytes));
      }
    }
  }

 private:
  const RowStream* pf_;
  int npf_;
  index_t per_[kMaxRowStreams] = {};  // rows of each stream per step (divided once, not per step)
};

// Calls f(std::integral_constant<int, n>) for a runtime n in [1, Max]: how remainders reach
// a fully unrolled kernel.
template <int Max, class F>
inline void dispatch_upto(int n, F&& f) {
  if constexpr (Max >= 1) {
    if (n == Max) {
      f(std::integral_constant<int, Max>{});
      return;
    }
    dispatch_upto<Max - 1>(n, std::forward<F>(f));
  }
}

// st[R][C vectors] = k[R rows] . qt   (qt: d rows of kQRows lanes, aligned)
template <int R, int C, class Rows>
inline void kqt_block(float* st, index_t ld_st, Rows k, const float* qt, index_t d) {
  vf acc[R][C];
  SINKATTN_UNROLL
  for (int r = 0; r < R; ++r) {
    SINKATTN_UNROLL
    for (int c = 0; c < C; ++c) acc[r][c] = vf(0.f);
  }
  for (index_t x = 0; x < d; ++x) {
    const float* qrow = qt + x * kQRows;
    vf q[C];
    SINKATTN_UNROLL
    for (int c = 0; c < C; ++c) q[c] = vf::load_aligned(qrow + c * kWidth);
    SINKATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      const vf kb(k.at(r, x));
      SINKATTN_UNROLL
      for (int c = 0; c < C; ++c) acc[r][c] = xsimd::fma(kb, q[c], acc[r][c]);
    }
  }
  SINKATTN_UNROLL
  for (int r = 0; r < R; ++r) {
    SINKATTN_UNROLL
    for (int c = 0; c < C; ++c) acc[r][c].store_aligned(st + r * ld_st + c * kWidth);
  }
}

// o[R rows][C vectors] = o * f[r] (f = io.row_scale, or 1 when null; o = 0 when FromZero)
//                        + sum_j P(r, j) * v.row(j)[col, C vectors),   P(r, j) = p[j * pj + r * pr]
// stored back to o, or when ToOut to io.out[r] + col times io.out_scale[r] (null rows dropped).
// The two ends are template arguments: the plain accumulate, run for every key block of a
// long task, keeps exactly its own code (runtime tests in here cost dense attention 2-7%).
template <int R, int C, bool FromZero, bool ToOut, class Rows>
inline void pv_block(float* o, index_t ld_o, const PvIo& io, index_t col, const float* p, index_t pj, index_t pr,
                     Rows v, index_t nk) {
  // Every loop over the register tile is unrolled, its ends included: a loop left rolled
  // (the out rows' null test once made GCC keep it) indexes acc at run time, which puts the
  // whole tile in memory: zeroed there, spilled after the FMAs and reloaded for the stores
  // (a 64 x 64 P.V that writes O took 1.09x the time of one that does not).
  vf acc[R][C];
  if constexpr (FromZero) {
    SINKATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      SINKATTN_UNROLL
      for (int c = 0; c < C; ++c) acc[r][c] = vf(0.f);
    }
  } else {
    SINKATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      SINKATTN_UNROLL
      for (int c = 0; c < C; ++c) acc[r][c] = vf::load_aligned(o + r * ld_o + c * kWidth);
    }
    if (io.row_scale != nullptr) {
      SINKATTN_UNROLL
      for (int r = 0; r < R; ++r) {
        const vf f(io.row_scale[r]);
        SINKATTN_UNROLL
        for (int c = 0; c < C; ++c) acc[r][c] *= f;
      }
    }
  }
  for (index_t j = 0; j < nk; ++j) {
    const float* vrow = v.row(j) + col;
    const float* prow = p + j * pj;
    vf vv[C];
    SINKATTN_UNROLL
    for (int c = 0; c < C; ++c) vv[c] = vf::load_unaligned(vrow + c * kWidth);
    SINKATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      const vf w(prow[r * pr]);
      SINKATTN_UNROLL
      for (int c = 0; c < C; ++c) acc[r][c] = xsimd::fma(w, vv[c], acc[r][c]);
    }
  }
  if constexpr (ToOut) {
    // The row pointers are read before any store: a store through out[r] could alias them.
    float* dst[R];
    SINKATTN_UNROLL
    for (int r = 0; r < R; ++r) dst[r] = io.out[r];
    SINKATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      if (dst[r] != nullptr) {
        const vf f(io.out_scale[r]);
        SINKATTN_UNROLL
        for (int c = 0; c < C; ++c) {
          if (io.stream)
            stream_store(dst[r] + col + c * kWidth, acc[r][c] * f);
          else
            (acc[r][c] * f).store_unaligned(dst[r] + col + c * kWidth);
        }
      }
    }
  } else {
    SINKATTN_UNROLL
    for (int r = 0; r < R; ++r) {
      SINKATTN_UNROLL
      for (int c = 0; c < C; ++c) acc[r][c].store_aligned(o + r * ld_o + c * kWidth);
    }
  }
}

}  // namespace detail

// S^T = K . Q^T for one (key block, query tile).
//   st  (nk, kQRows)  aligned, leading dimension ld_st (a multiple of kWidth)
//   k   (nk, d)       row j at k[j] (StridedRows: k + j * ld_k; RowPointers: one pointer per
//                     row), unit stride along d (read in place)
//   qt  (d, kQRows)   packed Q^T, aligned; only the first `vecs` vectors of lanes are used
// vecs = ceil(query rows / kWidth) in [1, kQVecs]: a short query tile costs proportionally less.
// pf[0 .. npf), npf <= kMaxRowStreams: rows to prefetch meanwhile, spread over the row groups,
// or with per_tile over every register tile (with 16 registers, four per row group): streams
// that come from memory, whose share per row group, issued in one burst, outlasts the fill
// buffers and stalls on the prefetch instructions themselves.
template <class Rows>
inline void mma_kqt_rows(float* st, index_t ld_st, Rows k, index_t nk, const float* qt, index_t d, int vecs,
                         const RowStream* pf = nullptr, int npf = 0, bool per_tile = false) {
  const index_t groups = (nk + kRowsQK - 1) / kRowsQK;
  const index_t passes = per_tile ? (vecs + kColsQK - 1) / kColsQK : 1;
  const detail::StreamShares prefetch_share(pf, npf, groups * passes);
  index_t step = 0;
  // One row group of R rows of K, against the `vecs` vectors of lanes in register tiles of
  // kColsQK vectors (all of them with 32 registers; pairs with 16, the K rows read from L1
  // after the first pair). A run-time loop over the pairs keeps the instantiations few.
  auto group = [&](index_t j, auto rr) {
    constexpr int R = decltype(rr)::value;
    float* s = st + j * ld_st;
    const Rows kj = k.from(j);
    int c = 0;
    for (; c + kColsQK <= vecs; c += kColsQK) {
      if (c == 0 || per_tile) prefetch_share(step++);
      detail::kqt_block<R, kColsQK>(s + c * kWidth, ld_st, kj, qt + c * kWidth, d);
    }
    if (c < vecs) {
      if (c == 0 || per_tile) prefetch_share(step++);
      detail::dispatch_upto<kColsQK - 1>(vecs - c, [&](auto cc) {
        detail::kqt_block<R, decltype(cc)::value>(s + c * kWidth, ld_st, kj, qt + c * kWidth, d);
      });
    }
  };
  index_t j = 0;
  for (; j + kRowsQK <= nk; j += kRowsQK) group(j, std::integral_constant<int, kRowsQK>{});
  if (j < nk) detail::dispatch_upto<kRowsQK - 1>(static_cast<int>(nk - j), [&](auto rr) { group(j, rr); });
}

// The same over evenly strided K rows (row j at k + j * ld_k).
inline void mma_kqt(float* st, index_t ld_st, const float* k, index_t ld_k, index_t nk, const float* qt, index_t d,
                    int vecs, const RowStream* pf = nullptr, int npf = 0) {
  mma_kqt_rows(st, ld_st, StridedRows{k, ld_k}, nk, qt, d, vecs, pf, npf);
}

namespace detail {

// mma_pv with its two ends (PvIo) fixed at compile time.
template <bool FromZero, bool ToOut, class Rows>
inline void mma_pv_ends(float* o, index_t ld_o, index_t nq, const float* p, index_t pj, index_t pr, Rows v, index_t nk,
                        index_t dv_vecs, const PvIo& io, const RowStream* pf, int npf) {
  const index_t row_tiles = (nq + kRowsPV - 1) / kRowsPV;
  const detail::StreamShares prefetch_share(pf, npf, row_tiles * ((dv_vecs + kColsPV - 1) / kColsPV));
  index_t step = 0;
  // Column chunks outermost: every register tile of query rows reads one V panel (nk x
  // kColsPV vectors) in turn, from L1 when its rows are contiguous (strided rows share a few
  // L1 sets and stream from L2 each time; docs/KERNEL.md).
  auto rows = [&](index_t c, auto cc) {
    constexpr int C = decltype(cc)::value;
    const index_t col = c * kWidth;
    index_t i = 0;
    for (; i + kRowsPV <= nq; i += kRowsPV, prefetch_share(step++))
      detail::pv_block<kRowsPV, C, FromZero, ToOut>(o + i * ld_o + col, ld_o, io.rows_from(i), col, p + i * pr, pj, pr,
                                                    v, nk);
    if (i < nq) prefetch_share(step++);
    if (i < nq)
      detail::dispatch_upto<kRowsPV - 1>(static_cast<int>(nq - i), [&](auto rr) {
        detail::pv_block<decltype(rr)::value, C, FromZero, ToOut>(o + i * ld_o + col, ld_o, io.rows_from(i), col,
                                                                  p + i * pr, pj, pr, v, nk);
      });
  };
  index_t c = 0;
  for (; c + kColsPV <= dv_vecs; c += kColsPV) rows(c, std::integral_constant<int, kColsPV>{});
  if (c < dv_vecs) detail::dispatch_upto<kColsPV - 1>(static_cast<int>(dv_vecs - c), [&](auto cc) { rows(c, cc); });
}

}  // namespace detail

// O = diag(row_scale) O + P . V, P (nq x nk) addressed as P(r, j) = p[j * pj + r * pr]: the
// prefill loop passes the S^T tile (pj = kQRows, pr = 1), the decode loop its row-major
// scores (pj = 1).
//   o          (nq, dv_vecs * kWidth) aligned, leading dimension ld_o
//   v          (nk, dv_vecs * kWidth) row j at v.row(j) (StridedRows, RowPointers), unit
//              stride (padded by the caller when the value dimension is not a multiple of
//              kWidth)
//   io         where O starts and goes (PvIo): row_scale = nq factors (the online-softmax
//              rescale of O), applied as the register tile of O is loaded (a separate pass
//              would load and store O once more); from_zero; out rows.
//   pf[0 .. npf) rows to prefetch meanwhile, spread over the register tiles (as mma_kqt).
template <class Rows>
inline void mma_pv_rows(float* o, index_t ld_o, index_t nq, const float* p, index_t pj, index_t pr, Rows v, index_t nk,
                        index_t dv_vecs, const PvIo& io = {}, const RowStream* pf = nullptr, int npf = 0) {
  if (io.out != nullptr) {
    if (io.from_zero)
      detail::mma_pv_ends<true, true>(o, ld_o, nq, p, pj, pr, v, nk, dv_vecs, io, pf, npf);
    else
      detail::mma_pv_ends<false, true>(o, ld_o, nq, p, pj, pr, v, nk, dv_vecs, io, pf, npf);
  } else if (io.from_zero) {
    detail::mma_pv_ends<true, false>(o, ld_o, nq, p, pj, pr, v, nk, dv_vecs, io, pf, npf);
  } else {
    detail::mma_pv_ends<false, false>(o, ld_o, nq, p, pj, pr, v, nk, dv_vecs, io, pf, npf);
  }
}

// The same over evenly strided V rows (row j at v + j * ld_v).
inline void mma_pv(float* o, index_t ld_o, index_t nq, const float* p, index_t pj, index_t pr, const float* v,
                   index_t ld_v, index_t nk, index_t dv_vecs, const PvIo& io = {}, const RowStream* pf = nullptr,
                   int npf = 0) {
  mma_pv_rows(o, ld_o, nq, p, pj, pr, StridedRows{v, ld_v}, nk, dv_vecs, io, pf, npf);
}

// r[i] = sum of the lanes of v[i], for kWidth vectors: a transposing horizontal add.
// (xsimd 8.1's haddp permutes its result on AVX-512, so we do not use it.)
inline vf transpose_sum(const vf* v) {
#if defined(__AVX512F__)
  static_assert(kWidth == 16, "AVX-512 float vectors have 16 lanes");
  // Level 1, within 128-bit lanes: pairs (a, b) -> [a0+a2, b0+b2, a1+a3, b1+b3] per lane.
  __m512 t[8];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = v[2 * i], b = v[2 * i + 1];
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  }
  // Level 2: 128-bit lane L of w[k] = the lane-L sums of v[4k .. 4k+3].
  __m512 w[4];
  for (int k = 0; k < 4; ++k) {
    const __m512 x = t[2 * k], y = t[2 * k + 1];
    w[k] = _mm512_add_ps(_mm512_shuffle_ps(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // Levels 3-4, across 128-bit lanes: lane k of the result = w[k] summed over its 4 lanes.
  const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(w[2], w[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(w[2], w[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return vf(_mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(3, 1, 3, 1))));
#elif defined(__AVX__)
  static_assert(kWidth == 8, "AVX float vectors have 8 lanes");
  // Pairwise horizontal adds within 128-bit lanes: u0 holds [s0 s1 s2 s3 | s0' s1' s2' s3']
  // (the sums of v0..v3 over their low and high halves), u1 the same for v4..v7; one add of
  // the halves finishes. 9 instructions where the copy through memory took 64 scalar adds,
  // a third of a decode call's arithmetic at 4 query rows per KV head (Zen 2).
  const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return vf(_mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31)));
#else
  // Portable: through memory. Narrow ISAs have few lanes, so this costs little.
  alignas(64) float buf[kWidth][kWidth];
  alignas(64) float r[kWidth];
  for (int i = 0; i < kWidth; ++i) v[i].store_aligned(buf[i]);
  for (int i = 0; i < kWidth; ++i) {
    float s = 0.f;
    for (int j = 0; j < kWidth; ++j) s += buf[i][j];
    r[i] = s;
  }
  return vf::load_aligned(r);
#endif
}

// Decode-shaped scores, keys on the lanes: s[j] = <q, k_j> for kWidth key rows. One query
// row against a group of key rows; the kWidth partial-sum vectors are reduced in one go by a
// transposing horizontal add (transpose_sum), so each score costs Dqk / kWidth FMAs plus
// 1/kWidth of a reduction.
//   s  kWidth floats, aligned
//   q  (dqk_vecs * kWidth) aligned, zero-padded
//   k  row j at k + j * ld_k, dqk_vecs * kWidth readable floats each (the caller pads tails)
inline void dot_keys(float* s, const float* q, const float* k, index_t ld_k, index_t dqk_vecs) {
  vf acc[kWidth];
  for (int j = 0; j < kWidth; ++j) acc[j] = vf(0.f);
  for (index_t c = 0; c < dqk_vecs; ++c) {
    const vf qc = vf::load_aligned(q + c * kWidth);
    for (int j = 0; j < kWidth; ++j) acc[j] = xsimd::fma(vf::load_unaligned(k + j * ld_k + c * kWidth), qc, acc[j]);
  }
  transpose_sum(acc).store_aligned(s);
}

// A vector's low half to lo, its high half to hi (kWidth / 2 floats each, aligned).
namespace detail {
inline void store_halves(float* lo, float* hi, const vf& r) {
#if defined(__AVX512F__)
  _mm256_store_ps(lo, low_half(r));
  _mm256_store_ps(hi, high_half(r));
#elif defined(__AVX__)
  _mm_store_ps(lo, low_half(r));
  _mm_store_ps(hi, high_half(r));
#else
  alignas(64) float t[kWidth];
  r.store_aligned(t);
  std::copy(t, t + kWidth / 2, lo);
  std::copy(t + kWidth / 2, t + kWidth, hi);
#endif
}
}  // namespace detail

// The same for two query rows against the same key rows, kWidth / 2 keys at a time: each K
// load feeds both rows' FMAs (one row's scores load a K vector per FMA, which bound the loop),
// and one transposing add reduces the 2 x kWidth / 2 partial sums, row 0's keys in the low
// half of the result, row 1's in the high half. Each sum is formed in the same order as by
// dot_keys: the same bits. A decode call with 4-8 query rows per KV head and its keys in L2
// took 0.77-0.85x the time (bench/RESULTS.md, run AL).
//   s0, s1  kWidth floats each, aligned
//   q0, q1  as q above
inline void dot_keys_2rows(float* s0, float* s1, const float* q0, const float* q1, const float* k, index_t ld_k,
                           index_t dqk_vecs) {
  constexpr int H = kWidth / 2;
  for (int h = 0; h < kWidth; h += H) {
    vf acc[kWidth];  // [row 0: keys h .. h + H) [row 1: the same keys)
    for (int j = 0; j < kWidth; ++j) acc[j] = vf(0.f);
    const float* kh = k + h * ld_k;
    for (index_t c = 0; c < dqk_vecs; ++c) {
      const vf a = vf::load_aligned(q0 + c * kWidth), b = vf::load_aligned(q1 + c * kWidth);
      for (int j = 0; j < H; ++j) {
        const vf kv = vf::load_unaligned(kh + j * ld_k + c * kWidth);
        acc[j] = xsimd::fma(kv, a, acc[j]);
        acc[H + j] = xsimd::fma(kv, b, acc[H + j]);
      }
    }
    detail::store_halves(s0 + h, s1 + h, transpose_sum(acc));
  }
}

}  // namespace sinkattn::tile
