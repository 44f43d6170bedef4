#!/usr/bin/env bash
# ModelInfer over mTLS on loopback: server CPU per call and latency, client in another process, release build.
# Usage: Benchmarks/serving.sh [CALLS]   (prints one line per configuration)
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-20000}
bin=${SERVING_BENCH:-.build/release/serving-bench}
[ -x "$bin" ] || swift build -c release --product serving-bench >/dev/null
dir=$(mktemp -d)
$bin server "$dir" & server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.1; done
port=$(cat "$dir/port")
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' /proc/$server/stat; }
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for conc in 1 32; do
  for enc in raw typed; do
    before=$(cpu)
    line=$($bin client "$dir" "$port" "$calls" "$conc" "$enc")
    after=$(cpu)
    # The client's 500 warm-up calls are included in the CPU ticks.
    per_call=$(awk -v d=$((after - before)) -v t="$ticks" -v n=$((calls + 500)) 'BEGIN { printf "%.0f", d / t / n * 1e6 }')
    echo "$line server_cpu_us_per_call=$per_call"
  done
done
