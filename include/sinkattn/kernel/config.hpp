#pragma once
// Tile sizes of the fused loop, and why.
//
//   query tile  BQ  = tile::kQRows = 4 vectors of lanes (64 rows with AVX-512): the width
//                     of the S^T register tile; Q^T (Dqk x 64 floats = 32 KiB at D = 128) is
//                     packed once per tile and re-read from L1/L2 for every key block.
//   key block   BKV = 64 keys: S^T (64 x 64 floats = 16 KiB) stays in L1 between the three
//                     passes over it (score, max, exp); the V block (64 x Dv) streams from
//                     L2 once per register tile of O. Larger blocks amortise the O rescale
//                     (one pass over O per block) but push S^T out of L1.
//   decode      Sq * group <= kDecodeMaxRows: the query rows of one KV head are too few to
//                     fill the lanes, so the split-KV decode kernel reads each K/V row once
//                     for all of them and splits the keys across threads instead.

#include "sinkattn/tile/gemm.hpp"

namespace sinkattn::detail {

inline constexpr index_t kBlockQ = tile::kQRows;
inline constexpr index_t kBlockKV = 64;

}  // namespace sinkattn::detail
