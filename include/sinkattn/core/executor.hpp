#pragma once
// The threading hook. The kernels cut a call into independent tasks whose results do not
// depend on which thread runs them, so the output is bit-identical for any executor. An
// engine passes its own pool through Executor::custom; OpenMP is used only when the
// consumer compiles with it.

#include <functional>
#include <utility>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "sinkattn/core/types.hpp"

namespace sinkattn {

class Executor {
 public:
  // Runs fn(task) for every task in [0, n), in any order, possibly concurrently; returns
  // when all are done.
  using ParallelFor = std::function<void(index_t n, const std::function<void(index_t task)>& fn)>;

  // One thread, the caller's.
  static Executor serial() { return Executor(1, {}); }

  // OpenMP with `threads` threads (0 = omp_get_max_threads()). Serial when the consumer does
  // not compile with OpenMP.
  static Executor openmp(int threads = 0) {
#if defined(_OPENMP)
    const int t = threads > 0 ? threads : omp_get_max_threads();
    return Executor(t, [t](index_t n, const std::function<void(index_t)>& fn) {
#pragma omp parallel for num_threads(t) schedule(dynamic, 1)
      for (index_t i = 0; i < n; ++i) fn(i);
    });
#else
    (void)threads;
    return serial();
#endif
  }

  // The engine's own pool. `concurrency` is how many tasks it runs at once; split-KV decode
  // uses it to choose how many splits to make (so results are deterministic per concurrency).
  static Executor custom(int concurrency, ParallelFor pf) { return Executor(concurrency, std::move(pf)); }

  int concurrency() const { return concurrency_; }

  template <class Fn>
  void run(index_t n, Fn&& fn) const {
    if (n <= 0) return;
    if (!pf_ || concurrency_ <= 1 || n == 1) {
      for (index_t i = 0; i < n; ++i) fn(i);
      return;
    }
    pf_(n, std::function<void(index_t)>(std::forward<Fn>(fn)));
  }

 private:
  Executor(int c, ParallelFor pf) : concurrency_(c < 1 ? 1 : c), pf_(std::move(pf)) {}
  int concurrency_ = 1;
  ParallelFor pf_;
};

}  // namespace sinkattn
