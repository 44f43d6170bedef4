#!/bin/sh
# The pod's network init (run once by the init container, as root with NET_ADMIN): the server's UID may reach only
# loopback (itself, the egress sidecar on 127.0.0.1:3128, its admin port) and answer connections made to it; every
# new outbound connection it starts elsewhere is rejected. The sidecar's UID is not matched and may leave the pod,
# limited by the NetworkPolicy. The same owner-match pattern service meshes use, but filtering instead of redirecting:
# the server is configured to use the proxy, and anything that bypasses it fails closed.
#
# Environment: SERVER_UID (default 65532).
set -eu
uid=${SERVER_UID:-65532}
for ipt in iptables ip6tables; do
  if ! command -v "$ipt" >/dev/null; then echo "netinit: $ipt not found" >&2; exit 1; fi
  "$ipt" -w -N PALISADE_SERVER_OUT
  "$ipt" -w -A PALISADE_SERVER_OUT -o lo -j ACCEPT
  # Replies on connections callers made to the server (and nothing else it did not start).
  "$ipt" -w -A PALISADE_SERVER_OUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  "$ipt" -w -A PALISADE_SERVER_OUT -j REJECT
  "$ipt" -w -I OUTPUT 1 -m owner --uid-owner "$uid" -j PALISADE_SERVER_OUT
done
iptables -w -S OUTPUT
iptables -w -S PALISADE_SERVER_OUT
echo "netinit: UID $uid may reach only loopback"
