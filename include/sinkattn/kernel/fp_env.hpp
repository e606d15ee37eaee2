#pragma once
// The floating-point environment of a kernel task.
//
// tile::exp2 clamps its argument to [-160, 128] so that vscalefps returns exact 0 for masked
// (-inf) logits; 2^-160 is an underflow, and with MXCSR.FTZ off every such lane takes a
// microcode assist (measured: sliding-window prefill at 80% of dense GFLOP/s without FTZ, 90-92%
// with it; 2-D/3-D neighborhood attention 1.7-2x slower). Each task therefore runs with
// flush-to-zero on and restores the caller's mode when it ends (MXCSR is per thread; the
// caller's own code never sees a change). FTZ only changes results below 2^-126: weights that
// small beside the row maximum's weight of 1. DAZ stays off, so denormal inputs keep their value.

#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace sinkattn::detail {

class FlushToZeroScope {
 public:
#if defined(__SSE__) || defined(_M_X64)
  FlushToZeroScope() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8000u); }
  ~FlushToZeroScope() { _mm_setcsr(saved_); }
#else
  FlushToZeroScope() = default;
#endif
  FlushToZeroScope(const FlushToZeroScope&) = delete;
  FlushToZeroScope& operator=(const FlushToZeroScope&) = delete;

 private:
#if defined(__SSE__) || defined(_M_X64)
  unsigned saved_;
#endif
};

}  // namespace sinkattn::detail
