#pragma once
// The validated arguments of one call, as the kernels and policies see them.

#include <cmath>

#include "sinkattn/core/options.hpp"
#include "sinkattn/core/tensor_view.hpp"
#include "sinkattn/core/types.hpp"

namespace sinkattn::detail {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.69314718055994531f;

struct KernelArgs {
  Problem p;
  TensorView<const float> q, k, v;
  TensorView<float> o;
  TensorView<float> lse;  // empty: not requested
  float scale = 1.f;      // natural units
  float softcap = 0.f;
  TensorView<const float> bias;         // [B, Hq, Sq, Skv]
  const float* alibi_slopes = nullptr;  // [Hq]
  const float* sink_logits = nullptr;   // [Hq], raw
  TensorView<const float> gate;         // [B, Sq, Hq, Dv or 1]; empty: no gate
  // Parameters of the non-softmax normalizations (read by the matching policy only).
  Sigmoid sigmoid;
  Softpick softpick;
  ScalableSoftmax ssmax;
  AffineScaled affine;

  bool want_lse() const { return lse.data != nullptr && !lse.empty(); }
  bool has_gate() const { return gate.data != nullptr && !gate.empty(); }
};

}  // namespace sinkattn::detail
