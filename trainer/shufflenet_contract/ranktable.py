"""The HCCL rank table (hccl.json) as MindX DL writes it, v1.0 and the A3 super-pod v1.2, and
how it reaches HCCL.

```
{"version": "1.0", "server_count": "2", "status": "completed",
 "server_list": [{"server_id": "...", "host_nic_ip": "reserve",
                  "device": [{"device_id": "0", "device_ip": "192.168.100.101",
                              "rank_id": "0"}, ...]}, ...]}
```
All values are strings. `rank_id` counts from 0, contiguous over the whole table in
`server_list` order. v1.2 (Atlas A3 super-pods, hicann/hccl
`docs/zh/user_guide/cluster_info_config/rank_table_config_a3.md`) adds `super_device_id` to
every device and `super_pod_list: [{"super_pod_id": "0", "server_list": [{"server_id": ..}]}]`,
the servers of one super-pod listed together. The operator builds the table once every rank
pod carries the device plugin's annotation and delivers it in a ConfigMap (first
`{"status": "initializing"}`, then the full table with `status: completed`), with the keys
`version` and `attempt` beside it.

What a rank does with the mounted table before HCCL sees it (docs/ranktable.md has the
sources): torch_npu hands HCCL the file named by RANK_TABLE_FILE only when it is a regular
file (`checkFilePathReadable` in Ascend/pytorch `torch_npu/csrc/distributed/HCCLUtils.cpp`
refuses symlinks, and every ConfigMap key is one), and otherwise silently negotiates without
it; a table that is there but stale or wrong makes HCCL fail late instead. So each rank waits
until the mount shows a completed table of its own attempt that lists its pod
(`wait_for_table`), checks it (`validate_rank_table`, `own_entry`), copies it to a regular file
(`copy_for_hccl`) and points RANK_TABLE_FILE at the copy.

Pure functions, except `read_mounted`, `wait_for_table`, `copy_for_hccl` and `publish` (files).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .env import RankEnv

VERSION = "1.0"
# The A3 super-pod format (`super_pod_list`, `super_device_id`); MindX's ascend-operator writes it
# when the job asks for super-pod scheduling (`wants_super_pod`).
VERSION_SUPER_POD = "1.2"
VERSIONS = (VERSION, VERSION_SUPER_POD)
STATUS_COMPLETED = "completed"
STATUS_INITIALIZING = "initializing"
HOST_NIC_IP = "reserve"

# Where MindX DL mounts the rank-table ConfigMap, and its keys.
MOUNT_DIR = "/user/serverid/devindex/config"
FILE_KEY = "hccl.json"
VERSION_KEY = "version"
# The whole-job attempt (status.restarts) the table was built for: a whole-node table keyed by
# host IPs reads the same in every attempt, so only this tells an earlier attempt's apart.
ATTEMPT_KEY = "attempt"
# How the kubelet publishes a ConfigMap volume (AtomicWriter, kubernetes
# pkg/volume/util/atomic_writer.go): the keys' files in a directory `..<UTC timestamp>.<random>`,
# a symlink `..data` to it, and per key a symlink `<key> -> ..data/<key>`. An update writes a new
# directory, then renames a new `..data` link over the old one, so that all keys of one update
# appear at once; the old directory is then removed.
DATA_LINK = "..data"
# HCCL's limit on a server_id (hicann/hccl rank_table_config_910.md: at most 64 characters).
MAX_SERVER_ID = 64
# What a ConfigMap may hold, all keys together (etcd's object limit), less room for the rest.
MAX_CONFIGMAP_BYTES = 1024 * 1024 - 16 * 1024
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


class RankTableError(ValueError):
    """The table is malformed; `field` is the JSON path of the first bad field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class RankTableTimeout(TimeoutError):
    """The table did not reach `status: completed` in time."""


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


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RankTableError(where, f"must be a string, got {json.dumps(value)}")
    return value


def _int_str(value: Any, where: str) -> int:
    text = _str(value, where)
    if not text.isdigit():
        raise RankTableError(where, f"must be a non-negative integer string, got {text!r}")
    return int(text)


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise RankTableError(where, "must be a non-empty list")
    return value


def _ipv4(value: Any, where: str) -> str:
    text = _str(value, where)
    if text == "-1":
        # What the device plugin reports for a chip whose RoCE address is not configured.
        raise RankTableError(
            where, 'is "-1", not an IPv4 address: the chip has no RoCE address configured'
        )
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise RankTableError(
            where, f"{text!r} is not an IPv4 address (the chip's RoCE address)"
        ) from None
    return text


def _unique(value: str, seen: dict[str, str], where: str, what: str) -> None:
    if value in seen:
        raise RankTableError(where, f"{what} {value!r} is also at {seen[value]}")
    seen[value] = where


def validate_rank_table(table: Any, rank: int, world_size: int) -> None:
    """Check a completed v1.0 or v1.2 table for the rank `rank` of `world_size` ranks.

    Raises RankTableError naming the first bad field: status, version, server_count equal
    to the servers listed, every value a string, server ids non-empty, at most 64 characters
    and unique, every device_id/device_ip/rank_id well-formed (device_ip IPv4 and unique;
    "-1" is what a chip without a configured address reports; device_id unique in its
    server), rank ids unique and contiguous from 0 in server_list order (so each server's
    rank ids are one block, as HCCL requires), this rank present exactly once, and the total
    equal to the world size; v1.2 also: super_device_id per device and the super_pod_list
    (`_check_super_pods`). Which entry is this process's is `own_entry`'s question.
    """
    if not isinstance(table, dict):
        raise RankTableError("(table)", "must be a JSON object")
    status = table.get("status")
    if status != STATUS_COMPLETED:
        raise RankTableError("status", f"is {json.dumps(status)}, expected {STATUS_COMPLETED!r}")
    version = table.get("version")
    if version not in VERSIONS:
        raise RankTableError(
            "version", f"is {json.dumps(version)}, expected one of {', '.join(VERSIONS)}"
        )
    super_pod = version == VERSION_SUPER_POD
    servers = _list(table.get("server_list"), "server_list")
    # Optional in v1.2 (rank_table_config_a3.md), required in v1.0.
    if not super_pod or "server_count" in table:
        count = _int_str(table.get("server_count"), "server_count")
        if count != len(servers):
            raise RankTableError(
                "server_count", f"is {count} but server_list holds {len(servers)} servers"
            )
    places: dict[int, list[str]] = {}
    order: list[tuple[int, str]] = []
    server_ids: dict[str, str] = {}
    device_ips: dict[str, str] = {}
    for i, server in enumerate(servers):
        where = f"server_list[{i}]"
        if not isinstance(server, dict):
            raise RankTableError(where, "must be an object")
        server_id = _str(server.get("server_id"), f"{where}.server_id")
        if not server_id or len(server_id) > MAX_SERVER_ID:
            raise RankTableError(
                f"{where}.server_id", f"must be 1 to {MAX_SERVER_ID} characters, got {server_id!r}"
            )
        _unique(server_id, server_ids, f"{where}.server_id", "server_id")
        if "host_nic_ip" in server:
            _str(server["host_nic_ip"], f"{where}.host_nic_ip")
        device_ids: dict[str, str] = {}
        for j, device in enumerate(_list(server.get("device"), f"{where}.device")):
            at = f"{where}.device[{j}]"
            if not isinstance(device, dict):
                raise RankTableError(at, "must be an object")
            _int_str(device.get("device_id"), f"{at}.device_id")
            _unique(device["device_id"], device_ids, f"{at}.device_id", "device_id")
            ip = _ipv4(device.get("device_ip"), f"{at}.device_ip")
            _unique(ip, device_ips, f"{at}.device_ip", "device_ip")
            if super_pod:
                _int_str(device.get("super_device_id"), f"{at}.super_device_id")
            rank_id = _int_str(device.get("rank_id"), f"{at}.rank_id")
            places.setdefault(rank_id, []).append(f"{at}.rank_id")
            order.append((rank_id, f"{at}.rank_id"))
    if super_pod:
        _check_super_pods(table.get("super_pod_list"), servers)
    mine = places.get(rank, [])
    if len(mine) != 1:
        where = mine[1] if mine else "server_list"
        raise RankTableError(
            where, f"this process's rank {rank} appears {len(mine)} times; expected once"
        )
    for rank_id, _ in order:
        if len(places[rank_id]) > 1:
            raise RankTableError(
                places[rank_id][1], f"rank_id {rank_id} is also at {places[rank_id][0]}"
            )
    for expected, (rank_id, where) in enumerate(order):
        if rank_id != expected:
            raise RankTableError(
                where,
                f"is {rank_id}, expected {expected}: rank ids must count from 0 without gaps "
                "in server_list order",
            )
    if len(order) != world_size:
        raise RankTableError(
            "server_list", f"lists {len(order)} devices but WORLD_SIZE is {world_size}"
        )


def _check_super_pods(super_pods: Any, servers: list[dict[str, Any]]) -> None:
    """v1.2: every server in exactly one super-pod, each super-pod's servers adjacent in
    server_list (rank_table_config_a3.md), super_device_id unique within a super-pod (it is
    the chip's id in the super-pod: the SDID)."""
    order = {server["server_id"]: i for i, server in enumerate(servers)}
    owner: dict[str, str] = {}
    pod_ids: dict[str, str] = {}
    for i, sp in enumerate(_list(super_pods, "super_pod_list")):
        where = f"super_pod_list[{i}]"
        if not isinstance(sp, dict):
            raise RankTableError(where, "must be an object")
        sp_id = _str(sp.get("super_pod_id"), f"{where}.super_pod_id")
        _unique(sp_id, pod_ids, f"{where}.super_pod_id", "super_pod_id")
        members: list[int] = []
        sdids: dict[str, str] = {}
        for j, entry in enumerate(_list(sp.get("server_list"), f"{where}.server_list")):
            at = f"{where}.server_list[{j}].server_id"
            server_id = _str(entry.get("server_id") if isinstance(entry, dict) else None, at)
            if server_id not in order:
                raise RankTableError(at, f"{server_id!r} is not in server_list")
            _unique(server_id, owner, at, "server_id")
            members.append(order[server_id])
            for k, device in enumerate(servers[order[server_id]]["device"]):
                _unique(
                    device["super_device_id"],
                    sdids,
                    f"server_list[{order[server_id]}].device[{k}].super_device_id",
                    f"in super-pod {sp_id!r}, super_device_id",
                )
        if sorted(members) != list(range(min(members), min(members) + len(members))):
            raise RankTableError(
                f"{where}.server_list",
                f"the servers of super-pod {sp_id!r} are not adjacent in server_list: HCCL "
                "wants each super-pod's servers listed together",
            )
    missing = [sid for sid in order if sid not in owner]
    if missing:
        raise RankTableError("super_pod_list", f"server {missing[0]!r} is in no super-pod")


def parse(text: str) -> Any:
    """The table from hccl.json text; RankTableError when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RankTableError("(file)", f"not JSON ({exc})") from None


def dump(table: dict[str, Any]) -> str:
    """hccl.json text: compact, since it travels in a ConfigMap (at most 1 MiB: about 6800
    one-device pods; `python -m json.tool` shows it to people)."""
    return json.dumps(table, separators=(",", ":")) + "\n"


@dataclass(frozen=True)
class Member:
    """This process as its rank table must list it (from its rank environment).

    `pod_uid`/`host_ip` name the pod's server entry (one-device pods: the UID; pods of
    several devices, LOCAL_WORLD_SIZE > 1: the node's host IP, or the UID when two such pods
    share a node); `attempt` is the pod's whole-job attempt. None: not known (a table written
    by hand for a run outside Kubernetes), so not checked.
    """

    rank: int
    world_size: int
    local_rank: int = 0
    local_world_size: int = 1
    pod_uid: str | None = None
    host_ip: str | None = None
    attempt: int | None = None

    @classmethod
    def of(cls, env: RankEnv) -> Member:
        """The member a rank environment describes."""
        return cls(
            rank=env.rank,
            world_size=env.world_size,
            local_rank=env.local_rank,
            local_world_size=env.local_world_size,
            pod_uid=env.pod_uid,
            host_ip=env.host_ip,
            attempt=env.attempt,
        )

    def server_ids(self) -> list[str]:
        """The server_id values that name this pod's entry."""
        ids = [self.pod_uid, self.host_ip if self.local_world_size > 1 else None]
        return [i for i in ids if i]


def own_entry(table: dict[str, Any], member: Member) -> int | None:
    """The index of `member`'s server entry in a validated table: the one whose server_id is
    one of `member.server_ids()`; None when there is none (a table of other pods).

    RankTableError when the entry is there but disagrees with the process: HCCL takes the
    global rank of local device k as torch's rank (ProcessGroupHCCL `createHCCLCommEx`:
    `getRank() * devices + i`), so the entry's k-th device must carry rank_id = this rank.
    """
    ids = member.server_ids()
    for i, server in enumerate(table["server_list"]):
        if server["server_id"] not in ids:
            continue
        devices = server["device"]
        where = f"server_list[{i}]"
        if len(devices) != member.local_world_size:
            raise RankTableError(
                f"{where}.device",
                f"lists {len(devices)} devices for this pod ({server['server_id']}), which runs "
                f"{member.local_world_size} ranks",
            )
        rank_id = devices[member.local_rank]["rank_id"]
        if rank_id != str(member.rank):
            raise RankTableError(
                f"{where}.device[{member.local_rank}].rank_id",
                f"is {rank_id} but this process (local rank {member.local_rank} of "
                f"{server['server_id']}) is rank {member.rank}: HCCL's rank is torch's rank",
            )
        return i
    return None


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of a mounted rank table and the keys beside it."""

    source: Path  # the file read (inside the `..data` directory of a ConfigMap volume)
    text: str
    version: str | None  # None: no such key beside the table (one written by hand)
    attempt: str | None

    def describe(self) -> str:
        return f"version {self.version or '-'}, attempt {self.attempt or '-'}"


def read_mounted(path: str | Path) -> Snapshot:
    """Read the table at `path` (RANK_TABLE_FILE) and the version and attempt keys beside it.

    In a ConfigMap volume all three are read from the directory `..data` points to, resolved
    once: the kubelet never changes that directory (an update is a new one), so they come from
    one update, where the keys' own symlinks could each show a different one. Without
    `..data` (a file written by hand) the files are read as they are. OSError when a file is
    missing (FileNotFoundError also when the kubelet removes the directory being read).
    """
    path = Path(path)
    data = path.parent / DATA_LINK
    base = Path(os.path.realpath(data)) if data.is_dir() else path.parent

    def text(file: Path) -> str:
        # Bytes that are not UTF-8 read as replacement characters: such a table is then
        # "not JSON", reported like any table being written, not a UnicodeDecodeError.
        return file.read_bytes().decode("utf-8", errors="replace")

    def key(name: str) -> str | None:
        try:
            return text(base / name).strip()
        except FileNotFoundError:
            return None

    source = base / path.name
    return Snapshot(source, text(source), key(VERSION_KEY), key(ATTEMPT_KEY))


def current_table(snapshot: Snapshot, member: Member) -> tuple[dict[str, Any] | None, str]:
    """(table, "") when `snapshot` is a completed table of `member`'s attempt that lists its
    pod; (None, what was seen) when it is not that yet, which waiting can change: still
    initializing, an earlier attempt's, other pods', not JSON (a file being written by hand).

    RankTableError when it is of this attempt and wrong: waiting would not help, and HCCL
    would only fail later and more obscurely.
    """
    try:
        table = parse(snapshot.text)
    except RankTableError as exc:
        return None, str(exc)
    if not isinstance(table, dict):
        return None, "not a JSON object"
    status = table.get("status")
    if status != STATUS_COMPLETED:
        return None, f"status {json.dumps(status)} ({snapshot.describe()})"
    if member.attempt is not None and snapshot.attempt != str(member.attempt):
        return None, (
            f"a completed table of attempt {snapshot.attempt or '(no attempt key)'}, this pod "
            f"is of attempt {member.attempt} ({snapshot.describe()})"
        )
    validate_rank_table(table, member.rank, member.world_size)
    if member.server_ids() and own_entry(table, member) is None:
        return None, (
            f"a completed table ({snapshot.describe()}) with no server_id of this pod's "
            f"({' or '.join(member.server_ids())}): built for other pods"
        )
    return table, ""


def wait_for_table(
    path: str | Path,
    member: Member,
    timeout: float,
    poll: float = 1.0,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Snapshot:
    """Poll the mounted table at `path` until `current_table` accepts it; return that read.

    A missing, initializing or stale table is normal for a while: the operator waits for the
    device plugin, and a ConfigMap update reaches a pod only at the kubelet's next sync (60-90 s
    with its defaults). So it is reported only after `timeout` seconds (RankTableTimeout,
    naming what was seen last). A wrong table of this attempt raises RankTableError at once.
    """
    deadline = clock() + timeout
    while True:
        try:
            snapshot = read_mounted(path)
            table, state = current_table(snapshot, member)
            if table is not None:
                return snapshot
        except FileNotFoundError:
            state = "file missing"
        except OSError as exc:
            state = f"unreadable ({exc.strerror})"
        if clock() >= deadline:
            raise RankTableTimeout(
                f"rank table {path} not usable after {timeout:g}s (last seen: {state}): check "
                "that the operator runs and every rank pod got its NPUs (device plugin "
                "annotation); an update reaches the pod after the kubelet's sync"
            )
        sleep(poll)


def copy_name(job_name: str | None, rank: int) -> str:
    """The file name of a rank's copy: one per rank, since ranks may share a directory."""
    return f"hccl-{job_name or 'job'}-rank{rank}.json"


def copy_for_hccl(text: str, directory: str | Path, name: str) -> Path:
    """Write `text` to `directory`/`name` as a regular file, written then renamed into place,
    so that the path never shows a partial table; the absolute path of the copy.

    HCCL reads the file named by RANK_TABLE_FILE only if it is a regular, readable file, not a
    symlink (torch_npu `checkFilePathReadable`), which a ConfigMap key always is.
    """
    directory = Path(os.path.abspath(directory))
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return directory / name


def handoff_line(rank: int, copy: Path, mounted: str | Path, snapshot: Snapshot) -> str:
    """The one log line of a rank saying which file HCCL was given, from where, of which table."""
    return (
        f"=> rank {rank}: HCCL gets RANK_TABLE_FILE={copy} (a regular-file copy of {mounted}, "
        f"read from {snapshot.source}; table {snapshot.describe()})"
    )


def publish(directory: str | Path, data: Mapping[str, str]) -> Path:
    """Write a ConfigMap's `data` into `directory` as the kubelet updates a ConfigMap volume
    (see DATA_LINK): a new `..<timestamp>` directory, `..data` renamed over to point at it,
    a symlink per key, the previous directory removed. `snjob run-local` delivers its rank
    table this way, so that a local rehearsal reads it as a pod does. The new directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
    new = Path(tempfile.mkdtemp(prefix=f"..{stamp}.", dir=directory))
    for key, value in data.items():
        (new / key).write_text(value, encoding="utf-8")
    link = directory / DATA_LINK
    old = Path(os.path.realpath(link)) if link.is_symlink() else None
    staged = directory / f"{DATA_LINK}_tmp"
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    os.symlink(new.name, staged)
    os.replace(staged, link)
    for key in data:
        entry = directory / key
        if not entry.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            os.symlink(f"{DATA_LINK}/{key}", entry)
    if old is not None and old != new:
        shutil.rmtree(old, ignore_errors=True)
    return new
