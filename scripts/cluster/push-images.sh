#!/usr/bin/env bash
# Push the operator and trainer images (built or cached) into the registry of the real node
# that `up.sh --node` started, from inside the cluster's network namespace, where the
# registry listens (node.sh), trusting the cluster's CA as the node's containerd does.
#
#   eval "$(scripts/cluster/push-images.sh)"
#   # REGISTRY, OPERATOR_IMAGE/_TAG/_DIGEST, TRAINER_IMAGE/_TAG/_DIGEST (scripts/images/build.sh)
#
# A push of what the registry holds is a no-op (build.sh checks first), and the registry's
# storage is in the cache, so that holds across clusters.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${SHUFFLENET_CLUSTER_DIR:-/tmp/shufflenet-cluster}"
# shellcheck source=scripts/cluster/node.sh
source "$HERE/node.sh"

if [[ ! -s "$STATE/pids/holder.pid" ]] || ! kill -0 "$(cat "$STATE/pids/holder.pid")" 2>/dev/null; then
    printf '[push-images] no real node in %s: start one with scripts/cluster/up.sh --node\n' \
        "$STATE" >&2
    exit 1
fi
REGISTRY_CA="$STATE/pki/ca.crt" nsenter -t "$(cat "$STATE/pids/holder.pid")" -n -- \
    "$HERE/../images/build.sh" push "$REGISTRY"
