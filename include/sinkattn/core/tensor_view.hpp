#pragma once
// A rank-4 strided view over caller memory. No ownership, no copies.
//
// The logical order of the four dimensions is fixed per argument (Q/K/V/O: [B, S, H, D];
// LSE: [B, H, S, 1]); the memory layout is whatever the strides say. Strides are in
// elements and may be zero (broadcast, e.g. a bias shared by all heads).

#include <array>
#include <cstddef>
#include <type_traits>

#include "sinkattn/core/types.hpp"

namespace sinkattn {

template <class T>
struct TensorView {
  using element_type = T;
  using value_type = std::remove_cv_t<T>;

  T* data = nullptr;
  std::array<index_t, 4> shape{0, 0, 0, 0};
  std::array<index_t, 4> stride{0, 0, 0, 0};

  TensorView() = default;
  TensorView(T* d, std::array<index_t, 4> sh, std::array<index_t, 4> st) : data(d), shape(sh), stride(st) {}

  // A view of non-const data converts to a view of const data.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  TensorView(const TensorView<U>& o) : data(o.data), shape(o.shape), stride(o.stride) {}

  // Q/K/V/O stored as [B, S, H, D] (token-major; most engines and FlashAttention).
  static TensorView bshd(T* d, index_t b, index_t s, index_t h, index_t dim) {
    return {d, {b, s, h, dim}, {s * h * dim, h * dim, dim, 1}};
  }
  // Q/K/V/O stored as [B, H, S, D] (head-major; PyTorch SDPA). Logical order stays [B, S, H, D].
  static TensorView bhsd(T* d, index_t b, index_t s, index_t h, index_t dim) {
    return {d, {b, s, h, dim}, {h * s * dim, dim, s * dim, 1}};
  }
  // LSE stored as [B, H, S]; logical [B, H, S, 1].
  static TensorView lse(T* d, index_t b, index_t h, index_t s) { return {d, {b, h, s, 1}, {h * s, s, 1, 1}}; }

  bool empty() const { return shape[0] == 0 || shape[1] == 0 || shape[2] == 0 || shape[3] == 0; }
  index_t size() const { return shape[0] * shape[1] * shape[2] * shape[3]; }

  index_t offset(index_t i0, index_t i1, index_t i2, index_t i3) const {
    return i0 * stride[0] + i1 * stride[1] + i2 * stride[2] + i3 * stride[3];
  }
  T* ptr(index_t i0, index_t i1, index_t i2, index_t i3 = 0) const { return data + offset(i0, i1, i2, i3); }
  T& operator()(index_t i0, index_t i1, index_t i2, index_t i3) const { return data[offset(i0, i1, i2, i3)]; }
};

namespace detail {

// The byte range [lo, hi) a view can touch; empty views touch nothing.
struct ByteRange {
  const unsigned char* lo = nullptr;
  const unsigned char* hi = nullptr;
  bool empty() const { return lo == hi; }
};

template <class T>
ByteRange byte_range(const TensorView<T>& v) {
  if (v.data == nullptr || v.empty()) return {};
  index_t lo = 0, hi = 0;
  for (int d = 0; d < 4; ++d) {
    const index_t reach = (v.shape[d] - 1) * v.stride[d];
    (reach < 0 ? lo : hi) += reach;
  }
  const auto* base = reinterpret_cast<const unsigned char*>(v.data);
  return {base + lo * static_cast<index_t>(sizeof(T)), base + (hi + 1) * static_cast<index_t>(sizeof(T))};
}

inline bool overlaps(ByteRange a, ByteRange b) { return !a.empty() && !b.empty() && a.lo < b.hi && b.lo < a.hi; }

}  // namespace detail
}  // namespace sinkattn
