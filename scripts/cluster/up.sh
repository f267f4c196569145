#!/usr/bin/env bash
# Start a real Kubernetes v1.20.2 control plane on loopback: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler. There is no kubelet: tests play it
# (tests/sim/). Prints shell `export` lines for KUBECONFIG and PATH on stdout:
#
#   eval "$(scripts/cluster/up.sh)"     # or: make cluster-up
#
# Idempotent: when the cluster of this state dir is already up it only prints the exports;
# a half-dead one is stopped and started afresh.
#
# Environment:
#   SHUFFLENET_CLUSTER_DIR   state dir (default /tmp/shufflenet-cluster): data, keys, logs,
#                            pid files, kubeconfig. One cluster per state dir; parallel
#                            clusters need different dirs (ports are picked free at start).
#   SHUFFLENET_CACHE         where build.sh caches the binaries
#   SHUFFLENET_CLUSTER_TIMEOUT   seconds to wait for readiness (default 120)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${SHUFFLENET_CLUSTER_DIR:-/tmp/shufflenet-cluster}"
TIMEOUT="${SHUFFLENET_CLUSTER_TIMEOUT:-120}"
MARKER=.shufflenet-cluster

log() { printf '[cluster-up] %s\n' "$*" >&2; }

print_exports() {
    printf 'export KUBECONFIG=%q\n' "$STATE/kubeconfig"
    # $PATH is meant literally: it expands where the line is eval'd.
    # shellcheck disable=SC2016
    printf 'export PATH=%q:"$PATH"\n' "$(cat "$STATE/bindir")"
}

alive() {
    local pidfile="$STATE/pids/$1.pid" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(cat "$pidfile")"
    kill -0 "$pid" 2>/dev/null
}

api_get() {
    # $1: path. The bearer token is read from a file so it never shows in `ps`.
    curl -sS --fail --max-time 5 --cacert "$STATE/pki/apiserver.crt" \
        -H @"$STATE/auth-header" "https://127.0.0.1:$(cat "$STATE/ports/apiserver")$1"
}

api_ready() { [[ "$(api_get /readyz 2>/dev/null)" == ok ]]; }

all_up() {
    local c
    for c in etcd kube-apiserver kube-controller-manager kube-scheduler; do
        alive "$c" || return 1
    done
    api_ready
}

if [[ -f "$STATE/$MARKER" ]]; then
    if all_up; then
        log "already up ($STATE)"
        print_exports
        exit 0
    fi
    log "stale state in $STATE; cleaning up first"
    "$HERE/down.sh" >&2
fi
if [[ -e "$STATE" ]] && [[ -n "$(ls -A "$STATE")" ]]; then
    log "$STATE exists and is not a cluster state dir; refusing to use it"
    exit 1
fi

BIN="$("$HERE/build.sh")"
ETCD="$(command -v etcd)"

mkdir -p "$STATE"/{etcd,pki,logs,pids,ports}
chmod 700 "$STATE"
touch "$STATE/$MARKER"
printf '%s\n' "$BIN" >"$STATE/bindir"

# If anything below fails, stop what was started so a retry begins clean.
trap 'rc=$?; if ((rc != 0)); then log "start failed; logs in $STATE/logs"; tail -n 20 "$STATE"/logs/*.log >&2 || true; "$HERE/down.sh" --keep-logs >&2 || true; fi' EXIT

# Free loopback ports, all chosen while every socket is still held, so they are distinct.
read -r P_ETCD P_PEER P_API < <(
    python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
echo "$P_ETCD" >"$STATE/ports/etcd"
echo "$P_API" >"$STATE/ports/apiserver"

# Credentials: a static bearer token for an admin in system:masters (RBAC lets that group do
# anything), and an RSA key that signs and verifies service-account tokens.
TOKEN="$(openssl rand -hex 24)"
printf '%s,shufflenet-admin,shufflenet-admin,"system:masters"\n' "$TOKEN" >"$STATE/pki/tokens.csv"
printf 'Authorization: Bearer %s\n' "$TOKEN" >"$STATE/auth-header"
openssl genrsa -out "$STATE/pki/sa.key" 2048 2>/dev/null
chmod 600 "$STATE/pki/"* "$STATE/auth-header"

start() {
    # $1: name, then the command. setsid: the daemons outlive the shell that started them
    # and do not get a terminal's Ctrl-C; down.sh stops them by pid file.
    local name=$1
    shift
    setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/pids/$name.pid"
}

wait_for() {
    # $1: what, $2...: a command that succeeds when it is there.
    local what=$1 deadline=$((SECONDS + TIMEOUT))
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${TIMEOUT}s waiting for $what"
            return 1
        fi
        sleep 0.3
    done
}

start etcd "$ETCD" --name shufflenet --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$P_ETCD" --advertise-client-urls "http://127.0.0.1:$P_ETCD" \
    --listen-peer-urls "http://127.0.0.1:$P_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$P_PEER" \
    --initial-cluster "shufflenet=http://127.0.0.1:$P_PEER" --listen-metrics-urls "" \
    --log-level warn
wait_for etcd curl -sf "http://127.0.0.1:$P_ETCD/health"

# --insecure-port=0: no unauthenticated port. --endpoint-reconciler-type=none: nothing
# reachable stands behind the `kubernetes` Service. The service CIDR is in loopback too, so
# no address the cluster hands out points off this machine.
start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$P_ETCD" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --secure-port "$P_API" --insecure-port 0 --cert-dir "$STATE/pki" \
    --token-auth-file "$STATE/pki/tokens.csv" --authorization-mode RBAC \
    --service-account-key-file "$STATE/pki/sa.key" \
    --service-account-signing-key-file "$STATE/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range 127.0.3.0/24 --endpoint-reconciler-type none \
    --allow-privileged --profiling=false
wait_for "kube-apiserver /readyz" api_ready

cat >"$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: shufflenet
  cluster:
    server: https://127.0.0.1:$P_API
    certificate-authority: $STATE/pki/apiserver.crt
users:
- name: shufflenet-admin
  user:
    token: $TOKEN
contexts:
- name: shufflenet
  context: {cluster: shufflenet, user: shufflenet-admin, namespace: default}
current-context: shufflenet
EOF
chmod 600 "$STATE/kubeconfig"

# The controller manager creates the `default` ServiceAccounts (and, in 1.20, their token
# Secrets, which pod admission needs) and runs the garbage collector. Controllers that expect
# kubelets, clouds or volumes are off: the node-lifecycle controller would taint and evict
# the simulated nodes. Serving ports are off (0): nothing scrapes them, and parallel clusters
# must not collide on the fixed defaults.
start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/kubeconfig" --leader-elect=false \
    --port 0 --secure-port 0 \
    --service-account-private-key-file "$STATE/pki/sa.key" \
    --root-ca-file "$STATE/pki/apiserver.crt" \
    --controllers '*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-route,-service,-attachdetach,-persistentvolume-binder,-persistentvolume-expander,-pv-protection,-pvc-protection,-ttl'

start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$STATE/kubeconfig" --leader-elect=false --port 0 --secure-port 0

# Pods in `default` are refused until its ServiceAccount has a token Secret: wait for it so
# the cluster is usable the moment this script returns.
sa_ready() {
    api_get /api/v1/namespaces/default/serviceaccounts/default | grep -q '"secrets"'
}
wait_for "the default ServiceAccount" sa_ready
for c in kube-controller-manager kube-scheduler; do
    alive "$c" || {
        log "$c exited"
        exit 1
    }
done

trap - EXIT
log "up: API https://127.0.0.1:$P_API, state in $STATE"
print_exports
