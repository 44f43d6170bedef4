#!/usr/bin/env bash
# HTTP/2 and TLS abuse against a release `palisade serve` (issue 15), full length: a well-behaved caller's
# latency, the server's RSS, what each attacker sees and the metric that counts it. Not part of `make test`
# (H2AbuseTests runs a short version). Needs the dev PKI (`make pki`) and the venv (`make venv`).
# Usage: Benchmarks/h2_abuse.sh [SECONDS_PER_ATTACK] [ATTACKS]   (default 15, all; prints a table)
# H2_ABUSE_PIN=1 runs the server and the caller on CPU 0 and the attacking client on CPU 1 (taskset), so that on a
# two-core machine the attacker's own client does not take CPU from what it is measured against.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
attacks=${2:-all}
bin=${PALISADE_BIN:-.build/release/palisade}
[ -x "$bin" ] || swift build -c release --product palisade >/dev/null
pki=$PWD/certs/out
[ -s "$pki/client-a.pem" ] || { echo "run 'make pki' first" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/policy.yaml" <<'YAML'
version: 1
rules:
  - name: bench
    principals: [{spiffe_prefix: spiffe://palisade.dev/ns/demo}]
    rpcs: ["*"]
YAML
# Every abuse guard at its default; only the waits are shortened so that a run takes minutes, not hours
# (the defaults: handshake 10 s, keepalive 60 s + 20 s, idle 1800 s, write stall 30 s, admin request 10 s).
cat > "$dir/palisade.yaml" <<YAML
server:
  listen: "127.0.0.1:0"
  tls:
    certificate_chain: $pki/server.pem
    private_key: $pki/server.key
    client_ca_bundle: $pki/ca-bundle.pem
  shutdown_grace_seconds: 2
  connection:
    handshake_timeout_seconds: 5
    keepalive_seconds: 5
    keepalive_timeout_seconds: 5
    max_idle_seconds: 10
  http2:
    write_stall_timeout_seconds: 5
auth:
  audience: palisade
  issuers:
    - issuer: https://issuer.palisade.dev
      jwks: $pki/issuer-jwks.json
policy:
  file: $dir/policy.yaml
admin:
  listen: "127.0.0.1:0"
  request_timeout_seconds: 5
logging:
  format: json
YAML
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $bin, $seconds s per attack"
.venv/bin/python Tests/Interop/h2_abuse.py run --bin "$bin" --config "$dir/palisade.yaml" --log "$dir/server.log" \
  --cert "$pki/client-a.pem" --key "$pki/client-a.key" --ca "$pki/ca-bundle.pem" \
  --attacker-cert "$pki/client-b.pem" --attacker-key "$pki/client-b.key" \
  --attacks "$attacks" --duration "$seconds" --baseline 15 --warmup 3 --settle 2 --close-wait 15 \
  ${H2_ABUSE_PIN:+--server-cpus 0 --attacker-cpus 1}
