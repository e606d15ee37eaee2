#pragma once
// Eigen baselines of the attention variants (issue 4): the structure of eigen_baseline.hpp
// (materialised scores, two GEMMs) with the variant's normalization on the score matrix and the
// optional output gate after the second GEMM (SEMANTICS.md sections 3-4).
//
// Per (b, h), g = h / (Hq / Hkv):
//   S = scale * Q_h K_g^T                 (Sq, Skv) GEMM
//   per row i, over its N_i visible keys  (causal: j <= p_i; the hidden tail is set to 0):
//     softmax   w = exp(x - m) / l
//     sinks     w = exp(x - m) / (l + exp(S_h - m)),  m = max(max_j x_j, S_h)
//     sigmoid   w = sigmoid(x + b), optionally / (sum w + eps)
//     softpick  w = ReLU(e^x - 1) / (sum |e^x - 1| + eps), divided through by e^m when m > 0
//     SSMax     w = softmax(f x), f = s_h log(N_i)
//     affine    w = alpha_i softmax(x) + beta_i: then P V = alpha O_softmax + beta sum_visible v_j
//   O_h = P V_g                           (Sq, Dv) GEMM
//   gate      O_h *= sigmoid(G_h)         elementwise [Sq, Dv] or headwise [Sq, 1]
// Every row pass is a vectorised Eigen array expression. Supported options: the mask (full or
// causal, no offset), opt.norm, opt.gate; score options must be defaults.

#include "eigen_core.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <variant>

#include "sinkattn/core/options.hpp"
#include "sinkattn/core/types.hpp"

namespace sinkattn_bench {

class EigenVariantAttention {
 public:
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using ConstMap = Eigen::Map<const RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;
  using Map = Eigen::Map<RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;
  using ConstStridedMap = Eigen::Map<const RowMat, Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

  // Sizes (and touches) the score matrix so that the first timed call does not page-fault.
  void reserve(const sinkattn::Problem& p) {
    s_.resize(p.seq_q, p.seq_kv);
    s_.setZero();
  }

  // Dense BSHD tensors; scale = 1/sqrt(Dqk).
  void operator()(const sinkattn::Problem& p, bool causal, const float* q, const float* k, const float* v, float* o,
                  const sinkattn::Options& opt) {
    using sinkattn::index_t;
    const index_t sq = p.seq_q, skv = p.seq_kv, hq = p.heads_q, hkv = p.heads_kv, dk = p.dim_qk, dv = p.dim_v;
    const index_t group = p.group_size();
    const float scale = 1.f / std::sqrt(static_cast<float>(dk));
    const auto* gate = std::get_if<sinkattn::SigmoidGate>(&opt.gate);
    s_.resize(sq, skv);  // (Sq, Skv) scores, then weights; reused across calls

    for (index_t b = 0; b < p.batch; ++b) {
      for (index_t h = 0; h < hq; ++h) {
        const index_t g = h / group;
        ConstMap qh(q + (b * sq * hq + h) * dk, sq, dk, Eigen::OuterStride<>(hq * dk));      // (Sq, Dqk)
        ConstMap kg(k + (b * skv * hkv + g) * dk, skv, dk, Eigen::OuterStride<>(hkv * dk));  // (Skv, Dqk)
        ConstMap vg(v + (b * skv * hkv + g) * dv, skv, dv, Eigen::OuterStride<>(hkv * dv));  // (Skv, Dv)
        Map oh(o + (b * sq * hq + h) * dv, sq, dv, Eigen::OuterStride<>(hq * dv));           // (Sq, Dv)

        s_.noalias() = scale * qh * kg.transpose();
        std::visit([&](const auto& norm) { normalize_rows(p, causal, b, h, norm); }, opt.norm);
        oh.noalias() = s_ * vg;

        if (gate) apply_gate(gate->g, b, h, sq, dv, oh);
      }
    }
  }

 private:
  // Visible keys of row i: j < n_i.
  static sinkattn::index_t visible(const sinkattn::Problem& p, bool causal, sinkattn::index_t i) {
    return causal ? std::clamp<sinkattn::index_t>(p.query_pos(i) + 1, 0, p.seq_kv) : p.seq_kv;
  }

  // Calls f(x, i, n) for every row with n >= 1 visible keys, x = the row's first n scores (an
  // Eigen array block); zeroes the hidden tail (and whole rows without a visible key).
  template <class F>
  void for_rows(const sinkattn::Problem& p, bool causal, F&& f) {
    using sinkattn::index_t;
    const index_t skv = p.seq_kv;
    for (index_t i = 0; i < p.seq_q; ++i) {
      auto row = s_.row(i).array();
      const index_t n = visible(p, causal, i);
      if (n < skv) row.tail(skv - n).setZero();
      if (n > 0) f(row.head(n), i, n);
    }
  }

  // exp(x - max) in place; returns the row sum. m == -inf cannot happen (finite scores).
  template <class X>
  static float exp_shifted(X&& x, float m) {
    x = (x - m).exp();
    return x.sum();
  }

  void normalize_rows(const sinkattn::Problem& p, bool causal, sinkattn::index_t, sinkattn::index_t,
                      const sinkattn::Softmax&) {
    for_rows(p, causal, [](auto x, sinkattn::index_t, sinkattn::index_t) {
      const float l = exp_shifted(x, x.maxCoeff());
      x *= 1.f / l;
    });
  }

  void normalize_rows(const sinkattn::Problem& p, bool causal, sinkattn::index_t, sinkattn::index_t h,
                      const sinkattn::SinkSoftmax& n) {
    const float sink = n.sinks[h];  // raw logit: not scaled
    for_rows(p, causal, [sink](auto x, sinkattn::index_t, sinkattn::index_t) {
      const float m = std::max(x.maxCoeff(), sink);
      const float l = exp_shifted(x, m) + std::exp(sink - m);
      x *= 1.f / l;
    });
  }

  void normalize_rows(const sinkattn::Problem& p, bool causal, sinkattn::index_t, sinkattn::index_t h,
                      const sinkattn::Sigmoid& n) {
    const float bias = n.bias + (n.head_bias ? n.head_bias[h] : 0.f);
    const bool normalize = n.normalize;
    const float eps = n.eps;
    for_rows(p, causal, [=](auto x, sinkattn::index_t, sinkattn::index_t) {
      x = (x + bias).logistic();
      if (!normalize) return;
      const float den = x.sum() + eps;
      if (den == 0.f)
        x.setZero();
      else
        x *= 1.f / den;
    });
  }

  void normalize_rows(const sinkattn::Problem& p, bool causal, sinkattn::index_t, sinkattn::index_t,
                      const sinkattn::Softpick& n) {
    const float eps = n.eps;
    for_rows(p, causal, [eps](auto x, sinkattn::index_t, sinkattn::index_t) {
      const float m = x.maxCoeff();
      float den;
      if (m > 0.f) {  // divide numerator and denominator by e^m: no overflow
        const float shift = std::exp(-m);
        x = (x - m).exp() - shift;
        den = x.abs().sum() + eps * shift;
      } else {
        x = x.expm1();
        den = x.abs().sum() + eps;
      }
      if (den == 0.f)
        x.setZero();
      else
        x = x.max(0.f) * (1.f / den);
    });
  }

  void normalize_rows(const sinkattn::Problem& p, bool causal, sinkattn::index_t, sinkattn::index_t h,
                      const sinkattn::ScalableSoftmax& n) {
    const float s = n.s[h];
    for_rows(p, causal, [s](auto x, sinkattn::index_t, sinkattn::index_t nv) {
      const float f = s * std::log(static_cast<float>(nv));
      const float m = f >= 0.f ? x.maxCoeff() : x.minCoeff();  // argmax of f * x
      x = ((x - m) * f).exp();
      x *= 1.f / x.sum();
    });
  }

  void normalize_rows(const sinkattn::Problem& p, bool causal, sinkattn::index_t b, sinkattn::index_t h,
                      const sinkattn::AffineScaled& n) {
    const bool given_beta = n.beta.data != nullptr;
    for_rows(p, causal, [&](auto x, sinkattn::index_t i, sinkattn::index_t nv) {
      const float alpha = n.alpha(b, i, h, 0);
      const float beta =
          given_beta ? n.beta(b, i, h, 0) : (n.alpha_ma - alpha) / static_cast<float>(n.beta_over_skv ? p.seq_kv : nv);
      const float l = exp_shifted(x, x.maxCoeff());
      x = x * (alpha / l) + beta;  // P V = alpha O_softmax + beta sum_{visible j} v_j
    });
  }

  // O_h *= sigmoid(G_h), G elementwise [B, Sq, Hq, Dv] or headwise [B, Sq, Hq, 1], any strides.
  static void apply_gate(const sinkattn::TensorView<const float>& g, sinkattn::index_t b, sinkattn::index_t h,
                         sinkattn::index_t sq, sinkattn::index_t dv, Map& oh) {
    const float* base = g.data + b * g.stride[0] + h * g.stride[2];
    if (g.shape[3] == 1) {
      for (sinkattn::index_t i = 0; i < sq; ++i) {
        const float x = base[i * g.stride[1]];
        oh.row(i) *= 1.f / (1.f + std::exp(-x));
      }
    } else if (g.stride[3] == 1) {
      ConstMap gh(base, sq, dv, Eigen::OuterStride<>(g.stride[1]));
      oh.array() *= gh.array().logistic();
    } else {
      ConstStridedMap gh(base, sq, dv, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(g.stride[1], g.stride[3]));
      oh.array() *= gh.array().logistic();
    }
  }

  RowMat s_;
};

}  // namespace sinkattn_bench
