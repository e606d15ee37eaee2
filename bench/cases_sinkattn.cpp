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
#if defined(_OPENMP)
  // Two threads (the machine's two cores) on the large shapes: the scaling target is >= 1.8x.
  for (const Shape& s : shapes())
    if (s.problem.seq_q >= 2048 || s.kind == Kind::decode)
      register_case("sinkattn_2t", s, [](const Shape& s, Data& d) {
        sinkattn::check(sinkattn::forward(s.problem, d.q, d.k, d.v, d.o, s.options(), sinkattn::Executor::openmp(2)));
      });
#endif
}

}  // namespace sinkattn_bench
#endif
