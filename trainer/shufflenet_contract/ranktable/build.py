"""What the operator builds a job's rank table from: each rank pod's device-plugin annotation
(`device_annotation`, `pods_from_annotations`) and index (`rank_index`), whether the job asks
for the A3 super-pod v1.2 table (`wants_super_pod`), the table itself (`build_rank_table`)
and the ConfigMap data that carries it (`initializing_table`, `configmap_data`), as MindX
DL's ascend-operator builds them.

Pure functions; of the package, imports only `format`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .format import (
    ATTEMPT_KEY,
    FILE_KEY,
    HOST_NIC_IP,
    STATUS_COMPLETED,
    STATUS_INITIALIZING,
    VERSION,
    VERSION_KEY,
    VERSION_SUPER_POD,
    RankTableError,
    _ipv4,
)

# The Ascend device plugin's annotation on a pod once its chips are allocated: the key follows
# the resource it serves (`huawei.com/Ascend910`, or `huawei.com/npu` on newer plugins; both
# keys are read by MindX's ascend-operator, Ascend/mind-cluster docs "Pod annotations").
ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-910-configuration"
NPU_ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-npu-configuration"
RESOURCE_910 = "huawei.com/Ascend910"
RESOURCE_NPU = "huawei.com/npu"
DEVICE_ANNOTATIONS = {RESOURCE_910: ANNOTATION, RESOURCE_NPU: NPU_ANNOTATION}
# The pod's index in the job, from which rank_id is built (rank index x chips per pod + k).
# MindX's ascend-operator writes it on every pod it creates and builds rank_id from it
# (Ascend/mind-cluster component/ascend-operator pkg/controllers/v1/annotation.go
# `setHcclRankIndex`, pkg/ranktable/common/common.go `buildServerInfo`); Volcano's job plugin
# `hcclrank` writes the same key from the pod's RANK env unless it is already set
# (volcano-sh/volcano pkg/controllers/job/plugins/hcclrank). A replacement pod keeps the index
# of the pod it replaces, so resumed training keeps its rank ids.
RANK_INDEX_ANNOTATION = "hccl/rankIndex"
# How a job asks for an A3 super-pod (v1.2) table, as MindX's ascend-operator decides it
# (pkg/ranktable/factory.go `useV1dot2`): the job annotation huawei.com/schedule_policy, when
# set, decides alone (the super-pod policies of pkg/utils/superpod.go); otherwise a
# nodeSelector accelerator-type of an A3 super-pod node (ascend-common api, Volcano's
# ascend-volcano-plugin).
SCHEDULE_POLICY_ANNOTATION = "huawei.com/schedule_policy"
SUPER_POD_POLICIES = ("chip2-node16-sp", "chip2-node8-sp")
ACCELERATOR_TYPE_LABEL = "accelerator-type"
SUPER_POD_ACCELERATOR_TYPES = ("module-a3-16-super-pod", "module-a3-8-super-pod")


@dataclass(frozen=True)
class Device:
    device_id: str  # the chip's index on its server
    device_ip: str  # the chip's RoCE address
    super_device_id: str | None = None  # the chip's id in its A3 super-pod (v1.2 only)


@dataclass(frozen=True)
class PodDevices:
    """One rank pod's allocation: its index, the server entry it forms, its chips."""

    rank: int  # the pod's index (node rank); its chips get rank * devices_per_pod + k
    server_id: str  # the pod UID (part of a node) or the node's host IP (whole node)
    devices: Sequence[Device] = field(default_factory=tuple)
    super_pod_id: str | None = None  # the A3 super-pod of its node (v1.2 only)


def initializing_table() -> dict[str, str]:
    """What the ConfigMap holds before every pod's chips are known."""
    return {"status": STATUS_INITIALIZING}


def configmap_data(table_text: str, version: int, attempt: int) -> dict[str, str]:
    """The rank-table ConfigMap's data: hccl.json (as `dump` writes it), its version (raised on
    every change) and the attempt (the job's status.restarts) the table was built for."""
    return {FILE_KEY: table_text, VERSION_KEY: str(version), ATTEMPT_KEY: str(attempt)}


def build_rank_table(pods: Iterable[PodDevices], super_pod: bool = False) -> dict[str, Any]:
    """The completed table of a job whose pods each hold the same number of chips.

    Each pod is one `server_list` entry (`pods_from_annotations` keys them), ordered by
    rank; rank_id = pod rank x chips per pod + index, as MindX's ascend-operator builds it
    from `hccl/rankIndex`. `super_pod`: the v1.2 table of an A3 super-pod job, each chip with
    its `super_device_id` and a `super_pod_list` grouping the servers by `super_pod_id`
    (RankTableError when a pod lacks either, or when the pods of one super-pod are not
    adjacent in rank order: HCCL wants each super-pod's servers listed together, and the rank
    ids are fixed by the pods' indexes).
    """
    ordered = sorted(pods, key=lambda p: p.rank)
    if not ordered:
        raise ValueError("a rank table needs at least one pod")
    per_pod = len(ordered[0].devices)
    if per_pod == 0 or any(len(p.devices) != per_pod for p in ordered):
        raise ValueError("every pod must hold the same, non-zero number of devices")
    ranks = [p.rank for p in ordered]
    if ranks != list(range(len(ordered))):
        raise ValueError(f"pod ranks must be 0..{len(ordered) - 1} once each, got {ranks}")

    def device(pod: PodDevices, k: int, dev: Device) -> dict[str, str]:
        out = {"device_id": str(dev.device_id), "device_ip": str(dev.device_ip)}
        if super_pod:
            if dev.super_device_id is None:
                raise RankTableError(
                    f"pod {pod.rank} device {dev.device_id}",
                    "no super_device_id in the device annotation: a v1.2 (super-pod) table "
                    "needs it for every chip",
                )
            out["super_device_id"] = str(dev.super_device_id)
        out["rank_id"] = str(pod.rank * per_pod + k)
        return out

    servers = [
        {
            "server_id": pod.server_id,
            "device": [device(pod, k, dev) for k, dev in enumerate(pod.devices)],
            "host_nic_ip": HOST_NIC_IP,
        }
        for pod in ordered
    ]
    table: dict[str, Any] = {
        "version": VERSION_SUPER_POD if super_pod else VERSION,
        "server_count": str(len(servers)),
        "server_list": servers,
        "status": STATUS_COMPLETED,
    }
    if super_pod:
        table["super_pod_list"] = _super_pod_list(ordered)
    return table


def _super_pod_list(ordered: Sequence[PodDevices]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, str]]] = {}
    last: str | None = None
    for pod in ordered:
        if pod.super_pod_id is None:
            raise RankTableError(
                f"pod {pod.rank}",
                "no super_pod_id in the device annotation: a v1.2 (super-pod) table needs it",
            )
        if pod.super_pod_id in groups and pod.super_pod_id != last:
            raise RankTableError(
                f"pod {pod.rank}",
                f"is in super-pod {pod.super_pod_id}, but pods of super-pod {last} come "
                "between it and the others of its super-pod: HCCL wants each super-pod's "
                "servers listed together, and rank ids follow the pods' indexes",
            )
        groups.setdefault(pod.super_pod_id, []).append({"server_id": pod.server_id})
        last = pod.super_pod_id
    return [{"super_pod_id": sp, "server_list": servers} for sp, servers in groups.items()]


def wants_super_pod(
    job_annotations: Mapping[str, str] | None, node_selector: Mapping[str, str] | None
) -> bool:
    """Whether a job asks for an A3 super-pod (v1.2) table, as MindX's ascend-operator decides
    (see SCHEDULE_POLICY_ANNOTATION): its schedule policy when set, else its nodeSelector."""
    policy = (job_annotations or {}).get(SCHEDULE_POLICY_ANNOTATION)
    if policy is not None:
        return policy in SUPER_POD_POLICIES
    accelerator = (node_selector or {}).get(ACCELERATOR_TYPE_LABEL)
    return accelerator in SUPER_POD_ACCELERATOR_TYPES


def device_annotation(
    annotations: Mapping[str, str] | None, resource: str | None
) -> tuple[str, str] | None:
    """(key, JSON) of the device plugin's annotation on a pod; None before allocation.

    The key of the pod's resource comes first (`ascend-npu-configuration` for
    `huawei.com/npu`, `ascend-910-configuration` otherwise); the other is read too, since a
    plugin's resource and annotation names are configured separately.
    """
    annotations = annotations or {}
    first = DEVICE_ANNOTATIONS.get(resource or "", ANNOTATION)
    for key in (first, *(k for k in DEVICE_ANNOTATIONS.values() if k != first)):
        if key in annotations:
            return key, annotations[key]
    return None


def rank_index(annotations: Mapping[str, str] | None, index: int, pod_name: str) -> int:
    """The pod's `hccl/rankIndex`, which must be its index in the job (`index`, the rank
    label the operator created it with, and what its RANK env derives from).

    A pod without it (created by an operator before this annotation existed) is taken at its
    index. RankTableError when it is not an integer or disagrees: a table built from it would
    give HCCL rank ids that torch does not use (HCCL's rank is torch's, docs/ranktable.md).
    """
    text = (annotations or {}).get(RANK_INDEX_ANNOTATION)
    if text is None:
        return index
    if not text.isdigit():
        raise RankTableError(
            RANK_INDEX_ANNOTATION, f"pod {pod_name}: {text!r} is not a non-negative integer"
        )
    if int(text) != index:
        raise RankTableError(
            RANK_INDEX_ANNOTATION,
            f"pod {pod_name} is pod {index} of the job (its RANK env follows from it) but "
            f"carries {RANK_INDEX_ANNOTATION} {text}: whatever changed it, rank ids built from "
            "it would not be torch's ranks; delete the pod so that the job restarts",
        )
    return index


@dataclass(frozen=True)
class AnnotatedPod:
    """A rank pod as the table needs it: its index, UID, name and device-plugin annotation."""

    rank: int  # the pod's index (its rank, or its node rank with several devices a pod)
    uid: str
    name: str
    annotation: str  # JSON with `host_ip` and `devices` (and `super_pod_id` on A3)
    key: str = ANNOTATION  # the annotation's key, for messages


def _devices_of(pod: AnnotatedPod) -> tuple[str, str | None, tuple[Device, ...]]:
    """(host IP, super-pod id or None, chips sorted by id) from a pod's device annotation.

    Every device_ip must be an IPv4 address: a chip without a configured RoCE address is
    reported as "-1", and MindX's ascend-operator builds no table from it either.
    """
    try:
        data = json.loads(pod.annotation)
        devices = [
            Device(
                str(d["device_id"]),
                str(d["device_ip"]),
                None if d.get("super_device_id") is None else str(d["super_device_id"]),
            )
            for d in data["devices"]
        ]
        host_ip = str(data.get("host_ip", ""))
        # MindX's annotation carries it as a number (Instance.SuperPodId, an int32).
        super_pod = data.get("super_pod_id")
        # Local rank k binds the k-th visible chip, and the runtime lists them by index.
        devices.sort(key=lambda d: int(d.device_id))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RankTableError(
            pod.key, f"pod {pod.name}: not the device plugin's format ({exc})"
        ) from None
    for k, dev in enumerate(devices):
        _ipv4(dev.device_ip, f"{pod.key} of pod {pod.name}: devices[{k}].device_ip")
    return host_ip, None if super_pod is None else str(super_pod), tuple(devices)


def pods_from_annotations(pods: Sequence[AnnotatedPod], devices_per_pod: int) -> list[PodDevices]:
    """The server entries of a job's pods, as Huawei's ascend-operator keys them.

    One-device pods: one entry each, keyed by pod UID. Pods of several devices: keyed by
    their node's host IP, as for a whole node, unless two of them share a node (then
    neither holds the whole node, and the pod UID keeps the entries apart). Every pod must
    hold `devices_per_pod` chips.
    """
    entries = []
    for pod in pods:
        host_ip, super_pod, devices = _devices_of(pod)
        if len(devices) != devices_per_pod:
            raise RankTableError(
                pod.key,
                f"pod {pod.name} got {len(devices)} devices, spec.devices.perPod is "
                f"{devices_per_pod}",
            )
        entries.append(PodDevices(pod.rank, host_ip, devices, super_pod))
    hosts = [e.server_id for e in entries]
    if devices_per_pod == 1 or len(set(hosts)) < len(hosts):
        entries = [
            PodDevices(e.rank, pod.uid, e.devices, e.super_pod_id)
            for e, pod in zip(entries, pods, strict=True)
        ]
    return entries
