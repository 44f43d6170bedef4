#!/usr/bin/env bash
# Rollout example (docs/operations.md): eight workload identities spiffe://palisade.dev/ns/demo/sa/team-N from the
# dev intermediate CA (make pki), each with a bound token, into DIR (a canary is sticky per principal, so the
# example needs more callers than the dev PKI's two). Usage: scripts/rollout-demo/callers.sh DIR [PALISADE]
set -euo pipefail
dir=$1
palisade=${2:-.build/debug/palisade}
mkdir -p "$dir"
for i in 1 2 3 4 5 6 7 8; do
  n=$dir/team-$i
  openssl ecparam -name prime256v1 -genkey -noout -out "$n.key" 2>/dev/null
  openssl req -new -key "$n.key" -subj "/O=Palisade Dev/CN=team-$i" -out "$n.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=URI:spiffe://palisade.dev/ns/demo/sa/team-%s\n' "$i" > "$n.ext"
  openssl x509 -req -in "$n.csr" -CA certs/out/intermediate-ca.pem -CAkey certs/out/intermediate-ca.key \
    -CAcreateserial -days 1 -sha256 -extfile "$n.ext" -out "$n.leaf" 2>/dev/null
  cat "$n.leaf" certs/out/intermediate-ca.pem > "$n.pem"
  "$palisade" token mint --bind-cert "$n.pem" --ttl 900 > "$n.token"
  rm -f "$n.csr" "$n.ext" "$n.leaf"
done
