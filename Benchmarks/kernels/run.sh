#!/usr/bin/env bash
# Runs our SGEMM (kernel-bench, release build) and the numpy/OpenBLAS peer on this machine in one go and prints
# GFLOPS and the ratio ours / OpenBLAS for n = 256..2048 at 1 and 2 threads.
#
#   Benchmarks/kernels/run.sh            # builds kernel-bench if needed
#   KERNEL_BENCH=path/to/kernel-bench SIZES=512,1024 THREADS=1 RUNS=5 ROUNDS=3 Benchmarks/kernels/run.sh
#
# Each (threads, n) is measured ROUNDS times, ours and the peer alternating, and the best of each is kept: on a
# shared machine this filters out the moments when other work (a compiler) takes a core.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
SIZES="${SIZES:-256,512,1024,2048}"
THREADS="${THREADS:-1,2}"
RUNS="${RUNS:-5}"
ROUNDS="${ROUNDS:-3}"
PYTHON="${PYTHON:-python3}"
bench="${KERNEL_BENCH:-$root/.build/release/kernel-bench}"
if [[ ! -x "$bench" ]]; then
  (cd "$root" && nice -n 10 swift build -c release --product kernel-bench >&2)
fi
"$PYTHON" -c 'import threadpoolctl' 2>/dev/null || echo "note: threadpoolctl missing (pip install threadpoolctl); relying on OPENBLAS_NUM_THREADS" >&2

ours="$(mktemp)"; peer="$(mktemp)"
trap 'rm -f "$ours" "$peer"' EXIT
echo "# $(uname -m) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) | load: $(cut -d' ' -f1-3 /proc/loadavg)"
IFS=, read -ra thread_list <<<"$THREADS"
IFS=, read -ra size_list <<<"$SIZES"
for _ in $(seq "$ROUNDS"); do
for t in "${thread_list[@]}"; do
  for n in "${size_list[@]}"; do
    # Alternate ours / peer per measurement so both see similar machine load.
    "$bench" --sizes "$n" --threads "$t" --runs "$RUNS" >>"$ours"
    # The machine's env may pin OpenBLAS to a core type / L2 size; the peer runs with OpenBLAS's own detection.
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS="$t" OMP_NUM_THREADS="$t" \
      "$PYTHON" "$here/gemm_peer.py" --sizes "$n" --threads "$t" --runs "$RUNS" --info >>"$peer"
  done
done
done
grep '^# blas' "$peer" | sort -u || true
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PYTHON" - "$ours" "$peer" <<'PY'
import re, sys
def load(path):
    out = {}
    for line in open(path):
        m = re.match(r"sgemm threads=(\d+) n=(\d+) gflops=([\d.]+)", line)
        if m:
            key = (int(m[1]), int(m[2]))
            out[key] = max(out.get(key, 0.0), float(m[3]))
    return out
ours, peer = load(sys.argv[1]), load(sys.argv[2])
print(f"{'threads':>7} {'n':>5} {'ours GF/s':>10} {'OpenBLAS GF/s':>14} {'ratio':>6}")
for key in sorted(ours):
    o, p = ours[key], peer.get(key)
    ratio = f"{o / p:.2f}" if p else "n/a"
    print(f"{key[0]:>7} {key[1]:>5} {o:>10.1f} {p or 0:>14.1f} {ratio:>6}")
PY
