#pragma once
// The test harness shared by every kernel test: deterministic inputs in either layout, NaN-
// filled outputs (so unwritten elements are caught), and the FlashAttention tolerance rule
//   |ours - ref64| <= 2 * |naive fp32 - ref64| + atol   for every element,
// with ref64 = reference::attention<double> and naive fp32 = reference::attention<float> on the
// same inputs and options. A test then says "as accurate as straightforward fp32".

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "sinkattn/core/options.hpp"
#include "sinkattn/core/rope.hpp"
#include "sinkattn/core/tensor_view.hpp"
#include "sinkattn/core/types.hpp"
#include "sinkattn/reference/attention.hpp"

namespace sinkattn {
namespace test {

enum class Layout { BSHD, BHSD };

inline const char* to_string(Layout l) { return l == Layout::BSHD ? "BSHD" : "BHSD"; }

// Sizes that straddle SIMD widths and tile sizes, and FlashAttention's (Sq, Skv) pairs.
inline const std::vector<index_t> kLengths = {1, 15, 16, 17, 63, 64, 65, 130};
inline const std::vector<std::pair<index_t, index_t>> kFlashPairs = {
    {1, 1}, {239, 1}, {799, 3}, {113, 203}, {1023, 1024}};

namespace detail {

// splitmix64: tiny, fast, and the same sequence on every platform and standard library
// (std::uniform_real_distribution is not).
inline std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The same view over a copy of its buffer (the view must point into old_base's buffer).
template <class T>
TensorView<T> rebase(const TensorView<T>& view, const float* old_base, float* new_base) {
  if (view.data == nullptr) return view;
  return {new_base + (view.data - old_base), view.shape, view.stride};
}

}  // namespace detail

// n values uniform in [lo, hi), deterministic in `seed`.
inline std::vector<float> random_vector(std::size_t n, std::uint64_t seed, float lo, float hi) {
  std::vector<float> out(n);
  std::uint64_t state = seed * 0x2545F4914F6CDD1Dull + 0x5851F42D4C957F2Dull;
  for (auto& x : out) {
    const double u = double(detail::splitmix64(state) >> 11) * 0x1.0p-53;  // [0, 1)
    x = static_cast<float>(lo + (double(hi) - double(lo)) * u);
  }
  return out;
}

// A Q/K/V-style view of `buf` with logical shape [b, s, h, d] in the given layout.
template <class T>
TensorView<T> make_view(T* buf, Layout layout, index_t b, index_t s, index_t h, index_t d) {
  return layout == Layout::BSHD ? TensorView<T>::bshd(buf, b, s, h, d) : TensorView<T>::bhsd(buf, b, s, h, d);
}

// Owns Q, K, V storage (seeded uniform random values in [-amp, amp]) in the given layout.
// Copies rebind the views to the copy's buffers.
struct Data {
  Problem p;
  Layout layout = Layout::BSHD;
  std::vector<float> qbuf, kbuf, vbuf;
  TensorView<const float> q, k, v;  // views into the buffers

  Data() = default;
  Data(Data&&) = default;  // moving a vector keeps its storage, so the views stay valid
  Data& operator=(Data&&) = default;
  Data(const Data& o) : p(o.p), layout(o.layout), qbuf(o.qbuf), kbuf(o.kbuf), vbuf(o.vbuf) { rebind(o); }
  Data& operator=(const Data& o) {
    if (this != &o) {
      p = o.p;
      layout = o.layout;
      qbuf = o.qbuf;
      kbuf = o.kbuf;
      vbuf = o.vbuf;
      rebind(o);
    }
    return *this;
  }

  // Mutable views of the same elements, for tests that plant special values (NaN, huge, ...).
  TensorView<float> mq() { return {qbuf.data() + (q.data - qbuf.data()), q.shape, q.stride}; }
  TensorView<float> mk() { return {kbuf.data() + (k.data - kbuf.data()), k.shape, k.stride}; }
  TensorView<float> mv() { return {vbuf.data() + (v.data - vbuf.data()), v.shape, v.stride}; }

 private:
  void rebind(const Data& o) {
    q = detail::rebase(o.q, o.qbuf.data(), qbuf.data());
    k = detail::rebase(o.k, o.kbuf.data(), kbuf.data());
    v = detail::rebase(o.v, o.vbuf.data(), vbuf.data());
  }
};

namespace detail {

// Random values generated in logical [b, s, h, d] order and stored in `layout`, so a seed gives
// the same logical tensor in every layout.
inline std::vector<float> random_in_layout(Layout layout, index_t b, index_t s, index_t h, index_t d,
                                           std::uint64_t seed, float amp, TensorView<const float>* view) {
  const auto logical = random_vector(static_cast<std::size_t>(b * s * h * d), seed, -amp, amp);
  std::vector<float> buf(logical.size());
  const auto dst = make_view<float>(buf.data(), layout, b, s, h, d);
  std::size_t n = 0;
  for (index_t i0 = 0; i0 < b; ++i0)
    for (index_t i1 = 0; i1 < s; ++i1)
      for (index_t i2 = 0; i2 < h; ++i2)
        for (index_t i3 = 0; i3 < d; ++i3) dst(i0, i1, i2, i3) = logical[n++];
  *view = make_view<const float>(buf.data(), layout, b, s, h, d);  // storage moves with the vector
  return buf;
}

}  // namespace detail

// Q, K, V uniform in [-amp, amp], deterministic in `seed`; the logical values do not depend on
// the layout (BSHD and BHSD data of one seed describe the same problem).
inline Data make_data(const Problem& p, Layout layout = Layout::BSHD, std::uint64_t seed = 1, float amp = 1.f) {
  Data d;
  d.p = p;
  d.layout = layout;
  d.qbuf = detail::random_in_layout(layout, p.batch, p.seq_q, p.heads_q, p.dim_qk, seed * 3 + 0, amp, &d.q);
  d.kbuf = detail::random_in_layout(layout, p.batch, p.seq_kv, p.heads_kv, p.dim_qk, seed * 3 + 1, amp, &d.k);
  d.vbuf = detail::random_in_layout(layout, p.batch, p.seq_kv, p.heads_kv, p.dim_v, seed * 3 + 2, amp, &d.v);
  return d;
}

// d with K and V re-laid as every other float of the head dim: a head-dim stride of 2, which
// the kernels cannot read in place (they read rows of unit stride). The copies live here.
struct StridedHeadDim {
  std::vector<float> k, v;
  Data data;
  explicit StridedHeadDim(const Data& d) : k(d.kbuf.size() * 2), v(d.vbuf.size() * 2), data(d) {
    for (std::size_t x = 0; x < d.kbuf.size(); ++x) k[2 * x] = d.kbuf[x], v[2 * x] = d.vbuf[x];
    const auto view = [](const std::vector<float>& buf, const TensorView<const float>& like) {
      return TensorView<const float>(buf.data(), like.shape,
                                     {2 * like.stride[0], 2 * like.stride[1], 2 * like.stride[2], 2});
    };
    data.k = view(k, d.k);
    data.v = view(v, d.v);
  }
  StridedHeadDim(const StridedHeadDim&) = delete;
  StridedHeadDim& operator=(const StridedHeadDim&) = delete;
};

// The same logical Q, K, V stored in another layout.
inline Data relayout(const Data& src, Layout layout) {
  const Problem& p = src.p;
  Data d;
  d.p = p;
  d.layout = layout;
  const auto copy = [layout](const TensorView<const float>& from, std::vector<float>& buf,
                             TensorView<const float>& to) {
    const auto& s = from.shape;
    buf.assign(static_cast<std::size_t>(from.size()), 0.f);
    const auto dst = make_view<float>(buf.data(), layout, s[0], s[1], s[2], s[3]);
    for (index_t a = 0; a < s[0]; ++a)
      for (index_t b = 0; b < s[1]; ++b)
        for (index_t c = 0; c < s[2]; ++c)
          for (index_t e = 0; e < s[3]; ++e) dst(a, b, c, e) = from(a, b, c, e);
    to = make_view<const float>(buf.data(), layout, s[0], s[1], s[2], s[3]);
  };
  copy(src.q, d.qbuf, d.q);
  copy(src.k, d.kbuf, d.k);
  copy(src.v, d.vbuf, d.v);
  return d;
}

// An output buffer + view for O [B, Sq, Hq, Dv] in a layout, and for LSE [B, Hq, Sq] (empty
// view when not requested). Both are filled with NaN so that unwritten elements are caught.
struct Out {
  std::vector<float> obuf, lsebuf;
  TensorView<float> o, lse;

  Out() = default;
  Out(Out&&) = default;
  Out& operator=(Out&&) = default;
  Out(const Out& x) : obuf(x.obuf), lsebuf(x.lsebuf) { rebind(x); }
  Out& operator=(const Out& x) {
    if (this != &x) {
      obuf = x.obuf;
      lsebuf = x.lsebuf;
      rebind(x);
    }
    return *this;
  }

 private:
  void rebind(const Out& x) {
    o = detail::rebase(x.o, x.obuf.data(), obuf.data());
    lse = detail::rebase(x.lse, x.lsebuf.data(), lsebuf.data());
  }
};

inline Out make_out(const Problem& p, Layout layout = Layout::BSHD, bool with_lse = false) {
  Out out;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  out.obuf.assign(static_cast<std::size_t>(p.batch * p.seq_q * p.heads_q * p.dim_v), nan);
  out.o = make_view<float>(out.obuf.data(), layout, p.batch, p.seq_q, p.heads_q, p.dim_v);
  if (with_lse) {
    out.lsebuf.assign(static_cast<std::size_t>(p.batch * p.heads_q * p.seq_q), nan);
    out.lse = TensorView<float>::lse(out.lsebuf.data(), p.batch, p.heads_q, p.seq_q);
  }
  return out;
}

// A contiguous row-major tensor of any logical 4-D shape (bias, gate, alpha, ...), filled with
// uniform values in [lo, hi). Copies rebind the view.
struct Tensor {
  std::vector<float> buf;
  TensorView<float> view;

  Tensor() = default;
  Tensor(Tensor&&) = default;
  Tensor& operator=(Tensor&&) = default;
  Tensor(const Tensor& x) : buf(x.buf), view(detail::rebase(x.view, x.buf.data(), buf.data())) {}
  Tensor& operator=(const Tensor& x) {
    if (this != &x) {
      buf = x.buf;
      view = detail::rebase(x.view, x.buf.data(), buf.data());
    }
    return *this;
  }

  TensorView<const float> cview() const { return view; }
  float& operator()(index_t a, index_t b, index_t c, index_t d) { return view(a, b, c, d); }
};

inline Tensor make_tensor(std::array<index_t, 4> shape, std::uint64_t seed, float lo, float hi) {
  Tensor t;
  t.buf = random_vector(static_cast<std::size_t>(shape[0] * shape[1] * shape[2] * shape[3]), seed, lo, hi);
  t.view = {t.buf.data(), shape, {shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3], 1}};
  return t;
}

// The reference's result for one call, in contiguous buffers: o as [B, Sq, Hq, Dv] (BSHD),
// lse as [B, Hq, Sq].
template <class Real>
struct RefResult {
  Status status;
  std::vector<Real> obuf, lsebuf;
  TensorView<Real> o, lse;
};

template <class Real>
RefResult<Real> run_reference(const Problem& p, TensorView<const float> q, TensorView<const float> k,
                              TensorView<const float> v, const Options& opt, bool with_lse) {
  RefResult<Real> r;
  r.obuf.assign(static_cast<std::size_t>(p.batch * p.seq_q * p.heads_q * p.dim_v),
                std::numeric_limits<Real>::quiet_NaN());
  r.o = TensorView<Real>::bshd(r.obuf.data(), p.batch, p.seq_q, p.heads_q, p.dim_v);
  if (with_lse) {
    r.lsebuf.assign(static_cast<std::size_t>(p.batch * p.heads_q * p.seq_q), std::numeric_limits<Real>::quiet_NaN());
    r.lse = TensorView<Real>::lse(r.lsebuf.data(), p.batch, p.heads_q, p.seq_q);
  }
  r.status = reference::attention<Real>(p, q, k, v, r.o, opt, r.lse);
  return r;
}

template <class Real>
RefResult<Real> run_reference(const Data& d, const Options& opt, bool with_lse = false) {
  return run_reference<Real>(d.p, d.q, d.k, d.v, opt, with_lse);
}

namespace detail {

// The rule for one element. Non-finite references must be matched exactly (NaN by NaN, -inf
// by -inf); a finite reference needs a finite answer within the bound.
inline bool within(double ours, double ref64, double ref32, double atol, double* bound) {
  *bound = 2.0 * std::abs(ref32 - ref64) + atol;
  if (std::isnan(ref64)) return std::isnan(ours);
  if (std::isinf(ref64)) return ours == ref64;
  if (!std::isfinite(ours)) return false;
  return std::abs(ours - ref64) <= *bound;
}

inline std::string fmt(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.9g", x);
  return b;
}

// Compares every element of `ours` against ref64/ref32 (same logical shape). `names` label the
// four indices in the failure message.
inline void compare(const char* what, const TensorView<const float>& ours, const TensorView<double>& r64,
                    const TensorView<float>& r32, double atol, const char* const names[4], std::ostringstream& msg,
                    bool& ok) {
  index_t bad = 0, total = 0;
  double max_err = 0;
  std::string first;
  const auto& s = ours.shape;
  for (index_t a = 0; a < s[0]; ++a)
    for (index_t b = 0; b < s[1]; ++b)
      for (index_t c = 0; c < s[2]; ++c)
        for (index_t e = 0; e < s[3]; ++e) {
          const double x = ours(a, b, c, e), y = r64(a, b, c, e), z = r32(a, b, c, e);
          double bound = 0;
          ++total;
          if (std::isfinite(x) && std::isfinite(y)) max_err = std::max(max_err, std::abs(x - y));
          if (within(x, y, z, atol, &bound)) continue;
          if (bad++ == 0) {
            std::ostringstream f;
            f << what << "[" << names[0] << "=" << a << ", " << names[1] << "=" << b << ", " << names[2] << "=" << c
              << ", " << names[3] << "=" << e << "]: ours=" << fmt(x) << " ref64=" << fmt(y) << " ref32=" << fmt(z)
              << " |ours-ref64|=" << fmt(std::abs(x - y)) << " bound=" << fmt(bound);
            first = f.str();
          }
        }
  if (bad > 0) {
    ok = false;
    msg << "\n  " << what << ": " << bad << " of " << total << " elements outside |ours - ref64| <= 2|ref32 - ref64| + "
        << fmt(atol) << "; first: " << first << "; max |ours - ref64| = " << fmt(max_err);
  }
}

}  // namespace detail

// Block-sparse lists in CSR form (BlockSparseMask::offsets / indices): for each of `rows` list
// rows r ((b * Hq + h) * n_q_blocks + qb), the key blocks kb < n_kv_blocks with keep(r, kb).
struct BlockLists {
  std::vector<index_t> offsets{0}, indices;
};
template <class Keep>
BlockLists block_lists(index_t rows, index_t n_kv_blocks, Keep&& keep) {
  BlockLists l;
  for (index_t r = 0; r < rows; ++r) {
    for (index_t kb = 0; kb < n_kv_blocks; ++kb)
      if (keep(r, kb)) l.indices.push_back(kb);
    l.offsets.push_back(static_cast<index_t>(l.indices.size()));
  }
  return l;
}

// One RoPE-on-load setting of a test: lengths, head dim, rotated dims (0: all), pairing, and
// RopeOnLoad's query position, sink keys and sink query cap (-1 / 0 / -1: the defaults).
struct RopeCase {
  index_t sq, skv, dim, rotary_dim;
  RopePairing pairing;
  index_t query_position, sink_keys, sink_query_max;
  // A table (theta 500) that covers every position the case reaches.
  RopeTable table() const { return RopeTable(Rope{500.f, dim, rotary_dim, pairing}, skv + sq + 8); }
  RopeOnLoad options(const RopeTable& t) const { return {&t, query_position, sink_keys, sink_query_max}; }
};

// Bit-identical buffers (thread-count determinism). An empty vector's data() may be null,
// which memcmp must not be given even for zero bytes.
inline bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// The tolerance rule on o, and on lse when `lse` is non-empty (the reference computes it for
// the comparison; opt.lse is not read). The failure message names the first bad element,
// ours, ref64, ref32, the bound, the number of bad elements, and the max error.
inline ::testing::AssertionResult matches_reference(const Problem& p, TensorView<const float> q,
                                                    TensorView<const float> k, TensorView<const float> v,
                                                    const Options& opt, TensorView<const float> o,
                                                    TensorView<const float> lse = {}, double atol = 1e-5) {
  const bool with_lse = lse.data != nullptr || !lse.empty();
  const auto r64 = run_reference<double>(p, q, k, v, opt, with_lse);
  if (!r64.status.ok())
    return ::testing::AssertionFailure() << "reference rejected the call: " << sinkattn::to_string(r64.status.code())
                                         << ": " << r64.status.message();
  const auto r32 = run_reference<float>(p, q, k, v, opt, with_lse);
  if (!r32.status.ok()) return ::testing::AssertionFailure() << "fp32 reference failed: " << r32.status.message();
  if (o.shape != r64.o.shape) return ::testing::AssertionFailure() << "ours.o has the wrong shape for the problem";
  if (with_lse && lse.shape != r64.lse.shape)
    return ::testing::AssertionFailure() << "ours.lse has the wrong shape for the problem";

  static const char* const kO[4] = {"b", "s", "h", "d"};
  static const char* const kL[4] = {"b", "h", "s", "_"};
  std::ostringstream msg;
  bool ok = true;
  detail::compare("o", o, r64.o, r32.o, atol, kO, msg, ok);
  if (with_lse) detail::compare("lse", lse, r64.lse, r32.lse, atol, kL, msg, ok);
  if (ok) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "mismatch against the fp64 reference (B=" << p.batch << " Hq=" << p.heads_q
                                       << " Hkv=" << p.heads_kv << " Sq=" << p.seq_q << " Skv=" << p.seq_kv
                                       << " Dqk=" << p.dim_qk << " Dv=" << p.dim_v << "):" << msg.str();
}

inline ::testing::AssertionResult matches_reference(const Data& d, const Options& opt, const Out& ours,
                                                    double atol = 1e-5) {
  return matches_reference(d.p, d.q, d.k, d.v, opt, ours.o, ours.lse, atol);
}

}  // namespace test
}  // namespace sinkattn
