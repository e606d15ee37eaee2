#pragma once
// A two-thread executor made of std::threads, so the thread tests do not depend on OpenMP
// and exercise the engine hook (Executor::custom) at the same time.

#include <atomic>
#include <thread>
#include <vector>

#include "sinkattn/core/executor.hpp"

namespace sinkattn::test {

inline Executor thread_executor(int threads) {
  return Executor::custom(threads, [threads](index_t n, const std::function<void(index_t)>& fn) {
    std::atomic<index_t> next{0};
    auto worker = [&] {
      for (index_t t = next++; t < n; t = next++) fn(t);
    };
    std::vector<std::thread> pool;
    for (int i = 1; i < threads; ++i) pool.emplace_back(worker);
    worker();
    for (auto& th : pool) th.join();
  });
}

}  // namespace sinkattn::test
