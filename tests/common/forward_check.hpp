#pragma once
// One forward() call against the fp64 reference: the kernel writes O (BSHD) and, when asked,
// LSE into NaN-filled buffers, then harness.hpp's matches_reference applies the tolerance rule.

#include <gtest/gtest.h>

#include "harness.hpp"
#include "sinkattn/kernel/forward.hpp"
#include "threads.hpp"

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

// forward(d, opt) on one thread and on two: O and LSE bit-identical (the key splits and query
// tiles do not depend on the thread count), and the one-thread result matches the reference.
inline ::testing::AssertionResult threads_agree(const Data& d, const Options& opt) {
  Out one = make_out(d.p, Layout::BSHD, true), two = make_out(d.p, Layout::BSHD, true);
  Options o1 = opt, o2 = opt;
  o1.lse = one.lse;
  o2.lse = two.lse;
  const Status s1 = forward(d.p, d.q, d.k, d.v, one.o, o1);
  if (!s1.ok()) return ::testing::AssertionFailure() << "forward (1 thread) failed: " << s1.message();
  const Status s2 = forward(d.p, d.q, d.k, d.v, two.o, o2, thread_executor(2));
  if (!s2.ok()) return ::testing::AssertionFailure() << "forward (2 threads) failed: " << s2.message();
  if (!bit_identical(one.obuf, two.obuf)) return ::testing::AssertionFailure() << "O differs between 1 and 2 threads";
  if (!bit_identical(one.lsebuf, two.lsebuf))
    return ::testing::AssertionFailure() << "LSE differs between 1 and 2 threads";
  return matches_reference(d, o1, one);
}

}  // namespace test
}  // namespace sinkattn
