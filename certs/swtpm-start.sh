#!/usr/bin/env bash
# Starts a software TPM 2.0 (Debian swtpm) for tests and `make run`, manufactured like a real one: an RSA and an
# ECC P-384 endorsement key with certificates in NV (swtpm_setup --create-ek-cert). The certificates are issued by
# a local CA in CA_DIR (swtpm_localca), which plays the TPM manufacturer: its root is what a client trusts.
#
#   certs/swtpm-start.sh STATE_DIR [CA_DIR]
#
# CA_DIR defaults to STATE_DIR/ca; two TPMs started with the same CA_DIR share a "manufacturer". Prints one line,
# the TCTI string (swtpm:host=127.0.0.1,port=P), once the TPM answers. The swtpm process id is in STATE_DIR/swtpm.pid;
# stop it with `kill "$(cat STATE_DIR/swtpm.pid)"`. The manufacturer root is CA_DIR/swtpm-localca-rootca-cert.pem and
# the issuing CA CA_DIR/issuercert.pem.
set -euo pipefail
state=${1:?usage: swtpm-start.sh STATE_DIR [CA_DIR]}
ca=${2:-$state/ca}
mkdir -p "$state" "$ca"
state=$(cd "$state" && pwd)
ca=$(cd "$ca" && pwd)

# swtpm_setup reads the CA's location from its config files; ours point at CA_DIR instead of /var/lib/swtpm-localca.
cat >"$state/swtpm-localca.conf" <<CONF
statedir = $ca
signingkey = $ca/signkey.pem
issuercert = $ca/issuercert.pem
certserial = $ca/certserial
CONF
: >"$state/swtpm-localca.options"
cat >"$state/swtpm_setup.conf" <<CONF
create_certs_tool = /usr/bin/swtpm_localca
create_certs_tool_config = $state/swtpm-localca.conf
create_certs_tool_options = $state/swtpm-localca.options
active_pcr_banks = sha256
CONF
# Two TPMs sharing a CA_DIR may be manufactured at once; swtpm_localca locks its own state, the first root creation
# is serialised here.
(
  flock 9
  swtpm_setup --tpm2 --tpmstate "$state" --config "$state/swtpm_setup.conf" --create-ek-cert --overwrite \
    --logfile "$state/swtpm_setup.log" >/dev/null
) 9>"$ca/.palisade-lock"

# A free port pair (server P, control P+1): try random ones until swtpm binds.
for _ in $(seq 1 20); do
  port=$((20000 + RANDOM % 40000))
  rm -f "$state/swtpm.pid"
  if swtpm socket --tpm2 --tpmstate dir="$state" --server type=tcp,port=$port,bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 --flags not-need-init,startup-clear \
    --pid file="$state/swtpm.pid" --log file="$state/swtpm.log" --daemon </dev/null >/dev/null 2>>"$state/swtpm.log"; then
    for _ in $(seq 1 50); do
      [ -s "$state/swtpm.pid" ] && break
      sleep 0.05
    done
    if [ -s "$state/swtpm.pid" ] && kill -0 "$(cat "$state/swtpm.pid")" 2>/dev/null; then
      echo "swtpm:host=127.0.0.1,port=$port"
      exit 0
    fi
  fi
done
echo "swtpm-start.sh: swtpm did not start (see $state/swtpm.log)" >&2
exit 1
