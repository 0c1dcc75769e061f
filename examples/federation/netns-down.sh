#!/bin/sh
# netns-down.sh: stops what netns-up.sh started and removes its namespaces (root).
# Processes are stopped by the PIDs netns-up.sh recorded (SIGTERM, SIGKILL after 10 s; a PID
# is only signalled while it still runs proconsul), namespaces by the names it recorded.
# RUN_DIR as for netns-up.sh; KEEP_LOGS=1 keeps RUN_DIR (logs, certificates, data).
set -u

RUN_DIR=${RUN_DIR:-/tmp/proconsul-netns}
if [ "$(id -u)" -ne 0 ]; then
    echo "netns-down.sh needs root" >&2
    exit 1
fi
if [ ! -d "$RUN_DIR" ]; then
    echo "nothing to stop ($RUN_DIR does not exist)"
    exit 0
fi

ours() {  # ours PID: PID is alive and still one of our proconsul processes
    grep -q proconsul "/proc/$1/cmdline" 2>/dev/null
}

pids=""
for pidfile in "$RUN_DIR"/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null && pids="$pids $pid"
    fi
done
waited=0
for pid in $pids; do
    while ours "$pid" && [ "$waited" -lt 100 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    if ours "$pid"; then
        echo "pid $pid ignored SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
done
echo "stopped$(echo "$pids" | wc -w | sed 's/^/ /') processes"

if [ -f "$RUN_DIR/namespaces" ]; then
    # Deleting a namespace removes its veths, and their peers with them.
    n=0
    while read -r ns; do
        ip netns del "$ns" 2>/dev/null && n=$((n + 1))
    done < "$RUN_DIR/namespaces"
    rm -f "$RUN_DIR/namespaces"
    echo "removed $n namespaces"
fi

if [ "${KEEP_LOGS:-}" = 1 ]; then
    rm -f "$RUN_DIR"/*.pid
    echo "logs kept in $RUN_DIR"
else
    rm -rf "$RUN_DIR"
fi
