#!/usr/bin/env bash
# The inference engine against its peers, on this machine, in one go (issue 3):
#   1. SGEMM: kernel-bench vs numpy/OpenBLAS, n = 256..2048, 1 and 2 threads (Benchmarks/kernels/run.sh);
#   2. the four fixture models at batch 1 and 32: runtime-bench vs onnxruntime (Benchmarks/runtime/compare.py).
# Prints GFLOPS / latencies and the ratios ours / peer. Release builds; a venv with the peers is made in .venv-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q numpy threadpoolctl onnxruntime
fi
swift build -c release --product kernel-bench >/dev/null
swift build -c release --product runtime-bench >/dev/null
echo "## SGEMM (ours vs numpy/OpenBLAS)"
PYTHON=.venv-bench/bin/python KERNEL_BENCH=.build/release/kernel-bench Benchmarks/kernels/run.sh
echo
echo "## ONNX models (ours vs onnxruntime)"
.venv-bench/bin/python Benchmarks/runtime/compare.py --bench .build/release/runtime-bench "$@"
