#!/usr/bin/env bash
# Runs sinkattn_bench with median-of-3 settings, writes the JSON to $1 and prints the console
# table followed by the summary (GFLOP/s per shape, ratio to Eigen, % of the measured peak).
#
#   bench/run_summary.sh [out.json] [extra Google Benchmark flags...]
#
# SINKATTN_BENCH (env) overrides the binary; by default build-bench/bench/sinkattn_bench, then
# build/bench/sinkattn_bench, relative to the repository root. A full run takes ~2-3 minutes.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-bench-results.json}"
[[ $# -gt 0 ]] && shift

bin="${SINKATTN_BENCH:-}"
if [[ -z "$bin" ]]; then
  for cand in "$root/build-bench/bench/sinkattn_bench" "$root/build/bench/sinkattn_bench"; do
    if [[ -x "$cand" ]]; then bin="$cand"; break; fi
  done
fi
if [[ -z "$bin" || ! -x "$bin" ]]; then
  echo "sinkattn_bench not found; build it first:" >&2
  echo "  cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release && cmake --build build-bench --target sinkattn_bench" >&2
  exit 1
fi

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(uptime)" >&2
exec "$bin" \
  --benchmark_min_time=0.5 \
  --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true \
  --benchmark_out="$out" \
  --benchmark_out_format=json \
  "$@"
