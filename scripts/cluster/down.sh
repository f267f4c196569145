#!/usr/bin/env bash
# Stop the cluster that up.sh started in this state dir (and its node, with every process,
# mount, interface, namespace and cgroup it made) and remove the state dir. Safe to call
# twice, or when nothing was started.
#
#   scripts/cluster/down.sh [--keep-logs]    # or: make cluster-down
#
# --keep-logs leaves logs/ (and the marker) behind for a post-mortem; the next up.sh or
# down.sh clears them.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
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
    # Guards against a recycled pid: the process must still run the command up.sh started
    # (recorded next to the pid; the service name for older state dirs).
    local pid=$1 cmd=$2 first
    first="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1)"
    [[ -n "$first" && "$(basename "$first")" == "$cmd" ]]
}

alive() {
    local pidfile="$STATE/pids/$1.pid"
    [[ -s "$pidfile" ]] && running "$(cat "$pidfile")"
}

stop() {
    local name=$1 pidfile="$STATE/pids/$1.pid" pid i cmd=$1
    [[ -s "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    [[ -s "$STATE/pids/$name.cmd" ]] && cmd="$(cat "$STATE/pids/$name.cmd")"
    if running "$pid" && ours "$pid" "$cmd"; then
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
    rm -f "$pidfile" "$STATE/pids/$name.cmd"
}

# shellcheck source=scripts/cluster/node.sh
source "$HERE/node.sh"

if [[ -s "$STATE/pids/holder.pid" ]]; then
    stop_node
fi

# Clients before servers: the scheduler and controller manager would otherwise log a
# storm of connection errors while the API server goes away.
for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop "$c"
done

if [[ -s "$STATE/pids/holder.pid" ]]; then
    # Whatever is left in the namespace (container shims, processes of killed containers),
    # then the holder: with it the namespaces go, and with them their mounts, the veth pair,
    # the bridge and the iptables rules.
    for pid in $(ns_pids); do kill -KILL "$pid" 2>/dev/null || true; done
    for f in "$STATE"/pids/forward-*.pid; do
        [[ -e "$f" ]] && stop "$(basename "$f" .pid)"
    done
    stop holder
    for ((i = 0; i < 50; i++)); do
        [[ -z "$(ns_pids)" ]] && break
        sleep 0.1
    done
    cgroup_root_remove
fi

if ((KEEP_LOGS)); then
    find "$STATE" -mindepth 1 -maxdepth 1 ! -name logs ! -name "$MARKER" -exec rm -rf {} +
else
    rm -rf "$STATE"
fi
log "down ($STATE)"
