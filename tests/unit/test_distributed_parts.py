"""Parts of distributed training that need no second process: checkpoint generations and
`--resume auto`, the watchdog, launcher flags, device selection from the environment, and
the rank table's hand-over to HCCL."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from shufflenet_contract import ranktable
from shufflenet_contract.env import read_rank_env
from shufflenet_trainer.errors import ConfigError, DistributedError
from shufflenet_trainer.jobs.launch import exit_status, strip_launcher_flags
from shufflenet_trainer.train import checkpoint as ckpt
from shufflenet_trainer.train.config import parse_config
from shufflenet_trainer.train.distributed import Watchdog, _check_rank_table, is_peer_failure

ARCH = "shufflenet_v2_x0_5"


def state(epoch: int, arch: str = ARCH) -> dict:
    return {"arch": arch, "epoch": epoch, "state_dict": {"w": torch.ones(1)}, "optimizer": {}}


def touch_later(path: Path, seconds: float) -> None:
    t = path.stat().st_mtime + seconds
    os.utime(path, (t, t))


def test_save_keeps_the_previous_generation(tmp_path: Path) -> None:
    path, prev = tmp_path / ckpt.CHECKPOINT_NAME, tmp_path / ckpt.PREVIOUS_NAME
    ckpt.save_checkpoint(state(1), path, previous=prev)
    assert path.exists() and not prev.exists()
    ckpt.save_checkpoint(state(2), path, previous=prev)
    assert torch.load(path, weights_only=True)["epoch"] == 2
    assert torch.load(prev, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, prev.name])


def test_resume_auto_skips_a_corrupt_newest_checkpoint(tmp_path: Path) -> None:
    older = tmp_path / "training_2p_job_20240101000000"
    newer = tmp_path / "training_2p_job_20240102000000"
    older.mkdir()
    newer.mkdir()
    ckpt.save_checkpoint(state(3), older / ckpt.CHECKPOINT_NAME)
    ckpt.save_checkpoint(state(4), newer / ckpt.CHECKPOINT_NAME, previous=None)
    ckpt.save_checkpoint(
        state(5), newer / ckpt.CHECKPOINT_NAME, previous=newer / ckpt.PREVIOUS_NAME
    )
    touch_later(newer / ckpt.PREVIOUS_NAME, 1)
    touch_later(newer / ckpt.CHECKPOINT_NAME, 2)

    found, loaded, notes = ckpt.find_resumable(tmp_path, arch=ARCH)
    assert found == newer / ckpt.CHECKPOINT_NAME and loaded["epoch"] == 5 and notes == []

    # The newest file cut short (a full volume): reported, and the previous one is used.
    data = (newer / ckpt.CHECKPOINT_NAME).read_bytes()
    (newer / ckpt.CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])
    touch_later(newer / ckpt.CHECKPOINT_NAME, 3)
    found, loaded, notes = ckpt.find_resumable(tmp_path, arch=ARCH)
    assert found == newer / ckpt.PREVIOUS_NAME and loaded["epoch"] == 4
    assert len(notes) == 1 and "checkpoint.pth.tar is unreadable" in notes[0]

    # Nothing usable: a fresh start, with every skipped file reported.
    (newer / ckpt.PREVIOUS_NAME).write_bytes(b"junk")
    (older / ckpt.CHECKPOINT_NAME).write_bytes(b"junk")
    found, loaded, notes = ckpt.find_resumable(tmp_path, arch=ARCH)
    assert found is None and loaded is None and len(notes) == 3


def test_resume_auto_refuses_another_arch(tmp_path: Path) -> None:
    run = tmp_path / "training_1p_job_20240101000000"
    run.mkdir()
    ckpt.save_checkpoint(state(1, "shufflenet_v2_x1_0"), run / ckpt.CHECKPOINT_NAME)
    with pytest.raises(ConfigError, match="holds a shufflenet_v2_x1_0 checkpoint"):
        ckpt.find_resumable(tmp_path, arch=ARCH)


def test_watchdog_fires_without_progress_and_not_while_petted() -> None:
    fired = threading.Event()
    dog = Watchdog(0.3, on_expire=lambda idle: fired.set())
    try:
        for _ in range(8):
            time.sleep(0.1)
            dog.pet()
        assert not fired.is_set()
        with dog.paused():
            time.sleep(0.6)
        assert not fired.is_set()
        assert fired.wait(2.0)
    finally:
        dog.close()


def test_peer_failures_are_recognised() -> None:
    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer")
    assert is_peer_failure(gloo) and is_peer_failure(DistributedError("x"))
    assert not is_peer_failure(RuntimeError("shape mismatch")) and not is_peer_failure(KeyError())


def test_strip_launcher_flags() -> None:
    argv = ["d", "--nproc", "8", "--device-list=0,1", "-b", "8", "--device-list", "2,3"]
    assert strip_launcher_flags(argv) == ["d", "-b", "8"]
    assert exit_status(-15) == 143 and exit_status(3) == 3


def test_launcher_flags_are_checked() -> None:
    cfg = parse_config(["--dummy", "--nproc", "4", "--device-list", "4,5,6,7"])
    assert cfg.nproc == 4 and cfg.device_list == (4, 5, 6, 7)
    with pytest.raises(ConfigError, match="--device-list has 2 devices but --nproc is 4"):
        parse_config(["--dummy", "--nproc", "4", "--device-list", "0,1"])
    with pytest.raises(ConfigError, match="--device-list goes with --nproc"):
        parse_config(["--dummy", "--device-list", "0,1"])
    with pytest.raises(ConfigError, match="distinct"):
        parse_config(["--dummy", "--nproc", "2", "--device-list", "1,1"])
    with pytest.raises(ConfigError, match="must divide evenly over 3 ranks"):
        parse_config(["--dummy", "-b", "16"], world_size=3)


def test_device_index_from_the_environment() -> None:
    assert parse_config(["--dummy"], env_device_id=3).device_id == 3
    assert parse_config(["--dummy", "--device-id", "1"], env_device_id=3).device_id == 1
    assert parse_config(["--dummy"]).device_id == 0


def test_launcher_in_a_pod_of_several_devices_starts_the_pods_ranks() -> None:
    from shufflenet_contract.env import RankEnv, rank_env, read_rank_env
    from shufflenet_trainer.errors import ConfigError
    from shufflenet_trainer.jobs.launch import Node, node_of

    assert node_of(read_rank_env({}), 4) == Node(0, 4)
    pod = rank_env(
        RankEnv(
            rank=8,
            world_size=16,
            local_world_size=8,
            master_addr="sn-node-0.sn.ns.svc",
            master_port=29500,
            device_id=0,
            job_name="j",
        ),
        device_type="npu",
    )
    assert node_of(read_rank_env(pod), 8) == Node(8, 16, "sn-node-0.sn.ns.svc", 29500)
    # A single rank's environment (or a pod of another size) cannot host --nproc ranks.
    with pytest.raises(ConfigError, match=r"^--nproc 4: this process is already rank 8 of 16"):
        node_of(read_rank_env(pod), 4)


# --- the rank table, from the mount to HCCL ----------------------------------------------


def two_pod_table(uids: tuple[str, str], device_ip: str = "127.100.0.2") -> dict[str, Any]:
    return ranktable.build_rank_table(
        [
            ranktable.PodDevices(0, uids[0], (ranktable.Device("0", "127.100.0.1"),)),
            ranktable.PodDevices(1, uids[1], (ranktable.Device("1", device_ip),)),
        ]
    )


@pytest.fixture
def rank1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Rank 1 of attempt 1 of job j, pod uid-b, with the table mounted as a ConfigMap volume;
    RANK_TABLE_FILE is restored after the test (the check sets it)."""
    monkeypatch.setenv("RANK_TABLE_FILE", "unset")
    return {
        "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "JOB_NAME": "j",
        "RANK_TABLE_FILE": str(tmp_path / "config" / "hccl.json"), "POD_UID": "uid-b",
        "SHUFFLENET_ATTEMPT": "1", "SHUFFLENET_RANK_TABLE_DIR": str(tmp_path / "tmp"),
    }  # fmt: skip


def mount(environ: dict[str, str], table: dict[str, Any], attempt: int = 1) -> None:
    data = ranktable.configmap_data(ranktable.dump(table), 5, attempt)
    ranktable.publish(Path(environ["RANK_TABLE_FILE"]).parent, data)


def test_rank_points_hccl_at_a_regular_file_copy(
    rank1: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    table = two_pod_table(("uid-a", "uid-b"))
    mount(rank1, table)
    assert Path(rank1["RANK_TABLE_FILE"]).is_symlink()  # as the kubelet mounts a key
    _check_rank_table(read_rank_env(rank1), timeout=5)
    copy = Path(os.environ["RANK_TABLE_FILE"])
    assert copy == Path(rank1["SHUFFLENET_RANK_TABLE_DIR"]) / "hccl-j-rank1.json"
    assert stat.S_ISREG(copy.lstat().st_mode) and copy.read_text() == ranktable.dump(table)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"=> rank 1: HCCL gets RANK_TABLE_FILE={copy} ")
    assert rank1["RANK_TABLE_FILE"] in line and "version 5, attempt 1" in line


def test_stale_table_is_not_used(rank1: dict[str, str]) -> None:
    mount(rank1, two_pod_table(("uid-a", "uid-b")), attempt=0)
    with pytest.raises(DistributedError, match="attempt 0, this pod is of attempt 1"):
        _check_rank_table(read_rank_env(rank1), timeout=0)
    assert os.environ["RANK_TABLE_FILE"] == "unset"


def test_wrong_table_is_a_one_line_configuration_error(rank1: dict[str, str]) -> None:
    mount(rank1, two_pod_table(("uid-a", "uid-b"), device_ip="-1"))
    with pytest.raises(ConfigError) as info:
        _check_rank_table(read_rank_env(rank1), timeout=5)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and text.startswith(
        f"RANK_TABLE_FILE {rank1['RANK_TABLE_FILE']}: "
    )
    assert "server_list[1].device[0].device_ip" in text and "no RoCE address" in text
    assert os.environ["RANK_TABLE_FILE"] == "unset"


def test_unwritable_copy_directory_names_the_override(
    rank1: dict[str, str], tmp_path: Path
) -> None:
    mount(rank1, two_pod_table(("uid-a", "uid-b")))
    (tmp_path / "file").write_text("")
    rank1["SHUFFLENET_RANK_TABLE_DIR"] = str(tmp_path / "file" / "sub")
    with pytest.raises(ConfigError, match="set SHUFFLENET_RANK_TABLE_DIR to a writable"):
        _check_rank_table(read_rank_env(rank1), timeout=5)
