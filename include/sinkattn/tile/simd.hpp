#pragma once
// The SIMD vocabulary of sinkattn. This folder (tile/) is the only place that touches SIMD
// types; everything above it speaks in tiles and rows.
//
// The architecture is the one the consumer compiles for (xsimd::default_arch follows -m
// flags), so a header-only build for x86-64-v2 gets SSE4.2 code and -march=native on Zen 4
// gets AVX-512.

// GCC 12 warns "__Y is used uninitialized" inside its own AVX-512 intrinsic headers
// (_mm512_undefined_ps; GCC bug 105593, fixed in GCC 13). The warning is located in those
// headers, so silencing it around their first inclusion keeps -Wall clean without hiding
// anything in our code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#endif
#include <xsimd/xsimd.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include "sinkattn/core/types.hpp"

// For the few helpers whose operands must stay in registers across the call (an array of
// vectors passed by pointer): GCC's inliner gives up on them inside the large fused loop once
// it has grown, and then the vectors go through memory.
#if defined(__GNUC__)
#define SINKATTN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SINKATTN_ALWAYS_INLINE inline
#endif

// The other way round: a kernel called from a loop that is large in its own right (sink_mass's
// task) keeps its own register allocation behind a call instead of being merged into the loop's.
#if defined(__GNUC__)
#define SINKATTN_NOINLINE inline __attribute__((noinline))
#else
#define SINKATTN_NOINLINE inline
#endif

// For the loops over a register tile (trip counts are template arguments): unrolled at the
// front of the pipeline, the accumulator array becomes registers. Unrolled later, as GCC 12
// does by itself, the array stayed on the stack: a micro-kernel call zeroed it there, and
// after its loop stored every accumulator there and loaded it back to store it to the output
// (3 x 24 extra vector moves per S^T register tile).
#if defined(__clang__)
#define SINKATTN_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define SINKATTN_UNROLL _Pragma("GCC unroll 32")
#else
#define SINKATTN_UNROLL
#endif

namespace sinkattn::tile {

using arch = xsimd::default_arch;
using vf = xsimd::batch<float, arch>;
using vi = xsimd::batch<std::int32_t, arch>;

// Lanes per vector: 16 on AVX-512, 8 on AVX2, 4 on SSE/NEON.
inline constexpr int kWidth = static_cast<int>(vf::size);

// Architectural vector registers: 32 with AVX-512 (zmm0-31), 16 otherwise (x86-64 ymm/xmm;
// NEON has 32 but 128-bit, where the 16-register budget is a safe choice).
inline constexpr int kRegisters = kWidth >= 16 ? 32 : 16;

// Byte alignment of every workspace buffer: one vector (and at least a cache line).
inline constexpr std::size_t kAlign = sizeof(float) * kWidth > 64 ? sizeof(float) * kWidth : 64;

inline index_t round_up(index_t n, index_t m) { return (n + m - 1) / m * m; }

// Lane masks as bit sets, bit l = lane l (kWidth <= 16 bits): the neighborhood plans keep
// each list key's visibility this way, one 64-bit word per key for a whole query tile.
using vb = xsimd::batch_bool<float, arch>;
inline std::uint32_t lane_bits(const vb& m) {
#if defined(__AVX512F__)
  return static_cast<std::uint32_t>(static_cast<__mmask16>(m));
#elif defined(__AVX__)
  return static_cast<std::uint32_t>(_mm256_movemask_ps(m));
#elif defined(__SSE2__)
  return static_cast<std::uint32_t>(_mm_movemask_ps(m));
#else
  alignas(64) float t[kWidth];
  xsimd::select(m, vf(1.f), vf(0.f)).store_aligned(t);
  std::uint32_t bits = 0;
  for (int l = 0; l < kWidth; ++l) bits |= (t[l] != 0.f ? 1u : 0u) << l;
  return bits;
#endif
}
inline vb lanes_of(std::uint32_t bits) {
#if defined(__AVX512F__)
  return vb(static_cast<__mmask16>(bits));
#else
  // Lane l tests bit l: the bits broadcast, ANDed with 1 << l, compared with zero.
  struct Table {
    alignas(64) std::int32_t bit[kWidth];
  };
  static constexpr Table kLane = [] {
    Table t{};
    for (int l = 0; l < kWidth; ++l) t.bit[l] = std::int32_t{1} << l;
    return t;
  }();
  return xsimd::bool_cast((vi(static_cast<std::int32_t>(bits)) & vi::load_aligned(kLane.bit)) != vi(0));
#endif
}

// The low and high halves of a native register as the ISA's half-width register (AVX-512:
// two __m256, AVX: two __m128), for reductions and half-vector stores.
#if defined(__AVX512F__)
inline __m256 low_half(__m512 x) { return _mm512_castps512_ps256(x); }
inline __m256 high_half(__m512 x) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)); }
#endif
#if defined(__AVX__)
inline __m128 low_half(__m256 x) { return _mm256_castps256_ps128(x); }
inline __m128 high_half(__m256 x) { return _mm256_extractf128_ps(x, 1); }
#endif

// Non-temporal stores: a vector written to memory past the caches, without first reading its
// line (read for ownership). p must be aligned to a vector. Where the ISA has none (NEON),
// kStreamStores is false and stream_store is a plain aligned store.
#if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE2__)
inline constexpr bool kStreamStores = true;
#else
inline constexpr bool kStreamStores = false;
#endif
inline void stream_store(float* p, const vf& x) {
#if defined(__AVX512F__)
  static_assert(kWidth == 16, "AVX-512 builds: 16-lane vectors");
  _mm512_stream_ps(p, x);
#elif defined(__AVX__)
  static_assert(kWidth == 8, "AVX builds: 8-lane vectors");
  _mm256_stream_ps(p, x);
#elif defined(__SSE2__)
  static_assert(kWidth == 4, "SSE builds: 4-lane vectors");
  _mm_stream_ps(p, x);
#else
  x.store_aligned(p);
#endif
}
// Orders the streamed stores before every later store (sfence): they bypass the cache
// coherence order, so a task ends with one before another thread may read its rows.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace sinkattn::tile
