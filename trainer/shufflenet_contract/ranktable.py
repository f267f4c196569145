"""The HCCL rank table, format v1.0 (hccl.json), as MindX DL writes it.

```
{"version": "1.0", "server_count": "2", "status": "completed",
 "server_list": [{"server_id": "...", "host_nic_ip": "reserve",
                  "device": [{"device_id": "0", "device_ip": "192.168.100.101",
                              "rank_id": "0"}, ...]}, ...]}
```
All values are strings. `rank_id` counts from 0, contiguous over the whole table in
`server_list` order. The operator builds the table once every rank pod carries the device
plugin's annotation and delivers it in a ConfigMap (first `{"status": "initializing"}`, then
the full table with `status: completed`); each rank polls the mounted file until it is
complete, then checks it before handing it to HCCL, since a wrong table makes HCCL fail late
and obscurely.

Pure functions except `wait_for_completed`, which reads the file.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = "1.0"
STATUS_COMPLETED = "completed"
STATUS_INITIALIZING = "initializing"
HOST_NIC_IP = "reserve"

# Where MindX DL mounts the rank-table ConfigMap, and its keys.
MOUNT_DIR = "/user/serverid/devindex/config"
FILE_KEY = "hccl.json"
VERSION_KEY = "version"
# What a ConfigMap may hold, all keys together (etcd's object limit), less room for the rest.
MAX_CONFIGMAP_BYTES = 1024 * 1024 - 16 * 1024
# The Ascend device plugin's annotation on a pod once its chips are allocated.
ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-910-configuration"


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


@dataclass(frozen=True)
class PodDevices:
    """One rank pod's allocation: its index, the server entry it forms, its chips."""

    rank: int  # the pod's index (node rank); its chips get rank * devices_per_pod + k
    server_id: str  # the pod UID (part of a node) or the node's host IP (whole node)
    devices: Sequence[Device] = field(default_factory=tuple)


def initializing_table() -> dict[str, str]:
    """What the ConfigMap holds before every pod's chips are known."""
    return {"status": STATUS_INITIALIZING}


def build_rank_table(pods: Iterable[PodDevices]) -> dict[str, Any]:
    """The completed table of a job whose pods each hold the same number of chips.

    Each pod is one `server_list` entry (`pods_from_annotations` keys them), ordered by
    rank; rank_id = pod rank x chips per pod + index.
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
    servers = [
        {
            "server_id": pod.server_id,
            "device": [
                {
                    "device_id": str(dev.device_id),
                    "device_ip": str(dev.device_ip),
                    "rank_id": str(pod.rank * per_pod + k),
                }
                for k, dev in enumerate(pod.devices)
            ],
            "host_nic_ip": HOST_NIC_IP,
        }
        for pod in ordered
    ]
    return {
        "version": VERSION,
        "server_count": str(len(servers)),
        "server_list": servers,
        "status": STATUS_COMPLETED,
    }


@dataclass(frozen=True)
class AnnotatedPod:
    """A rank pod as the table needs it: its index, UID, name and device-plugin annotation."""

    rank: int  # the pod's index (its rank, or its node rank with several devices a pod)
    uid: str
    name: str
    annotation: str  # JSON with `host_ip` and `devices`


def _devices_of(pod: AnnotatedPod) -> tuple[str, tuple[Device, ...]]:
    try:
        data = json.loads(pod.annotation)
        devices = [Device(str(d["device_id"]), str(d["device_ip"])) for d in data["devices"]]
        host_ip = str(data.get("host_ip", ""))
        # Local rank k binds the k-th visible chip, and the runtime lists them by index.
        devices.sort(key=lambda d: int(d.device_id))
    except (ValueError, KeyError, TypeError) as exc:
        raise RankTableError(ANNOTATION, f"not the device plugin's format ({exc})") from None
    return host_ip, tuple(devices)


def pods_from_annotations(pods: Sequence[AnnotatedPod], devices_per_pod: int) -> list[PodDevices]:
    """The server entries of a job's pods, as Huawei's ascend-operator keys them.

    One-device pods: one entry each, keyed by pod UID. Pods of several devices: keyed by
    their node's host IP, as for a whole node, unless two of them share a node (then
    neither holds the whole node, and the pod UID keeps the entries apart). Every pod must
    hold `devices_per_pod` chips.
    """
    entries = []
    for pod in pods:
        host_ip, devices = _devices_of(pod)
        if len(devices) != devices_per_pod:
            raise RankTableError(
                ANNOTATION,
                f"pod {pod.name} got {len(devices)} devices, spec.devices.perPod is "
                f"{devices_per_pod}",
            )
        entries.append(PodDevices(pod.rank, host_ip, devices))
    hosts = [e.server_id for e in entries]
    if devices_per_pod == 1 or len(set(hosts)) < len(hosts):
        entries = [
            PodDevices(e.rank, pod.uid, e.devices) for e, pod in zip(entries, pods, strict=True)
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


def _ipv4(value: Any, where: str) -> None:
    text = _str(value, where)
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise RankTableError(
            where, f"{text!r} is not an IPv4 address (the chip's RoCE address)"
        ) from None


def validate_rank_table(table: Any, rank: int, world_size: int) -> None:
    """Check a completed v1.0 table for the rank `rank` of `world_size` ranks.

    Raises RankTableError naming the first bad field: status, version, server_count equal
    to the servers listed, every device_id/device_ip/rank_id well-formed (device_ip IPv4;
    "-1" is what a chip without a configured address reports), rank ids unique and
    contiguous from 0 in server_list order, this rank present exactly once, and the total
    equal to the world size.
    """
    if not isinstance(table, dict):
        raise RankTableError("(table)", "must be a JSON object")
    status = table.get("status")
    if status != STATUS_COMPLETED:
        raise RankTableError("status", f"is {json.dumps(status)}, expected {STATUS_COMPLETED!r}")
    version = table.get("version")
    if version != VERSION:
        raise RankTableError("version", f"is {json.dumps(version)}, expected {VERSION!r}")
    servers = _list(table.get("server_list"), "server_list")
    count = _int_str(table.get("server_count"), "server_count")
    if count != len(servers):
        raise RankTableError(
            "server_count", f"is {count} but server_list holds {len(servers)} servers"
        )
    places: dict[int, list[str]] = {}
    order: list[tuple[int, str]] = []
    for i, server in enumerate(servers):
        where = f"server_list[{i}]"
        if not isinstance(server, dict):
            raise RankTableError(where, "must be an object")
        if not _str(server.get("server_id"), f"{where}.server_id"):
            raise RankTableError(f"{where}.server_id", "must not be empty")
        for j, device in enumerate(_list(server.get("device"), f"{where}.device")):
            at = f"{where}.device[{j}]"
            if not isinstance(device, dict):
                raise RankTableError(at, "must be an object")
            _int_str(device.get("device_id"), f"{at}.device_id")
            _ipv4(device.get("device_ip"), f"{at}.device_ip")
            rank_id = _int_str(device.get("rank_id"), f"{at}.rank_id")
            places.setdefault(rank_id, []).append(f"{at}.rank_id")
            order.append((rank_id, f"{at}.rank_id"))
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


def wait_for_completed(
    path: str | Path,
    timeout: float,
    poll: float = 1.0,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll `path` until it holds a table with `status: completed`; return that table.

    A missing, half-written or still initializing file is normal while the operator waits
    for the device plugin, so it is only reported when `timeout` seconds have passed.
    """
    path = Path(path)
    deadline = clock() + timeout
    while True:
        try:
            table = parse(path.read_text(encoding="utf-8"))
            state = f"status {json.dumps(table.get('status'))}" if isinstance(table, dict) else ""
            if isinstance(table, dict) and table.get("status") == STATUS_COMPLETED:
                return table
            state = state or "not a JSON object"
        except FileNotFoundError:
            state = "file missing"
        except (OSError, RankTableError) as exc:
            state = str(exc)
        if clock() >= deadline:
            raise RankTableTimeout(
                f"rank table {path} not completed after {timeout:g}s ({state}): check that "
                "the operator runs and every rank pod got its NPUs (device plugin annotation)"
            )
        sleep(poll)
