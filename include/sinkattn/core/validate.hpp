#pragma once
// Up-front validation of one call: everything the kernels assume is checked here, once,
// and reported with the name of the offending argument.

#include <algorithm>
#include <cmath>
#include <string>

#include "sinkattn/core/kv_segments.hpp"
#include "sinkattn/core/options.hpp"
#include "sinkattn/core/rope.hpp"
#include "sinkattn/core/status.hpp"
#include "sinkattn/core/tensor_view.hpp"
#include "sinkattn/core/types.hpp"

namespace sinkattn {
namespace detail {

inline std::string str(index_t v) { return std::to_string(v); }

inline Status fail(Errc c, std::string msg) { return Status(c, std::move(msg)); }

// |v| <= kMaxIndex (core/types.hpp), for every size, position, offset and window.
inline Status check_bound(const std::string& name, index_t v) {
  if (v > kMaxIndex || v < -kMaxIndex)
    return fail(Errc::out_of_range, name + " is " + str(v) + ", beyond the limit of 2^40 (kMaxIndex)");
  return {};
}

// a * b <= limit for a, b >= 0, without forming a product that could overflow.
inline bool product_within(index_t a, index_t b, index_t limit) { return a == 0 || b <= limit / a; }

// The most elements a tensor may hold, and the farthest a view's stride may reach along one
// dimension (|stride| * (extent - 1)): zero-stride views can claim any shape without the
// memory behind it, and four such reaches must still add up inside index_t.
inline constexpr index_t kMaxElements = index_t{1} << 60;

inline Status check_problem(const Problem& p) {
  const char* names[] = {"batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "dim_qk", "dim_v"};
  const index_t vals[] = {p.batch, p.heads_q, p.heads_kv, p.seq_q, p.seq_kv, p.dim_qk, p.dim_v};
  for (int i = 0; i < 7; ++i) {
    if (vals[i] < 0) return fail(Errc::negative_size, std::string("problem.") + names[i] + " is " + str(vals[i]));
    SINKATTN_TRY(check_bound(std::string("problem.") + names[i], vals[i]));
  }
  // Element counts: B * H * S * D of every tensor, B * Hq * Sq * Skv of a bias.
  const index_t seq = std::max(p.seq_q, p.seq_kv), heads = std::max(p.heads_q, p.heads_kv);
  const index_t inner = std::max({p.dim_qk, p.dim_v, p.seq_kv});
  if (!product_within(p.batch, heads, kMaxElements) || !product_within(p.batch * heads, seq, kMaxElements) ||
      !product_within(p.batch * heads * seq, inner, kMaxElements))
    return fail(Errc::out_of_range, "problem: batch * heads * seq * dim exceeds 2^60 elements");
  if (p.heads_kv == 0 && p.heads_q != 0)
    return fail(Errc::heads_not_divisible, "problem.heads_kv is 0 but heads_q is " + str(p.heads_q));
  if (p.heads_kv > 0 && p.heads_q % p.heads_kv != 0)
    return fail(Errc::heads_not_divisible,
                "problem.heads_q (" + str(p.heads_q) + ") is not a multiple of heads_kv (" + str(p.heads_kv) + ")");
  if (p.heads_q > 0 && p.heads_kv > p.heads_q)
    return fail(Errc::heads_not_divisible,
                "problem.heads_kv (" + str(p.heads_kv) + ") exceeds heads_q (" + str(p.heads_q) + ")");
  return {};
}

// A view must have exactly the expected logical shape (entries < 0 in `want` are free), and
// data unless it is empty.
template <class T>
Status check_view(const char* name, const TensorView<T>& v, std::array<index_t, 4> want, const char* const dims[4]) {
  for (int d = 0; d < 4; ++d) {
    if (v.shape[d] < 0)
      return fail(Errc::negative_size,
                  std::string(name) + ": shape[" + str(d) + "] (" + dims[d] + ") is " + str(v.shape[d]));
  }
  for (int d = 0; d < 4; ++d) {
    if (want[d] >= 0 && v.shape[d] != want[d])
      return fail(Errc::shape_mismatch, std::string(name) + ": shape[" + str(d) + "] (" + dims[d] + ") is " +
                                            str(v.shape[d]) + ", expected " + str(want[d]));
  }
  if (!v.empty() && v.data == nullptr)
    return fail(Errc::null_data, std::string(name) + ": data is null but the view is not empty");
  for (int d = 0; d < 4; ++d) {
    const index_t s = v.stride[d];
    if (v.shape[d] > 1 &&
        (s < -kMaxElements || s > kMaxElements || !product_within(v.shape[d] - 1, s < 0 ? -s : s, kMaxElements)))
      return fail(Errc::out_of_range,
                  std::string(name) + ": stride[" + str(d) + "] (" + str(s) + ") reaches past 2^60 elements");
  }
  return {};
}

inline const char* const kBSHD[4] = {"batch", "seq", "heads", "dim"};
inline const char* const kBHS1[4] = {"batch", "heads", "seq", "1"};
inline const char* const kBHSS[4] = {"batch", "heads", "seq_q", "seq_kv"};

template <class T, class U>
Status check_no_alias(const char* out_name, const TensorView<T>& out, const char* in_name, const TensorView<U>& in) {
  if (overlaps(byte_range(out), byte_range(in)))
    return fail(Errc::aliasing, std::string(out_name) + " overlaps input " + in_name);
  return {};
}

// An output must not write the same element twice from different indices (a zero stride on
// a dimension longer than 1, or strides that interleave, e.g. the heads 1 float apart over
// rows of 8: the result would depend on the order of writes). Sufficient and the usual test:
// with the dimensions longer than 1 sorted by |stride|, each stride exceeds the reach of the
// ones below it. (Legal layouts that interleave differently are not worth the exact test.)
template <class T>
Status check_writable(const char* name, const TensorView<T>& v) {
  if (v.empty()) return {};  // writes nothing (e.g. seq_q == 0, where bshd() gives stride[0] == 0)
  for (int d = 0; d < 4; ++d)
    if (v.shape[d] > 1 && v.stride[d] == 0)
      return fail(Errc::invalid_argument, std::string(name) + ": stride[" + str(d) + "] is 0 on an output");
  int order[4] = {0, 1, 2, 3};
  const auto mag = [&](int d) { return v.stride[d] < 0 ? -v.stride[d] : v.stride[d]; };
  std::sort(order, order + 4, [&](int a, int b) { return mag(a) < mag(b); });
  index_t reach = 0;  // the largest offset the dimensions so far reach
  for (int d : order) {
    if (v.shape[d] <= 1) continue;
    if (mag(d) <= reach)
      return fail(Errc::invalid_argument, std::string(name) + ": stride[" + str(d) + "] (" + str(v.stride[d]) +
                                              ") lets different indices write the same element");
    reach += (v.shape[d] - 1) * mag(d);
  }
  return {};
}

inline Status check_mask(const Problem& p, const FullMask&) {
  (void)p;
  return {};
}
inline Status check_mask(const Problem&, const CausalMask& m) { return check_bound("mask.offset", m.offset); }

inline Status check_mask(const Problem&, const SlidingWindowMask& m) {
  if (m.left < -1) return fail(Errc::out_of_range, "mask.left is " + str(m.left) + " (use -1 for unbounded)");
  if (m.right < -1) return fail(Errc::out_of_range, "mask.right is " + str(m.right) + " (use -1 for unbounded)");
  if (m.sink_tokens < 0) return fail(Errc::out_of_range, "mask.sink_tokens is " + str(m.sink_tokens));
  SINKATTN_TRY(check_bound("mask.left", m.left));
  SINKATTN_TRY(check_bound("mask.right", m.right));
  SINKATTN_TRY(check_bound("mask.sink_tokens", m.sink_tokens));
  return check_bound("mask.offset", m.offset);
}

inline Status check_mask(const Problem&, const BlockMask& m) {
  if (m.boundaries.empty()) {
    if (m.block_size <= 0)
      return fail(Errc::out_of_range, "mask.block_size is " + str(m.block_size) + " (must be > 0)");
  } else {
    if (m.boundaries[0] != 0)
      return fail(Errc::out_of_range, "mask.boundaries[0] is " + str(m.boundaries[0]) + ", must be 0");
    for (size_t i = 1; i < m.boundaries.size(); ++i)
      if (m.boundaries[i] <= m.boundaries[i - 1])
        return fail(Errc::out_of_range, "mask.boundaries must be strictly ascending (index " + str(index_t(i)) + ")");
  }
  if (m.global_keys < 0) return fail(Errc::out_of_range, "mask.global_keys is " + str(m.global_keys));
  SINKATTN_TRY(check_bound("mask.block_size", m.block_size));
  if (!m.boundaries.empty()) SINKATTN_TRY(check_bound("mask.boundaries (last)", m.boundaries.back()));
  SINKATTN_TRY(check_bound("mask.global_keys", m.global_keys));
  return check_bound("mask.offset", m.offset);
}

inline Status check_mask(const Problem& p, const NeighborhoodMask& m) {
  if (m.rank < 1 || m.rank > 3) return fail(Errc::out_of_range, "mask.rank is " + str(m.rank) + " (1, 2 or 3)");
  index_t n = 1;
  for (int d = 0; d < m.rank; ++d) {
    std::string at = "[";  // appended, not "[" + str(d): GCC 12 -O2 -std=c++20 warns (-Wrestrict, PR 105329)
    at += str(d);
    at += "]";
    if (m.extent[d] <= 0) return fail(Errc::out_of_range, "mask.extent" + at + " is " + str(m.extent[d]));
    if (m.kernel[d] <= 0) return fail(Errc::out_of_range, "mask.kernel" + at + " is " + str(m.kernel[d]));
    if (m.dilation[d] <= 0) return fail(Errc::out_of_range, "mask.dilation" + at + " is " + str(m.dilation[d]));
    if (m.stride[d] <= 0) return fail(Errc::out_of_range, "mask.stride" + at + " is " + str(m.stride[d]));
    SINKATTN_TRY(check_bound("mask.extent" + at, m.extent[d]));
    SINKATTN_TRY(check_bound("mask.dilation" + at, m.dilation[d]));  // (kernel, stride <= extent below)
    if (m.kernel[d] > m.extent[d])
      return fail(Errc::out_of_range,
                  "mask.kernel" + at + " (" + str(m.kernel[d]) + ") exceeds extent (" + str(m.extent[d]) + ")");
    if (m.stride[d] > m.kernel[d])
      return fail(Errc::out_of_range,
                  "mask.stride" + at + " (" + str(m.stride[d]) + ") exceeds kernel (" + str(m.kernel[d]) + ")");
    if (!product_within(m.kernel[d], m.dilation[d], m.extent[d]))  // dilation * kernel > extent
      return fail(Errc::out_of_range, "mask.dilation" + at + " (" + str(m.dilation[d]) + ") * kernel (" +
                                          str(m.kernel[d]) + ") exceeds extent (" + str(m.extent[d]) + ")");
    if (!product_within(n, m.extent[d], kMaxIndex))
      return fail(Errc::out_of_range, "mask.extent: the grid holds more than 2^40 tokens (kMaxIndex)");
    n *= m.extent[d];
  }
  if (m.extra_keys < 0) return fail(Errc::out_of_range, "mask.extra_keys is " + str(m.extra_keys));
  SINKATTN_TRY(check_bound("mask.extra_keys", m.extra_keys));
  if (p.seq_q != n || p.seq_kv - n != m.extra_keys)  // (a difference: no overflow for huge extra_keys)
    return fail(Errc::shape_mismatch, "mask.extent: the grid holds " + str(n) +
                                          " tokens (+ mask.extra_keys = " + str(m.extra_keys) +
                                          ") but seq_q = " + str(p.seq_q) + " and seq_kv = " + str(p.seq_kv));
  return {};
}

inline Status check_mask(const Problem& p, const BlockSparseMask& m) {
  if (m.q_block <= 0) return fail(Errc::out_of_range, "mask.q_block is " + str(m.q_block) + " (must be > 0)");
  if (m.kv_block <= 0) return fail(Errc::out_of_range, "mask.kv_block is " + str(m.kv_block) + " (must be > 0)");
  SINKATTN_TRY(check_bound("mask.q_block", m.q_block));
  SINKATTN_TRY(check_bound("mask.kv_block", m.kv_block));
  const index_t nqb = (p.seq_q + m.q_block - 1) / m.q_block;
  const index_t nkb = (p.seq_kv + m.kv_block - 1) / m.kv_block;
  const index_t rows = p.batch * p.heads_q * nqb;
  if (rows == 0) return {};
  if (m.offsets == nullptr) return fail(Errc::null_data, "mask.offsets is null");
  if (m.offsets[0] != 0) return fail(Errc::out_of_range, "mask.offsets[0] is " + str(m.offsets[0]) + ", must be 0");
  for (index_t r = 0; r < rows; ++r)
    if (m.offsets[r + 1] < m.offsets[r])
      return fail(Errc::out_of_range, "mask.offsets must be non-decreasing (row " + str(r) + ")");
  if (m.offsets[rows] > 0 && m.indices == nullptr) return fail(Errc::null_data, "mask.indices is null");
  for (index_t e = 0; e < m.offsets[rows]; ++e)
    if (m.indices[e] < 0 || m.indices[e] >= nkb)
      return fail(Errc::out_of_range,
                  "mask.indices[" + str(e) + "] is " + str(m.indices[e]) + ", key blocks are [0, " + str(nkb) + ")");
  return {};
}

inline Status check_norm(const Problem&, const Options&, const Softmax&) { return {}; }

inline Status check_norm(const Problem& p, const Options&, const SinkSoftmax& n) {
  if (n.sinks == nullptr && p.heads_q > 0)
    return fail(Errc::null_data, "norm.sinks is null (one logit per query head expected)");
  return {};
}

inline Status check_norm(const Problem& p, const Options& o, const Sigmoid& n) {
  if (!(n.eps >= 0.f)) return fail(Errc::out_of_range, "norm.eps must be >= 0");
  (void)p;
  if (!o.lse.empty() || o.lse.data)
    return fail(Errc::invalid_argument, "lse: not defined for the sigmoid normalization");
  return {};
}

inline Status check_norm(const Problem& p, const Options&, const AffineScaled& n) {
  const std::array<index_t, 4> want{p.batch, p.seq_q, p.heads_q, 1};
  SINKATTN_TRY(check_view("norm.alpha", n.alpha, want, kBSHD));
  if (n.alpha.data == nullptr && p.batch * p.seq_q * p.heads_q > 0)
    return fail(Errc::null_data, "norm.alpha is required");
  if (n.beta.data != nullptr || !n.beta.empty()) SINKATTN_TRY(check_view("norm.beta", n.beta, want, kBSHD));
  return {};
}

inline Status check_norm(const Problem&, const Options& o, const Softpick& n) {
  if (!(n.eps >= 0.f)) return fail(Errc::out_of_range, "norm.eps must be >= 0");
  if (!o.lse.empty() || o.lse.data)
    return fail(Errc::invalid_argument, "lse: not defined for the softpick normalization");
  return {};
}

inline Status check_norm(const Problem& p, const Options&, const ScalableSoftmax& n) {
  if (n.s == nullptr && p.heads_q > 0)
    return fail(Errc::null_data, "norm.s is null (one SSMax scale per query head expected)");
  return {};
}

inline Status check_rope(const Problem& p, const RopeOnLoad& r) {
  if (r.table == nullptr) return {};
  const Rope& c = r.table->config();
  if (c.dim != p.dim_qk)
    return fail(Errc::shape_mismatch, "rope.table: built for dim " + str(c.dim) + ", dim_qk is " + str(p.dim_qk));
  if (c.rotary_dim < 0 || c.rot() % 2 != 0 || c.rot() > c.dim)
    return fail(Errc::out_of_range, "rope.table: rotary_dim " + str(c.rot()) + " must be even and <= dim");
  if (!(c.theta > 0.f) || !std::isfinite(c.theta)) return fail(Errc::out_of_range, "rope.table: theta must be > 0");
  if (r.query_position < -1) return fail(Errc::out_of_range, "rope.query_position is " + str(r.query_position));
  if (r.sink_keys < 0) return fail(Errc::out_of_range, "rope.sink_keys is " + str(r.sink_keys));
  if (r.sink_query_max < -1) return fail(Errc::out_of_range, "rope.sink_query_max is " + str(r.sink_query_max));
  SINKATTN_TRY(check_bound("rope.query_position", r.query_position));
  SINKATTN_TRY(check_bound("rope.sink_keys", r.sink_keys));
  SINKATTN_TRY(check_bound("rope.sink_query_max", r.sink_query_max));
  const index_t q0 = r.query_position < 0 ? p.seq_kv - p.seq_q : r.query_position;
  const index_t need = std::max(p.seq_kv, q0 + p.seq_q);
  if (need > r.table->positions())
    return fail(Errc::out_of_range, "rope.table: holds " + str(r.table->positions()) + " positions, this call needs " +
                                        str(need) + " (reserve more)");
  return {};
}

inline Status check_gate(const Problem&, const NoGate&) { return {}; }

inline Status check_gate(const Problem& p, const SigmoidGate& g) {
  const index_t last = g.g.shape[3];
  if (last != 1 && last != p.dim_v)
    return fail(Errc::shape_mismatch,
                "gate.g: shape[3] is " + str(last) + ", expected dim_v (" + str(p.dim_v) + ") or 1 (headwise)");
  return check_view("gate.g", g.g, {p.batch, p.seq_q, p.heads_q, last}, kBSHD);
}

// An ACT sink set: keys in [1, Skv), each once; beta finite and >= 0.
inline Status check_act(const Problem& p, const ActCalibration& act) {
  if (act.count < 0) return fail(Errc::negative_size, "act.count is " + str(act.count));
  if (act.count > 0 && act.keys == nullptr)
    return fail(Errc::null_data, "act.keys is null but act.count is " + str(act.count));
  if (!std::isfinite(act.beta) || act.beta < 0)
    return fail(Errc::out_of_range, "act.beta must be finite and >= 0, is " + std::to_string(act.beta));
  std::vector<unsigned char> seen(static_cast<size_t>(p.seq_kv), 0);
  for (index_t s = 0; s < act.count; ++s) {
    const index_t j = act.keys[s];
    if (j < 0 || j >= p.seq_kv)
      return fail(Errc::out_of_range,
                  "act.keys[" + str(s) + "] is " + str(j) + ", outside [0, seq_kv = " + str(p.seq_kv) + ")");
    if (j == 0) return fail(Errc::out_of_range, "act.keys[" + str(s) + "] is 0: the first token is not calibrated");
    if (seen[static_cast<size_t>(j)]) return fail(Errc::invalid_argument, "act.keys holds key " + str(j) + " twice");
    seen[static_cast<size_t>(j)] = 1;
  }
  return {};
}

// f(name, bytes) for each input the options hand the call besides Q, K and V (bias, gate,
// normalization tensors and per-head arrays): an output that overlaps one would overwrite
// what a later row reads.
template <class F>
Status for_each_option_input(const Problem& p, const Options& opt, F&& f) {
  const auto per_head = [&](const float* x) {  // one float per query head
    ByteRange r;
    if (x != nullptr && p.heads_q > 0) {
      r.lo = reinterpret_cast<const unsigned char*>(x);
      r.hi = r.lo + p.heads_q * static_cast<index_t>(sizeof(float));
    }
    return r;
  };
  SINKATTN_TRY(f("score.bias", byte_range(opt.score.bias)));
  SINKATTN_TRY(f("score.alibi_slopes", per_head(opt.score.alibi_slopes)));
  if (const auto* n = std::get_if<SinkSoftmax>(&opt.norm)) SINKATTN_TRY(f("norm.sinks", per_head(n->sinks)));
  if (const auto* n = std::get_if<Sigmoid>(&opt.norm)) SINKATTN_TRY(f("norm.head_bias", per_head(n->head_bias)));
  if (const auto* n = std::get_if<ScalableSoftmax>(&opt.norm)) SINKATTN_TRY(f("norm.s", per_head(n->s)));
  if (const auto* n = std::get_if<AffineScaled>(&opt.norm)) {
    SINKATTN_TRY(f("norm.alpha", byte_range(n->alpha)));
    SINKATTN_TRY(f("norm.beta", byte_range(n->beta)));
  }
  if (const auto* g = std::get_if<SigmoidGate>(&opt.gate)) SINKATTN_TRY(f("gate.g", byte_range(g->g)));
  return {};
}

// The options' own checks (scores, mask, normalization, gate, RoPE) against the problem.
inline Status check_options(const Problem& p, const Options& opt) {
  const ScoreOptions& s = opt.score;
  if (s.scale && !std::isfinite(*s.scale)) return fail(Errc::out_of_range, "score.scale is not finite");
  if (!(s.softcap >= 0.f) || !std::isfinite(s.softcap))
    return fail(Errc::out_of_range, "score.softcap must be finite and >= 0");
  if (s.bias.data != nullptr || !s.bias.empty())
    SINKATTN_TRY(check_view("score.bias", s.bias, {p.batch, p.heads_q, p.seq_q, p.seq_kv}, kBHSS));
  SINKATTN_TRY(std::visit([&](const auto& m) { return check_mask(p, m); }, opt.mask));
  SINKATTN_TRY(std::visit([&](const auto& n) { return check_norm(p, opt, n); }, opt.norm));
  SINKATTN_TRY(std::visit([&](const auto& g) { return check_gate(p, g); }, opt.gate));
  return check_rope(p, opt.rope);
}

// K/V given as segments[0, count) (core/kv_segments.hpp): each segment's K as [B, n, Hkv, Dqk]
// and, with_v, its V as [B, n, Hkv, Dv]; together p.seq_kv rows. Fills starts[0 .. count] with
// each segment's first key (the caller sizes it). no_alias(name, view) checks one of the
// segments' views against the call's outputs. count and segments themselves are checked first.
// A view of the shape [B, Skv, Hkv, dim] over one float with zero strides: it aliases nothing.
// The segment entry points hand it to validate() and make_args() in place of K or V, whose
// segments check_segments has checked.
inline TensorView<const float> stand_in_keys(const Problem& p, index_t dim) {
  static const float one_float = 0.f;
  return TensorView<const float>(&one_float, {p.batch, p.seq_kv, p.heads_kv, dim}, {0, 0, 0, 0});
}

template <class NoAlias>
Status check_segments(const Problem& p, const KvSegment* segments, index_t count, bool with_v, index_t* starts,
                      NoAlias&& no_alias) {
  if (count < 0) return fail(Errc::negative_size, "segments: count is " + str(count));
  if (count > 0 && segments == nullptr) return fail(Errc::null_data, "segments: null with count " + str(count));
  starts[0] = 0;
  for (index_t s = 0; s < count; ++s) {
    const std::string name = "segments[" + str(s) + "]";
    const KvSegment& sg = segments[s];
    const index_t n = sg.k.shape[1];
    SINKATTN_TRY(check_view((name + ".k").c_str(), sg.k, {p.batch, n, p.heads_kv, p.dim_qk}, kBSHD));
    SINKATTN_TRY(no_alias((name + ".k").c_str(), sg.k));
    if (with_v) {
      SINKATTN_TRY(check_view((name + ".v").c_str(), sg.v, {p.batch, n, p.heads_kv, p.dim_v}, kBSHD));
      SINKATTN_TRY(no_alias((name + ".v").c_str(), sg.v));
    }
    if (n > p.seq_kv - starts[s])  // (before the sum, which could wrap around)
      return fail(Errc::shape_mismatch,
                  "segments: hold more than problem.seq_kv (" + str(p.seq_kv) + ") rows, " + name + " included");
    starts[s + 1] = starts[s] + n;
  }
  if (starts[count] != p.seq_kv)
    return fail(Errc::shape_mismatch,
                "segments: hold " + str(starts[count]) + " rows in total, problem.seq_kv is " + str(p.seq_kv));
  return {};
}

}  // namespace detail

// Validates a whole call. The kernels and the reference call this first; engines can call it
// themselves to validate once and reuse the arguments.
inline Status validate(const Problem& p, const TensorView<const float>& q, const TensorView<const float>& k,
                       const TensorView<const float>& v, const TensorView<float>& o, const Options& opt = {}) {
  using namespace detail;
  SINKATTN_TRY(check_problem(p));
  SINKATTN_TRY(check_view("q", q, {p.batch, p.seq_q, p.heads_q, p.dim_qk}, kBSHD));
  SINKATTN_TRY(check_view("k", k, {p.batch, p.seq_kv, p.heads_kv, p.dim_qk}, kBSHD));
  SINKATTN_TRY(check_view("v", v, {p.batch, p.seq_kv, p.heads_kv, p.dim_v}, kBSHD));
  SINKATTN_TRY(check_view("o", o, {p.batch, p.seq_q, p.heads_q, p.dim_v}, kBSHD));
  SINKATTN_TRY(check_writable("o", o));
  SINKATTN_TRY(check_no_alias("o", o, "q", q));
  SINKATTN_TRY(check_no_alias("o", o, "k", k));
  SINKATTN_TRY(check_no_alias("o", o, "v", v));

  const bool want_lse = opt.lse.data != nullptr || !opt.lse.empty();
  if (want_lse) {
    SINKATTN_TRY(check_view("lse", opt.lse, {p.batch, p.heads_q, p.seq_q, 1}, kBHS1));
    SINKATTN_TRY(check_writable("lse", opt.lse));
    SINKATTN_TRY(check_no_alias("lse", opt.lse, "o", o));
    SINKATTN_TRY(check_no_alias("lse", opt.lse, "q", q));
    SINKATTN_TRY(check_no_alias("lse", opt.lse, "k", k));
    SINKATTN_TRY(check_no_alias("lse", opt.lse, "v", v));
  }

  SINKATTN_TRY(check_options(p, opt));
  return for_each_option_input(p, opt, [&](const char* name, ByteRange in) -> Status {
    if (overlaps(byte_range(o), in)) return fail(Errc::aliasing, std::string("o overlaps input ") + name);
    if (want_lse && overlaps(byte_range(opt.lse), in))
      return fail(Errc::aliasing, std::string("lse overlaps input ") + name);
    return {};
  });
}

}  // namespace sinkattn
