#pragma once
// Shared by the neighborhood tests: a NeighborhoodMask's token count and a one-line
// description for failure messages.

#include <sstream>
#include <string>

#include "sinkattn/core/options.hpp"

namespace sinkattn::test {

inline index_t tokens(const NeighborhoodMask& m) {
  index_t n = 1;
  for (int d = 0; d < m.rank; ++d) n *= m.extent[d];
  return n;
}

inline std::string describe(const NeighborhoodMask& m) {
  std::ostringstream s;
  s << "rank=" << m.rank;
  if (m.extra_keys != 0) s << " extra=" << m.extra_keys;
  for (int d = 0; d < m.rank; ++d)
    s << " [L=" << m.extent[d] << " k=" << m.kernel[d] << " d=" << m.dilation[d] << " s=" << m.stride[d]
      << (m.causal[d] ? " causal" : "") << "]";
  return s.str();
}

}  // namespace sinkattn::test
