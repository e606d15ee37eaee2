#pragma once
// Tile sizes of the fused loop, and why.
//
//   query tile  BQ  = tile::kQRows = 64 rows (4 AVX-512 or 8 AVX2 vectors of lanes): the width
//                     of S^T; Q^T (Dqk x 64 floats = 32 KiB at D = 128) is
//                     packed once per tile and re-read from L1/L2 for every key block.
//   key block   BKV = 64 keys: S^T (64 x 64 floats = 16 KiB) stays in L1 between the three
//                     passes over it (score, max, exp); the V block (64 x Dv) streams from
//                     L2 once per register tile of O. Larger blocks amortise the O rescale
//                     (one pass over O per block) but push S^T out of L1.
//   decode      Sq * group <= kDecodeMaxRows: the query rows of one KV head are too few to
//                     fill the lanes, so the split-KV decode kernel reads each K/V row once
//                     for all of them and splits the keys across threads instead.

#include <cstddef>

#if defined(__has_include)
#if __has_include(<unistd.h>)
#include <unistd.h>  // sysconf: the L2 size
#endif
#endif

#include "sinkattn/core/types.hpp"
#include "sinkattn/tile/gemm.hpp"

namespace sinkattn::detail {

inline constexpr index_t kBlockQ = tile::kQRows;
inline constexpr index_t kBlockKV = 64;

// Whether P.V reads V rows where they are when they are not contiguous (token-major layouts:
// Hkv * Dv floats apart; a key slot map or a key list: through one pointer per row), instead
// of copying each key block into a contiguous panel first. Such rows fall into a fraction of
// the L1 sets, so every register tile of O streams the block's V rows from L2 again. With
// the AVX-512 register tile (6 rows x 4 vectors) each V row loaded feeds 24 FMAs and the L2
// keeps pace; the copy, whose loads wait on rows that have only just been asked for, cost
// more: reading in place took 0.93x the time of dense attention (B1 H4 S4096 D64 BSHD),
// 0.95-0.97x at D128 and at a 4 KiB row stride, 0.96x for 8x8 blocked neighborhoods (Zen 4,
// bench/RESULTS.md run M). The AVX2 tile (6 x 2, 12 FMAs per row chunk) took 1.12-1.15x
// in place at a 4 KiB stride and through row pointers: there the copy stays.
inline constexpr bool kVRowsInPlace = tile::kRegisters >= 32;

// Whether run() packs K and V rows that are not contiguous (token-major layouts) into
// head-major buffers once per call when keys are revisited (kernel/packed_kv.hpp). On the
// 16-register ISAs both strided products pay: K rows 2 KiB apart (B1 H8 D64 BSHD) share a
// quarter of the L1's sets and each register-tile pass re-reads them, and V is copied into a
// panel per block; head-major K alone took 0.84x the time, V alone 0.73x, both 0.68x (dense
// S4096, Zen 2; bench/RESULTS.md, run U). With AVX-512, V is read in place and a contiguous K
// gained 1-3% (Zen 4, run T): too little to be sure of paying for the copy on short calls.
inline constexpr bool kPackStridedKv = !kVRowsInPlace;

// The L2 size of this core in bytes, as the C library reports it (glibc: CPUID); 1 MiB
// when it does not (a common size: Zen 4, Ice Lake server).
inline std::size_t l2_cache_bytes() {
  static const std::size_t bytes = [] {
    long n = 0;
#if defined(_SC_LEVEL2_CACHE_SIZE)
    n = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return n > 0 ? static_cast<std::size_t>(n) : std::size_t{1} << 20;
  }();
  return bytes;
}

// Task order (KernelArgs::heads_inner): true when the keys one query tile visits, over all
// KV heads, take at most half of the L2. Then the heads of a tile can run back to back with
// their K/V in L2 together, and a token's Q and O rows (every head, adjacent in token-major
// layouts) are used by consecutive tasks. Short tiles pay for their scattered or strided Q/O
// rows: block attention with 256-key blocks (B1 H2 D128) 0.94-0.97x the time, 2-D
// neighborhood 13x13 (342 keys, 4 KV heads, D64) 0.95-0.97x with a 2 MiB L2. Past it the
// (b, h, tile) order, reusing one head's K/V across neighbouring tiles, is faster: 3-D 7^3
// (614 keys, 1.2 MiB) measured 1.05x heads-inner with a 2 MiB L2, 1.09x with 1 MiB.
// l2_fraction: the share of the L2 those keys may take (kernel/permute.hpp passes all of it).
inline bool heads_inner_fits(double keys_per_tile, const Problem& p, double l2_fraction = 0.5) {
  const double bytes =
      keys_per_tile * static_cast<double>(p.dim_qk + p.dim_v) * sizeof(float) * static_cast<double>(p.heads_kv);
  return bytes <= l2_fraction * static_cast<double>(l2_cache_bytes());
}

}  // namespace sinkattn::detail
