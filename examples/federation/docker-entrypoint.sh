#!/bin/sh
# Entry point of the Proconsul image, after Consul's docker-entrypoint.sh:
# - $CONSUL_LOCAL_CONFIG (JSON), when set, is written to /consul/config/local.json;
# - `agent ...` (or only flags) runs `proconsul agent -data-dir=/consul/data
#   -config-dir=/consul/config ...`;
# - another proconsul verb (`members -wan`, `connect envoy ...`) runs `proconsul <verb> ...`;
# - anything that is a program on PATH (sh, gen-certs.sh) runs as it is.
# The command is exec'ed, so it is the container's main process and receives its signals.
set -e

CONSUL_DATA_DIR=${CONSUL_DATA_DIR:-/consul/data}
CONSUL_CONFIG_DIR=${CONSUL_CONFIG_DIR:-/consul/config}

if [ -n "$CONSUL_LOCAL_CONFIG" ]; then
    mkdir -p "$CONSUL_CONFIG_DIR"
    printf '%s\n' "$CONSUL_LOCAL_CONFIG" > "$CONSUL_CONFIG_DIR/local.json"
fi

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- agent "$@"
fi

if [ "$1" = agent ]; then
    shift
    exec proconsul agent -data-dir="$CONSUL_DATA_DIR" -config-dir="$CONSUL_CONFIG_DIR" "$@"
fi

if [ "$1" != proconsul ] && ! command -v "$1" >/dev/null 2>&1; then
    set -- proconsul "$@"
fi
exec "$@"
