"""The ShuffleNetTrainingJob custom resource definition, as Python data.

This is the one source of truth: `snjob render crd` (and `make manifests`) writes
manifests/crd/shufflenettrainingjobs.yaml from it, a test checks the committed YAML equals the
rendering, and `snjob run-local` validates manifests against the same schema.

Kubernetes 1.20 compatible: apiextensions.k8s.io/v1 with a structural schema (types
everywhere, `x-kubernetes-preserve-unknown-fields` only for embedded Kubernetes objects),
defaults, enums and minimums; no CEL rules. Optional sub-objects default to `{}` so that
their own defaults apply when they are left out, as the API server does.

The trainer's flags (shufflenet_trainer.train.config) take their choices from the enumerations here.
"""

from __future__ import annotations

import copy
from typing import Any

GROUP = "training.shufflenet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ShuffleNetTrainingJob"
PLURAL = "shufflenettrainingjobs"
SINGULAR = "shufflenettrainingjob"
SHORT_NAMES = ["snjob", "sntj"]

ARCHS = ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]
DEVICE_TYPES = ["npu", "gpu", "cpu"]
AMP_MODES = ["off", "fp16", "bf16", "apex-O1", "apex-O2"]
OPTIMIZERS = ["sgd", "lars"]
SCHEDULES = ["cosine", "linear", "step"]
PHASES = ["Pending", "Creating", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]

# HCCL_EXEC_TIMEOUT in whole seconds as every Ascend product takes it (hicann/hccl
# docs/zh/user_guide/hccl_env/HCCL_EXEC_TIMEOUT.md: Atlas training series (0, 17340]; A2/A3
# [0, 2147483647] with 0 = never, but their AIV mode caps it at 1091).
HCCL_EXEC_TIMEOUT_RANGE = (1, 17340)

# Tier 1's budget when spec.runPolicy names none (env.InPlacePolicy): a few restarts in place
# with a short first pause, so that a crash costs seconds before the whole job restarts.
DEFAULT_INPLACE_RESTARTS = 3
DEFAULT_INPLACE_BACKOFF_SECONDS = 1.0
# The extended resource a rank asks for, per device type (cpu ranks ask for none).
DEFAULT_RESOURCE = {"npu": "huawei.com/Ascend910", "gpu": "nvidia.com/gpu"}


def _int(minimum: int | None = None, maximum: int | None = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", **kw}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return out


def _num(**kw: Any) -> dict[str, Any]:
    return {"type": "number", **kw}


def _str(**kw: Any) -> dict[str, Any]:
    return {"type": "string", **kw}


def _bool(**kw: Any) -> dict[str, Any]:
    return {"type": "boolean", **kw}


def _obj(
    properties: dict[str, Any], *, required: list[str] | None = None, **kw: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", **kw, "properties": properties}
    if required:
        out["required"] = required
    return out


def _embedded(description: str) -> dict[str, Any]:
    """A Kubernetes object the API server validates where it is used (volume, toleration)."""
    return {
        "type": "object",
        "description": description,
        "x-kubernetes-preserve-unknown-fields": True,
    }


SPEC: dict[str, Any] = _obj(
    {
        "image": _str(
            description="trainer container image; empty: the operator's default for the "
            "job's device type (--trainer-image, chart values trainer.images)"
        ),
        "imagePullPolicy": _str(
            enum=["Always", "IfNotPresent", "Never"], description="of the rank pods' image"
        ),
        "devices": _obj(
            {
                "type": _str(enum=DEVICE_TYPES, description="npu, gpu or cpu"),
                "count": _int(1, default=1, description="ranks: devices of the whole job"),
                "perPod": _int(
                    1,
                    default=1,
                    description="devices (ranks) per pod: 1, one pod per device; a node's "
                    "device count, one pod per node running a process per device",
                ),
                "resourceName": _str(
                    minLength=1,
                    description="extended resource of one device (default: "
                    "huawei.com/Ascend910 for npu, nvidia.com/gpu for gpu); newer Ascend "
                    "device plugins serve huawei.com/npu, whose pods the operator reads by "
                    "the annotation ascend.kubectl.kubernetes.io/ascend-npu-configuration",
                ),
            },
            required=["type"],
            description="the job's devices: one rank per device",
        ),
        "model": _obj(
            {
                "arch": _str(
                    enum=ARCHS,
                    default="shufflenet_v2_x1_0",
                    description="ShuffleNetV2 width, by torchvision's names",
                )
            },
            default={},
            description="the network",
        ),
        "training": _obj(
            {
                "epochs": _int(1, default=240, description="total epochs"),
                "batchSize": _int(
                    1, default=1024, description="GLOBAL batch; must divide by devices.count"
                ),
                "lr": _num(
                    exclusiveMinimum=True,
                    minimum=0,
                    description="peak learning rate (default: 0.5 x batchSize/1024)",
                ),
                "optimizer": _str(
                    enum=OPTIMIZERS, default="sgd", description="lars for very large batches"
                ),
                "larsEta": _num(
                    exclusiveMinimum=True,
                    minimum=0,
                    description="LARS trust coefficient (default: 0.001)",
                ),
                "lrSchedule": _str(
                    enum=SCHEDULES,
                    default="cosine",
                    description="per step: cosine, linear to 0, or x0.1 every 30 epochs",
                ),
                "warmupEpochs": _num(
                    minimum=0,
                    description="linear lr warm-up, < epochs (default: 5, or a tenth of "
                    "epochs below 50)",
                ),
                "momentum": _num(
                    minimum=0, maximum=1, exclusiveMaximum=True, description="(default: 0.9)"
                ),
                "weightDecay": _num(
                    minimum=0,
                    description="not on BatchNorm parameters and biases (default: 4e-5)",
                ),
                "labelSmoothing": _num(
                    minimum=0, maximum=1, exclusiveMaximum=True, description="(default: 0.1)"
                ),
                "amp": _str(
                    enum=AMP_MODES,
                    description="mixed precision (default: fp16 on npu, bf16 on gpu, off on cpu)",
                ),
                "imageSize": _int(32, default=224, description="train and val crop size, pixels"),
                "valResize": _int(
                    32, default=256, description="val images' short side before the crop"
                ),
                "workers": _int(0, default=4, description="data loading processes per rank"),
                "printFreq": _int(1, default=10, description="log every N steps"),
                "evalFreq": _int(
                    1, default=1, description="validate every N epochs (and after the last)"
                ),
                "seed": _int(0, default=0, description="runs are reproducible"),
                "channelsLast": _bool(default=False, description="NHWC memory format"),
                "distTimeoutSeconds": _int(
                    10,
                    default=1800,
                    description="a rank waiting longer than this on its peers ends the job "
                    "(collectives, rank table, watchdog); on NPUs also HCCL_CONNECT_TIMEOUT, "
                    "raised to at least 300 (torch_npu's minimum in rank-table mode) and at "
                    "most 7200",
                ),
                "hcclExecTimeoutSeconds": _int(
                    HCCL_EXEC_TIMEOUT_RANGE[0],
                    HCCL_EXEC_TIMEOUT_RANGE[1],
                    description="npu only: HCCL_EXEC_TIMEOUT, how long a chip waits for its "
                    "peers inside a collective (HCCL's default 1836 when unset); 1-17340, the "
                    "range every Ascend product accepts",
                ),
                "extraArgs": {
                    "type": "array",
                    "items": _str(),
                    "description": "further shufflenet-train flags, appended as given",
                },
            },
            default={},
            description="shufflenet-train's flags, by camelCase name",
        ),
        "data": _obj(
            {
                "volume": _embedded("volume source holding the dataset, e.g. a PVC"),
                "path": _str(
                    minLength=1, default="/data/imagenet", description="mount path of the data"
                ),
                "dummy": _bool(default=False, description="synthetic data, no volume needed"),
            },
            default={},
            description="an ImageFolder root with train/<class>/ and val/<class>/",
        ),
        "checkpoint": _obj(
            {
                "volume": _embedded("volume source for checkpoints and results"),
                "path": _str(
                    minLength=1,
                    default="/checkpoints",
                    description="mount path of the volume; the job's run folder (--output-dir) "
                    "is `<path>/<namespace>/<name>`",
                ),
                "initFrom": _str(
                    minLength=1,
                    description="start from another run's weights (not its optimizer state or "
                    "epoch): a path relative to the volume, e.g. `<namespace>/<job>` (that job's "
                    "newest checkpoint), a `training_*` result folder or a checkpoint file; used "
                    "only while the job's own run folder has no checkpoint",
                ),
            },
            default={},
            description="where the job writes results and checkpoints: a run folder of its "
            "own, `<path>/<namespace>/<name>`, which restarts and a re-created job of the same "
            "name resume from",
        ),
        "runPolicy": _obj(
            {
                "backoffLimit": _int(0, default=3, description="whole-job restarts"),
                "inPlaceRestarts": _int(
                    0,
                    default=DEFAULT_INPLACE_RESTARTS,
                    description="restarts in place (tier 1): the ranks' training processes "
                    "started again in their pods from the last checkpoint when one dies or "
                    "loses a peer; past them, or on a permanent exit code, the whole job "
                    "restarts (backoffLimit). 0: off",
                ),
                "inPlaceBackoffSeconds": _num(
                    minimum=0,
                    maximum=3600,
                    default=DEFAULT_INPLACE_BACKOFF_SECONDS,
                    description="pause before the first restart in place, doubled for each "
                    "one after it",
                ),
                "cleanPodPolicy": _str(
                    enum=["Running", "All", "None"],
                    default="Running",
                    description="pods deleted when the job ends: those still running, all, none",
                ),
                "ttlSecondsAfterFinished": _int(
                    0, default=86400, description="the job is deleted this long after it ends"
                ),
                "activeDeadlineSeconds": _int(
                    1, nullable=True, description="the job fails after running this long"
                ),
                "startTimeoutSeconds": _int(
                    1,
                    nullable=True,
                    description="the job fails (StartTimeoutExceeded) when its ranks are not "
                    "all running this long after an attempt's rank pods were created: "
                    "scheduling, a gang's wait in its queue and image pulls count. None by "
                    "default: on a shared cluster a job may rightly wait hours for devices; "
                    "where jobs do not queue, a value of a few times a cold pull of the image "
                    "(minutes for a multi-GB Ascend image) frees the devices of a job whose "
                    "image or Secret is wrong",
                ),
                "suspend": _bool(
                    default=False, description="true: the rank pods are deleted until false"
                ),
            },
            default={},
            description="restarts, clean-up and limits of the whole job",
        ),
        "scheduling": _obj(
            {
                "gang": _bool(
                    default=True,
                    description="a Volcano PodGroup: all rank pods are scheduled, or none",
                ),
                # No default here: the operator must tell a name left out (which follows
                # gang, job.scheduler_name) from one written.
                "schedulerName": _str(
                    minLength=1,
                    description="of the rank pods; left out: volcano with gang, else "
                    "default-scheduler (the cluster's own)",
                ),
                "queue": _str(
                    minLength=1, default="default", description="the PodGroup's Volcano queue"
                ),
                "priorityClassName": _str(
                    nullable=True, description="of the rank pods and the PodGroup"
                ),
                "nodeSelector": {
                    "type": "object",
                    "additionalProperties": _str(),
                    "description": "of the rank pods",
                },
                "tolerations": {
                    "type": "array",
                    "items": _embedded("a pod toleration"),
                    "description": "of the rank pods",
                },
            },
            default={},
            description="how the rank pods are placed",
        ),
        "metrics": _obj(
            {
                "port": _int(
                    1,
                    65535,
                    default=9400,
                    description="each rank's /metrics port (a pod of perPod P: port .. port+P-1)",
                ),
            },
            default={},
            description="the trainers' Prometheus endpoints",
        ),
        "podTemplate": _embedded(
            "overrides merged into each rank pod (a PodTemplateSpec's metadata and spec), "
            "within the operator's job policy (--job-policy, chart value operator.jobPolicy; "
            'default: what Pod Security "baseline" allows): a job asking for more fails '
            "InvalidSpec naming the field"
        ),
    },
    required=["devices"],
)

_CONDITION = _obj(
    {
        "type": _str(),
        "status": _str(enum=["True", "False", "Unknown"]),
        "reason": _str(),
        "message": _str(),
        "lastTransitionTime": _str(format="date-time"),
    },
    required=["type", "status"],
)


def _phase_seconds(milestone: str) -> dict[str, Any]:
    return _num(minimum=0, description=f"seconds from the failure to {milestone}")


# One recovery of status.recoveries (operator/shufflenet_operator/recoveries.py).
_RECOVERY = _obj(
    {
        "tier": _int(1, 3, description="1: restarted in place inside the pods; 3: whole job"),
        "cause": _str(description="what failed"),
        "at": _str(format="date-time", description="when it failed"),
        "attempt": _int(
            0,
            description="the whole-job attempt (status.restarts) it started "
            "(tier 3) or happened in (tier 1)",
        ),
        "generation": _int(0, description="tier 1: the restart in place of its attempt"),
        "detectSeconds": _phase_seconds("the operator seeing it (tier 3)"),
        "podsReadySeconds": _phase_seconds("every rank running again (tier 3)"),
        "rendezvousSeconds": _phase_seconds("every rank meeting again (tier 1)"),
        "checkpointLoadedSeconds": _phase_seconds("rank 0's checkpoint loaded"),
        "firstStepSeconds": _phase_seconds("rank 0's first training step"),
        "stepsLost": _int(
            0,
            description="steps done past the checkpoint resumed from, as last scraped "
            "before the failure (a lower bound)",
        ),
    },
    required=["tier", "cause", "at"],
)

STATUS: dict[str, Any] = _obj(
    {
        "phase": _str(enum=PHASES, description="the job's state"),
        "conditions": {
            "type": "array",
            "items": _CONDITION,
            "description": "Created, Scheduled, RankTableReady, Running, Restarting, Suspended, "
            "Succeeded, Failed: status, reason, message, lastTransitionTime",
        },
        "ranks": _obj(
            {
                "total": _int(0),
                "scheduled": _int(0),
                "running": _int(0),
                "succeeded": _int(0),
                "failed": _int(0),
            },
            description="ranks (not pods) by their pod's state",
        ),
        "rankTable": _obj(
            {"status": _str(), "version": _int(0)},
            description="npu: the rank-table ConfigMap's status (initializing, completed) "
            "and version",
        ),
        "restarts": _int(0, description="whole-job restarts so far"),
        "waiting": _obj(
            {
                "reason": _str(
                    description="as the kubelet or the scheduler posted it on a rank pod: "
                    "ErrImagePull, ImagePullBackOff, CreateContainerConfigError, "
                    "Unschedulable..., or SchedulerNotResponding"
                ),
                "message": _str(description="the rank pod and what was posted on it"),
            },
            description="why rank pods of a pending job have not started (none: nothing "
            "known stops them); kubectl get's Waiting column",
        ),
        "quarantine": {
            "type": "array",
            "maxItems": 16,
            "items": _obj(
                {
                    "node": _str(description="the node's name"),
                    "reason": _str(description="NodeNotReady, DeviceUnhealthy or RepeatedFailure"),
                    "until": _str(format="date-time", description="kept off until then"),
                    "chip": _str(description="the Unhealthy devices, where known"),
                    "strikes": _int(1, description="times blamed, not yet forgiven"),
                },
                required=["node", "reason", "until"],
            ),
            "description": "nodes a whole-job restart blamed for a rank's failure: the next "
            "attempts' rank pods keep off each until `until` (docs/operator.md, Quarantine)",
        },
        "failedNodes": {
            "type": "array",
            "maxItems": 16,
            "items": _obj(
                {
                    "node": _str(description="the node's name"),
                    "time": _str(format="date-time", description="when the rank failed"),
                }
            ),
            "description": "nodes ranks failed on (not by their own exit 1, 2, 3): a second "
            "failure on one quarantines it",
        },
        "progress": _obj(
            {
                "epoch": _num(
                    minimum=0, description="epochs done, with the current one's fraction"
                ),
                "imagesPerSecond": _num(description="FPS@all: the whole job's images/s"),
                "top1": _num(description="the last validation's top-1, percent"),
            },
            description="scraped from rank 0's metrics endpoint while the job runs; once it "
            "has succeeded, epoch is spec.training.epochs",
        ),
        "recoveries": {
            "type": "array",
            "items": _RECOVERY,
            "maxItems": 10,
            "description": "the last 10 recoveries, oldest first: tier, cause, at, and the "
            "seconds from the failure to each milestone known",
        },
        "goodput": _num(
            minimum=0,
            maximum=1,
            description="share of the wall time since startTime that rank 0 spent in "
            "training steps (a lower bound: steps after a process's last scrape are missed)",
        ),
        "trainingSeconds": _num(
            minimum=0, description="seconds rank 0's training processes spent in steps"
        ),
        "trainingProcess": _obj(
            {
                "startedAt": _num(description="when it started, Unix time"),
                "trainSeconds": _num(minimum=0, description="its seconds in training steps"),
                "globalStep": _int(0, description="the run's steps it had done"),
            },
            description="the operator's bookkeeping: rank 0's training process last scraped",
        ),
        "startTime": _str(
            format="date-time", description="when rank pods were first created (suspend resets it)"
        ),
        "completionTime": _str(format="date-time", description="when the job ended"),
    }
)

SCHEMA: dict[str, Any] = _obj(
    {
        "apiVersion": _str(),
        "kind": _str(),
        "metadata": {"type": "object"},
        "spec": SPEC,
        "status": STATUS,
    },
    required=["spec"],
)

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    # Why a Pending job's ranks have not started, as kubectl get pods shows a pod's.
    {"name": "Waiting", "type": "string", "jsonPath": ".status.waiting.reason"},
    {"name": "Ranks", "type": "integer", "jsonPath": ".status.ranks.running"},
    {"name": "Epoch", "type": "number", "jsonPath": ".status.progress.epoch"},
    {"name": "Img/s", "type": "number", "jsonPath": ".status.progress.imagesPerSecond"},
    {"name": "Top1", "type": "number", "jsonPath": ".status.progress.top1"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Goodput", "type": "number", "jsonPath": ".status.goodput"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    # `-o wide`: which devices, and which extended resource (empty: the type's default; an
    # Ascend job may ask for huawei.com/Ascend910 or huawei.com/npu).
    {"name": "Device", "type": "string", "jsonPath": ".spec.devices.type", "priority": 1},
    {
        "name": "Resource",
        "type": "string",
        "jsonPath": ".spec.devices.resourceName",
        "priority": 1,
    },
]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object (a fresh copy each call)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                    "schema": {"openAPIV3Schema": copy.deepcopy(SCHEMA)},
                }
            ],
        },
    }


HEADER = (
    "# Generated from trainer/shufflenet_contract/crd.py by `snjob render crd`\n"
    "# (or `make manifests`): edit the Python source, not this file.\n"
)


def render_yaml() -> str:
    """The CRD as YAML text, as committed under manifests/crd/."""
    import yaml

    return HEADER + yaml.safe_dump(crd(), sort_keys=False, default_flow_style=False, width=100)
