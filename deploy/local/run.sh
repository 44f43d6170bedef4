#!/usr/bin/env bash
# `make run`'s last step: the local deployment. As root, with iproute2 and a palisade that has the egress sidecar,
# the server runs in its own network namespace (deploy/local/netns-up.sh) reaching only the sidecar, which runs
# as a separate process on the host end of the veth pair. Otherwise the server (and the sidecar, when the binary
# has it) run as plain processes on loopback, and this says why. Ctrl-C stops everything and removes the namespace.
#
#   deploy/local/run.sh [CONFIG]        CONFIG: a server config for plain mode (default deploy/local/palisade.yaml)
#   PALISADE_NETNS=0 deploy/local/run.sh   plain processes even as root
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${PALISADE_BIN:-"$(swift build --show-bin-path)/palisade"}
config=${1:-deploy/local/palisade.yaml}
[ -x "$bin" ] || { echo "run.sh: $bin not found; run make build" >&2; exit 1; }

# The subcommand list in the root help (`palisade egress --help` would print the root help and exit 0 without it).
has_egress() { "$bin" --help 2>/dev/null | grep -qE '^[[:space:]]+egress([[:space:]]|$)'; }
mode=netns
why=""
if [ "${PALISADE_NETNS:-1}" = 0 ]; then why="PALISADE_NETNS=0"
elif [ "$config" != deploy/local/palisade.yaml ]; then why="a custom CONFIG ($config) is served as given"
elif [ "$(id -u)" != 0 ]; then why="not root (network namespaces need root)"
elif ! command -v ip >/dev/null; then why="no ip command (apt-get install iproute2)"
elif ! has_egress; then why="this palisade has no egress sidecar (palisade egress) yet"
fi
[ -n "$why" ] && mode=plain

sidecar=""
tpm_pid=""
cleanup() {
  if [ -n "$sidecar" ] && kill -0 "$sidecar" 2>/dev/null; then kill -TERM "$sidecar" 2>/dev/null; wait "$sidecar" 2>/dev/null || true; fi
  if [ -n "$tpm_pid" ]; then kill -TERM "$tpm_pid" 2>/dev/null || true; fi
  if [ "$mode" = netns ]; then deploy/local/netns-down.sh >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# TPM-rooted attestation with a software TPM (swtpm) when it is installed, for the default configs only (a custom
# CONFIG is served as given; PALISADE_TPM=0 turns it off): swtpm is manufactured with EK certificates from a local
# CA in run/tpm/ca (the "manufacturer" a caller trusts) and started where the server runs (inside the namespace in
# netns mode, so that its loopback port is the server's), and the server gets a copy of its config with
# `attestation.tpm` added, beside it as deploy/local/.<name>-tpm.yaml (git ignores it), so relative paths hold.
with_tpm() { # $1: the config to serve, $2: a command prefix that runs in the server's network; prints the config
  local base=$1 prefix=$2
  if [ "${PALISADE_TPM:-1}" = 0 ] || ! command -v swtpm >/dev/null || [ "$config" != deploy/local/palisade.yaml ]; then
    echo "$base"
    return
  fi
  rm -rf run/tpm/state
  mkdir -p run/tpm
  local derived
  derived="$(dirname "$base")/.$(basename "$base" .yaml)-tpm.yaml"
  local tcti
  if ! tcti=$($prefix certs/swtpm-start.sh run/tpm/state run/tpm/ca); then
    echo "run.sh: swtpm did not start (run/tpm/state/swtpm.log); serving with software-signed evidence" >&2
    echo "$base"
    return
  fi
  python3 - "$base" "$derived" "$tcti" <<'PY'
import sys
src, dst, tcti = sys.argv[1:]
lines = open(src).read().split("\n")
i = lines.index("attestation:")
lines[i + 1:i + 1] = ["  tpm:", "    tcti: \"%s\"" % tcti]
open(dst, "w").write("\n".join(lines))
PY
  # What a caller is given: the manufacturer's root and the CA that issued the EK certificates.
  cat run/tpm/ca/swtpm-localca-rootca-cert.pem run/tpm/ca/issuercert.pem >run/tpm/manufacturer.pem
  echo "run.sh: TPM-rooted attestation on a software TPM ($tcti); check it with" >&2
  echo "        palisade attest request --attestation-key certs/out/attestation.pub.pem --tpm-roots run/tpm/manufacturer.pem" >&2
  echo "$derived"
}

if [ "$mode" = netns ]; then
  openssl x509 -noout -ext subjectAltName -in certs/out/server.pem 2>/dev/null | grep -q 10.231.0.2 || {
    echo "run.sh: certs/out/server.pem does not name 10.231.0.2; remake the dev PKI (rm -rf certs/out; make pki)" >&2
    exit 1
  }
  deploy/local/netns-up.sh
  # Its own session: Ctrl-C reaches the server only, and cleanup stops the sidecar after the server has exited
  # (the server ships its final audit checkpoint through it on the way out).
  setsid "$bin" egress --config deploy/local/egress-netns.yaml &
  sidecar=$!
  echo "run.sh: network-namespace deployment: the server in namespace palisade-srv (10.231.0.2) reaches only the"
  echo "        egress sidecar (pid $sidecar, 10.231.0.1:3128). In another shell:"
  echo "  export PALISADE_TOKEN=\$(swift run palisade token mint --bind-cert certs/out/client-a.pem)"
  echo "  swift run palisade call live --target 10.231.0.2:8443;  curl -s 10.231.0.2:9464/metrics"
  rm -f run/tpm/state/swtpm.pid
  served=$(with_tpm deploy/local/palisade-netns.yaml "ip netns exec palisade-srv")
  [ -s run/tpm/state/swtpm.pid ] && tpm_pid=$(cat run/tpm/state/swtpm.pid)
  ip netns exec palisade-srv "$bin" serve --config "$served" &
else
  echo "run.sh: plain processes on loopback, no network namespace: $why"
  if has_egress; then
    setsid "$bin" egress --config deploy/local/egress.yaml &
    sidecar=$!
    echo "run.sh: egress sidecar (pid $sidecar) on 127.0.0.1:3128"
  fi
  echo "serving; in another shell: export PALISADE_TOKEN=\$(swift run palisade token mint --bind-cert certs/out/client-a.pem)"
  rm -f run/tpm/state/swtpm.pid
  served=$(with_tpm "$config" "")
  [ -s run/tpm/state/swtpm.pid ] && tpm_pid=$(cat run/tpm/state/swtpm.pid)
  "$bin" serve --config "$served" &
fi
server=$!
# The server's exit status is make run's; a signal to this script reaches the server through the trap's exit.
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; exit 130' INT
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; exit 143' TERM
set +e
wait "$server"
status=$?
exit $status
