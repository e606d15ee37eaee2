#pragma once
// Output policies: the epilogue that writes one finished output row into the caller's O.

#include "sinkattn/kernel/args.hpp"
#include "sinkattn/tile/ops.hpp"

namespace sinkattn::policy {

struct NoGate {
  // O[b, i, h, :] = acc * s
  static void store(const detail::KernelArgs& a, index_t b, index_t i, index_t h, const float* acc, float s) {
    tile::store_scaled(a.o.ptr(b, i, h), a.o.stride[3], acc, a.p.dim_v, s);
  }
};

}  // namespace sinkattn::policy
