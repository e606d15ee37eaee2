#!/usr/bin/env bash
# Builds and runs every test, twice:
#   1. Release, everything (tests, examples, benchmarks, packaging tests)  -> build/
#   2. Debug with ASan + UBSan (tests and examples; no benchmarks, no packaging tests, and
#      not the x86-64-v2/v3 copies of tests that the Release pass already ran)
#                                                                           -> build-asan/
# Exits non-zero if a build fails or any test fails in either configuration.
# Env: JOBS (default 2), SKIP_SANITIZERS=1 to run only the first pass.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/deps.sh
sinkattn_install_missing "${SINKATTN_DEB_PACKAGES[@]}"

jobs="${JOBS:-2}"
failed=()

echo "== Release build: $root/build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSINKATTN_BUILD_TESTS=ON -DSINKATTN_BUILD_EXAMPLES=ON \
  -DSINKATTN_BUILD_BENCH=ON -DSINKATTN_TEST_PACKAGE=ON </dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs" </dev/null) || failed+=("Release")

if [[ "${SKIP_SANITIZERS:-0}" != 1 ]]; then
  echo "== ASan + UBSan build: $root/build-asan"
  # -O1 keeps the SIMD-heavy tests fast enough under the sanitizers (ASan's own recommendation).
  san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all -O1"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS="$san" -DSINKATTN_BUILD_TESTS=ON \
    -DSINKATTN_BUILD_BENCH=OFF -DSINKATTN_BUILD_EXAMPLES=ON -DSINKATTN_TEST_PACKAGE=OFF \
    -DSINKATTN_TEST_BASELINE_ISA=OFF </dev/null
  cmake --build build-asan -j"$jobs"
  (cd build-asan &&
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
      ctest --output-on-failure -j"$jobs" </dev/null) || failed+=("ASan+UBSan")
fi

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "== FAILED: tests failed in: ${failed[*]}"
  exit 1
fi
echo "== all tests passed"
