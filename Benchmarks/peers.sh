#!/usr/bin/env bash
# Palisade beside KServe (onnxruntime in a kserve.Model) and a C++ grpc++ "null" server that answers without a
# model, all over mTLS, with the same Python grpcio client in the same run; the table (median of rounds, server
# CPU per call, throughput ratio to KServe) is written into docs/benchmarks.md ("Peers" section).
#
# Not part of `make test`: it installs KServe from PyPI into a venv and grpc++ from Debian, builds the null server
# and a release Palisade, and runs ~10 minutes per round set.
#
# Usage: Benchmarks/peers.sh [ROUNDS]          (default 3)
#   PEERS_DIR   scratch directory for venvs, models, PKI, logs, results (default /tmp/peers)
#   SCRATCH     Swift scratch path for the release build (default .build-release)
#   CALLS       latency phase: sequential calls per row (default 1000)
#   DURATION    throughput phase: seconds at 32 concurrent calls per row (default 8)
#   NO_DOCS=1   leave docs/benchmarks.md alone (the table is in $PEERS_DIR/results-*/table.md either way)
#   PALISADE_BIN=PATH  measure this release binary instead of building one (e.g. deploy/release/build.sh's output;
#               the table then names the checkout's revision, so build it from that revision)
# Palisade runs three times: audit off (18301), audit batched (18311), audit sync (18321).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
H=$ROOT/Benchmarks/peers
P=${PEERS_DIR:-/tmp/peers}
ROUNDS=${1:-3}
export PEERS_DIR=$P
mkdir -p "$P"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

# 1. KServe and the client in one venv (PyPI); scikit-learn and onnx only build the two models.
[ -x "$P/venv-kserve/bin/python" ] || python3 -m venv "$P/venv-kserve"
if [ ! -f "$P/venv-kserve/.installed" ] || [ "$H/requirements-kserve.txt" -nt "$P/venv-kserve/.installed" ]; then
  "$P/venv-kserve/bin/pip" install -q -r "$H/requirements-kserve.txt" scikit-learn==1.9.1 onnx==1.23.2 joblib
  touch "$P/venv-kserve/.installed"
fi
[ -e "$P/venv" ] || ln -s venv-kserve "$P/venv"

# 2. grpc++ from Debian for the null server.
if ! command -v grpc_cpp_plugin >/dev/null || ! pkg-config --exists grpc++ 2>/dev/null; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev pkg-config
fi

# 3. Models (digits 64->128->10 and wide 784->512->512->10, seeded), the mTLS PKI, the null server.
[ -f "$P/models/wide_mlp/model.onnx" ] || "$P/venv/bin/python" "$H/make_models.py" --out "$P/models"
[ -f "$P/certs/ca.crt" ] || bash "$H/make_certs.sh" "$P/certs"
[ -x "$P/null_server/null_v2_server" ] || bash "$H/null_server/build.sh" "$P/venv-kserve/bin/python" "$P/null_server"

# 4. Palisade, release.
if [ -n "${PALISADE_BIN:-}" ]; then
  BIN=$(cd "$(dirname "$PALISADE_BIN")" && pwd)/$(basename "$PALISADE_BIN")
  [ -x "$BIN" ] || { echo "peers.sh: PALISADE_BIN=$PALISADE_BIN is not an executable" >&2; exit 2; }
else
  SCRATCH=${SCRATCH:-$ROOT/.build-release}
  (cd "$ROOT" && swift build -c release --scratch-path "$SCRATCH" --product palisade)
  BIN=$(cd "$ROOT" && swift build -c release --scratch-path "$SCRATCH" --show-bin-path)/palisade
fi

# 5. Three Palisade instances on the harness's models and PKI (stopped on exit: only these PIDs).
OUT=$P/results-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
EXT=()
for spec in none:18301:palisade-mtls batched:18311:palisade-audit-batched-mtls sync:18321:palisade-audit-sync-mtls; do
  IFS=: read -r mode port label <<<"$spec"
  eval "$(AUDIT=$mode bash "$H/palisade_up.sh" "$BIN" "$port")"
  PIDS+=("$PAL_PID")
  EXT+=(--external-mtls "$label=127.0.0.1:$port@$PAL_PID")
done

# 6. The matrix, one round at a time (a fresh 15-minute token each round); KServe and null are started here.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%MZ)
for r in $(seq 1 "$ROUNDS"); do
  PEERS_TOKEN=$("$BIN" token mint --key "$P/palisade-keys/issuer.key" --kid bench --issuer https://bench.local \
    --bind-cert "$P/certs/client.crt" --ttl 900)
  export PEERS_TOKEN
  echo "=== peers round $r/$ROUNDS (load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$P/venv/bin/python" "$H/run_peers.py" --rounds 1 --calls "${CALLS:-1000}" --duration "${DURATION:-8}" \
    --out "$OUT" --servers kserve,null --tls-only --batches 1,32 --encodings raw --distinct-rows 1024 "${EXT[@]}" \
    | tee -a "$OUT/run.log"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
"$P/venv/bin/python" "$H/report.py" "$OUT/results.jsonl" --ref kserve-mtls | tee "$OUT/table.md"

# 7. The table into docs/benchmarks.md.
if [ "${NO_DOCS:-0}" != 1 ]; then
  python3 "$H/update_docs.py" "$ROOT/docs/benchmarks.md" "$OUT/table.md" --started "$STARTED" \
    --load "$LOAD_BEFORE" --load-after "$LOAD_AFTER" --rounds "$ROUNDS" \
    --revision "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
fi
echo "results in $OUT"
