#pragma once
// <Eigen/Core> for the bench's baselines, with GCC 12's false positives inside the AVX-512
// intrinsic headers silenced for those headers only:
//   -Wmaybe-uninitialized in Eigen's GEMM packing (ptranspose over _mm512_unpacklo_ps);
//   -Wuninitialized on _mm512_undefined_ps() (GCC bug 105593), reached through Eigen's pexp and
//   through tile::exp2's _mm512_scalef_ps.
// GCC checks a warning against the pragmas in force where the warning's location is, which is a
// line of avx512fintrin.h. So this header silences them only if it is the first to bring in the
// intrinsic headers: include it before anything that includes xsimd or sinkattn. The pop below
// re-enables both warnings for our own code.

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <Eigen/Core>
#pragma GCC diagnostic pop
