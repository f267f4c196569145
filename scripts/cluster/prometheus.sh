#!/usr/bin/env bash
# Prometheus for the cluster with a real node (up.sh --node): Debian's prometheus, inside
# the cluster's network namespace (where the pod IPs are), finding the rank pods and the
# operator through the API as the chart's PodMonitors select them, and reachable from the
# host on a loopback port. Prints that port; a no-op (printing it again) when it runs.
#
#   scripts/cluster/prometheus.sh      # SHUFFLENET_CLUSTER_DIR: the cluster's state dir
#
# down.sh stops it with the rest of the namespace.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${SHUFFLENET_CLUSTER_DIR:-/tmp/shufflenet-cluster}"
PKI="$STATE/pki"
DIR="$STATE/prometheus"
# shellcheck source=scripts/cluster/node.sh
source "$HERE/node.sh"

log() { printf '[prometheus] %s\n' "$*" >&2; }

[[ -s "$STATE/pids/holder.pid" ]] || {
    log "no cluster with a real node in $STATE (run scripts/cluster/up.sh --node)"
    exit 1
}
if [[ -s "$STATE/ports/prometheus" ]] && kill -0 "$(cat "$STATE/pids/prometheus.pid")" 2>/dev/null; then
    cat "$STATE/ports/prometheus"
    exit 0
fi
command -v prometheus >/dev/null || {
    log "installing Debian's prometheus"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
}

mkdir -p "$DIR/data"
sed -E 's/^Authorization: Bearer //' "$STATE/auth-header" >"$DIR/token"
chmod 600 "$DIR/token"
# The same selection as the chart's PodMonitors (templates/monitoring/): every metrics port
# of every rank pod (`metrics`, `metrics-<k>`), labelled with the job and rank; the
# operator's `metrics` port. honor_labels keeps the trainer's own `job` and `rank`.
cat >"$DIR/prometheus.yml" <<EOF
global: {scrape_interval: 5s, evaluation_interval: 5s}
rule_files: ["$HERE/../../charts/shufflenet-operator/rules/*.yaml"]
scrape_configs:
  - job_name: shufflenet-trainer
    honor_labels: true
    kubernetes_sd_configs:
      - role: pod
        api_server: https://127.0.0.1:6443
        tls_config: {ca_file: "$PKI/ca.crt"}
        authorization: {credentials_file: "$DIR/token"}
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_label_training_shufflenet_io_job_name]
        regex: .+
        action: keep
      - source_labels: [__meta_kubernetes_pod_container_port_name]
        regex: metrics(-[0-9]+)?
        action: keep
      - source_labels: [__meta_kubernetes_pod_label_training_shufflenet_io_job_name]
        target_label: job
      - source_labels: [__meta_kubernetes_pod_label_training_shufflenet_io_rank]
        target_label: rank
  - job_name: shufflenet-operator
    honor_labels: true
    kubernetes_sd_configs:
      - role: pod
        api_server: https://127.0.0.1:6443
        tls_config: {ca_file: "$PKI/ca.crt"}
        authorization: {credentials_file: "$DIR/token"}
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name]
        regex: shufflenet-operator
        action: keep
      - source_labels: [__meta_kubernetes_pod_container_port_name]
        regex: metrics
        action: keep
EOF

read -r port < <(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
holder="$(cat "$STATE/pids/holder.pid")"
setsid nsenter -t "$holder" -n -m -- prometheus --config.file "$DIR/prometheus.yml" \
    --storage.tsdb.path "$DIR/data" --web.listen-address 127.0.0.1:9090 \
    </dev/null >"$STATE/logs/prometheus.log" 2>&1 &
echo $! >"$STATE/pids/prometheus.pid"
echo prometheus >"$STATE/pids/prometheus.cmd"
forward prometheus "$port" 127.0.0.1:9090
echo "$port" >"$STATE/ports/prometheus"
for ((i = 0; i < 100; i++)); do
    curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1 && break
    sleep 0.3
done
echo "$port"
