#!/usr/bin/env bash
# Audit-log append throughput (docs/benchmarks.md, "Audit log"): release build of audit-bench, then one run.
# Usage: Benchmarks/audit/run.sh [COUNT] [SYNC_COUNT]   (scratch files under ${TMPDIR:-/tmp}, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/../.."
swift build -c release --scratch-path .build-release --product audit-bench
scratch=$(mktemp -d "${TMPDIR:-/tmp}/audit-bench.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); scratch on: $(df -P "$scratch" | tail -1 | awk '{print $1" ("$6")"}')"
.build-release/release/audit-bench "$scratch" "${1:-50000}" "${2:-3000}"
