// Uses the optional Eigen adapter of an installed sinkattn.
#include <sinkattn/eigen.hpp>
#include <sinkattn/sinkattn.hpp>

#include <cstdio>

int main() {
  using M = sinkattn::eigen::RowMatrixXf;
  M q = M::Random(4, 16), k = M::Random(6, 16), v = M::Random(6, 8), o(4, 8);
  namespace se = sinkattn::eigen;
  const sinkattn::Status s =
      sinkattn::validate(se::problem_for(q, k, v), se::view(q), se::view(k), se::view(v), se::mutable_view(o));
  std::printf("eigen adapter: validate: %s %s\n", sinkattn::to_string(s.code()), s.message().c_str());
  return s.ok() ? 0 : 1;
}
