#!/usr/bin/env bash
# Egress sidecar throughput and added latency (1 KB and 1 MB bodies) against direct TLS, same run, release build.
# Usage: Benchmarks/egress/run.sh [--requests N] [--concurrency C]
set -euo pipefail
cd "$(dirname "$0")/../.."
swift build -c release --scratch-path .build-release --product egress-bench
exec .build-release/release/egress-bench "$@"
