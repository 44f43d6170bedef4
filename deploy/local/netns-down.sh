#!/usr/bin/env bash
# Removes what deploy/local/netns-up.sh made (the namespace, the veth pair, the nft table). Safe to run twice.
set -uo pipefail
ns=${PALISADE_NETNS_NAME:-palisade-srv}
[ "$(id -u)" = 0 ] || { echo "netns-down.sh: needs root" >&2; exit 1; }
if command -v nft >/dev/null; then nft delete table inet palisade_local 2>/dev/null; fi
ip link del pal-host 2>/dev/null
ip netns del "$ns" 2>/dev/null
echo "netns-down.sh: removed $ns"
exit 0
