#!/usr/bin/env bash
# Stop the control plane that up.sh started in this state dir and remove the state dir.
# Safe to call twice, or when nothing was started.
#
#   scripts/cluster/down.sh [--keep-logs]    # or: make cluster-down
#
# --keep-logs leaves logs/ (and the marker) behind for a post-mortem; the next up.sh or
# down.sh clears them.
set -euo pipefail

STATE="${SHUFFLENET_CLUSTER_DIR:-/tmp/shufflenet-cluster}"
MARKER=.shufflenet-cluster
KEEP_LOGS=0
[[ "${1:-}" == --keep-logs ]] && KEEP_LOGS=1

log() { printf '[cluster-down] %s\n' "$*" >&2; }

[[ -d "$STATE" ]] || exit 0
# Only ever delete a directory that up.sh made, whatever the variable points at.
if [[ ! -f "$STATE/$MARKER" ]]; then
    log "$STATE is not a cluster state dir (no $MARKER); leaving it alone"
    exit 1
fi

running() {
    # Alive and not a zombie (a container's init may be slow to reap).
    local pid=$1 st
    [[ -r "/proc/$pid/stat" ]] || return 1
    st="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ "$st" != Z && "$st" != X ]]
}

ours() {
    # Guards against a recycled pid: the process must still be the binary we started.
    local pid=$1 name=$2
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | awk '{print $1}' | grep -q "/$name\$\|^$name\$"
}

stop() {
    local name=$1 pidfile="$STATE/pids/$1.pid" pid i
    [[ -s "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if running "$pid" && ours "$pid" "$name"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            log "$name ($pid) ignored SIGTERM; killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

# Clients before servers: the scheduler and controller manager would otherwise log a
# storm of connection errors while the API server goes away.
for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop "$c"
done

if ((KEEP_LOGS)); then
    find "$STATE" -mindepth 1 -maxdepth 1 ! -name logs ! -name "$MARKER" -exec rm -rf {} +
else
    rm -rf "$STATE"
fi
log "down ($STATE)"
