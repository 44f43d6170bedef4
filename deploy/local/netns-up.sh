#!/usr/bin/env bash
# Puts a network namespace in place for the local deployment: the server runs inside it and reaches only the
# egress sidecar; callers on this machine reach the server through a veth pair with test-only addresses.
#
#   host (default namespace)                 namespace palisade-srv
#   pal-host 10.231.0.1/30  <──── veth ────>  pal-srv 10.231.0.2/30, lo
#   egress sidecar listens on 10.231.0.1:3128 the server listens on 10.231.0.2:8443 (admin :9464)
#
# The namespace has no default route: the only address it can reach is 10.231.0.1, the sidecar's. Where nft is
# installed, a host rule also limits what arrives from the veth to the sidecar's port (and replies), so services
# the host binds to 0.0.0.0 stay out of reach; without nft this is said, and only the routing limit holds.
# Needs root and iproute2. Undo with deploy/local/netns-down.sh. Idempotent: an old setup is removed first.
set -euo pipefail
ns=${PALISADE_NETNS_NAME:-palisade-srv}
host_if=pal-host
ns_if=pal-srv
host_ip=10.231.0.1
ns_ip=10.231.0.2
proxy_port=${PALISADE_PROXY_PORT:-3128}
[ "$(id -u)" = 0 ] || { echo "netns-up.sh: needs root (ip netns)" >&2; exit 1; }
command -v ip >/dev/null || { echo "netns-up.sh: needs iproute2 (apt-get install iproute2)" >&2; exit 1; }
"$(dirname "$0")/netns-down.sh" >/dev/null 2>&1 || true

ip netns add "$ns"
ip link add "$host_if" type veth peer name "$ns_if"
ip link set "$ns_if" netns "$ns"
ip addr add "$host_ip/30" dev "$host_if"
ip link set "$host_if" up
ip -n "$ns" addr add "$ns_ip/30" dev "$ns_if"
ip -n "$ns" link set "$ns_if" up
ip -n "$ns" link set lo up
# The namespace routes nothing beyond its /30: no default route, and the host does not forward for it.
if ip -n "$ns" route show default | grep -q .; then echo "netns-up.sh: unexpected default route" >&2; exit 1; fi

if command -v nft >/dev/null; then
  nft -f - <<NFT
table inet palisade_local {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "$host_if" ct state established,related accept
    iifname "$host_if" tcp dport $proxy_port accept
    iifname "$host_if" drop
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname "$host_if" drop
  }
}
NFT
  echo "netns-up.sh: $ns reaches only $host_ip:$proxy_port (nft table inet palisade_local)"
else
  echo "netns-up.sh: nft not installed: $ns reaches only $host_ip (routing), but any port the host binds there or on 0.0.0.0; apt-get install nftables to limit it to :$proxy_port"
fi
echo "netns-up.sh: namespace $ns at $ns_ip, sidecar address $host_ip"
