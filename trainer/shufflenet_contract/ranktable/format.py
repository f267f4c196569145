"""The HCCL rank table (hccl.json) as MindX DL writes it, v1.0 and the A3 super-pod v1.2: its
constants, parse/dump, and what makes a completed table valid.

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
pod carries the device plugin's annotation (`build`) and delivers it in a ConfigMap (first
`{"status": "initializing"}`, then the full table with `status: completed`), with the keys
`version` and `attempt` beside it; each rank reads it from the mount (`mount`).

Pure functions; imports nothing else of the package.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

VERSION = "1.0"
# The A3 super-pod format (`super_pod_list`, `super_device_id`); MindX's ascend-operator writes it
# when the job asks for super-pod scheduling (`build.wants_super_pod`).
VERSION_SUPER_POD = "1.2"
VERSIONS = (VERSION, VERSION_SUPER_POD)
STATUS_COMPLETED = "completed"
STATUS_INITIALIZING = "initializing"
HOST_NIC_IP = "reserve"
# HCCL's limit on a server_id (hicann/hccl rank_table_config_910.md: at most 64 characters).
MAX_SERVER_ID = 64

# Where MindX DL mounts the rank-table ConfigMap, and its keys.
MOUNT_DIR = "/user/serverid/devindex/config"
FILE_KEY = "hccl.json"
VERSION_KEY = "version"
# The whole-job attempt (status.restarts) the table was built for: a whole-node table keyed by
# host IPs reads the same in every attempt, so only this tells an earlier attempt's apart.
ATTEMPT_KEY = "attempt"
# What a ConfigMap may hold, all keys together (etcd's object limit), less room for the rest.
MAX_CONFIGMAP_BYTES = 1024 * 1024 - 16 * 1024


class RankTableError(ValueError):
    """The table is malformed; `field` is the JSON path of the first bad field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


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

    Raises RankTableError naming the first bad field, checking in this order: status, version
    and server_count equal to the servers listed (`_check_header`); every value a string,
    server ids non-empty, at most 64 characters and unique (`_check_server`), every
    device_id/device_ip/rank_id well-formed (device_ip IPv4 and unique; "-1" is what a chip
    without a configured address reports; device_id unique in its server; `_check_device`);
    v1.2 also super_device_id per device and the super_pod_list (`_check_super_pods`); this
    rank present exactly once (`_check_this_rank`), rank ids unique and contiguous from 0 in
    server_list order, so each server's rank ids are one block, as HCCL requires
    (`_check_rank_ids`), and the total equal to the world size. Which entry is this
    process's is `own_entry`'s question.
    """
    servers, super_pod = _check_header(table)
    rank_ids = _check_servers(servers, super_pod)
    if super_pod:
        _check_super_pods(table.get("super_pod_list"), servers)
    _check_this_rank(rank_ids, rank)
    _check_rank_ids(rank_ids)
    if len(rank_ids) != world_size:
        raise RankTableError(
            "server_list", f"lists {len(rank_ids)} devices but WORLD_SIZE is {world_size}"
        )


def _check_header(table: Any) -> tuple[list[Any], bool]:
    """The table's own fields: (its server_list, whether it is v1.2)."""
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
    return servers, super_pod


def _check_servers(servers: list[Any], super_pod: bool) -> list[tuple[int, str]]:
    """Every server and its devices in turn: (rank_id, its field) in server_list order."""
    rank_ids: list[tuple[int, str]] = []
    server_ids: dict[str, str] = {}
    device_ips: dict[str, str] = {}
    for i, server in enumerate(servers):
        where = f"server_list[{i}]"
        _check_server(server, where, server_ids)
        device_ids: dict[str, str] = {}
        for j, device in enumerate(_list(server.get("device"), f"{where}.device")):
            at = f"{where}.device[{j}]"
            rank_id = _check_device(device, at, super_pod, device_ids, device_ips)
            rank_ids.append((rank_id, f"{at}.rank_id"))
    return rank_ids


def _check_server(server: Any, where: str, server_ids: dict[str, str]) -> None:
    """A server entry's own fields; its server_id unique among `server_ids` (then added)."""
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


def _check_device(
    device: Any,
    at: str,
    super_pod: bool,
    device_ids: dict[str, str],
    device_ips: dict[str, str],
) -> int:
    """A device entry (device_id unique in its server, device_ip in the table); its rank_id."""
    if not isinstance(device, dict):
        raise RankTableError(at, "must be an object")
    _int_str(device.get("device_id"), f"{at}.device_id")
    _unique(device["device_id"], device_ids, f"{at}.device_id", "device_id")
    ip = _ipv4(device.get("device_ip"), f"{at}.device_ip")
    _unique(ip, device_ips, f"{at}.device_ip", "device_ip")
    if super_pod:
        _int_str(device.get("super_device_id"), f"{at}.super_device_id")
    return _int_str(device.get("rank_id"), f"{at}.rank_id")


def _check_this_rank(rank_ids: list[tuple[int, str]], rank: int) -> None:
    """This process's rank is listed exactly once."""
    mine = [where for rank_id, where in rank_ids if rank_id == rank]
    if len(mine) != 1:
        where = mine[1] if mine else "server_list"
        raise RankTableError(
            where, f"this process's rank {rank} appears {len(mine)} times; expected once"
        )


def _check_rank_ids(rank_ids: list[tuple[int, str]]) -> None:
    """Rank ids unique (the first one listed twice named at its second place), then counting
    from 0 without gaps in server_list order."""
    places: dict[int, list[str]] = {}
    for rank_id, where in rank_ids:
        places.setdefault(rank_id, []).append(where)
    for rank_id, _ in rank_ids:
        if len(places[rank_id]) > 1:
            raise RankTableError(
                places[rank_id][1], f"rank_id {rank_id} is also at {places[rank_id][0]}"
            )
    for expected, (rank_id, where) in enumerate(rank_ids):
        if rank_id != expected:
            raise RankTableError(
                where,
                f"is {rank_id}, expected {expected}: rank ids must count from 0 without gaps "
                "in server_list order",
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
