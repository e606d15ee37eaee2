#pragma once
// One forward() call against the fp64 reference: the kernel writes O (BSHD) and, when asked,
// LSE into NaN-filled buffers, then harness.hpp's matches_reference applies the tolerance rule.

#include <gtest/gtest.h>

#include "harness.hpp"
#include "sinkattn/kernel/forward.hpp"

namespace sinkattn {
namespace test {

// forward(d, opt) on `ex`, O in BSHD; LSE is requested (and compared) when with_lse. A call
// that forward() rejects fails with its status message.
inline ::testing::AssertionResult run_and_compare(const Data& d, Options opt, const Executor& ex = Executor::serial(),
                                                  bool with_lse = true) {
  Out out = make_out(d.p, Layout::BSHD, with_lse);
  opt.lse = out.lse;
  const Status s = forward(d.p, d.q, d.k, d.v, out.o, opt, ex);
  if (!s.ok()) return ::testing::AssertionFailure() << "forward failed: " << s.message();
  return matches_reference(d, opt, out);
}

}  // namespace test
}  // namespace sinkattn
