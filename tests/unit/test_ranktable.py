"""The HCCL rank table v1.0: the example of ARCHITECTURE.md, each invalid case, and how a rank
gets it from a ConfigMap volume to HCCL (wait for its attempt's table, check, regular-file copy)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from shufflenet_contract import ranktable
from shufflenet_contract.ranktable import (
    Device,
    Member,
    PodDevices,
    RankTableError,
    RankTableTimeout,
    build_rank_table,
    validate_rank_table,
    wait_for_table,
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
     "server_list[1].device[0].device_ip", "no RoCE address configured"),
    ("device_ip twice", "server_list[1].device[0].device_ip", "192.168.100.101", 0, 4,
     "server_list[1].device[0].device_ip", "also at server_list[0].device[0].device_ip"),
    ("device_id twice in a server", "server_list[0].device[1].device_id", "0", 0, 4,
     "server_list[0].device[1].device_id", "also at server_list[0].device[0].device_id"),
    ("server_id twice", "server_list[1].server_id", "10.0.0.1", 0, 4,
     "server_list[1].server_id", "also at server_list[0].server_id"),
    ("server_id too long", "server_list[0].server_id", "u" * 65, 0, 4,
     "server_list[0].server_id", "1 to 64 characters"),
    ("host_nic_ip not a string", "server_list[0].host_nic_ip", None, 0, 4,
     "server_list[0].host_nic_ip", "string"),
    ("device_id not a string", "server_list[0].device[0].device_id", 0, 0, 4,
     "server_list[0].device[0].device_id", "string"),
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
     "1 to 64"),
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


# --- from the ConfigMap volume to HCCL ---------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1


class KubeletMount:
    """A ConfigMap volume as the kubelet lays it out (built here by hand, not with
    `ranktable.publish`): `..<timestamp>.<n>/` holding the keys, `..data -> ..<timestamp>.<n>`,
    `<key> -> ..data/<key>`; an update writes a new directory, renames a new `..data` link
    over the old one and removes the old directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.updates = 0
        root.mkdir(parents=True, exist_ok=True)

    @property
    def table_path(self) -> Path:
        return self.root / ranktable.FILE_KEY

    def update(self, data: Mapping[str, str]) -> None:
        self.updates += 1
        new = self.root / f"..2026_12_01_06_33_{self.updates:02d}.32917618{self.updates:02d}"
        new.mkdir()
        for key, value in data.items():
            (new / key).write_text(value)
        link = self.root / "..data"
        old = os.readlink(link) if link.is_symlink() else None
        os.symlink(new.name, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", link)
        for key in data:
            if not (self.root / key).is_symlink():
                os.symlink(f"..data/{key}", self.root / key)
        if old is not None:
            for f in (self.root / old).iterdir():
                f.unlink()
            (self.root / old).rmdir()


def one_device_table(uids: list[str]) -> dict[str, Any]:
    """What the operator builds for one-device pods with these UIDs, rank k = pod k."""
    return build_rank_table(
        [PodDevices(k, uid, (Device("0", f"127.100.{k}.1"),)) for k, uid in enumerate(uids)]
    )


def cm(table: dict[str, Any], version: int, attempt: int) -> dict[str, str]:
    return ranktable.configmap_data(ranktable.dump(table), version, attempt)


def test_configmap_data_keys() -> None:
    assert cm(example(), 3, 1) == {
        "hccl.json": ranktable.dump(example()),
        "version": "3",
        "attempt": "1",
    }


def test_read_mounted_reads_all_keys_from_one_update(tmp_path: Path) -> None:
    mount = KubeletMount(tmp_path / "config")
    mount.update(cm(ranktable.initializing_table(), 1, 0))
    mount.update(cm(example(), 2, 0))
    assert mount.table_path.is_symlink()
    snap = ranktable.read_mounted(mount.table_path)
    assert snap.text == ranktable.dump(example()) and (snap.version, snap.attempt) == ("2", "0")
    # Read through the resolved ..data directory, not the key's own symlink.
    assert snap.source.parent.name.startswith("..2026_") and not snap.source.is_symlink()
    assert "version 2, attempt 0" in snap.describe()
    # A file written by hand: no keys beside it.
    plain = tmp_path / "plain" / "hccl.json"
    plain.parent.mkdir()
    plain.write_text(ranktable.dump(example()))
    snap = ranktable.read_mounted(plain)
    assert (snap.source, snap.version, snap.attempt) == (plain, None, None)


def test_own_entry_by_pod_uid_or_host_ip() -> None:
    table = one_device_table(["uid-a", "uid-b"])
    assert ranktable.own_entry(table, Member(1, 2, pod_uid="uid-b")) == 1
    assert ranktable.own_entry(table, Member(1, 2, pod_uid="uid-old")) is None
    # A one-device pod is never its node's entry: the host IP does not name it.
    assert ranktable.own_entry(table, Member(1, 2, host_ip="uid-b")) is None
    # Whole-node pods: keyed by host IP (example(): 10.0.0.x, two chips each).
    node = Member(3, 4, local_rank=1, local_world_size=2, pod_uid="u", host_ip="10.0.0.2")
    assert ranktable.own_entry(example(), node) == 1
    with pytest.raises(RankTableError) as info:
        ranktable.own_entry(example(), dataclasses.replace(node, rank=2))
    assert info.value.field == "server_list[1].device[1].rank_id"
    assert "is 3 but this process" in str(info.value) and "rank 2" in str(info.value)
    with pytest.raises(RankTableError, match=r"lists 2 devices .* runs 4 ranks"):
        ranktable.own_entry(example(), dataclasses.replace(node, local_world_size=4))


def snapshot(table: Any, version: str | None = "2", attempt: str | None = "1") -> Any:
    text = table if isinstance(table, str) else ranktable.dump(table)
    return ranktable.Snapshot(Path("/m/hccl.json"), text, version, attempt)


ME = Member(rank=1, world_size=2, pod_uid="uid-b", attempt=1)


@pytest.mark.parametrize(
    ("snap", "seen"),
    [
        (snapshot(ranktable.initializing_table()), 'status "initializing" (version 2, attempt 1)'),
        (snapshot("{half"), "not JSON"),
        (snapshot(["a"]), "not a JSON object"),
        (snapshot(one_device_table(["uid-a", "uid-b"]), attempt="0"), "of attempt 0, this pod"),
        (snapshot(one_device_table(["uid-a", "uid-b"]), attempt=None), "(no attempt key)"),
        (snapshot(one_device_table(["uid-x", "uid-y"])), "no server_id of this pod's (uid-b)"),
    ],
    ids=["initializing", "half-written", "not an object", "earlier attempt", "no attempt key",
         "other pods"],
)  # fmt: skip
def test_a_table_not_yet_this_attempts_is_waited_for(snap: Any, seen: str) -> None:
    table, state = ranktable.current_table(snap, ME)
    assert table is None and seen in state, state


def test_a_table_of_this_attempt_is_used_or_refused() -> None:
    good = one_device_table(["uid-a", "uid-b"])
    table, state = ranktable.current_table(snapshot(good), ME)
    assert table == good and state == ""
    # Outside Kubernetes (no identity, no attempt): the table is only validated.
    assert ranktable.current_table(snapshot(good, None, None), Member(1, 2))[0] == good
    swapped = copy.deepcopy(good)
    swapped["server_list"][0]["server_id"], swapped["server_list"][1]["server_id"] = (
        "uid-b",
        "uid-a",
    )
    with pytest.raises(RankTableError, match=r"is 0 but this process .* is rank 1"):
        ranktable.current_table(snapshot(swapped), ME)
    bad_ip = _set(copy.deepcopy(good), "server_list[0].device[0].device_ip", "-1")
    with pytest.raises(RankTableError, match="no RoCE address"):
        ranktable.current_table(snapshot(bad_ip), ME)


def test_rank_copies_only_its_attempts_completed_table_from_a_kubelet_mount(
    tmp_path: Path,
) -> None:
    """Attempt 1 of a 2-rank job, pod uid-b (rank 1): its volume first shows what the kubelet
    last synced (attempt 0's completed table, of the old pods), then attempt 1's initializing
    table, a completed table of attempt 0 again (a late sync), and only then its own."""
    mount = KubeletMount(tmp_path / "config")
    old = one_device_table(["uid-0a", "uid-0b"])
    mine = one_device_table(["uid-a", "uid-b"])
    updates: Iterator[dict[str, str]] = iter(
        [
            cm(ranktable.initializing_table(), 3, 1),
            cm(old, 2, 0),
            cm(mine, 4, 1),
        ]
    )
    mount.update(cm(old, 2, 0))
    fake = FakeClock()
    seen: list[str] = []

    def sleep(seconds: float) -> None:
        seen.append(ranktable.read_mounted(mount.table_path).text)
        fake.sleep(seconds)
        mount.update(next(updates))

    snap = wait_for_table(mount.table_path, ME, timeout=600, poll=5, clock=fake.clock, sleep=sleep)
    assert fake.sleeps == 3 and snap.text == ranktable.dump(mine)
    init = ranktable.dump(ranktable.initializing_table())
    assert seen == [ranktable.dump(old), init, ranktable.dump(old)]  # each waited out
    assert (snap.version, snap.attempt) == ("4", "1")
    copy_path = ranktable.copy_for_hccl(snap.text, tmp_path / "tmp", "hccl-j-rank1.json")
    # What HCCL's checkFilePathReadable accepts: absolute, a regular file, not a symlink,
    # readable by its owner; and it holds exactly the completed table.
    assert copy_path.is_absolute() and not copy_path.is_symlink()
    mode = copy_path.lstat().st_mode
    assert stat.S_ISREG(mode) and mode & stat.S_IRUSR
    assert ranktable.parse(copy_path.read_text()) == mine
    assert copy_path.read_text() == ranktable.dump(mine)
    assert [p.name for p in copy_path.parent.iterdir()] == ["hccl-j-rank1.json"]


def test_wait_gives_up_naming_what_it_saw(tmp_path: Path) -> None:
    mount = KubeletMount(tmp_path / "config")
    mount.update(cm(one_device_table(["uid-0a", "uid-0b"]), 2, 0))
    fake = FakeClock()
    with pytest.raises(RankTableTimeout) as info:
        wait_for_table(mount.table_path, ME, timeout=10, poll=1, clock=fake.clock, sleep=fake.sleep)
    text = str(info.value)
    assert "not usable after 10s" in text and "attempt 0, this pod is of attempt 1" in text
    assert fake.sleeps == 10
    with pytest.raises(RankTableTimeout, match="file missing"):
        wait_for_table(tmp_path / "none", ME, timeout=1, poll=1, clock=fake.clock, sleep=fake.sleep)


def test_a_wrong_table_of_this_attempt_fails_at_once(tmp_path: Path) -> None:
    mount = KubeletMount(tmp_path / "config")
    bad = _set(one_device_table(["uid-a", "uid-b"]), "server_list[1].device[0].rank_id", "5")
    mount.update(cm(bad, 4, 1))
    fake = FakeClock()
    with pytest.raises(RankTableError) as info:
        wait_for_table(mount.table_path, ME, timeout=60, poll=1, clock=fake.clock, sleep=fake.sleep)
    assert "rank 1 appears 0 times" in str(info.value) and fake.sleeps == 0


def test_copy_replaces_whatever_was_there(tmp_path: Path) -> None:
    target = tmp_path / "hccl.json"
    os.symlink(tmp_path / "elsewhere", target)
    path = ranktable.copy_for_hccl("{}\n", tmp_path, "hccl.json")
    assert path == target and not path.is_symlink() and path.read_text() == "{}\n"
    assert ranktable.copy_name("job", 3) == "hccl-job-rank3.json"
    assert ranktable.copy_name(None, 0) == "hccl-job-rank0.json"


def test_publish_lays_out_a_configmap_volume_like_the_kubelet(tmp_path: Path) -> None:
    root = tmp_path / "config"
    first = ranktable.publish(root, cm(ranktable.initializing_table(), 1, 0))
    second = ranktable.publish(root, cm(example(), 2, 0))
    assert first.name.startswith("..") and not first.exists()
    assert os.readlink(root / "..data") == second.name
    assert os.readlink(root / "hccl.json") == "..data/hccl.json"
    assert sorted(p.name for p in root.iterdir()) == [second.name, "..data", "attempt",
                                                     "hccl.json", "version"]  # fmt: skip
    snap = ranktable.read_mounted(root / "hccl.json")
    assert ranktable.parse(snap.text) == example() and snap.version == "2"


# --- v1.2 (A3 super-pods), device annotations, hccl/rankIndex ------------------------------


def super_pod_example() -> dict[str, Any]:
    """v1.2 as hicann/hccl rank_table_config_a3.md shows it: two super-pods of one server each."""
    table = example()
    table["version"] = "1.2"
    for s, server in enumerate(table["server_list"]):
        for d, device in enumerate(server["device"]):
            device["super_device_id"] = str(s * 2 + d)
    table["super_pod_list"] = [
        {"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.1"}]},
        {"super_pod_id": "1", "server_list": [{"server_id": "10.0.0.2"}]},
    ]
    return table


INVALID_V12 = [
    ("super_device_id missing", "server_list[0].device[0].super_device_id", KeyError,
     "server_list[0].device[0].super_device_id", "string"),
    ("super_pod_list missing", "super_pod_list", KeyError, "super_pod_list", "non-empty"),
    ("server in no super-pod", "super_pod_list", [
        {"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.1"}]}],
     "super_pod_list", "'10.0.0.2' is in no super-pod"),
    ("unknown server", "super_pod_list[1].server_list[0].server_id", "10.0.0.9",
     "super_pod_list[1].server_list[0].server_id", "not in server_list"),
    ("server in two super-pods", "super_pod_list[1].server_list[0].server_id", "10.0.0.1",
     "super_pod_list[1].server_list[0].server_id", "also at"),
    ("super_pod_id twice", "super_pod_list[1].super_pod_id", "0",
     "super_pod_list[1].super_pod_id", "also at"),
    ("super_device_id twice in a super-pod", "super_pod_list", [
        {"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.1"},
                                              {"server_id": "10.0.0.2"}]}],
     "server_list[1].device[0].super_device_id", None),
]  # fmt: skip


def test_v12_example_passes_and_each_invalid_case_names_the_field() -> None:
    for rank in range(4):
        validate_rank_table(super_pod_example(), rank, 4)
    # server_count is optional in v1.2.
    validate_rank_table(_set(super_pod_example(), "server_count", KeyError), 0, 4)
    for name, path, value, field, words in INVALID_V12:
        table = _set(super_pod_example(), path, copy.deepcopy(value))
        if name == "super_device_id twice in a super-pod":
            _set(table, "server_list[1].device[0].super_device_id", "0")
            words = "in super-pod '0', super_device_id '0'"
        with pytest.raises(RankTableError) as info:
            validate_rank_table(table, 0, 4)
        assert info.value.field == field, (name, str(info.value))
        assert words in str(info.value), name


def test_v12_servers_of_a_super_pod_must_be_adjacent() -> None:
    table = super_pod_example()
    table["server_list"].append(
        {
            "server_id": "10.0.0.3",
            "device": [{"device_id": "0", "device_ip": "192.168.100.103", "rank_id": "4",
                        "super_device_id": "9"}],
        }
    )  # fmt: skip
    table["server_count"] = "3"
    table["super_pod_list"][0]["server_list"].append({"server_id": "10.0.0.3"})
    with pytest.raises(RankTableError, match="not adjacent"):
        validate_rank_table(table, 0, 5)


def annotated(rank: int, note: dict[str, Any], key: str = ranktable.ANNOTATION) -> Any:
    return ranktable.AnnotatedPod(rank, f"uid-{rank}", f"j-rank-{rank}", json.dumps(note), key)


def a3_note(rank: int, super_pod: int) -> dict[str, Any]:
    # As MindX's device plugin writes it on A3: super_pod_id a number, super_device_id per chip.
    return {
        "pod_name": f"j-rank-{rank}",
        "server_id": f"127.0.1.{rank + 1}",
        "host_ip": f"127.0.1.{rank + 1}",
        "super_pod_id": super_pod,
        "devices": [
            {"device_id": "0", "device_ip": f"127.100.{rank}.1", "super_device_id": str(rank)}
        ],
    }


def test_build_v12_groups_servers_by_the_annotations_super_pod_id() -> None:
    pods = [annotated(r, a3_note(r, sp)) for r, sp in enumerate((7, 7, 3))]
    table = build_rank_table(ranktable.pods_from_annotations(pods, 1), super_pod=True)
    assert table["version"] == "1.2"
    assert [d["super_device_id"] for s in table["server_list"] for d in s["device"]] == [
        "0",
        "1",
        "2",
    ]
    assert table["super_pod_list"] == [
        {"super_pod_id": "7", "server_list": [{"server_id": "uid-0"}, {"server_id": "uid-1"}]},
        {"super_pod_id": "3", "server_list": [{"server_id": "uid-2"}]},
    ]
    for rank in range(3):
        validate_rank_table(table, rank, 3)
    # v1.0 from the same pods: no super-pod fields.
    plain = build_rank_table(ranktable.pods_from_annotations(pods, 1))
    assert plain["version"] == "1.0" and "super_pod_list" not in plain
    assert "super_device_id" not in plain["server_list"][0]["device"][0]


@pytest.mark.parametrize(
    ("notes", "words"),
    [
        ([a3_note(0, 1), a3_note(1, 2), a3_note(2, 1)], "come between"),
        ([a3_note(0, 1), {**a3_note(1, 1), "super_pod_id": None}], "no super_pod_id"),
        (
            [a3_note(0, 1), {**a3_note(1, 1), "devices": [{"device_id": "0",
                                                           "device_ip": "127.100.1.1"}]}],
            "no super_device_id",
        ),
    ],
)  # fmt: skip
def test_build_v12_refuses_what_hccl_could_not_use(notes: list[dict[str, Any]], words: str) -> None:
    pods = [annotated(r, note) for r, note in enumerate(notes)]
    with pytest.raises(RankTableError, match=words):
        build_rank_table(ranktable.pods_from_annotations(pods, 1), super_pod=True)


def test_a_chip_without_a_roce_address_blocks_the_table_naming_the_pod() -> None:
    note = a3_note(1, 0)
    note["devices"][0]["device_ip"] = "-1"
    with pytest.raises(RankTableError) as info:
        ranktable.pods_from_annotations([annotated(1, note, ranktable.NPU_ANNOTATION)], 1)
    assert str(info.value).startswith(
        f'{ranktable.NPU_ANNOTATION} of pod j-rank-1: devices[0].device_ip: is "-1"'
    )
    assert "no RoCE address configured" in str(info.value)


@pytest.mark.parametrize(
    ("annotations", "node_selector", "wanted"),
    [
        ({"huawei.com/schedule_policy": "chip2-node16-sp"}, None, True),
        ({"huawei.com/schedule_policy": "chip2-node8-sp"}, None, True),
        # The policy, when set, decides alone (MindX's useV1dot2).
        ({"huawei.com/schedule_policy": "chip4-node8"},
         {"accelerator-type": "module-a3-16-super-pod"}, False),
        (None, {"accelerator-type": "module-a3-16-super-pod"}, True),
        ({}, {"accelerator-type": "module-a3-8-super-pod"}, True),
        ({}, {"accelerator-type": "module-a3-16"}, False),
        (None, None, False),
    ],
)  # fmt: skip
def test_wants_super_pod(
    annotations: dict[str, str] | None, node_selector: dict[str, str] | None, wanted: bool
) -> None:
    assert ranktable.wants_super_pod(annotations, node_selector) is wanted


def test_device_annotation_prefers_the_resources_key_and_reads_either() -> None:
    both = {ranktable.ANNOTATION: "910", ranktable.NPU_ANNOTATION: "npu"}
    assert ranktable.device_annotation(both, "huawei.com/npu") == (ranktable.NPU_ANNOTATION, "npu")
    assert ranktable.device_annotation(both, "huawei.com/Ascend910") == (
        ranktable.ANNOTATION,
        "910",
    )
    only_npu = {ranktable.NPU_ANNOTATION: "npu"}
    assert ranktable.device_annotation(only_npu, None) == (ranktable.NPU_ANNOTATION, "npu")
    assert ranktable.device_annotation({"other": "x"}, "huawei.com/npu") is None
    assert ranktable.device_annotation(None, None) is None


def test_rank_index_must_be_the_pods_index() -> None:
    key = ranktable.RANK_INDEX_ANNOTATION
    assert ranktable.rank_index({key: "3"}, 3, "j-rank-3") == 3
    # Pods made before the annotation existed: their index.
    assert ranktable.rank_index({}, 2, "j-rank-2") == 2
    with pytest.raises(RankTableError, match="carries hccl/rankIndex 5") as info:
        ranktable.rank_index({key: "5"}, 3, "j-rank-3")
    assert info.value.field == key
    with pytest.raises(RankTableError, match="not a non-negative integer"):
        ranktable.rank_index({key: "-1"}, 3, "j-rank-3")


def test_a_rank_takes_a_v12_table_of_its_attempt_and_refuses_a_broken_one() -> None:
    pods = [annotated(r, a3_note(r, 0)) for r in range(2)]
    entries = ranktable.pods_from_annotations(pods, 1)
    table = build_rank_table(entries, super_pod=True)
    me = Member(rank=1, world_size=2, pod_uid="uid-1", attempt=1)
    got, state = ranktable.current_table(snapshot(table), me)
    assert got == table and state == "" and got["version"] == "1.2"
    del table["super_pod_list"]
    with pytest.raises(RankTableError, match="super_pod_list"):
        ranktable.current_table(snapshot(table), me)
