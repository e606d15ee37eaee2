#pragma once
// Sink policies: an extra logit in the softmax denominator, applied once per row at the end
// (after any split-KV merge), so it is counted exactly once.

#include <limits>

#include "sinkattn/kernel/args.hpp"

namespace sinkattn::policy {

struct NoSink {
  static float logit2(const ::sinkattn::detail::KernelArgs&, index_t) {
    return -std::numeric_limits<float>::infinity();
  }
};

// gpt-oss: one raw (unscaled) logit per query head.
struct LearnedSinkLogit {
  static float logit2(const ::sinkattn::detail::KernelArgs& a, index_t h) {
    return a.sink_logits[h] * ::sinkattn::detail::kLog2e;
  }
};

}  // namespace sinkattn::policy
