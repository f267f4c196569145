#!/usr/bin/env bash
# `make demo-cluster`: the digits job of `make demo`, through helm, the operator and real
# pods on a real node (kubelet, containerd, runc) on this machine.
#
#   scripts/demo-cluster.sh          # then: scripts/cluster/down.sh (make demo-cluster-down)
#
# Brings up the cluster with its node and its registry (scripts/cluster/up.sh --node; builds
# the Kubernetes binaries and the images when they are not cached), pushes the operator and
# trainer images to the registry, `helm install`s the chart with the image values (registry,
# tags, digests: the node's containerd pulls them), creates as an admin would the volumes the
# example claims (PersistentVolumes on directories of this machine: data/digits and a fresh
# checkpoint folder under result/cluster/, bound to the claims `digits` and
# `shufflenet-checkpoints`), applies the 2-rank CPU digits job as shipped (no image: the
# operator runs the chart's cpu trainer image, non-root on a read-only root filesystem),
# starts Prometheus scraping the rank pods, shows `kubectl get sntj` until the job ends, and
# prints what to run next.
#
# Environment:
#   SHUFFLENET_CLUSTER_DIR   the cluster's state dir (default /tmp/shufflenet-cluster)
#   PYTHON                   the project's virtualenv Python (default .venv/bin/python)
#   RESULT_ROOT              where the job's result folder goes (default result/)
#   DEMO_EPOCHS              epochs of the job (default: the example's)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-.venv/bin/python}"
STATE="${SHUFFLENET_CLUSTER_DIR:-/tmp/shufflenet-cluster}"
RESULT_ROOT="$(realpath -m "${RESULT_ROOT:-result}")"
EXAMPLE=manifests/examples/cpu-digits-2rank.yaml
JOB=cpu-digits
DATA="$REPO/data/digits"
# The checkpoint volume's directory, the admin's choice: a fresh one per demo, since the job
# (same name, same namespace) would otherwise find its finished run there and end at once.
CHECKPOINTS="$RESULT_ROOT/cluster/$(date +%Y%m%d-%H%M%S)"
NAMESPACE=default  # where kubectl puts the job (the kubeconfig names no other)
RELEASE=shufflenet
OPERATOR_NAMESPACE=shufflenet-system
TRAINER_UID=10001  # the trainer image's user (images/trainer-cpu/Dockerfile)

log() { printf '[demo-cluster] %s\n' "$*" >&2; }

export SHUFFLENET_CLUSTER_DIR="$STATE"
eval "$(scripts/cluster/up.sh --node)"
eval "$(scripts/cluster/push-images.sh)"

log "helm install $RELEASE (images from the registry $REGISTRY)"
HELM="$(scripts/install-helm.sh)"
"$HELM" upgrade --install "$RELEASE" charts/shufflenet-operator \
    --namespace "$OPERATOR_NAMESPACE" --create-namespace \
    --set "global.imageRegistry=$REGISTRY" \
    --set "operator.image.tag=$OPERATOR_TAG" --set "operator.image.digest=$OPERATOR_DIGEST" \
    --set "trainer.images.cpu.tag=$TRAINER_TAG" --set "trainer.images.cpu.digest=$TRAINER_DIGEST" \
    --set operator.progressInterval=5 \
    --wait --timeout 300s >/dev/null

"$PYTHON" -m shufflenet_trainer.data.prep.demo_data "$DATA" >/dev/null
# A finished job of the same name from an earlier run would be reported, not rerun.
kubectl delete sntj "$JOB" --ignore-not-found --wait >/dev/null

# The admin's part: the volumes the example claims. hostPath volumes get no fsGroup, so the
# checkpoint directory is made the trainer's. A PersistentVolume's path cannot change: the
# volumes of an earlier demo (same names) go first.
mkdir -p "$CHECKPOINTS"
chown "$TRAINER_UID:$TRAINER_UID" "$CHECKPOINTS"
volumes() {
    "$PYTHON" scripts/cluster/local_job.py volumes "$EXAMPLE" --data "$DATA" \
        --checkpoints "$CHECKPOINTS" --namespace "$NAMESPACE"
}
volumes | kubectl delete -f - --ignore-not-found --wait >/dev/null
volumes | kubectl apply -f -

# The user's part: the example as shipped.
if [[ -n "${DEMO_EPOCHS:-}" ]]; then
    "$PYTHON" scripts/cluster/local_job.py job "$EXAMPLE" --set "training.epochs=$DEMO_EPOCHS" |
        kubectl apply -f -
else
    kubectl apply -f "$EXAMPLE"
fi

PROM_PORT="$(scripts/cluster/prometheus.sh)"

log "training; the job's status every 5 s (kubectl get sntj $JOB):"
kubectl get sntj "$JOB" | head -n 1
last=""
while true; do
    phase="$(kubectl get sntj "$JOB" -o jsonpath='{.status.phase}')"
    now="$(kubectl get sntj "$JOB" --no-headers)"
    [[ "$now" != "$last" ]] && printf '%s\n' "$now"
    last="$now"
    [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
    sleep 5
done
# The job's run folder on the volume: <namespace>/<name>.
run_dir="$CHECKPOINTS/$NAMESPACE/$JOB"
result=""
[[ -d "$run_dir" ]] && result="$(find "$run_dir" -maxdepth 1 -name 'training_*' | sort | tail -n 1)"

cat <<EOF

Job $JOB: $phase. Result folder and checkpoint: ${result:-none}

Next:
  export KUBECONFIG=$STATE/kubeconfig
  .venv/bin/snjob status $JOB            # phase, ranks, progress, conditions, events
  kubectl get sntj,pods -o wide
  kubectl logs $JOB-rank-0
  Prometheus (scraping the rank pods and the operator): http://127.0.0.1:$PROM_PORT
    e.g. sum by (job) (rate(shufflenet_train_images_total[1m]))
Tear down (every process, mount, interface and namespace it made): make demo-cluster-down
EOF
# Where the images came from: the kubelet's pulls from the registry (nothing imported them).
echo "Images (the kubelet's Pulled events):"
kubectl get events --all-namespaces --field-selector reason=Pulled \
    -o custom-columns=POD:.involvedObject.name,MESSAGE:.message | sed 's/^/  /'
[[ "$phase" == Succeeded ]]
