// Compiled with -fno-exceptions: the public header must build without exceptions, validate()
// must report errors through Status, and check() of a bad Status must abort (not throw).

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#error "this translation unit must be compiled with -fno-exceptions"
#endif

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <vector>

#include "sinkattn/sinkattn.hpp"

static_assert(SINKATTN_HAS_EXCEPTIONS == 0, "sinkattn did not detect -fno-exceptions");

namespace {

int failures = 0;

void expect(bool cond, const char* what) {
  if (!cond) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

}  // namespace

int main() {
  using sinkattn::index_t;
  const sinkattn::Problem p{1, 2, 1, 3, 4, 8, 8};
  std::vector<float> q(1 * 3 * 2 * 8), k(1 * 4 * 1 * 8), v(1 * 4 * 1 * 8), o(1 * 3 * 2 * 8);
  auto qv = sinkattn::TensorView<const float>::bshd(q.data(), 1, 3, 2, 8);
  auto kv = sinkattn::TensorView<const float>::bshd(k.data(), 1, 4, 1, 8);
  auto vv = sinkattn::TensorView<const float>::bshd(v.data(), 1, 4, 1, 8);
  auto ov = sinkattn::TensorView<float>::bshd(o.data(), 1, 3, 2, 8);

  sinkattn::Options opt;
  opt.mask = sinkattn::CausalMask{};
  const sinkattn::Status good = sinkattn::validate(p, qv, kv, vv, ov, opt);
  expect(good.ok(), "a valid causal call validates");
  sinkattn::check(good);  // must return normally

  auto bad_k = kv;
  bad_k.shape[2] = 2;
  const sinkattn::Status bad = sinkattn::validate(p, qv, bad_k, vv, ov, opt);
  expect(bad.code() == sinkattn::Errc::shape_mismatch, "a bad K is reported as a shape mismatch");
  expect(bad.message().find("k:") != std::string::npos, "the message names k");

  // check(bad) aborts the process: observe it in a child.
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    sinkattn::check(bad);
    _exit(0);  // not reached if check() aborts
  }
  int status = 0;
  expect(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/waitpid");
  expect(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "check() of a bad Status aborts");

  // Scratch memory that cannot be had is an error too, not an abort. detail::scratch_limit
  // makes the tiles' request fail as the allocator would (a real refusal needs a request no
  // overcommit setting grants, and the call would first make smaller ones that some do).
  {
    std::vector<float> o2(o.size());
    sinkattn::detail::scratch_limit = 256;
    const sinkattn::Status oom =
        sinkattn::forward(p, qv, kv, vv, sinkattn::TensorView<float>::bshd(o2.data(), 1, 3, 2, 8));
    sinkattn::detail::scratch_limit = static_cast<std::size_t>(-1);
    expect(oom.code() == sinkattn::Errc::out_of_memory, "no memory for the workspace is reported as out of memory");
    expect(oom.message().find("workspace") != std::string::npos, "the message names the workspace");
  }

  if (failures == 0) std::printf("no_exceptions: OK\n");
  return failures == 0 ? 0 : 1;
}
