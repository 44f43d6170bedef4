#!/usr/bin/env bash
# The image's runtime without a container engine. Assembles the root filesystem the runtime stage holds
# (deploy/container/make-rootfs.sh: the static-stdlib release binary, the libraries ldd names, passwd/group),
# adds what the pod mounts (config, policy, credentials from a fresh dev PKI, a signed demo bundle), and runs
# `palisade serve` in it as a container runtime would: its own mount and PID namespaces, the root filesystem
# read-only, tmpfs for /tmp and the state directory, /proc and a minimal /dev, chroot, UID 65532, no shell.
# Then calls it from outside over mTLS with the normal build (live, a token-bound inference, readiness), runs
# the image's HEALTHCHECK command inside the root filesystem, and stops it with SIGTERM (exit 0 expected).
#
#   Tests/Deploy/image_runtime.sh STATIC_BINARY CLIENT_BINARY
# Exit 0 and "image runtime OK"; exit 77 when not root (skipped); 1 with the reason otherwise.
set -euo pipefail
static=${1:?usage: image_runtime.sh STATIC_BINARY CLIENT_BINARY}
client=${2:?usage: image_runtime.sh STATIC_BINARY CLIENT_BINARY}
repo=$(cd "$(dirname "$0")/../.." && pwd)
if [ "$(id -u)" != 0 ]; then echo "SKIP: the image runtime test needs root (unshare, mount, chroot)"; exit 77; fi
for tool in unshare nsenter chroot mount ldd openssl; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed"; exit 77; }
done
fail() { echo "FAIL: $*" >&2; [ -f "${work:-}/serve.log" ] && tail -20 "$work/serve.log" >&2; exit 1; }

work=$(mktemp -d /tmp/palisade-image.XXXXXX)
inner=""
runner=""
cleanup() {
  # The server is PID 1 of its PID namespace: killing it ends the namespace. (unshare's --kill-child does not
  # reach it: the death signal is cleared when chroot --userspec changes credentials.)
  if [ -n "$runner" ] && [ -z "$inner" ]; then inner=$(cat "/proc/$runner/task/$runner/children" 2>/dev/null | awk '{print $1}'); fi
  if [ -n "$inner" ]; then kill -KILL "$inner" 2>/dev/null || true; fi
  if [ -n "$runner" ] && kill -0 "$runner" 2>/dev/null; then kill -KILL "$runner" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
root=$work/rootfs

# 1. The runtime stage: exactly what make-rootfs.sh copies.
echo "ldd $static:"
ldd "$static" | sed 's/^/  /'
if ldd "$static" | grep -q 'libswift\|libFoundation'; then fail "the binary links the Swift runtime dynamically"; fi
"$repo/deploy/container/make-rootfs.sh" "$static" "$root"
for shell in bin/sh bin/bash usr/bin/sh usr/bin/env; do [ ! -e "$root/$shell" ] || fail "the root filesystem has /$shell"; done
unexpected=$(cd "$root" && find . -type f | grep -v -E '^\./(usr/local/bin/palisade|etc/(passwd|group|nsswitch\.conf|ld\.so\.(conf|cache)|ssl/certs/ca-certificates\.crt)|(usr/)?lib(64|/x86_64-linux-gnu|/aarch64-linux-gnu)?/[^/]+)$' || true)
[ -z "$unexpected" ] || fail "the root filesystem holds more than the binary, its libraries and /etc: $unexpected"

# 2. What the pod mounts: config, policy, credentials (a fresh dev PKI), a signed bundle.
"$repo/certs/make-dev-pki.sh" "$work/pki" 2 >/dev/null 2>&1
mkdir -p "$root/etc/palisade/tls" "$root/etc/palisade/trust" "$root/etc/palisade/policy" "$root/etc/palisade/config"
cp "$work/pki/server.pem" "$root/etc/palisade/tls/tls.crt"
cp "$work/pki/ca-bundle.pem" "$root/etc/palisade/tls/ca.crt"
install -m 0600 -o 65532 -g 65532 "$work/pki/server.key" "$root/etc/palisade/tls/tls.key"
cp "$work/pki/issuer-jwks.json" "$root/etc/palisade/trust/issuer-jwks.json"
cp "$work/pki/publisher.pub.pem" "$root/etc/palisade/trust/publisher.pub.pem"
cat > "$root/etc/palisade/policy/policy.yaml" <<'POLICY'
version: 1
rules:
  - name: demo-callers
    principals: [{spiffe_prefix: spiffe://palisade.dev/ns/demo}]
    rpcs: ["*"]
POLICY
cat > "$root/etc/palisade/config/palisade.yaml" <<'CONFIG'
server:
  listen: "127.0.0.1:0"
  tls:
    certificate_chain: /etc/palisade/tls/tls.crt
    private_key: /etc/palisade/tls/tls.key
    client_ca_bundle: /etc/palisade/tls/ca.crt
  shutdown_grace_seconds: 5
auth:
  audience: palisade
  issuers:
    - issuer: https://issuer.palisade.dev
      jwks: /etc/palisade/trust/issuer-jwks.json
policy:
  file: /etc/palisade/policy/policy.yaml
models:
  directories: [/models]
  state_file: /var/lib/palisade/state/accepted-versions.json
  unpack_directory: /tmp/palisade-unpack
  required: [digits]
  trust:
    - models: "digits*"
      public_keys: [/etc/palisade/trust/publisher.pub.pem]
admin:
  listen: "127.0.0.1:0"
logging:
  format: json
CONFIG
"$client" bundle init --model "$repo/Tests/Fixtures/mlp_digits.onnx" --name digits --version 1 --max-batch 64 \
  --out "$root/models/digits/1" >/dev/null
"$client" bundle sign "$root/models/digits/1" --key "$work/pki/publisher.key" >/dev/null
mkdir -p "$root/proc" "$root/dev"

# 3. Run it as a runtime would: private mounts, read-only root, tmpfs where it may write, chroot, UID 65532.
cat > "$work/enter.sh" <<'ENTER'
set -eu
root=$1; shift
mount --make-rprivate /
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount -t tmpfs -o size=1m,mode=0755 tmpfs "$root/dev"
for d in null zero random urandom; do touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"; done
mount -t tmpfs -o size=64m,mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o size=16m,mode=0700,uid=65532,gid=65532 tmpfs "$root/var/lib/palisade"
exec chroot --userspec=65532:65532 "$root" /usr/local/bin/palisade "$@"
ENTER
unshare --mount --pid --fork --kill-child -- /bin/sh "$work/enter.sh" "$root" \
  serve --config /etc/palisade/config/palisade.yaml >"$work/serve.log" 2>&1 &
runner=$!

port=""
admin=""
for _ in $(seq 1 600); do
  if ! kill -0 "$runner" 2>/dev/null; then fail "palisade serve exited"; fi
  port=$(grep '"palisade serving"' "$work/serve.log" 2>/dev/null | grep -o '"listen":"127.0.0.1:[0-9]*"' | grep -o '[0-9]*"$' | tr -d '"' || true)
  admin=$(grep 'admin endpoint listening' "$work/serve.log" 2>/dev/null | grep -o '"listen":"127.0.0.1:[0-9]*"' | grep -o '[0-9]*"$' | tr -d '"' || true)
  [ -n "$port" ] && [ -n "$admin" ] && break
  sleep 0.1
done
[ -n "$port" ] && [ -n "$admin" ] || fail "no 'palisade serving' and admin lines in the log"
inner=$(cat "/proc/$runner/task/$runner/children" 2>/dev/null | awk '{print $1}')
[ -n "$inner" ] || fail "cannot find the server process"
uid=$(awk '/^Uid:/ {print $2 ":" $3 ":" $4 ":" $5}' "/proc/$inner/status")
[ "$uid" = "65532:65532:65532:65532" ] || fail "the server runs as UID $uid, not 65532"
# Seen from outside, the executable is the one in the root filesystem (paths print as the host sees them).
[ "$(readlink "/proc/$inner/exe")" = "$root/usr/local/bin/palisade" ] || fail "the server is $(readlink "/proc/$inner/exe")"
if touch "/proc/$inner/root/usr/local/bin/written" 2>/dev/null; then fail "the root filesystem is writable"; fi
echo "serving in the root filesystem as UID 65532 (pid $inner) on 127.0.0.1:$port, admin :$admin"

# 4. Calls from outside over mTLS.
common=(--target "127.0.0.1:$port" --cert "$work/pki/client-a.pem" --key "$work/pki/client-a.key" --ca "$work/pki/ca-bundle.pem")
[ "$("$client" call live "${common[@]}")" = true ] || fail "call live"
token=$("$client" token mint --key "$work/pki/issuer.key" --bind-cert "$work/pki/client-a.pem" --ttl 300)
ready=false
for _ in $(seq 1 300); do
  if "$client" call ready digits "${common[@]}" --token "$token" >/dev/null 2>&1; then ready=true; break; fi
  kill -0 "$runner" 2>/dev/null || fail "palisade serve exited while loading"
  sleep 0.1
done
$ready || fail "the signed digits bundle did not become ready"
out=$(python3 -c 'import json; print(json.dumps({"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":[0,0,0,0.1875,0.75,0.75,0.125,0,0,0,0.4375,0.9375,1,1,0,0,0,0.25,0.9375,0.5625,0.875,1,0.1875,0,0,0.125,0,0,0.875,1,0,0,0,0,0,0,0.875,1,0,0,0,0,0,0,0.9375,0.8125,0,0,0,0,0,0,1,0.875,0.0625,0,0,0,0,0.1875,1,0.8125,0.125,0]}]}))' \
  | "$client" call infer digits --input - "${common[@]}" --token "$token") || fail "call infer"
echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); l=[o for o in r["outputs"] if o["name"]=="label"][0]; sys.exit(0 if l["data"][0]==1 else 1)' \
  || fail "the digit was not classified as 1: $out"
if "$client" call metadata "${common[@]}" --cert "$work/pki/rogue-client.pem" --key "$work/pki/rogue-client.key" --token "$token" >/dev/null 2>&1; then
  fail "a client from another CA was served"
fi
[ -f "/proc/$inner/root/var/lib/palisade/state/accepted-versions.json" ] || fail "no state file on the writable mount"

# 5. The image's HEALTHCHECK, run inside the root filesystem as the image user (same network namespace).
# nsenter: the server's mount and PID namespaces and root, so /proc is there as in a container (Swift reads the
# arguments from /proc/self/cmdline; without /proc a command sees none).
health=$(nsenter --target "$inner" --mount --pid --root --wd --setuid 65532 --setgid 65532 -- \
  /usr/local/bin/palisade call health --url "http://127.0.0.1:$admin/readyz") \
  || fail "the HEALTHCHECK command failed inside the root filesystem: $health"
[ "$health" = "200 ready" ] || fail "the HEALTHCHECK command answered '$health'"

# 6. SIGTERM: drain and exit 0.
kill -TERM "$inner"
status=0
wait "$runner" || status=$?
runner=""
inner=""
[ "$status" = 0 ] || fail "palisade serve exited $status after SIGTERM"
grep -q '"palisade serving"' "$work/serve.log"
echo "image runtime OK"
