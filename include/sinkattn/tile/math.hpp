#pragma once
// Vectorised transcendental helpers on one register: exp2 (the hot one: one per score),
// sigmoid and tanh built on it.

#include <cmath>
#include <limits>

#include "sinkattn/tile/simd.hpp"

namespace sinkattn::tile {

namespace detail {
// 2^f for |f| <= 1/2: the Taylor terms of e^(f ln 2) to degree 6 (truncation error
// (ln2/2)^7/7! ~ 1.2e-7, about 1 ulp), shared by exp2 and exp2_nonpositive.
inline vf exp2_fraction(const vf& f) {
  vf p(1.5403530393381609e-4f);                      // ln2^6 / 6!
  p = xsimd::fma(p, f, vf(1.3333558146428443e-3f));  // ln2^5 / 5!
  p = xsimd::fma(p, f, vf(9.6181291076284772e-3f));  // ln2^4 / 4!
  p = xsimd::fma(p, f, vf(5.5504108664821580e-2f));  // ln2^3 / 3!
  p = xsimd::fma(p, f, vf(2.4022650695910071e-1f));  // ln2^2 / 2!
  p = xsimd::fma(p, f, vf(6.9314718055994531e-1f));  // ln2
  return xsimd::fma(p, f, vf(1.f));
}
}  // namespace detail

// 2^x for any float x, with -inf -> exactly 0 and everything below -126 flushed to 0 or
// a denormal (masked keys must contribute exactly nothing), +inf/large -> +inf, NaN -> NaN.
//
// x = n + f with n = round(x), |f| <= 1/2; 2^f by a degree-6 polynomial (Taylor terms of
// e^(f ln 2); truncation error (ln2/2)^7/7! ~ 1.2e-7, i.e. about 1 ulp), then 2^n applied
// to the exponent. This is the one transcendental of the hot loop (one per score), so it
// is kept short. With AVX-512DQ, vreduceps gives f = x - round(x) exactly in one operation
// and gives 0 for +-inf, so n = x - f is +-inf there and vscalefps makes exact inf and 0 by
// itself; NaN passes through both. That is 9 operations where the clamped form below takes
// 12, with the same bits for every input. With AVX-512F alone, the clamp to [-160, 128]
// gets exact 0 and inf from vscalefps (no select); elsewhere the exponent is built by
// integer shifts.
inline vf exp2(const vf& x) {
#if defined(__AVX512DQ__)
  const vf f(_mm512_reduce_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return vf(_mm512_scalef_ps(detail::exp2_fraction(f), x - f));
#elif defined(__AVX512F__)
  // max/min return their second operand when one is NaN: x goes second so NaN survives.
  const vf xc = xsimd::min(vf(128.f), xsimd::max(vf(-160.f), x));
  const vf n = xsimd::nearbyint(xc);
  // p * 2^n: 2^-160 underflows to exactly 0, 2^128 to inf
  return vf(_mm512_scalef_ps(detail::exp2_fraction(xc - n), n));
#else
  const vf xc = xsimd::min(xsimd::max(x, vf(-126.f)), vf(127.f));
  const vf n = xsimd::nearbyint(xc);
  const vf p = detail::exp2_fraction(xc - n);
  const vi bits = (xsimd::batch_cast<std::int32_t>(n) + vi(127)) << 23;
  vf r = p * xsimd::bitwise_cast<vf>(bits);
  r = xsimd::select(x < vf(-126.f), vf(0.f), r);
  r = xsimd::select(x > vf(127.f), vf(std::numeric_limits<float>::infinity()), r);
  return xsimd::select(xsimd::isnan(x), x, r);  // NaN in, NaN out
#endif
}

// 2^x for x <= 127, -inf or NaN: the softmax weights (a logit minus its lane's running max,
// <= 0). Equal to exp2 bit for bit on [-126, 127] and for -inf and NaN; below -126 it returns a
// denormal that flush-to-zero (kernel/fp_env.hpp) makes 0, where exp2 returns 0. On AVX2 the
// lower clamp at -127 builds an exponent field of 0, so -inf gives exactly 0 with no select,
// and a NaN propagates through the polynomial: 14 operations instead of exp2's 21, in the one
// transcendental per score (the online softmax is 15% of dense attention on a Zen 2).
inline vf exp2_nonpositive(const vf& x) {
#if defined(__AVX512F__)
  return exp2(x);
#else
  const vf xc = xsimd::max(vf(-127.f), x);  // (max returns its second operand for a NaN)
  const vf n = xsimd::nearbyint(xc);
  const vf f = xc - n;
  const vf p = detail::exp2_fraction(f);
  const vi bits = (xsimd::batch_cast<std::int32_t>(n) + vi(127)) << 23;  // n = -127: 0.0f
  return p * xsimd::bitwise_cast<vf>(bits);
#endif
}

// Horizontal sum and max of one register (xsimd 8.1 has hadd but no max reducer). hmax is a
// tree of vector maxima: the decode softmax takes one per row and 64-key block, and the
// scalar loop it replaces (15 calls of libm's fmaxf) cost 5-8% of a decode call with its
// keys in L2 (bench/RESULTS.md, run AL). NaN lanes are skipped, as std::fmax skips them
// (the vector max would let one win or lose by its position); all NaN gives -inf.
inline float hsum(const vf& x) { return xsimd::hadd(x); }
#if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE2__)
namespace detail {
inline float hmax4(__m128 m) {  // the max of 4 lanes
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(1, 1, 1, 1))));
}
}  // namespace detail
#endif
inline float hmax(const vf& v) {
  const vf x = xsimd::select(v == v, v, vf(-std::numeric_limits<float>::infinity()));
#if defined(__AVX512F__)
  const __m256 h = _mm256_max_ps(low_half(x), high_half(x));
  return detail::hmax4(_mm_max_ps(low_half(h), high_half(h)));
#elif defined(__AVX__)
  return detail::hmax4(_mm_max_ps(low_half(x), high_half(x)));
#elif defined(__SSE2__)
  return detail::hmax4(x);
#else
  alignas(64) float t[kWidth];
  x.store_aligned(t);
  float m = t[0];
  for (int i = 1; i < kWidth; ++i) m = std::fmax(m, t[i]);
  return m;
#endif
}

// e^x.
inline vf exp(const vf& x) { return exp2(x * vf(1.4426950408889634f)); }

// 1 / (1 + e^-x), exact 0 at -inf and 1 at +inf.
inline vf sigmoid(const vf& x) { return vf(1.f) / (vf(1.f) + exp(-x)); }

// tanh(x) = 1 - 2 / (e^{2x} + 1): saturates cleanly to +-1 for large |x|.
inline vf tanh(const vf& x) { return vf(1.f) - vf(2.f) / (exp(x + x) + vf(1.f)); }

}  // namespace sinkattn::tile
