#pragma once
// Score policies: finish the logits of a score tile in log2 units (x * log2(e)), so that the
// normalization can use exp2. The kernels pack Q pre-multiplied by scale * log2(e) (as
// FlashAttention and ThunderKittens fold the scale), so the plain score costs nothing here;
// softcap, bias and ALiBi are applied on top.
// Order (SEMANTICS 1): scale, softcap, bias / ALiBi; masking comes after, in the mask policy.

#include <cmath>
#include <cstdlib>

#include "sinkattn/kernel/args.hpp"
#include "sinkattn/tile/math.hpp"
#include "sinkattn/tile/ops.hpp"

namespace sinkattn::policy {

// A score tile: element (query i0 + l, key j0 + r), l < nq, r < nk, lives at
// st[l * q_step + r * k_step]. Storage is `rows` rows of `vecs` vectors, leading dimension
// ld. The prefill loop keeps S^T (rows = keys, q_step = 1); the decode loop keeps keys on
// the lanes (rows = query rows, k_step = 1). Elementwise policies only use at().
struct ScoreTile {
  float* st;
  index_t ld;
  index_t rows;
  int vecs;
  index_t b, h, i0, nq, j0, nk;
  index_t q_step, k_step;
  const index_t* keys;  // non-null: row r is key keys[r] (a list block), not j0 + r
  // Non-null (neighborhood list blocks): bit (i0 % tile + l) of vis[r] is set when lane l sees
  // row r's key, precomputed by the mask's plan (NaPlan::list_vis).
  const std::uint64_t* vis = nullptr;
  float& at(index_t l, index_t r) const { return st[l * q_step + r * k_step]; }
};

template <bool kSoftcap, bool kBias, bool kAlibi>
struct Score {
  static void apply(const ::sinkattn::detail::KernelArgs& a, const ScoreTile& t) {
    using tile::vf;
    if constexpr (kSoftcap) {
      // The kernels hand over y = scale * s * log2(e) (the scale rides in the packed Q).
      // x = c * tanh(scale * s / c) before any additive term (so a -inf stays -inf), i.e.
      // in log2 units c' * tanh(y / c') with c' = c * log2(e).
      const float c2 = a.softcap * ::sinkattn::detail::kLog2e;
      const vf pre(1.f / c2), post(c2);
      for (index_t r = 0; r < t.rows; ++r)
        for (int c = 0; c < t.vecs; ++c) {
          float* p = t.st + r * t.ld + c * tile::kWidth;
          (tile::tanh(vf::load_aligned(p) * pre) * post).store_aligned(p);
        }
    }
    if constexpr (kBias) {
      if (a.bias.stride[2] == 0 && t.q_step == 1 && t.keys == nullptr) {
        // One bias per key for every row (zero row stride: a key-padding mask, ACT's hidden
        // keys): a broadcast add per key row of S^T instead of a strided scalar walk, which
        // cost forward_act's first pass 15% of a dense call.
        const float* src = a.bias.ptr(t.b, t.h, t.i0, t.j0);
        for (index_t r = 0; r < t.rows; ++r) {
          const vf add(src[r * a.bias.stride[3]] * ::sinkattn::detail::kLog2e);
          for (int c = 0; c < t.vecs; ++c) {
            float* p = t.st + r * t.ld + c * tile::kWidth;
            (vf::load_aligned(p) + add).store_aligned(p);
          }
        }
      } else {
        for (index_t l = 0; l < t.nq; ++l) {
          const float* src = a.bias.ptr(t.b, t.h, t.i0 + l, t.j0);
          for (index_t r = 0; r < t.nk; ++r) t.at(l, r) += src[r * a.bias.stride[3]] * ::sinkattn::detail::kLog2e;
        }
      }
    }
    if constexpr (kAlibi) {
      const float slope = a.alibi_slopes[t.h] * ::sinkattn::detail::kLog2e;
      const index_t shift = a.p.seq_kv - a.p.seq_q;
      for (index_t l = 0; l < t.nq; ++l)
        for (index_t r = 0; r < t.nk; ++r)
          t.at(l, r) -= slope * static_cast<float>(std::llabs(t.i0 + l + shift - (t.j0 + r)));
    }
  }
};

// The runtime entry point's score policy: softcap, bias and ALiBi chosen per tile from the
// arguments. One branch per tile (64 x 64 scores) costs nothing measurable, and the fused loop
// is compiled once instead of once per flag combination (only this small function is).
struct RuntimeScore {
  static void apply(const ::sinkattn::detail::KernelArgs& a, const ScoreTile& t) {
    const bool bias = a.bias.data != nullptr && !a.bias.empty(), alibi = a.alibi_slopes != nullptr;
    const int k = (a.softcap > 0.f ? 4 : 0) + (bias ? 2 : 0) + (alibi ? 1 : 0);
    using Fn = void (*)(const ::sinkattn::detail::KernelArgs&, const ScoreTile&);
    static constexpr Fn kApply[8] = {&Score<false, false, false>::apply, &Score<false, false, true>::apply,
                                     &Score<false, true, false>::apply,  &Score<false, true, true>::apply,
                                     &Score<true, false, false>::apply,  &Score<true, false, true>::apply,
                                     &Score<true, true, false>::apply,   &Score<true, true, true>::apply};
    kApply[k](a, t);
  }
};

}  // namespace sinkattn::policy
