// The fused sinkattn kernels on every shape of the table (BM_sinkattn/<shape>), beside the
// Eigen baseline. Compiled in as soon as the kernel entry point exists.
//   BM_sinkattn_rope/<S4096 prefill shape>  the same call with RoPE on load (NeoX, every dim,
//                                          theta 10^4): Q and K rotated inside the call
#if __has_include("sinkattn/kernel/forward.hpp")
#include <memory>

#include "harness.hpp"
#include "sinkattn/kernel/forward.hpp"

namespace sinkattn_bench {

SINKATTN_BENCH_CASES(sinkattn_cases) {
  for (const Shape& s : shapes())
    register_case("sinkattn", s, [](const Shape& s, Data& d) {
      sinkattn::check(sinkattn::forward(s.problem, d.q, d.k, d.v, d.o, s.options()));  // single thread (serial)
    });
  for (const Shape& s : shapes())
    if (s.kind == Kind::prefill && s.problem.seq_q == 4096) {
      auto table = std::make_shared<sinkattn::RopeTable>(
          sinkattn::Rope{10000.f, s.problem.dim_qk, 0, sinkattn::RopePairing::neox}, s.problem.seq_kv);
      register_case("sinkattn_rope", s, [table](const Shape& s, Data& d) {
        sinkattn::Options o = s.options();
        o.rope.table = table.get();
        sinkattn::check(sinkattn::forward(s.problem, d.q, d.k, d.v, d.o, o));
      });
    }
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
