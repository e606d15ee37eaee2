#pragma once
// K/V cut into segments (core/kv_segments.hpp) for the tests of the calls that take them.

#include <vector>

#include "harness.hpp"

namespace sinkattn::test {

// K/V of `d` cut at `cuts` (ascending, inside [0, Skv]) into segments, each copied into its own
// buffer in the layout given for it (cycled), so segments differ in base and strides.
struct Segmented {
  std::vector<std::vector<float>> kbuf, vbuf;
  std::vector<KvSegment> seg;
};

inline Segmented split(const test::Data& d, const std::vector<index_t>& cuts, const std::vector<Layout>& layouts) {
  const Problem& p = d.p;
  Segmented s;
  std::vector<index_t> at = {0};
  at.insert(at.end(), cuts.begin(), cuts.end());
  at.push_back(p.seq_kv);
  const std::size_t n = at.size() - 1;
  s.kbuf.resize(n);
  s.vbuf.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const index_t rows = at[i + 1] - at[i];
    const Layout l = layouts[i % layouts.size()];
    s.kbuf[i].resize(static_cast<std::size_t>(p.batch * rows * p.heads_kv * p.dim_qk) + 1);
    s.vbuf[i].resize(static_cast<std::size_t>(p.batch * rows * p.heads_kv * p.dim_v) + 1);
    auto k = test::make_view<float>(s.kbuf[i].data(), l, p.batch, rows, p.heads_kv, p.dim_qk);
    auto v = test::make_view<float>(s.vbuf[i].data(), l, p.batch, rows, p.heads_kv, p.dim_v);
    for (index_t b = 0; b < p.batch; ++b)
      for (index_t r = 0; r < rows; ++r)
        for (index_t g = 0; g < p.heads_kv; ++g) {
          for (index_t x = 0; x < p.dim_qk; ++x) k(b, r, g, x) = d.k(b, at[i] + r, g, x);
          for (index_t x = 0; x < p.dim_v; ++x) v(b, r, g, x) = d.v(b, at[i] + r, g, x);
        }
    s.seg.push_back({k, v});
  }
  return s;
}

}  // namespace sinkattn::test
