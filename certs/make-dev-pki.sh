#!/usr/bin/env bash
# Makes Palisade's development PKI with openssl (ECDSA P-256, short validity). Keys are written with mode 600 and
# only into the output directory (default certs/out, git-ignored); nothing here is ever committed.
#
#   root CA ── intermediate CA ─┬─ server        localhost, 127.0.0.1, ::1, 10.231.0.2 (serverAuth; the last is
#                               │                the local network namespace's, deploy/local/netns-up.sh)
#                               ├─ client-a      spiffe://palisade.dev/ns/demo/sa/client-a (clientAuth)
#                               └─ client-b      spiffe://palisade.dev/ns/demo/sa/client-b (clientAuth)
#   rogue CA (unrelated) ────────── rogue-client spiffe://palisade.dev/ns/demo/sa/client-a (clientAuth)
#
# Leaf files (*.pem) hold the leaf followed by the intermediate, so peers can build the chain;
# ca-bundle.pem is the root: the server's client-CA bundle and the clients' server-CA bundle.
# issuer.key / issuer-jwks.json: the dev token issuer (`palisade token mint --key certs/out/issuer.key`).
# publisher.key / publisher.pub.pem: the dev model publisher that signs the demo bundle.
# attestation.key / attestation.pub.pem: the server's attestation key.
# audit.key / audit.pub.pem: the dev audit log key (Ed25519; `palisade audit verify LOG --key certs/out/audit.pub.pem`).
# Usage: certs/make-dev-pki.sh [OUT_DIR] [DAYS]   (DAYS defaults to 30)
set -euo pipefail
out=${1:-"$(dirname "$0")/out"}
days=${2:-30}
command -v openssl >/dev/null || { echo "openssl is required (apt-get install -y openssl)" >&2; exit 1; }
mkdir -p "$out"
chmod 700 "$out"
cd "$out"
umask 077

key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1.key"; chmod 600 "$1.key"; }

ca() { # name subject [issuer]
  local name=$1 subject=$2 issuer=${3:-}
  key "$name"
  cat > "$name.ext" <<EXT
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
EXT
  if [ -z "$issuer" ]; then
    openssl req -new -x509 -key "$name.key" -subj "$subject" -days "$days" -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" -out "$name.pem"
  else
    openssl req -new -key "$name.key" -subj "$subject" -out "$name.csr"
    echo "authorityKeyIdentifier=keyid" >> "$name.ext"
    openssl x509 -req -in "$name.csr" -CA "$issuer.pem" -CAkey "$issuer.key" -CAcreateserial -days "$days" \
      -sha256 -extfile "$name.ext" -out "$name.pem"
  fi
  rm -f "$name.ext" "$name.csr"
}

leaf() { # name subject issuer extensions...
  local name=$1 subject=$2 issuer=$3; shift 3
  key "$name"
  openssl req -new -key "$name.key" -subj "$subject" -out "$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "authorityKeyIdentifier=keyid"
    printf '%s\n' "$@"
  } > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA "$issuer.pem" -CAkey "$issuer.key" -CAcreateserial -days "$days" \
    -sha256 -extfile "$name.ext" -out "$name.leaf.pem"
  cat "$name.leaf.pem" > "$name.pem"
  if [ "$issuer" != "root-ca" ] && [ "$issuer" != "rogue-ca" ]; then cat "$issuer.pem" >> "$name.pem"; fi
  rm -f "$name.ext" "$name.csr" "$name.leaf.pem"
}

ca root-ca "/O=Palisade Dev/CN=Palisade Dev Root CA"
ca intermediate-ca "/O=Palisade Dev/CN=Palisade Dev Intermediate CA" root-ca
leaf server "/O=Palisade Dev/CN=localhost" intermediate-ca \
  "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1,IP:10.231.0.2"
leaf client-a "/O=Palisade Dev/CN=client-a" intermediate-ca \
  "extendedKeyUsage=clientAuth" "subjectAltName=URI:spiffe://palisade.dev/ns/demo/sa/client-a"
leaf client-b "/O=Palisade Dev/CN=client-b" intermediate-ca \
  "extendedKeyUsage=clientAuth" "subjectAltName=URI:spiffe://palisade.dev/ns/demo/sa/client-b"
ca rogue-ca "/O=Somebody Else/CN=Unrelated CA"
leaf rogue-client "/O=Somebody Else/CN=rogue" rogue-ca \
  "extendedKeyUsage=clientAuth" "subjectAltName=URI:spiffe://palisade.dev/ns/demo/sa/client-a"
# The dev token issuer: an ES256 key and its JWKS (kid dev-1). The public point is the last 64 bytes of the
# DER SubjectPublicKeyInfo (04 || X || Y for P-256).
key issuer
point=$(mktemp)
openssl ec -in issuer.key -pubout -outform DER 2>/dev/null | tail -c 64 > "$point"
b64url() { basenc --base64url -w0 | tr -d '='; }
x=$(head -c 32 "$point" | b64url)
y=$(tail -c 32 "$point" | b64url)
rm -f "$point"
printf '{"keys":[{"kty":"EC","crv":"P-256","kid":"dev-1","alg":"ES256","use":"sig","x":"%s","y":"%s"}]}\n' "$x" "$y" > issuer-jwks.json
# The dev model publisher: signs the demo bundle (`palisade bundle sign --key certs/out/publisher.key`).
key publisher
openssl ec -in publisher.key -pubout -out publisher.pub.pem 2>/dev/null
# The server's attestation key: signs palisade.v1.Attestation evidence (`palisade attest request --key
# certs/out/attestation.pub.pem`).
key attestation
openssl ec -in attestation.key -pubout -out attestation.pub.pem 2>/dev/null
# The dev audit key: Ed25519 (PKCS#8), signs the audit log's checkpoints.
openssl genpkey -algorithm ed25519 -out audit.key
chmod 600 audit.key
openssl pkey -in audit.key -pubout -out audit.pub.pem
cp root-ca.pem ca-bundle.pem
chmod 644 ./*.pem issuer-jwks.json
rm -f ./*.srl
echo "dev PKI in $out (valid $days days): $(ls . | tr '\n' ' ')"
