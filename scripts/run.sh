#!/usr/bin/env bash
# The main job: build (Release) and run every example, then a short benchmark summary.
#   scripts/run.sh                 build dir: build/ (shared with scripts/test.sh)
# Env: JOBS (default 2), BENCH_FILTER (Google Benchmark regex, default: all),
#      BENCH_MIN_TIME (seconds per benchmark, default 0.05).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/deps.sh
sinkattn_install_missing "${SINKATTN_DEB_PACKAGES[@]}"

jobs="${JOBS:-2}"
build="$root/build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSINKATTN_BUILD_EXAMPLES=ON -DSINKATTN_BUILD_BENCH=ON </dev/null
cmake --build "$build" -j"$jobs" --target sinkattn_examples
if [[ -f bench/CMakeLists.txt ]]; then
  cmake --build "$build" -j"$jobs" --target sinkattn_bench
fi

status=0
for ex in "$build"/examples/[0-9][0-9]_*; do
  [[ -x "$ex" ]] || continue
  echo
  echo "== $(basename "$ex")"
  "$ex" || { echo "FAILED: $(basename "$ex")"; status=1; }
done

bench_bin="$build/bench/sinkattn_bench"
if [[ -x "$bench_bin" ]]; then
  echo
  echo "== benchmark summary (short run; bench/run_summary.sh for the full median-of-3 one)"
  bench_args=(--benchmark_min_time="${BENCH_MIN_TIME:-0.05}" --benchmark_repetitions=1)
  [[ -n "${BENCH_FILTER:-}" ]] && bench_args+=(--benchmark_filter="$BENCH_FILTER")
  if [[ -x bench/run_summary.sh ]]; then
    SINKATTN_BENCH="$bench_bin" bench/run_summary.sh "$build/bench-results.json" "${bench_args[@]}" || status=1
  else
    "$bench_bin" "${bench_args[@]}" || status=1
  fi
else
  echo
  echo "(no benchmark binary at $bench_bin: skipped)"
fi
exit "$status"
