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
        "image": _str(minLength=1, description="trainer container image"),
        "imagePullPolicy": _str(enum=["Always", "IfNotPresent", "Never"]),
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
                    "huawei.com/Ascend910 for npu, nvidia.com/gpu for gpu)",
                ),
            },
            required=["type"],
        ),
        "model": _obj(
            {"arch": _str(enum=ARCHS, default="shufflenet_v2_x1_0")},
            default={},
        ),
        "training": _obj(
            {
                "epochs": _int(1, default=240),
                "batchSize": _int(
                    1, default=1024, description="GLOBAL batch; must divide by devices.count"
                ),
                "lr": _num(
                    exclusiveMinimum=True,
                    minimum=0,
                    description="peak learning rate (default: 0.5 x batchSize/1024)",
                ),
                "optimizer": _str(enum=OPTIMIZERS, default="sgd"),
                "larsEta": _num(exclusiveMinimum=True, minimum=0),
                "lrSchedule": _str(enum=SCHEDULES, default="cosine"),
                "warmupEpochs": _num(minimum=0),
                "momentum": _num(minimum=0, maximum=1, exclusiveMaximum=True),
                "weightDecay": _num(minimum=0),
                "labelSmoothing": _num(minimum=0, maximum=1, exclusiveMaximum=True),
                "amp": _str(
                    enum=AMP_MODES,
                    description="mixed precision (default: fp16 on npu, bf16 on gpu, off on cpu)",
                ),
                "imageSize": _int(32, default=224),
                "valResize": _int(32, default=256),
                "workers": _int(0, default=4, description="data loading processes per rank"),
                "printFreq": _int(1, default=10),
                "evalFreq": _int(1, default=1),
                "seed": _int(0, default=0),
                "channelsLast": _bool(default=False),
                "distTimeoutSeconds": _int(
                    10,
                    default=1800,
                    description="a rank waiting longer than this on its peers ends the job "
                    "(collectives, rank table, watchdog)",
                ),
                "extraArgs": {
                    "type": "array",
                    "items": _str(),
                    "description": "further shufflenet-train flags, appended as given",
                },
            },
            default={},
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
        ),
        "checkpoint": _obj(
            {
                "volume": _embedded("volume source for checkpoints and results"),
                "path": _str(minLength=1, default="/checkpoints"),
            },
            default={},
        ),
        "runPolicy": _obj(
            {
                "backoffLimit": _int(0, default=3, description="whole-job restarts"),
                "cleanPodPolicy": _str(enum=["Running", "All", "None"], default="Running"),
                "ttlSecondsAfterFinished": _int(0, default=86400),
                "activeDeadlineSeconds": _int(1, nullable=True),
                "suspend": _bool(default=False),
            },
            default={},
        ),
        "scheduling": _obj(
            {
                "gang": _bool(default=True),
                "schedulerName": _str(minLength=1, default="volcano"),
                "queue": _str(minLength=1, default="default"),
                "priorityClassName": _str(nullable=True),
                "nodeSelector": {
                    "type": "object",
                    "additionalProperties": _str(),
                },
                "tolerations": {"type": "array", "items": _embedded("a pod toleration")},
            },
            default={},
        ),
        "metrics": _obj(
            {
                "port": _int(1, 65535, default=9400),
            },
            default={},
        ),
        "podTemplate": _embedded("overrides merged into each rank pod"),
    },
    required=["image", "devices"],
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

STATUS: dict[str, Any] = _obj(
    {
        "phase": _str(enum=PHASES),
        "conditions": {"type": "array", "items": _CONDITION},
        "ranks": _obj(
            {
                "total": _int(0),
                "scheduled": _int(0),
                "running": _int(0),
                "succeeded": _int(0),
                "failed": _int(0),
            }
        ),
        "rankTable": _obj({"status": _str(), "version": _int(0)}),
        "restarts": _int(0),
        "progress": _obj(
            {
                "epoch": _num(
                    minimum=0, description="epochs done, with the current one's fraction"
                ),
                "imagesPerSecond": _num(),
                "top1": _num(),
            }
        ),
        "startTime": _str(format="date-time"),
        "completionTime": _str(format="date-time"),
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
    {"name": "Ranks", "type": "integer", "jsonPath": ".status.ranks.running"},
    {"name": "Epoch", "type": "number", "jsonPath": ".status.progress.epoch"},
    {"name": "Img/s", "type": "number", "jsonPath": ".status.progress.imagesPerSecond"},
    {"name": "Top1", "type": "number", "jsonPath": ".status.progress.top1"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
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
