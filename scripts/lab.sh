#!/usr/bin/env bash
# The tun2socks test lab, as plain iproute2 commands:
#
#   app ──veth── proxy ──veth── srv
#   10.0.1.1     10.0.1.2 | 10.0.2.1     10.0.2.2
#   fd00:1::1    fd00:1::2 | fd00:2::1   fd00:2::2
#                danted :1080            HTTP :8080
#                microsocks :1081        iperf3 :5201
#
# `proxy` does not forward: `app` reaches `srv` only through a SOCKS server
# (or through tun2socks relaying to one).
#
# usage: scripts/lab.sh up | down      (as root)
#        LAB=name scripts/lab.sh up    namespaces name-app, name-proxy, name-srv
#
# Only named namespaces are created and deleted; the namespace you run this in
# (its links, addresses and routes) is never touched.
set -Eeuo pipefail

LAB=${LAB:-t2s}
APP=$LAB-app PROXY=$LAB-proxy SRV=$LAB-srv
DIR=${TMPDIR:-/tmp}/$LAB-lab

up() {
  for ns in "$APP" "$PROXY" "$SRV"; do
    if [[ -e /run/netns/$ns ]]; then
      echo "lab.sh: namespace $ns exists; is lab $LAB up already? ($0 down removes it)" >&2
      exit 1
    fi
  done
  trap 'echo "lab.sh: setup failed; tearing down" >&2; down' ERR

  for ns in "$APP" "$PROXY" "$SRV"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # No duplicate address detection: IPv6 addresses are usable at once.
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  done

  # The veths are created directly inside the namespaces.
  ip -n "$APP" link add app0 type veth peer name proxy0 netns "$PROXY"
  ip -n "$PROXY" link add proxy1 type veth peer name srv0 netns "$SRV"

  ip -n "$APP" addr add 10.0.1.1/24 dev app0
  ip -n "$APP" addr add fd00:1::1/64 dev app0 nodad
  ip -n "$PROXY" addr add 10.0.1.2/24 dev proxy0
  ip -n "$PROXY" addr add fd00:1::2/64 dev proxy0 nodad
  ip -n "$PROXY" addr add 10.0.2.1/24 dev proxy1
  ip -n "$PROXY" addr add fd00:2::1/64 dev proxy1 nodad
  ip -n "$SRV" addr add 10.0.2.2/24 dev srv0
  ip -n "$SRV" addr add fd00:2::2/64 dev srv0 nodad

  ip -n "$APP" link set app0 up
  ip -n "$PROXY" link set proxy0 up
  ip -n "$PROXY" link set proxy1 up
  ip -n "$SRV" link set srv0 up

  # app's own default routes point at the proxy host (which will not forward).
  ip -n "$APP" route add default via 10.0.1.2
  ip -n "$APP" -6 route add default via fd00:1::2
  ip netns exec "$PROXY" sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0

  start_servers
  trap - ERR

  cat <<HINT
lab $LAB is up (configs and logs in $DIR). Try:
  ip netns exec $APP curl --proxy socks5h://10.0.1.2:1080 http://10.0.2.2:8080/
  tun2socks --netns $APP --proxy socks5://10.0.1.2:1080 &
  ip netns exec $APP curl http://10.0.2.2:8080/
  ip netns exec $APP iperf3 -c 10.0.2.2 -t 3
tear down with: LAB=$LAB $0 down
HINT
}

start_servers() {
  mkdir -p "$DIR/www"
  echo "hello from srv of lab $LAB" >"$DIR/www/hello.txt"
  cat >"$DIR/danted.conf" <<CONF
logoutput: $DIR/danted.log
internal: 10.0.1.2 port = 1080
internal: fd00:1::2 port = 1080
external: 10.0.2.1
external: fd00:2::1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 0/0 to: 0/0 log: error }
socks pass { from: 0/0 to: 0/0 log: error }
CONF
  ip netns exec "$PROXY" danted -D -f "$DIR/danted.conf" -p "$DIR/danted.pid"
  background "$PROXY" microsocks microsocks -i :: -p 1081
  background "$SRV" http python3 -m http.server --bind :: --directory "$DIR/www" 8080
  background "$SRV" iperf3 iperf3 --server --port 5201
  wait_listening "$PROXY" 1080 && wait_listening "$PROXY" 1081
  wait_listening "$SRV" 8080 && wait_listening "$SRV" 5201
}

# background NS NAME COMMAND...: run COMMAND in NS, detached, logging to $DIR/NAME.log
background() {
  local ns=$1 name=$2
  shift 2
  setsid ip netns exec "$ns" "$@" >"$DIR/$name.log" 2>&1 </dev/null &
}

# wait_listening NS PORT: up to 5 s for a TCP listener on PORT in NS
wait_listening() {
  local ns=$1 port=$2
  for _ in $(seq 50); do
    if ip netns exec "$ns" ss -Hltn "sport = :$port" | grep -q .; then return 0; fi
    sleep 0.1
  done
  echo "lab.sh: nothing listens on port $port in $ns after 5 s" >&2
  return 1
}

down() {
  for ns in "$APP" "$PROXY" "$SRV"; do
    [[ -e /run/netns/$ns ]] || continue
    # Whatever runs inside goes first, then the namespace (and its veths).
    local pids
    pids=$(ip netns pids "$ns")
    if [[ -n "$pids" ]]; then
      kill $pids 2>/dev/null || true
      sleep 0.2
      kill -9 $pids 2>/dev/null || true
    fi
    ip netns del "$ns"
  done
  rm -rf "$DIR"
  echo "lab $LAB is down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *)
    echo "usage: [LAB=name] $0 up|down" >&2
    exit 2
    ;;
esac
