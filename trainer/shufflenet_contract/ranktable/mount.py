"""A rank's side of the rank table: wait for the mounted table of its attempt, check that it
lists this process, and hand HCCL a regular-file copy.

What a rank does with the mounted table before HCCL sees it (docs/ranktable.md has the
sources): torch_npu hands HCCL the file named by RANK_TABLE_FILE only when it is a regular
file (`checkFilePathReadable` in Ascend/pytorch `torch_npu/csrc/distributed/HCCLUtils.cpp`
refuses symlinks, and every ConfigMap key is one), and otherwise silently negotiates without
it; a table that is there but stale or wrong makes HCCL fail late instead. So each rank waits
until the mount shows a completed table of its own attempt that lists its pod
(`wait_for_table`), checks it (`validate_rank_table`, `own_entry`), copies it to a regular file
(`copy_for_hccl`) and points RANK_TABLE_FILE at the copy. `publish` writes a ConfigMap volume
as the kubelet does, for a local rehearsal.

Pure functions, except `read_mounted`, `wait_for_table`, `copy_for_hccl` and `publish` (files).
Of the package, imports only `format`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..env import RankEnv
from .format import (
    ATTEMPT_KEY,
    STATUS_COMPLETED,
    VERSION_KEY,
    RankTableError,
    parse,
    validate_rank_table,
)

# How the kubelet publishes a ConfigMap volume (AtomicWriter, kubernetes
# pkg/volume/util/atomic_writer.go): the keys' files in a directory `..<UTC timestamp>.<random>`,
# a symlink `..data` to it, and per key a symlink `<key> -> ..data/<key>`. An update writes a new
# directory, then renames a new `..data` link over the old one, so that all keys of one update
# appear at once; the old directory is then removed.
DATA_LINK = "..data"


class RankTableTimeout(TimeoutError):
    """The table did not reach `status: completed` in time."""


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
