#!/usr/bin/env bash
# Start a real Kubernetes v1.20.2 cluster: etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler, and with --node a real node (containerd, runc, CNI bridge, kube-proxy, the
# kubelet, a DNS server; see node.sh). Prints shell `export` lines for KUBECONFIG and PATH on
# stdout:
#
#   eval "$(scripts/cluster/up.sh --node)"     # or: make cluster-up
#   eval "$(scripts/cluster/up.sh)"            # control plane only, on loopback
#
# Without --node there is no kubelet: the tests' simulated node agent plays it (tests/sim/),
# which is how the scale tests run hundreds of pods on two cores. With --node the whole
# cluster lives in a network namespace of its own and the host reaches the API server
# through a loopback port forward (node.sh says why and how). The node needs root and
# cgroup v1 (as these machines mount it; cgroup v2 hosts are untested with a 1.20 kubelet).
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
#   SHUFFLENET_NODE_SYNC     the kubelet's syncFrequency with --node (default 10s)
set -euo pipefail

NODE=0
[[ "${1:-}" == --node ]] && NODE=1

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGES="$HERE/../images/build.sh"
STATE="${SHUFFLENET_CLUSTER_DIR:-/tmp/shufflenet-cluster}"
CACHE="${SHUFFLENET_CACHE:-$HOME/.cache/shufflenet-k8s}"
CONTAINERD_ROOT="$CACHE/containerd"
PKI="$STATE/pki"
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

# shellcheck source=scripts/cluster/pki.sh
source "$HERE/pki.sh"
# shellcheck source=scripts/cluster/node.sh
source "$HERE/node.sh"

api_get() {
    # $1: path. The bearer token is read from a file so it never shows in `ps`.
    curl -sS --fail --max-time 5 --cacert "$PKI/ca.crt" \
        -H @"$STATE/auth-header" "https://127.0.0.1:$(cat "$STATE/ports/apiserver")$1"
}

api_ready() { [[ "$(api_get /readyz 2>/dev/null)" == ok ]]; }

all_up() {
    local c
    for c in etcd kube-apiserver kube-controller-manager kube-scheduler; do
        alive "$c" || return 1
    done
    if [[ -f "$STATE/node-id" ]]; then
        for c in holder forward-apiserver "${NODE_DAEMONS[@]}"; do
            alive "$c" || return 1
        done
    fi
    api_ready
}


has_node() { [[ -f "$STATE/node-id" ]]; }

if [[ -f "$STATE/$MARKER" ]]; then
    # Reused only when it is the kind asked for (with or without a node).
    if all_up && { has_node && ((NODE)) || ! has_node && ((!NODE)); }; then
        log "already up ($STATE)"
        print_exports
        exit 0
    fi
    log "stale or other state in $STATE; cleaning up first"
    "$HERE/down.sh" >&2
fi
if [[ -e "$STATE" ]] && [[ -n "$(ls -A "$STATE")" ]]; then
    log "$STATE exists and is not a cluster state dir; refusing to use it"
    exit 1
fi

BIN="$("$HERE/build.sh" "$( ((NODE)) && echo --node)")"
ETCD="$(command -v etcd)"
if ((NODE)); then
    [[ $(id -u) -eq 0 ]] || {
        log "--node needs root (namespaces, mounts, containerd)"
        exit 1
    }
    # The node's containerd keeps its images in the cache: one real node at a time. The
    # lock is inherited by the daemons and so held while the node runs.
    mkdir -p "$CACHE"
    exec 8>"$CACHE/node.lock"
    flock -n 8 || {
        log "another real node is running on this machine (it holds $CACHE/node.lock)"
        exit 1
    }
    eval "$("$IMAGES" env)"
fi

mkdir -p "$STATE"/{etcd,logs,pids,ports} "$PKI"
chmod 700 "$STATE"
touch "$STATE/$MARKER"
printf '%s\n' "$BIN" >"$STATE/bindir"

# If anything below fails, stop what was started so a retry begins clean.
trap 'rc=$?; if ((rc != 0)); then log "start failed; logs in $STATE/logs"; tail -n 20 "$STATE"/logs/*.log >&2 || true; "$HERE/down.sh" --keep-logs >&2 || true; fi' EXIT

start() {
    # $1: name, then the command. setsid: the daemons outlive the shell that started them
    # and do not get a terminal's Ctrl-C; down.sh stops them by pid file, after checking
    # that the pid still runs the command recorded here.
    local name=$1
    shift
    setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/pids/$name.pid"
    basename "$1" >"$STATE/pids/$name.cmd"
}

# start, inside the cluster's namespaces when it has a node. nsenter execs the command, so
# the pid recorded is the daemon's.
start_ns() {
    local name=$1
    shift
    if ((NODE)); then
        start "$name" nsenter -t "$(cat "$STATE/pids/holder.pid")" -n -m -- "$@"
        basename "$1" >"$STATE/pids/$name.cmd"
    else
        start "$name" "$@"
    fi
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

free_ports() {
    # $1: how many free loopback ports, all chosen while every socket is still held, so
    # they are distinct.
    python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
}

if ((NODE)); then
    ns_create
    # Inside the namespace the well-known ports are free; the host gets a free loopback
    # port forwarded to the API server.
    P_ETCD=2379 P_PEER=2380 API_PORT=6443
    read -r P_API < <(free_ports 1)
    API_BIND=0.0.0.0 API_ADVERTISE=$NODE_IP API_INSIDE="https://127.0.0.1:$API_PORT"
    API_IPS="127.0.0.1,$NODE_IP" SVC_CIDR=$SERVICE_CIDR SVC_IP=$KUBERNETES_SERVICE_IP
else
    read -r P_ETCD P_PEER P_API < <(free_ports 3)
    API_PORT=$P_API API_BIND=127.0.0.1 API_ADVERTISE=127.0.0.1
    API_INSIDE="https://127.0.0.1:$P_API"
    # The service CIDR is in loopback too, so no address the cluster hands out points off
    # this machine.
    API_IPS=127.0.0.1 SVC_CIDR=127.0.3.0/24 SVC_IP=127.0.3.1
fi
echo "$P_ETCD" >"$STATE/ports/etcd"
echo "$P_API" >"$STATE/ports/apiserver"

# Credentials: a CA for the API server's certificate and the x509 clients (the node's
# kubelet and kube-proxy), a static bearer token for an admin in system:masters (RBAC lets
# that group do anything), and an RSA key that signs and verifies service-account tokens.
pki_ca
pki_apiserver "$API_IPS" "$SVC_IP"
pki_cert apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client/O=system:masters" "" clientAuth
TOKEN="$(openssl rand -hex 24)"
printf '%s,shufflenet-admin,shufflenet-admin,"system:masters"\n' "$TOKEN" >"$PKI/tokens.csv"
printf 'Authorization: Bearer %s\n' "$TOKEN" >"$STATE/auth-header"
openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
chmod 600 "$PKI/"*.key "$PKI/tokens.csv" "$STATE/auth-header"

start_ns etcd "$ETCD" --name shufflenet --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$P_ETCD" --advertise-client-urls "http://127.0.0.1:$P_ETCD" \
    --listen-peer-urls "http://127.0.0.1:$P_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$P_PEER" \
    --initial-cluster "shufflenet=http://127.0.0.1:$P_PEER" --listen-metrics-urls "" \
    --log-level warn
if ((NODE)); then
    wait_for etcd in_ns curl -sf "http://127.0.0.1:$P_ETCD/health"
    forward apiserver "$P_API" "127.0.0.1:$API_PORT"
else
    wait_for etcd curl -sf "http://127.0.0.1:$P_ETCD/health"
fi

# --insecure-port=0: no unauthenticated port. Without a node nothing reachable stands
# behind the `kubernetes` Service (--endpoint-reconciler-type=none); with one, the lease
# reconciler points it at the node address, where pods reach the API through kube-proxy.
# Node,RBAC + NodeRestriction: the kubelet is authorised as its node only. The admission
# plugins of strict clusters besides 1.20's default set (which has LimitRanger and
# ResourceQuota already; named here so that no test depends on the default):
# OwnerReferencesPermissionEnforcement (on in OpenShift) refuses an object whose owner
# reference sets blockOwnerDeletion unless its creator may update the owner's finalizers;
# ResourceQuota refuses pods without requests in a namespace with a requests quota;
# LimitRanger applies a namespace's LimitRange.
RECONCILER=none
((NODE)) && RECONCILER=lease
start_ns kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$P_ETCD" \
    --bind-address "$API_BIND" --advertise-address "$API_ADVERTISE" \
    --secure-port "$API_PORT" --insecure-port 0 \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --token-auth-file "$PKI/tokens.csv" --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction,OwnerReferencesPermissionEnforcement,LimitRanger,ResourceQuota \
    --service-account-key-file "$PKI/sa.key" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range "$SVC_CIDR" --endpoint-reconciler-type "$RECONCILER" \
    --allow-privileged --profiling=false
wait_for "kube-apiserver /readyz" api_ready

# Two kubeconfigs with the admin token: for the host (through the forward when there is a
# node) and for the control-plane daemons inside.
write_admin_kubeconfig() {
    cat >"$1" <<EOK
apiVersion: v1
kind: Config
clusters:
- name: shufflenet
  cluster:
    server: $2
    certificate-authority: $PKI/ca.crt
users:
- name: shufflenet-admin
  user:
    token: $TOKEN
contexts:
- name: shufflenet
  context: {cluster: shufflenet, user: shufflenet-admin, namespace: default}
current-context: shufflenet
EOK
    chmod 600 "$1"
}
write_admin_kubeconfig "$STATE/kubeconfig" "https://127.0.0.1:$P_API"
write_admin_kubeconfig "$STATE/kubeconfig.inside" "$API_INSIDE"

# The controller manager creates the `default` ServiceAccounts (and, in 1.20, their token
# Secrets, which pod admission needs) and runs the garbage collector. Controllers that expect
# clouds or attachable volumes are off; the persistent-volume binder is on (it binds the
# claims that jobs name to the PersistentVolumes an admin made, as in `make demo-cluster`:
# without it a pod of an unbound claim is never scheduled); without a real node the
# node-lifecycle controller is off too
# (it would taint and evict the simulated nodes), with one it is on (it clears the
# not-ready taint once the kubelet reports Ready). Serving ports are off (0): nothing
# scrapes them, and parallel clusters must not collide on the fixed defaults.
CONTROLLERS='*,-nodeipam,-cloud-node-lifecycle,-route,-service,-attachdetach,-persistentvolume-expander,-pv-protection,-pvc-protection'
((NODE)) || CONTROLLERS+=',-nodelifecycle,-ttl'
start_ns kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/kubeconfig.inside" --leader-elect=false \
    --port 0 --secure-port 0 \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --controllers "$CONTROLLERS"

start_ns kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$STATE/kubeconfig.inside" --leader-elect=false --port 0 --secure-port 0

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

if ((NODE)); then
    node_start=$SECONDS
    start_node "$BIN"
    log "node $NODE_NAME Ready in $((SECONDS - node_start)) s"
fi

trap - EXIT
log "up: API https://127.0.0.1:$P_API, state in $STATE"
print_exports
