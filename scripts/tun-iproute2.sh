#!/usr/bin/env bash
# The network setup of tun2socks, as plain iproute2 commands: for users who
# manage addresses and routes themselves and run `tun2socks --no-setup`.
# It is the same setup the daemon makes over rtnetlink without --no-setup:
#
#   ip tuntap add mode tun multi_queue name t2s0      # a device tun2socks adopts
#   ip addr add 198.18.0.1/30 dev t2s0                # (and fd74:3273::1/126)
#   ip link set t2s0 mtu 9000 up                      # same MTU as tun2socks --mtu
#   ip route add 0.0.0.0/0 dev t2s0 table 29746       # each --route, in a table of its own
#   ip route add throw 192.168.7.0/24 table 29746     # each --bypass
#   ip rule add not fwmark 0x7432 lookup 29746 suppress_prefixlength 0 priority 5208
#   ip rule add lookup main suppress_prefixlength 0 priority 5209    # only with a /0 route
#   ip rule add not fwmark 0x7432 lookup 29746 priority 5210
#
# then:  tun2socks --device tun://t2s0 --no-setup --proxy socks5://...
#
# Rule 5208 lets specific routed prefixes win over main; 5209 keeps the LAN
# (and the proxy's subnet) reachable when everything else is routed; 5210
# sends the rest into the tunnel. The daemon's upstream sockets carry the
# firewall mark, skip the tunnel's table, and never loop.
#
# usage: scripts/tun-iproute2.sh up | down      (as root)
# settings (environment, defaults shown):
#   NETNS=           run inside this namespace (`ip -n NETNS`)
#   DEV=t2s0  MTU=9000  ADDRS="198.18.0.1/30 fd74:3273::1/126"
#   ROUTES="0.0.0.0/0 ::/0"  BYPASS=""
#   FWMARK=0x7432  TABLE=29746  PRIORITY=5208
#   OWNER=           let this user open the device (`ip tuntap add ... user OWNER`)
#
# `down` removes exactly what `up` added (rules, the table's routes, the device).
set -Eeuo pipefail

NETNS=${NETNS:-}
DEV=${DEV:-t2s0}
MTU=${MTU:-9000}
ADDRS=${ADDRS:-198.18.0.1/30 fd74:3273::1/126}
ROUTES=${ROUTES:-0.0.0.0/0 ::/0}
BYPASS=${BYPASS:-}
FWMARK=${FWMARK:-0x7432}
TABLE=${TABLE:-29746}
PRIORITY=${PRIORITY:-5208}
OWNER=${OWNER:-}

ipc() {
  if [[ -n "$NETNS" ]]; then ip -n "$NETNS" "$@"; else ip "$@"; fi
}

family() { [[ "$1" == *:* ]] && echo -6 || echo -4; }

# The families that have a route: rules are per family.
families() {
  local r fams=()
  for r in $ROUTES; do fams+=("$(family "$r")"); done
  printf '%s\n' "${fams[@]}" | sort -u
}

has_default() { # family
  local r
  for r in $ROUTES; do
    [[ "$(family "$r")" == "$1" && "$r" == */0 ]] && return 0
  done
  return 1
}

rules() { # add|del
  local fam
  for fam in $(families); do
    ipc "$fam" rule "$1" not fwmark "$FWMARK" lookup "$TABLE" suppress_prefixlength 0 priority "$PRIORITY"
    if has_default "$fam"; then
      ipc "$fam" rule "$1" lookup main suppress_prefixlength 0 priority $((PRIORITY + 1))
    fi
    ipc "$fam" rule "$1" not fwmark "$FWMARK" lookup "$TABLE" priority $((PRIORITY + 2))
  done
}

up() {
  trap 'echo "tun-iproute2.sh: setup failed; undoing" >&2; down' ERR
  if [[ -n "$OWNER" ]]; then
    ipc tuntap add mode tun multi_queue name "$DEV" user "$OWNER"
  else
    ipc tuntap add mode tun multi_queue name "$DEV"
  fi
  local a r
  for a in $ADDRS; do
    if [[ "$a" == *:* ]]; then ipc addr add "$a" dev "$DEV" nodad; else ipc addr add "$a" dev "$DEV"; fi
  done
  ipc link set "$DEV" mtu "$MTU" up
  for r in $ROUTES; do ipc "$(family "$r")" route add "$r" dev "$DEV" table "$TABLE"; done
  for r in $BYPASS; do ipc "$(family "$r")" route add throw "$r" table "$TABLE"; done
  rules add
  trap - ERR
  echo "up: $DEV in table $TABLE, rules from priority $PRIORITY; now run:"
  echo "  tun2socks ${NETNS:+--netns $NETNS }--device tun://$DEV --no-setup --mtu $MTU --fwmark $FWMARK --proxy URL"
}

down() {
  # Best effort: each step may already be undone.
  set +e
  rules del 2>/dev/null
  ipc -4 route flush table "$TABLE" 2>/dev/null
  ipc -6 route flush table "$TABLE" 2>/dev/null
  ipc tuntap del mode tun multi_queue name "$DEV" 2>/dev/null
  set -e
  return 0
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *)
    echo "usage: $0 up | down   (settings in the environment; see the top of this file)" >&2
    exit 2
    ;;
esac
