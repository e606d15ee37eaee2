// The fused sinkattn kernels on every shape of the table (BM_sinkattn/<shape>), beside the
// Eigen baseline. Compiled in as soon as the kernel entry point exists.
#if __has_include("sinkattn/kernel/forward.hpp")
#include "harness.hpp"
#include "sinkattn/kernel/forward.hpp"

namespace sinkattn_bench {

SINKATTN_BENCH_CASES(sinkattn_cases) {
  for (const Shape& s : shapes())
    register_case("sinkattn", s, [](const Shape& s, Data& d) {
      sinkattn::check(sinkattn::forward(s.problem, d.q, d.k, d.v, d.o, s.options()));  // single thread (serial)
    });
}

}  // namespace sinkattn_bench
#endif
