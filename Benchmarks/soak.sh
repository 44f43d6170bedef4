#!/bin/bash
# Soak: Palisade under steady load for DURATION seconds (default 600) while model versions are hot-swapped
# (every 30 s), the server certificate and the JWKS rotate (every 60 s) and the policy reloads (every 90 s).
# Three callers (Python grpcio from .venv, separate processes, each with its own certificate and token) call at
# 80% of the capacity measured just before. Samples the server's RSS, open fds and the callers' p99 every second.
#
#   Benchmarks/soak.sh [DURATION] [--quick] [soak.py options]
#
# Server: .build/release/palisade if present, else .build/debug/palisade (PALISADE_BIN overrides). PKI: the dev
# PKI (certs/out, `make pki`). Output: docs/soak.csv, docs/soak.json and docs/soak.png (SOAK_OUT overrides the
# directory; --quick, the 60-second version `make test` runs with shorter periods, writes under $SOAK_WORK-out
# and draws no plot). The plot needs matplotlib, which the test requirements do not carry:
#   .venv/bin/pip install matplotlib
# Exit status 0 only when no call failed, fds stayed stable and unloaded model versions left memory.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PALISADE_PYTHON:-$ROOT/.venv/bin/python}
BIN=${PALISADE_BIN:-}
if [ -z "$BIN" ]; then
  if [ -x "$ROOT/.build/release/palisade" ]; then BIN=$ROOT/.build/release/palisade; else BIN=$ROOT/.build/debug/palisade; fi
fi
[ -x "$BIN" ] || { echo "no palisade binary at $BIN: swift build -c release --product palisade" >&2; exit 2; }
PKI=${PALISADE_PKI:-$ROOT/certs/out}
[ -f "$PKI/intermediate-ca.key" ] || { echo "no dev PKI in $PKI: make pki" >&2; exit 2; }
DURATION=600
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then DURATION=$1; shift; fi
WORK=${SOAK_WORK:-$(mktemp -d /tmp/palisade-soak.XXXXXX)}
quick=0
for a in "$@"; do [ "$a" = --quick ] && quick=1; done
if [ $quick = 1 ]; then
  OUT=${SOAK_OUT:-$WORK-out}
  extra=()
else
  OUT=${SOAK_OUT:-$ROOT/docs}
  extra=(--plot "$OUT/soak.png")
fi
mkdir -p "$OUT"
echo "soak: $BIN for ${DURATION}s, work dir $WORK, results in $OUT" >&2
exec "$PY" "$ROOT/Benchmarks/soak/soak.py" "$DURATION" --bin "$BIN" --root "$ROOT" --pki "$PKI" --workdir "$WORK/run" \
  --csv "$OUT/soak.csv" --summary "$OUT/soak.json" "${extra[@]}" "$@"
