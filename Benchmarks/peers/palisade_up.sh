#!/bin/bash
# Starts Palisade (a given binary) on the peer harness's models and mTLS PKI, so run_peers.py can measure it in the
# same run as KServe and the C++ null server: models digits_mlp and wide_mlp signed as bundles, allow-all policy
# with a rate limit far above the load, token issuer made here. AUDIT=none|batched|sync (default none).
# LOG_LEVEL (default warning; `info` is the server's default, with one access-log line per inference).
# Usage: palisade_up.sh BIN [PORT]  -> prints "export PAL_PID=... PEERS_TOKEN=..." ; stop with kill $PAL_PID
# (Benchmarks/peers.sh runs it three times: audit none, batched, sync.)
set -euo pipefail
B=$(readlink -f "$1"); PORT=${2:-18301}; P=${PEERS_DIR:-/tmp/peers}; D=$P/palisade-$PORT; K=$P/palisade-keys; AUDIT=${AUDIT:-none}
rm -rf "$D"; mkdir -p "$D/models" "$D/state" "$D/keys"; chmod 700 "$D/keys"
[ -f "$K/issuer.key" ] || ( mkdir -p "$K" && chmod 700 "$K" && cd "$K" && umask 077 && openssl ecparam -name prime256v1 -genkey -noout -out issuer.key 2>/dev/null \
  && openssl ecparam -name prime256v1 -genkey -noout -out publisher.key 2>/dev/null \
  && openssl ec -in publisher.key -pubout -out publisher.pub.pem 2>/dev/null \
  && openssl genpkey -algorithm ed25519 -out audit.key 2>/dev/null )
cp "$K"/* "$D/keys/"
"$B" token jwks --key "$D/keys/issuer.key" --kid bench > "$D/keys/jwks.json"
for m in digits_mlp wide_mlp; do
  "$B" bundle init --model "$P/models/$m/model.onnx" --name $m --version 1 --max-batch 64 --out "$D/models/$m/1" >/dev/null
  "$B" bundle sign "$D/models/$m/1" --key "$D/keys/publisher.key" >/dev/null
done
cat > "$D/policy.yaml" <<EOP
version: 1
rules:
  - name: bench
    principals: [{spiffe_prefix: spiffe://bench.local}]
    rpcs: ["*"]
    rate_limit: {per_second: 1000000, burst: 1000000}
EOP
audit=""; [ "$AUDIT" != none ] && audit="audit:
  directory: $D/audit
  key: $D/keys/audit.key
  durability: $AUDIT"
cat > "$D/palisade.yaml" <<EOC
server:
  listen: "127.0.0.1:$PORT"
  tls:
    certificate_chain: $P/certs/server.crt
    private_key: $P/certs/server.key
    client_ca_bundle: $P/certs/ca.crt
auth:
  audience: palisade
  issuers:
    - issuer: https://bench.local
      jwks: $D/keys/jwks.json
policy:
  file: $D/policy.yaml
models:
  directories: [$D/models]
  state_file: $D/state/accepted.json
  trust:
    - models: "*"
      public_keys: [$D/keys/publisher.pub.pem]
$audit
admin:
  listen: "127.0.0.1:$((PORT + 1))"
logging:
  format: json
  level: ${LOG_LEVEL:-warning}
EOC
"$B" serve --config "$D/palisade.yaml" > "$D/server.log" 2>&1 &
PID=$!
for _ in $(seq 1 120); do curl -fs "127.0.0.1:$((PORT + 1))/readyz" >/dev/null 2>&1 && break; sleep 0.5; done
curl -fs "127.0.0.1:$((PORT + 1))/readyz" >/dev/null || { tail -5 "$D/server.log" >&2; kill $PID; exit 1; }
TOKEN=$("$B" token mint --key "$D/keys/issuer.key" --kid bench --issuer https://bench.local --bind-cert "$P/certs/client.crt" --ttl 900)
echo "export PAL_PID=$PID PEERS_TOKEN=$TOKEN"
