#pragma once
// Rotary position embedding (RoPE, Su et al.): the pair (x_a, x_b) of a row at position p is
// rotated by the angle p * theta^(-2i / rotary_dim), i the pair's index:
//
//   x_a' = x_a cos - x_b sin,   x_b' = x_b cos + x_a sin
//
// Pairing: interleaved (x_{2i}, x_{2i+1}; GPT-J, Meta's original Llama) or half-split "NeoX"
// (x_i, x_{i + rotary_dim/2}; HF Llama, Qwen, gpt-oss). Components past rotary_dim are not
// rotated (partial rotary, e.g. GPT-NeoX, Phi).
//
// RopeTable holds cos/sin per position, computed once in double: the kernels rotate keys
// while they load them (keys cached before RoPE, StreamingLLM's position shift,
// Options::rope), so a table lookup per row is all a step costs. apply_rope() rotates a
// view in place, for engines that cache keys after RoPE.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "sinkattn/core/memory.hpp"
#include "sinkattn/core/status.hpp"
#include "sinkattn/core/tensor_view.hpp"
#include "sinkattn/core/types.hpp"

namespace sinkattn {

enum class RopePairing { interleaved, neox };

struct Rope {
  float theta = 10000.f;   // the base
  index_t dim = 0;         // head dim the table serves (Dqk)
  index_t rotary_dim = 0;  // rotated components, even, <= dim; 0 = all of dim
  RopePairing pairing = RopePairing::neox;
  index_t rot() const { return rotary_dim > 0 ? rotary_dim : dim; }
};

// cos/sin of positions [0, positions): row p = [cos_0..cos_{r/2-1}, sin_0..sin_{r/2-1}].
class RopeTable {
 public:
  RopeTable() = default;
  explicit RopeTable(const Rope& cfg, index_t positions = 0) : cfg_(cfg) { reserve(positions); }
  RopeTable(const RopeTable& o) : cfg_(o.cfg_) {
    if (o.cs_ == nullptr) {
      positions_ = o.positions_;
      return;
    }
    const index_t floats = o.positions_ * 2 * (cfg_.rot() / 2);
    cs_.reset(detail::alloc_floats(static_cast<std::size_t>(floats)));
    if (cs_ == nullptr) check(Status(Errc::out_of_memory, "RopeTable: no memory for a copy"));
    std::copy(o.cs_.get(), o.cs_.get() + floats, cs_.get());
    positions_ = capacity_ = o.positions_;
  }
  // A moved-from table is empty (no rows, no capacity), not rows without their storage.
  RopeTable(RopeTable&& o) noexcept : cfg_(o.cfg_) {
    std::swap(positions_, o.positions_);
    std::swap(capacity_, o.capacity_);
    std::swap(cs_, o.cs_);
  }
  RopeTable& operator=(RopeTable o) noexcept {
    std::swap(cfg_, o.cfg_);
    std::swap(positions_, o.positions_);
    std::swap(capacity_, o.capacity_);
    std::swap(cs_, o.cs_);
    return *this;
  }

  // Makes positions [0, n) available (grows only; the existing rows are kept). false: no
  // memory for them, the table unchanged (never throws).
  bool try_reserve(index_t n) noexcept {
    const index_t half = cfg_.rot() / 2;
    if (n <= positions_ || half <= 0) {
      if (half <= 0) positions_ = std::max(positions_, n);
      return true;
    }
    if (n > capacity_) {
      // Geometric growth: a cache reserving a few more positions per step copies O(n) rows
      // in all, not O(n) per step.
      const auto most = static_cast<index_t>(std::numeric_limits<std::size_t>::max() / sizeof(float) / 2 /
                                             static_cast<std::size_t>(half));
      if (n > most) return false;
      const index_t cap = std::max(n, std::min(most, 2 * capacity_));
      detail::FloatBuffer grown(detail::alloc_floats(static_cast<std::size_t>(cap * 2 * half)));
      if (grown == nullptr) return false;
      if (cs_ != nullptr) std::copy(cs_.get(), cs_.get() + positions_ * 2 * half, grown.get());
      cs_ = std::move(grown);
      capacity_ = cap;
    }
    for (index_t p = positions_; p < n; ++p) {
      float* row = cs_.get() + p * 2 * half;
      for (index_t i = 0; i < half; ++i) {
        const double inv_freq = std::pow(static_cast<double>(cfg_.theta), -2.0 * static_cast<double>(i) / (2.0 * half));
        const double a = static_cast<double>(p) * inv_freq;
        row[i] = static_cast<float>(std::cos(a));
        row[half + i] = static_cast<float>(std::sin(a));
      }
    }
    positions_ = n;
    return true;
  }
  // The same; no memory is an error (check(): an exception, or an abort without them).
  void reserve(index_t n) {
    if (!try_reserve(n))
      check(Status(Errc::out_of_memory, "RopeTable: no memory for " + std::to_string(n) + " positions"));
  }

  const Rope& config() const { return cfg_; }
  index_t positions() const { return positions_; }
  // The cos/sin row of position p (p < positions()); null when nothing is rotated.
  const float* row(index_t p) const { return cs_ == nullptr ? nullptr : cs_.get() + p * cfg_.rot(); }

 private:
  Rope cfg_;
  index_t positions_ = 0;
  index_t capacity_ = 0;    // rows allocated
  detail::FloatBuffer cs_;  // (capacity_, rot): rows past positions_ unset
};

namespace detail {

// rope_row for contiguous rows that do not overlap: loops the compiler vectorizes (NeoX: plain
// vectors; interleaved: even/odd lanes), which is what keeps rotate-on-load off the critical
// path of a memory-bound decode step.
inline void rope_row_contiguous(float* __restrict dst, const float* __restrict src, index_t dim, const Rope& cfg,
                                const float* __restrict cs, float scale) {
  const index_t half = cfg.rot() / 2;
  const float* __restrict c = cs;
  const float* __restrict s = cs + half;
  if (cfg.pairing == RopePairing::neox) {
    for (index_t i = 0; i < half; ++i) {
      const float a = src[i], b = src[i + half];
      dst[i] = (a * c[i] - b * s[i]) * scale;
      dst[i + half] = (b * c[i] + a * s[i]) * scale;
    }
  } else {
    for (index_t i = 0; i < half; ++i) {
      const float a = src[2 * i], b = src[2 * i + 1];
      dst[2 * i] = (a * c[i] - b * s[i]) * scale;
      dst[2 * i + 1] = (b * c[i] + a * s[i]) * scale;
    }
  }
  for (index_t x = 2 * half; x < dim; ++x) dst[x] = src[x] * scale;
}

// dst[x] = rotated src (element x at src[x * stride_d]) at the position whose table row is cs.
// dst may equal src when stride_d == 1 (each pair is read before it is written).
inline void rope_row(float* dst, const float* src, index_t stride_d, index_t dim, const Rope& cfg, const float* cs,
                     float scale = 1.f) {
  if (stride_d == 1 && (dst + dim <= src || src + dim <= dst)) {
    rope_row_contiguous(dst, src, dim, cfg, cs, scale);
    return;
  }
  const index_t half = cfg.rot() / 2;
  const float* c = cs;
  const float* s = cs + half;
  if (cfg.pairing == RopePairing::neox) {
    for (index_t i = 0; i < half; ++i) {
      const float a = src[i * stride_d], b = src[(i + half) * stride_d];
      dst[i] = (a * c[i] - b * s[i]) * scale;
      dst[i + half] = (b * c[i] + a * s[i]) * scale;
    }
  } else {
    for (index_t i = 0; i < half; ++i) {
      const float a = src[2 * i * stride_d], b = src[(2 * i + 1) * stride_d];
      dst[2 * i] = (a * c[i] - b * s[i]) * scale;
      dst[2 * i + 1] = (b * c[i] + a * s[i]) * scale;
    }
  }
  for (index_t x = 2 * half; x < dim; ++x) dst[x] = src[x * stride_d] * scale;
}

// dst (n, ld_dst) = rows of src (row r at src + r * ld_src) rotated at positions pos0 + r,
// columns [dim, dim_pad) zero. The tile-loading form of rope_row.
inline void rope_rows(float* dst, index_t ld_dst, const float* src, index_t ld_src, index_t stride_d, index_t n,
                      index_t dim, index_t dim_pad, const RopeTable& t, index_t pos0, float scale = 1.f) {
  const Rope& cfg = t.config();
  const index_t half = cfg.rot() / 2;
  if (stride_d == 1 && scale == 1.f && half % 16 == 0 && n > 1) {
    // Chunks of 16 pairs outermost, rows inside: the rows are read interleaved, like the
    // micro-kernels read them, so a block of rows coming from memory has many misses in
    // flight (row after row would leave one row's lines in flight at a time).
    for (index_t i0 = 0; i0 < half; i0 += 16)
      for (index_t r = 0; r < n; ++r) {
        const float* __restrict x = src + r * ld_src;
        float* __restrict y = dst + r * ld_dst;
        const float* __restrict c = t.row(pos0 + r);
        const float* __restrict sn = c + half;
        if (cfg.pairing == RopePairing::neox) {
          for (index_t i = i0; i < i0 + 16; ++i) {
            const float a = x[i], b = x[i + half];
            y[i] = a * c[i] - b * sn[i];
            y[i + half] = b * c[i] + a * sn[i];
          }
        } else {
          for (index_t i = i0; i < i0 + 16; ++i) {
            const float a = x[2 * i], b = x[2 * i + 1];
            y[2 * i] = a * c[i] - b * sn[i];
            y[2 * i + 1] = b * c[i] + a * sn[i];
          }
        }
      }
    for (index_t r = 0; r < n; ++r) {
      float* y = dst + r * ld_dst;
      const float* x = src + r * ld_src;
      for (index_t d = 2 * half; d < dim; ++d) y[d] = x[d];
      for (index_t d = dim; d < dim_pad; ++d) y[d] = 0.f;
    }
    return;
  }
  for (index_t r = 0; r < n; ++r) {
    float* d = dst + r * ld_dst;
    rope_row(d, src + r * ld_src, stride_d, dim, t.config(), t.row(pos0 + r), scale);
    for (index_t x = dim; x < dim_pad; ++x) d[x] = 0.f;
  }
}

}  // namespace detail

// Rotates x ([B, S, H, D], D == table.config().dim) in place, token s at position pos0 + s:
// for engines that cache keys after RoPE (and for queries). The table must hold
// positions [pos0, pos0 + S).
inline Status apply_rope(const TensorView<float>& x, index_t pos0, const RopeTable& table) {
  if (x.shape[3] != table.config().dim)
    return Status(Errc::shape_mismatch, "x: shape[3] (dim) is " + std::to_string(x.shape[3]) +
                                            ", the table is for dim " + std::to_string(table.config().dim));
  if (pos0 < 0) return Status(Errc::out_of_range, "pos0 is " + std::to_string(pos0));
  if (x.empty()) return {};
  if (x.data == nullptr) return Status(Errc::null_data, "x: data is null");
  if (pos0 + x.shape[1] > table.positions())
    return Status(Errc::out_of_range, "table: holds " + std::to_string(table.positions()) + " positions, " +
                                          std::to_string(pos0 + x.shape[1]) + " needed");
  std::vector<float> tmp(static_cast<std::size_t>(x.shape[3]));
  for (index_t b = 0; b < x.shape[0]; ++b)
    for (index_t s = 0; s < x.shape[1]; ++s)
      for (index_t h = 0; h < x.shape[2]; ++h) {
        float* row = x.ptr(b, s, h);
        detail::rope_row(tmp.data(), row, x.stride[3], x.shape[3], table.config(), table.row(pos0 + s));
        for (index_t d = 0; d < x.shape[3]; ++d) row[d * x.stride[3]] = tmp[static_cast<std::size_t>(d)];
      }
  return {};
}

}  // namespace sinkattn
