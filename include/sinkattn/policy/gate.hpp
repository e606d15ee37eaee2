#pragma once
// Output policies: the epilogue that writes one finished output row into the caller's O.

#include <cmath>

#include "sinkattn/kernel/args.hpp"
#include "sinkattn/tile/ops.hpp"

namespace sinkattn::policy {

struct NoGate {
  // Whether store() is O = acc * s and nothing more (then the fused loop may write O itself).
  static bool scale_only(const ::sinkattn::detail::KernelArgs&) { return true; }
  // O[b, i, h, :] = acc * s
  static void store(const ::sinkattn::detail::KernelArgs& a, index_t b, index_t i, index_t h, const float* acc,
                    float s) {
    tile::store_scaled(a.o.ptr(b, i, h), a.o.stride[3], acc, a.p.dim_v, s);
  }
};

// Gated attention (Qiu et al. 2025; Qwen3-Next): O' = O * sigmoid(G), G = a.gate elementwise
// [B, Sq, Hq, Dv] or headwise [B, Sq, Hq, 1], any strides (a gate interleaved with q in one
// buffer is read in place). Fused into the store: no extra pass over O. Runs after the
// normalization's own epilogue (affine-scaled), as SEMANTICS section 4 asks.
struct SigmoidGate {
  static bool scale_only(const ::sinkattn::detail::KernelArgs&) { return false; }
  static void store(const ::sinkattn::detail::KernelArgs& a, index_t b, index_t i, index_t h, const float* acc,
                    float s) {
    const float* g = a.gate.ptr(b, i, h);
    if (a.gate.shape[3] == 1) {
      tile::store_scaled(a.o.ptr(b, i, h), a.o.stride[3], acc, a.p.dim_v, s / (1.f + std::exp(-g[0])));
    } else {
      tile::store_scaled_gated(a.o.ptr(b, i, h), a.o.stride[3], acc, a.p.dim_v, s, g, a.gate.stride[3]);
    }
  }
};

// The runtime entry point's gate: a branch per output row on whether a gate was given. Its
// cost is nil next to the row's Dv-wide store, and it halves the specialisations to compile.
struct OptionalSigmoidGate {
  static bool scale_only(const ::sinkattn::detail::KernelArgs& a) { return !a.has_gate(); }
  static void store(const ::sinkattn::detail::KernelArgs& a, index_t b, index_t i, index_t h, const float* acc,
                    float s) {
    if (a.has_gate())
      SigmoidGate::store(a, b, i, h, acc, s);
    else
      NoGate::store(a, b, i, h, acc, s);
  }
};

}  // namespace sinkattn::policy
