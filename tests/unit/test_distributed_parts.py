"""Parts of distributed training that need no second process: checkpoint generations and
`--resume auto`, the watchdog, launcher flags and device selection from the environment."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from shufflenet_trainer.errors import ConfigError, DistributedError
from shufflenet_trainer.jobs.launch import exit_status, strip_launcher_flags
from shufflenet_trainer.train import checkpoint as ckpt
from shufflenet_trainer.train.config import parse_config
from shufflenet_trainer.train.distributed import Watchdog, is_peer_failure

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
    from shufflenet_contract.env import rank_env, read_rank_env
    from shufflenet_trainer.errors import ConfigError
    from shufflenet_trainer.jobs.launch import Node, node_of

    assert node_of(read_rank_env({}), 4) == Node(0, 4)
    pod = rank_env(
        job_name="j",
        rank=8,
        world_size=16,
        master_addr="sn-node-0.sn.ns.svc",
        master_port=29500,
        device_type="npu",
        local_world_size=8,
    )
    assert node_of(read_rank_env(pod), 8) == Node(8, 16, "sn-node-0.sn.ns.svc", 29500)
    # A single rank's environment (or a pod of another size) cannot host --nproc ranks.
    with pytest.raises(ConfigError, match=r"^--nproc 4: this process is already rank 8 of 16"):
        node_of(read_rank_env(pod), 4)
