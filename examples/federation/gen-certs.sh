#!/bin/sh
# gen-certs.sh DIR DC:NODE...
#
# Makes, in DIR, what a federation through mesh gateways needs, with Proconsul's own
# `tls` commands (Consul's): the CA (consul-agent-ca.pem, consul-agent-ca-key.pem, made once)
# and one server certificate per DC:NODE, saved as NODE.pem / NODE-key.pem. Each carries the
# SANs server.DC.consul, NODE.server.DC.consul, localhost and 127.0.0.1, the names the mesh
# gateways route by (SNI) and the servers verify. Files already there are kept, so running it
# again (a restarted one-shot container) changes nothing.
#
# PROCONSUL (default: proconsul) is the command that runs the CLI.
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: $0 DIR DC:NODE..." >&2
    exit 2
fi
dir=$1
shift
proconsul=${PROCONSUL:-proconsul}

mkdir -p "$dir"
cd "$dir"
if [ ! -f consul-agent-ca.pem ]; then
    $proconsul tls ca create
fi
for spec in "$@"; do
    dc=${spec%%:*}
    node=${spec#*:}
    if [ "$dc" = "$spec" ] || [ -z "$dc" ] || [ -z "$node" ]; then
        echo "$0: '$spec' is not DC:NODE" >&2
        exit 2
    fi
    if [ -f "$node.pem" ] && [ -f "$node-key.pem" ]; then
        continue
    fi
    $proconsul tls cert create -server -dc "$dc" -node "$node" >/dev/null
    mv "$dc-server-consul-0.pem" "$node.pem"
    mv "$dc-server-consul-0-key.pem" "$node-key.pem"
    echo "==> Saved $node.pem and $node-key.pem (server.$dc.consul, $node.server.$dc.consul)"
done
