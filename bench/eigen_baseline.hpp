#pragma once
// The baseline every fused kernel is compared with: attention as two Eigen GEMMs around a
// materialised score matrix, the way one would write it with a good BLAS and no fusion.
//
// Per (b, h), g = h / (Hq / Hkv):
//   S = scale * Q_h K_g^T          (Sq, Skv) GEMM (GEMV when Sq = 1)
//   S_ij = -inf for j > p_i        causal only, bottom-right aligned
//   P = softmax_rows(S)            max, exp, sum, scale: vectorised Eigen array ops
//   O_h = P V_g                    (Sq, Dv) GEMM
// Q/K/V/O are mapped in place (BSHD: row stride H * D), never copied.

#include "eigen_core.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "sinkattn/core/types.hpp"

namespace sinkattn_bench {

class EigenAttention {
 public:
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using ConstMap = Eigen::Map<const RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;
  using Map = Eigen::Map<RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;

  // Sizes (and touches) the score matrix so that the first timed call does not page-fault.
  void reserve(const sinkattn::Problem& p) {
    s_.resize(p.seq_q, p.seq_kv);
    s_.setZero();
  }

  // Dense BSHD tensors; scale = 1/sqrt(Dqk).
  void operator()(const sinkattn::Problem& p, bool causal, const float* q, const float* k, const float* v, float* o) {
    using sinkattn::index_t;
    const index_t sq = p.seq_q, skv = p.seq_kv, hq = p.heads_q, hkv = p.heads_kv, dk = p.dim_qk, dv = p.dim_v;
    const index_t group = p.group_size();
    const float scale = 1.f / std::sqrt(static_cast<float>(dk));
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    s_.resize(sq, skv);  // (Sq, Skv) scores, then probabilities; reused across calls

    for (index_t b = 0; b < p.batch; ++b) {
      for (index_t h = 0; h < hq; ++h) {
        const index_t g = h / group;
        ConstMap qh(q + (b * sq * hq + h) * dk, sq, dk, Eigen::OuterStride<>(hq * dk));      // (Sq, Dqk)
        ConstMap kg(k + (b * skv * hkv + g) * dk, skv, dk, Eigen::OuterStride<>(hkv * dk));  // (Skv, Dqk)
        ConstMap vg(v + (b * skv * hkv + g) * dv, skv, dv, Eigen::OuterStride<>(hkv * dv));  // (Skv, Dv)
        Map oh(o + (b * sq * hq + h) * dv, sq, dv, Eigen::OuterStride<>(hq * dv));           // (Sq, Dv)

        // The scalar factor is folded into the GEMM's alpha (no temporary).
        s_.noalias() = scale * qh * kg.transpose();

        for (index_t i = 0; i < sq; ++i) {
          auto row = s_.row(i).array();  // contiguous (row-major)
          if (causal) {
            const index_t first_hidden = std::max<index_t>(i + (skv - sq) + 1, 0);
            if (first_hidden < skv) row.tail(skv - first_hidden).setConstant(kNegInf);
          }
          const float m = row.maxCoeff();
          if (m == kNegInf) {  // no visible key: output 0 (SEMANTICS), never NaN
            row.setZero();
            continue;
          }
          row = (row - m).exp();
          row *= 1.f / row.sum();
        }

        oh.noalias() = s_ * vg;
      }
    }
  }

 private:
  RowMat s_;
};

}  // namespace sinkattn_bench
