"""The HCCL rank table v1.0: the example of ARCHITECTURE.md, each invalid case, the wait."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from shufflenet_contract import ranktable
from shufflenet_contract.ranktable import (
    Device,
    PodDevices,
    RankTableError,
    RankTableTimeout,
    build_rank_table,
    validate_rank_table,
    wait_for_completed,
)


def example() -> dict[str, Any]:
    """Two servers of two chips each, in the documented shape (all values strings)."""
    return {
        "version": "1.0",
        "server_count": "2",
        "server_list": [
            {
                "server_id": "10.0.0.1",
                "device": [
                    {"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"},
                    {"device_id": "1", "device_ip": "192.168.101.101", "rank_id": "1"},
                ],
                "host_nic_ip": "reserve",
            },
            {
                "server_id": "10.0.0.2",
                "device": [
                    {"device_id": "0", "device_ip": "192.168.100.102", "rank_id": "2"},
                    {"device_id": "1", "device_ip": "192.168.101.102", "rank_id": "3"},
                ],
                "host_nic_ip": "reserve",
            },
        ],
        "status": "completed",
    }


def test_valid_example_passes_for_every_rank() -> None:
    for rank in range(4):
        validate_rank_table(example(), rank, 4)


def _set(table: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node: Any = table
    keys = path.replace("]", "").replace("[", ".").split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = keys[-1]
    if value is KeyError:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return table


# (name, path to change, new value, rank, world size, field the error names, words in it)
INVALID = [
    ("not completed", "status", "initializing", 0, 4, "status", "initializing"),
    ("version", "version", "0.9", 0, 4, "version", "1.0"),
    ("server_count differs", "server_count", "3", 0, 4, "server_count", "2 servers"),
    ("server_count not a string", "server_count", 2, 0, 4, "server_count", "string"),
    ("device_ip -1", "server_list[1].device[0].device_ip", "-1", 0, 4,
     "server_list[1].device[0].device_ip", "IPv4"),
    ("device_ip not IPv4", "server_list[0].device[1].device_ip", "fe80::1", 0, 4,
     "server_list[0].device[1].device_ip", "IPv4"),
    ("device_ip missing", "server_list[0].device[0].device_ip", KeyError, 0, 4,
     "server_list[0].device[0].device_ip", "string"),
    ("rank_id not a number", "server_list[0].device[1].rank_id", "one", 0, 4,
     "server_list[0].device[1].rank_id", "integer"),
    ("rank ids not from 0", "server_list[0].device[0].rank_id", "4", 1, 4,
     "server_list[0].device[0].rank_id", "count from 0"),
    ("rank ids with a gap", "server_list[1].device[1].rank_id", "5", 0, 4,
     "server_list[1].device[1].rank_id", "without gaps"),
    ("duplicate rank id", "server_list[1].device[0].rank_id", "1", 0, 4,
     "server_list[1].device[0].rank_id", "also at server_list[0].device[1].rank_id"),
    ("own rank twice", "server_list[1].device[1].rank_id", "2", 2, 4,
     "server_list[1].device[1].rank_id", "rank 2 appears 2 times"),
    ("own rank absent", "server_list[1].device[1].rank_id", "2", 3, 4, "server_list",
     "rank 3 appears 0 times"),
    ("total differs from WORLD_SIZE", "status", "completed", 0, 8, "server_list",
     "WORLD_SIZE is 8"),
    ("empty server_list", "server_list", [], 0, 4, "server_list", "non-empty"),
    ("empty server_id", "server_list[0].server_id", "", 0, 4, "server_list[0].server_id",
     "empty"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "path", "value", "rank", "world", "field", "words"),
    INVALID,
    ids=[c[0] for c in INVALID],
)
def test_invalid_table_names_the_field(
    name: str, path: str, value: Any, rank: int, world: int, field: str, words: str
) -> None:
    table = _set(example(), path, copy.deepcopy(value))
    with pytest.raises(RankTableError) as info:
        validate_rank_table(table, rank, world)
    assert info.value.field == field, str(info.value)
    assert words in str(info.value)


def test_not_an_object() -> None:
    with pytest.raises(RankTableError, match="JSON object"):
        validate_rank_table(["not", "a", "table"], 0, 1)


def test_build_per_device_pods_orders_by_rank() -> None:
    pods = [
        PodDevices(rank=k, server_id=f"uid-{k}", devices=(Device(str(k), f"127.100.0.{k + 1}"),))
        for k in (2, 0, 3, 1)
    ]
    table = build_rank_table(pods)
    assert table["server_count"] == "4" and table["status"] == "completed"
    assert [s["server_id"] for s in table["server_list"]] == ["uid-0", "uid-1", "uid-2", "uid-3"]
    assert [s["device"][0]["rank_id"] for s in table["server_list"]] == ["0", "1", "2", "3"]
    for rank in range(4):
        validate_rank_table(table, rank, 4)


def test_build_whole_node_pods_from_annotations() -> None:
    # Two pods that each hold a whole 2-chip node: the entry is the node (host IP), and
    # rank_id = pod rank x chips per pod + index.
    notes = [
        {"pod_name": "j-rank-1", "server_id": "n2", "host_ip": "127.0.1.2",
         "devices": [{"device_id": "0", "device_ip": "127.100.1.1"},
                     {"device_id": "1", "device_ip": "127.100.1.2"}]},
        {"pod_name": "j-rank-0", "server_id": "n1", "host_ip": "127.0.1.1",
         "devices": [{"device_id": "0", "device_ip": "127.100.0.1"},
                     {"device_id": "1", "device_ip": "127.100.0.2"}]},
    ]  # fmt: skip
    annotated = [
        ranktable.AnnotatedPod(rank, f"uid-{rank}", f"j-rank-{rank}", json.dumps(note))
        for rank, note in ((0, notes[1]), (1, notes[0]))
    ]
    table = build_rank_table(ranktable.pods_from_annotations(annotated, 2))
    assert [s["server_id"] for s in table["server_list"]] == ["127.0.1.1", "127.0.1.2"]
    ids = [d["rank_id"] for s in table["server_list"] for d in s["device"]]
    assert ids == ["0", "1", "2", "3"]
    validate_rank_table(table, 3, 4)
    # The same two pods on one node: neither holds the whole node, pod UIDs key them.
    one_node = [dataclasses.replace(p, annotation=json.dumps(notes[1])) for p in annotated]
    entries = ranktable.pods_from_annotations(one_node, 2)
    assert [e.server_id for e in entries] == ["uid-0", "uid-1"]
    # One-device pods are always keyed by pod UID.
    single = {**notes[1], "devices": notes[1]["devices"][:1]}
    (per_device,) = ranktable.pods_from_annotations(
        [ranktable.AnnotatedPod(0, "uid-0", "j-rank-0", json.dumps(single))], 1
    )
    assert per_device.server_id == "uid-0"
    with pytest.raises(RankTableError, match=ranktable.ANNOTATION):
        ranktable.pods_from_annotations([ranktable.AnnotatedPod(0, "u", "p", "{}")], 1)
    with pytest.raises(RankTableError, match=r"got 2 devices, spec\.devices\.perPod is 1"):
        ranktable.pods_from_annotations(annotated[:1], 1)


def test_build_refuses_inconsistent_pods() -> None:
    with pytest.raises(ValueError, match="same"):
        build_rank_table([PodDevices(0, "a", (Device("0", "127.100.0.1"),)), PodDevices(1, "b")])
    with pytest.raises(ValueError, match="ranks"):
        build_rank_table([PodDevices(1, "a", (Device("0", "127.100.0.1"),))])


def test_dump_parse_round_trip() -> None:
    assert ranktable.parse(ranktable.dump(example())) == example()
    with pytest.raises(RankTableError, match="not JSON"):
        ranktable.parse("{")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1


def test_wait_polls_until_completed(tmp_path: Path) -> None:
    path = tmp_path / "hccl.json"
    fake = FakeClock()
    states = iter([None, "{half", json.dumps(ranktable.initializing_table())])

    def sleep(seconds: float) -> None:
        fake.sleep(seconds)
        nxt = next(states, ranktable.dump(example()))
        if nxt is not None:
            path.write_text(nxt)

    table = wait_for_completed(path, timeout=60, poll=2, clock=fake.clock, sleep=sleep)
    assert table == example() and fake.sleeps == 4


def test_wait_times_out_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "hccl.json"
    path.write_text(json.dumps(ranktable.initializing_table()))
    fake = FakeClock()
    with pytest.raises(RankTableTimeout) as info:
        wait_for_completed(path, timeout=10, poll=1, clock=fake.clock, sleep=fake.sleep)
    assert 'status "initializing"' in str(info.value) and "10s" in str(info.value)
    with pytest.raises(RankTableTimeout, match="file missing"):
        wait_for_completed(tmp_path / "none", timeout=1, poll=1, clock=fake.clock, sleep=fake.sleep)
