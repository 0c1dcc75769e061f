#!/bin/sh
# netns-up.sh: the topology of docker-compose.yml with Linux network namespaces instead of
# containers (root; no Docker). Brings up two datacenters federated through mesh gateways,
# waits until they are, prints what to try and returns; netns-down.sh stops everything.
#
#   sudo examples/federation/netns-up.sh        # SERVERS=1 for one server per datacenter
#   sudo examples/federation/netns-down.sh
#
# One namespace per server and per gateway (like a container each), plus a switch namespace
# holding one bridge per network. Bridges have no address and ip_forward is 0 everywhere, so
# a namespace reaches exactly the subnets of its own links:
#   dc1  198.18.1.0/24  servers .11 .12 .13, gateways' LAN addresses .21 .22
#   dc2  198.18.2.0/24  servers .11 .12 .13, gateways' LAN addresses .21 .22
#   wan  198.18.3.0/24  dc1 gateways .11 .12, dc2 gateways .21 .22 (port 8443),
#                       dc2 servers' egress .221 .222 .223 (they dial primary_gateways)
# The servers run with the example's own config/<dc>.hcl plus a local.json (node name,
# address, certificate paths), exactly as the containers do.
#
# Environment: PROCONSUL (the CLI; default: the repository's .venv/bin/proconsul), RUN_DIR
# (state, certificates, logs; default /tmp/proconsul-netns), NETNS_PREFIX (default pcfed),
# SERVERS (1 or 3, default 3), TIMEOUT (seconds to federate, default 120).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
RUN_DIR=${RUN_DIR:-/tmp/proconsul-netns}
NETNS_PREFIX=${NETNS_PREFIX:-pcfed}
SERVERS=${SERVERS:-3}
TIMEOUT=${TIMEOUT:-120}
if [ -z "${PROCONSUL:-}" ]; then
    if [ -x "$repo/.venv/bin/proconsul" ]; then
        PROCONSUL=$repo/.venv/bin/proconsul
    else
        PROCONSUL=proconsul
    fi
fi
export PROCONSUL RUN_DIR NETNS_PREFIX

if [ "$(id -u)" -ne 0 ]; then
    echo "netns-up.sh needs root (network namespaces); without root: make demo" >&2
    exit 1
fi
case $SERVERS in 1 | 3) ;; *) echo "SERVERS must be 1 or 3" >&2; exit 2 ;; esac
command -v ip >/dev/null 2>&1 || { echo "needs ip (apt-get install iproute2)" >&2; exit 1; }
if [ -e "$RUN_DIR/namespaces" ]; then
    echo "already up ($RUN_DIR/namespaces exists): run netns-down.sh first" >&2
    exit 1
fi
mkdir -p "$RUN_DIR"
: > "$RUN_DIR/namespaces"

# Any failure (or Ctrl-C) before the end: show the logs' tails and tear everything down.
up=""
on_exit() {
    rc=$?
    [ -n "$up" ] && return
    for log in "$RUN_DIR"/*.log; do
        [ -f "$log" ] || continue
        echo "--- the end of $log" >&2
        tail -n 8 "$log" >&2
    done
    KEEP_LOGS=1 "$here/netns-down.sh" >&2 || true
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM
fail() {
    echo "netns-up.sh: $*" >&2
    exit 1
}

sw=$NETNS_PREFIX-sw

add_ns() {  # add_ns NAME: a namespace with lo up and forwarding off, recorded for teardown
    ip netns add "$1"
    echo "$1" >> "$RUN_DIR/namespaces"
    ip -n "$1" link set lo up
    ip netns exec "$1" sh -c 'echo 0 > /proc/sys/net/ipv4/ip_forward'
}

attach() {  # attach NS IFNAME BRIDGE PEERNAME ADDR/LEN
    ip link add "$4" netns "$sw" type veth peer name "$2" netns "$1"
    ip -n "$sw" link set "$4" master "$3" up
    ip -n "$1" addr add "$5" dev "$2"
    ip -n "$1" link set "$2" up
}

start() {  # start NAME NS ARGV...: runs ARGV in NS; its PID (ip execs) in NAME.pid
    name=$1
    ns=$2
    shift 2
    setsid ip netns exec "$ns" "$@" > "$RUN_DIR/$name.log" 2>&1 < /dev/null &
    echo $! > "$RUN_DIR/$name.pid"
}

echo "namespaces ($NETNS_PREFIX-*) and bridges"
add_ns "$sw"
for br in br-dc1 br-dc2 br-wan; do
    ip -n "$sw" link add "$br" type bridge
    ip -n "$sw" link set "$br" up
done

specs=""
for d in 1 2; do
    i=1
    while [ "$i" -le "$SERVERS" ]; do
        node=dc$d-server$i
        add_ns "$NETNS_PREFIX-$node"
        attach "$NETNS_PREFIX-$node" lan br-dc$d "d${d}s$i-lan" "198.18.$d.1$i/24"
        if [ "$d" -eq 2 ]; then
            attach "$NETNS_PREFIX-$node" egress br-wan "d${d}s$i-wan" "198.18.3.22$i/24"
        fi
        specs="$specs dc$d:$node"
        i=$((i + 1))
    done
    for g in 1 2; do
        gw=dc$d-gateway$g
        add_ns "$NETNS_PREFIX-$gw"
        attach "$NETNS_PREFIX-$gw" lan br-dc$d "d${d}g$g-lan" "198.18.$d.2$g/24"
        attach "$NETNS_PREFIX-$gw" wan br-wan "d${d}g$g-wan" "198.18.3.$d$g/24"
    done
done

echo "certificates (tls ca create, tls cert create -server) in $RUN_DIR/certs"
# shellcheck disable=SC2086
sh "$here/gen-certs.sh" "$RUN_DIR/certs" $specs > /dev/null

certs=$RUN_DIR/certs
for d in 1 2; do
    i=1
    while [ "$i" -le "$SERVERS" ]; do
        node=dc$d-server$i
        mkdir -p "$RUN_DIR/$node/data"
        cfg=$RUN_DIR/$node/config.hcl
        # config/dc<d>.hcl names three servers; with SERVERS=1 the count and peers shrink.
        sed -e "s/^bootstrap_expect .*/bootstrap_expect   = $SERVERS/" \
            -e "s#/consul/certs#$certs#" "$here/config/dc$d.hcl" > "$cfg"
        if [ "$SERVERS" -eq 1 ]; then
            sed -i -e "/^retry_join /d" "$cfg"
        fi
        cat > "$RUN_DIR/$node/local.json" <<EOF
{"node_name": "$node", "bind_addr": "198.18.$d.1$i",
 "tls": {"defaults": {"cert_file": "$certs/$node.pem", "key_file": "$certs/$node-key.pem"}}}
EOF
        start "$node" "$NETNS_PREFIX-$node" "$PROCONSUL" agent -config-file "$cfg" \
            -config-file "$RUN_DIR/$node/local.json" -data-dir "$RUN_DIR/$node/data"
        i=$((i + 1))
    done
done
echo "started $((2 * SERVERS)) servers"
for d in 1 2; do
    for g in 1 2; do
        # Gateway g registers through server g's agent. With one server both share it, and the
        # registration's ID is its service name (-proxy-id is not supported yet): the second
        # one then takes another name (any name of kind mesh-gateway counts).
        agent=$(( (g - 1) % SERVERS + 1 ))
        service=mesh-gateway
        [ "$g" -gt "$SERVERS" ] && service=mesh-gateway-$g
        start "dc$d-gateway$g" "$NETNS_PREFIX-dc$d-gateway$g" "$PROCONSUL" connect envoy \
            -gateway=mesh -register -service "$service" \
            -address "198.18.$d.2$g:8443" -wan-address "198.18.3.$d$g:8443" -expose-servers \
            -http-addr "198.18.$d.1$agent:8500"
    done
done
echo "started 4 mesh gateways"

# The isolation holds: a dc1 server has no route to any dc2 server address (nothing is sent:
# the connect fails at once with "Network is unreachable").
py=$(dirname "$(command -v "$PROCONSUL")")/python
[ -x "$py" ] || py=python3
if ip netns exec "$NETNS_PREFIX-dc1-server1" "$py" -c \
    "import socket; socket.create_connection(('198.18.2.11', 8300), 2)" 2>/dev/null; then
    fail "isolation broken: dc1-server1 reached 198.18.2.11:8300"
fi
echo "isolation: dc1-server1 cannot reach dc2-server1 (198.18.2.11)"

in_dc() {  # in_dc D ARGV...: the CLI inside dc<D>-server1's namespace (its agent: 127.0.0.1:8500)
    d=$1
    shift
    ip netns exec "$NETNS_PREFIX-dc$d-server1" "$PROCONSUL" "$@"
}

echo "waiting for federation (catalog datacenters lists dc1 and dc2, kv put -datacenter=dc2)"
start_time=$(date +%s)
while :; do
    for pidfile in "$RUN_DIR"/*.pid; do
        kill -0 "$(cat "$pidfile")" 2>/dev/null || fail "$(basename "$pidfile" .pid) exited"
    done
    dcs=$(in_dc 1 catalog datacenters 2>/dev/null | tr '\n' ' ' || true)
    case " $dcs" in
        *" dc2 "*)
            if last=$(in_dc 1 kv put -datacenter=dc2 demo/hello from-dc1 2>&1); then
                break
            fi
            dcs="$dcs; kv put -datacenter=dc2: $last"
            ;;
    esac
    if [ $(($(date +%s) - start_time)) -ge "$TIMEOUT" ]; then
        fail "not federated after $TIMEOUT s (datacenters: ${dcs:-none})"
    fi
    sleep 1
done
up=1
echo "federated in $(($(date +%s) - start_time)) s"

x="ip netns exec $NETNS_PREFIX"
if command -v curl > /dev/null 2>&1; then
    get="curl -s"
else
    get="$py -c 'import sys, urllib.request as u; print(u.urlopen(sys.argv[1]).read().decode())'"
fi
cat <<EOF

Two datacenters federated through mesh gateways, in network namespaces $NETNS_PREFIX-*
(state and logs in $RUN_DIR). Try:
  $x-dc1-server1 $PROCONSUL members -wan
  $x-dc1-server1 $PROCONSUL catalog datacenters
  $x-dc1-server1 $PROCONSUL kv put -datacenter=dc2 hello world
  $x-dc2-server1 $PROCONSUL kv get hello
  $x-dc2-server1 $get 'http://127.0.0.1:8500/v1/kv/hello?dc=dc1&index=1&wait=5s'
  $x-dc1-server1 $get http://127.0.0.1:8500/v1/internal/federation-states
  $x-dc2-server1 $get http://127.0.0.1:8500/v1/internal/federation-states/mesh-gateways
  $x-dc1-gateway1 $get http://127.0.0.1:19000/stats
Stop everything: $here/netns-down.sh
EOF
