#!/usr/bin/env bash
# Issue 6 benchmarks (release build):
#  1. throughput of 32 concurrent callers (client in another process, mTLS, tokens, policy) on the digits MLP,
#     one row per call, with and without dynamic batching;
#  2. the per-call cost of the whole in-process hardening pipeline against calling the model directly.
# Usage: Benchmarks/hardening.sh [CALLS]
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-20000}
scratch=${SCRATCH:-.build-release}
bin=$scratch/release/serving-bench
[ -x "$bin" ] || swift build -c release --scratch-path "$scratch" --product serving-bench >/dev/null
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for batching in batch nobatch; do
  dir=$(mktemp -d)
  $bin server "$dir" digits "$batching" & server=$!
  for _ in $(seq 200); do [ -s "$dir/port" ] && break; sleep 0.1; done
  port=$(cat "$dir/port")
  for conc in 1 32; do
    echo "batching=$batching $($bin client "$dir" "$port" "$calls" "$conc" raw digits)"
  done
  kill $server; wait $server 2>/dev/null || true
  rm -rf "$dir"
done
$bin pipeline 20000
