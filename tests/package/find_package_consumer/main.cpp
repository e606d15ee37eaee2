// Uses an installed sinkattn: include the entry header, validate a small GQA call.
#include <sinkattn/sinkattn.hpp>

#include <cstdio>
#include <vector>

int main() {
  const sinkattn::Problem p{1, 4, 2, 3, 5, 8, 8};  // B, Hq, Hkv, Sq, Skv, Dqk, Dv
  std::vector<float> q(1 * 3 * 4 * 8), k(1 * 5 * 2 * 8), v(1 * 5 * 2 * 8), o(1 * 3 * 4 * 8);
  sinkattn::Options opt;
  opt.mask = sinkattn::CausalMask{};
  const sinkattn::Status s = sinkattn::validate(p, sinkattn::TensorView<const float>::bshd(q.data(), 1, 3, 4, 8),
                                                sinkattn::TensorView<const float>::bshd(k.data(), 1, 5, 2, 8),
                                                sinkattn::TensorView<const float>::bshd(v.data(), 1, 5, 2, 8),
                                                sinkattn::TensorView<float>::bshd(o.data(), 1, 3, 4, 8), opt);
  std::printf("sinkattn %d.%d.%d: validate: %s %s\n", SINKATTN_VERSION_MAJOR, SINKATTN_VERSION_MINOR,
              SINKATTN_VERSION_PATCH, sinkattn::to_string(s.code()), s.message().c_str());
  return s.ok() ? 0 : 1;
}
