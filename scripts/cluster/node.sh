#!/usr/bin/env bash
# The real node of a test cluster: containerd (CRI) + runc, a CNI bridge, kube-proxy and the
# kubelet v1.20.2, with the whole cluster inside a network namespace and a private mount
# namespace that this script creates. Sourced by up.sh (`up.sh --node`) and down.sh.
#
# Why a namespace holder: `ip netns exec` remounts /sys (hiding the cgroup mounts the kubelet
# needs) and gives every command its own mount namespace, so the kubelet's volume mounts
# would be invisible to containerd. Instead one process (`unshare --net --mount`) owns a
# network namespace and a private mount namespace, and every daemon joins both with nsenter.
# Inside: /run is a tmpfs and /var an overlay whose upper layer is in the state dir, so
# nothing lands in the host's /var or /run; host-wide sysctls that the kubelet sets
# (pkg/kubelet/cm/container_manager_linux.go, setupKernelTunables) are shielded by files
# bind-mounted over their /proc/sys entries, so the host keeps its values. Mounts vanish
# with the namespace; down.sh kills every process in it and removes the cgroups it made.
#
# Addresses exist only inside the namespace: node 10.200.0.2 on a veth pair (the kubelet
# refuses a loopback --node-ip and there is no dummy module here), pods 10.244.0.0/24 on the
# bridge, Services 10.96.0.0/24. The host reaches the API server (and Prometheus) through
# loopback port forwards (socat on 127.0.0.1 -> nsenter -> socat into the namespace).
#
# The images come from a registry, as on any cluster: Debian's docker-registry (the CNCF
# distribution registry) serves HTTPS at $REGISTRY with a certificate of the cluster's CA,
# which the node's containerd trusts through its registry hosts configuration (config_path,
# one hosts.toml per registry host: containerd's docs/hosts.md). Its storage is in the cache,
# so an image pushed once is there for every later cluster. Only the pod sandbox image is
# imported instead: it is part of the node, as node images bake it in or kubeadm pulls it
# ahead, and the kubelet needs it before any pod's image can be pulled.

# shellcheck disable=SC2034  # constants used by up.sh and down.sh, which source this file
NODE_NAME=shufflenet-node
NODE_IP=10.200.0.2
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
KUBERNETES_SERVICE_IP=10.96.0.1
CLUSTER_DOMAIN=cluster.local
# The registry the node pulls from (scripts/cluster/push-images.sh pushes there).
REGISTRY=$NODE_IP:5000
# The kubelet writes these host-wide sysctls; they are shielded inside the mount namespace.
SHIELDED_SYSCTLS=(kernel/panic kernel/panic_on_oops vm/overcommit_memory vm/panic_on_oom
    kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
NODE_DAEMONS=(registry containerd kubelet kube-proxy dnsmasq dns-sync)

# Run a command inside the cluster's namespaces.
in_ns() { nsenter -t "$(cat "$STATE/pids/holder.pid")" -n -m -- "$@"; }

# cgroup root of the node's pods (kubelet --cgroup-root): one subtree to remove at the end.
node_cgroup_root() { echo "/shufflenet-$(basename "$STATE")-$(cat "$STATE/node-id")"; }

ns_create() {
    openssl rand -hex 4 >"$STATE/node-id"
    setsid unshare --net --mount --propagation private sleep infinity </dev/null >/dev/null 2>&1 &
    echo $! >"$STATE/pids/holder.pid"
    echo sleep >"$STATE/pids/holder.cmd"
    local i
    for ((i = 0; i < 50; i++)); do
        [[ "$(readlink "/proc/$!/ns/net")" != "$(readlink /proc/self/ns/net)" ]] && break
        sleep 0.1
    done
    mkdir -p "$STATE"/{var/upper,var/work,sysctl}
    local s
    for s in "${SHIELDED_SYSCTLS[@]}"; do
        cat "/proc/sys/$s" >"$STATE/sysctl/${s//\//.}"
    done
    # shellcheck disable=SC2016  # expanded by the inner shell
    in_ns bash -euo pipefail -c '
        state=$1; shift
        mount -t tmpfs -o mode=755 shufflenet-run /run
        mount -t overlay shufflenet-var \
            -o "lowerdir=/var,upperdir=$state/var/upper,workdir=$state/var/work" /var
        for s in "$@"; do mount --bind "$state/sysctl/${s//\//.}" "/proc/sys/$s"; done
        # The kubelet 1.20 serves the device-plugin registry at a fixed path
        # (pluginapi.KubeletSocket = /var/lib/kubelet/device-plugins/kubelet.sock, whatever
        # --root-dir says): put that directory where plugins outside can reach it.
        mkdir -p "$state/kubelet/device-plugins" /var/lib/kubelet/device-plugins
        mount --bind "$state/kubelet/device-plugins" /var/lib/kubelet/device-plugins
        ip link set lo up
        ip link add snode0 type veth peer name snode1
        ip addr add '"$NODE_IP"'/24 dev snode0
        ip link set snode0 up
        ip link set snode1 up
        ip route add default dev snode0
        # Namespaced: pods reach Services and the node through this namespace only.
        sysctl -qw net.ipv4.ip_forward=1
    ' _ "$STATE" "${SHIELDED_SYSCTLS[@]}"
}

ns_alive() { alive holder; }

# Processes whose network namespace is the cluster's (containers and shims included).
ns_pids() {
    local holder ns pid
    holder="$(cat "$STATE/pids/holder.pid" 2>/dev/null)" || return 0
    ns="$(readlink "/proc/$holder/ns/net" 2>/dev/null)" || return 0
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        [[ "$pid" == "$holder" ]] && continue
        [[ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" == "$ns" ]] && echo "$pid"
    done
}

# A loopback port on the host forwarding into the namespace. $1: name, $2: host port,
# $3: address:port inside.
forward() {
    local name=$1 port=$2 target=$3 holder
    holder="$(cat "$STATE/pids/holder.pid")"
    setsid socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" \
        "EXEC:nsenter -t $holder -n socat STDIO TCP\\:${target//:/\\:}" \
        </dev/null >"$STATE/logs/forward-$name.log" 2>&1 &
    echo $! >"$STATE/pids/forward-$name.pid"
    echo socat >"$STATE/pids/forward-$name.cmd"
}

write_containerd_config() {
    mkdir -p "$STATE/containerd" "$STATE/cni/net.d" "$CONTAINERD_ROOT"
    cat >"$STATE/containerd/config.toml" <<EOF
version = 2
# Images stay in the cache across clusters: importing the trainer image takes minutes.
root = "$CONTAINERD_ROOT"
state = "$STATE/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$STATE/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Without CAP_SYS_RESOURCE (as in these VMs) runc cannot lower oom_score_adj below the
  # parent's and fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  # One hosts.toml per registry host under config_path (containerd's docs/hosts.md): here
  # the cluster's registry, and its CA. (A table of its own, after the plugin's own keys: a
  # key below a table header belongs to that table.)
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$STATE/containerd/certs.d"
EOF
    mkdir -p "$STATE/containerd/certs.d/$REGISTRY"
    cat >"$STATE/containerd/certs.d/$REGISTRY/hosts.toml" <<EOF
server = "https://$REGISTRY"
[host."https://$REGISTRY"]
  capabilities = ["pull", "resolve"]
  ca = "$PKI/ca.crt"
EOF
    cat >"$STATE/cni/net.d/10-shufflenet.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "shufflenet",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

write_kubelet_config() {
    local dir="$STATE/kubelet"
    mkdir -p "$dir/root"
    pki_cert kubelet "/CN=system:node:$NODE_NAME/O=system:nodes" "" clientAuth
    pki_cert kubelet-serving "/CN=$NODE_NAME" "DNS:$NODE_NAME,IP:$NODE_IP" serverAuth
    pki_kubeconfig "$dir/kubeconfig" "https://$NODE_IP:6443" kubelet
    cat >"$dir/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Real authentication: client certificates signed by the cluster CA, and every request
# authorised by the API server (SubjectAccessReview); no anonymous access.
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$PKI/kubelet-serving.crt"
tlsPrivateKeyFile: "$PKI/kubelet-serving.key"
address: "$NODE_IP"
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
cgroupDriver: cgroupfs
cgroupRoot: "$(node_cgroup_root)"
failSwapOn: false
# The sandbox image is imported, not pulled: garbage-collecting it would lose it for good.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# The shared disk of a test machine is no reason to evict training pods.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%",
  nodefs.inodesFree: "1%"}
clusterDNS: ["$NODE_IP"]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: ""
# How often a pod's ConfigMap volumes are re-synced (default 1m): a rank table update
# reaches the mounted file within about this. The trainer must not rely on it being short.
syncFrequency: ${SHUFFLENET_NODE_SYNC:-10s}
maxPods: 50
EOF
}

write_kube_proxy_config() {
    pki_cert kube-proxy "/CN=system:kube-proxy" "" clientAuth
    pki_kubeconfig "$STATE/kube-proxy.kubeconfig" "https://$NODE_IP:6443" kube-proxy
    cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$STATE/kube-proxy.kubeconfig"}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
# Without br_netfilter (a host-wide module) bridged replies skip iptables: masquerading all
# Service traffic sends them back through the node, where conntrack undoes the NAT.
iptables: {masqueradeAll: true}
# 0: leave the conntrack table size and timeouts alone (they are host-wide sysctls).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
EOF
}

cgroup_root_create() {
    local root d
    root="$(node_cgroup_root)"
    for d in /sys/fs/cgroup/*/; do
        [[ -d "$d" && "$d" != */unified/ ]] && mkdir -p "$d${root#/}"
    done
    return 0
}

# Remove the node's cgroup subtree, deepest first (rmdir of an empty cgroup is how cgroupfs
# deletes one).
cgroup_root_remove() {
    [[ -s "$STATE/node-id" ]] || return 0
    local root d
    root="$(node_cgroup_root)"
    for d in /sys/fs/cgroup/*/"${root#/}"; do
        [[ -d "$d" ]] || continue
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

# The cluster's registry: HTTPS on the node's address with a certificate of the cluster's
# CA, no authentication (only the namespace reaches it), storage in the cache.
start_registry() {
    local bin=$1 dir="$STATE/registry"
    mkdir -p "$dir" "$CACHE/registry"
    pki_cert registry "/CN=shufflenet-registry" "IP:$NODE_IP" serverAuth
    cat >"$dir/config.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: "$CACHE/registry"}
  # Pushes of the same image reuse its blobs; nothing here deletes them.
  delete: {enabled: false}
http:
  addr: $REGISTRY
  tls: {certificate: "$PKI/registry.crt", key: "$PKI/registry.key"}
EOF
    start_ns registry "$bin/docker-registry" serve "$dir/config.yml"
    wait_for "the registry at $REGISTRY" in_ns curl -sf --cacert "$PKI/ca.crt" "https://$REGISTRY/v2/"
}

start_node() {
    local bin=$1
    cgroup_root_create
    start_registry "$bin"
    write_containerd_config
    start_ns containerd containerd --config "$STATE/containerd/config.toml"
    wait_for containerd ctr --address "$STATE/containerd/containerd.sock" version
    "$IMAGES" import --address "$STATE/containerd/containerd.sock" "$PAUSE_IMAGE" >&2

    # The node's DNS: dnsmasq serving <svc>.<ns>.svc.cluster.local and the pods' hostname
    # records from a hosts file that dns_sync.py keeps in step with the API's Endpoints.
    mkdir -p "$STATE/dns"
    : >"$STATE/dns/hosts"
    start_ns dnsmasq dnsmasq --keep-in-foreground --log-facility=- --user=root \
        --no-resolv --no-hosts --addn-hosts="$STATE/dns/hosts" --local="/$CLUSTER_DOMAIN/" \
        --listen-address="$NODE_IP" --bind-interfaces --local-ttl=1 --neg-ttl=1 \
        --pid-file="$STATE/dns/dnsmasq.pid"
    start_ns dns-sync python3 "$HERE/dns_sync.py" --server "$API_INSIDE" \
        --ca "$PKI/ca.crt" --token-file "$STATE/auth-header" --hosts "$STATE/dns/hosts" \
        --domain "$CLUSTER_DOMAIN" --dnsmasq-pid "$STATE/dns/dnsmasq.pid"

    write_kubelet_config
    start_ns kubelet "$bin/kubelet" --config "$STATE/kubelet/config.yaml" \
        --kubeconfig "$STATE/kubelet/kubeconfig" --root-dir "$STATE/kubelet/root" \
        --container-runtime remote \
        --container-runtime-endpoint "unix://$STATE/containerd/containerd.sock" \
        --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" \
        --node-labels "shufflenet.io/real-node=true"
    write_kube_proxy_config
    start_ns kube-proxy "$bin/kube-proxy" --config "$STATE/kube-proxy.yaml"
    wait_for "node $NODE_NAME Ready" node_ready
}

node_ready() {
    api_get "/api/v1/nodes/$NODE_NAME" | python3 -c '
import json, sys
node = json.load(sys.stdin)
ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
tainted = any(t["key"] == "node.kubernetes.io/not-ready" for t in node["spec"].get("taints") or [])
sys.exit(0 if ready and not tainted else 1)'
}

# Stop the node: the kubelet first (so it does not restart what is stopped next), then every
# container through containerd, then every other process left in the namespace.
stop_node() {
    stop prometheus
    stop scrape-targets
    stop kube-proxy
    stop kubelet
    stop dns-sync
    stop dnsmasq
    local sock="$STATE/containerd/containerd.sock" c
    if [[ -S "$sock" ]] && alive containerd; then
        for c in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
            ctr --address "$sock" -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
        done
        sleep 1
        for c in $(ctr --address "$sock" -n k8s.io containers ls -q 2>/dev/null); do
            ctr --address "$sock" -n k8s.io tasks rm -f "$c" >/dev/null 2>&1 || true
            ctr --address "$sock" -n k8s.io containers rm "$c" >/dev/null 2>&1 || true
        done
    fi
    stop containerd
    stop registry
}
