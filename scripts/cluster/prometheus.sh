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
# The same selection as the chart's PodMonitors (templates/monitoring/), as file_sd targets:
# Debian's prometheus has no Kubernetes service discovery, so scrape_targets.py writes them
# from the API. honor_labels keeps the trainer's own `job` and `rank`.
cat >"$DIR/prometheus.yml" <<EOF
global: {scrape_interval: 5s, evaluation_interval: 5s}
rule_files: ["$HERE/../../charts/shufflenet-operator/rules/*.yaml"]
scrape_configs:
  - job_name: shufflenet
    honor_labels: true
    file_sd_configs:
      - files: ["$DIR/targets.json"]
        refresh_interval: 5s
EOF
echo '[]' >"$DIR/targets.json"

read -r port < <(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
holder="$(cat "$STATE/pids/holder.pid")"
setsid nsenter -t "$holder" -n -m -- python3 "$HERE/scrape_targets.py" \
    --server https://127.0.0.1:6443 --ca "$PKI/ca.crt" --token-file "$STATE/auth-header" \
    --out "$DIR/targets.json" </dev/null >"$STATE/logs/scrape-targets.log" 2>&1 &
echo $! >"$STATE/pids/scrape-targets.pid"
echo python3 >"$STATE/pids/scrape-targets.cmd"
setsid nsenter -t "$holder" -n -m -- prometheus --config.file "$DIR/prometheus.yml" \
    --storage.tsdb.path "$DIR/data" --web.listen-address 127.0.0.1:9090 \
    </dev/null >"$STATE/logs/prometheus.log" 2>&1 &
echo $! >"$STATE/pids/prometheus.pid"
echo prometheus >"$STATE/pids/prometheus.cmd"
# A forward left by an earlier Prometheus of this cluster would otherwise outlive its pid file.
if [[ -s "$STATE/pids/forward-prometheus.pid" ]]; then
    kill "$(cat "$STATE/pids/forward-prometheus.pid")" 2>/dev/null || true
fi
forward prometheus "$port" 127.0.0.1:9090
echo "$port" >"$STATE/ports/prometheus"
for ((i = 0; i < 100; i++)); do
    if curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; then
        echo "$port"
        exit 0
    fi
    sleep 0.3
done
log "Prometheus did not become ready; its log:"
tail -n 5 "$STATE/logs/prometheus.log" >&2
exit 1
