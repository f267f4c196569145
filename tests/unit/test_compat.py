"""The mapping of pytorch/examples and Ascend ModelZoo flags onto ours (compat.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from shufflenet_trainer import compat
from shufflenet_trainer.errors import ConfigError
from shufflenet_trainer.train import checkpoint as ckpt
from shufflenet_trainer.train.config import build_parser, parse_config, parse_namespace

# The flags of ModelZoo's scripts/run_8p.sh for one rank of its shell loop (data aside).
MODELZOO_8P = [
    "--data=/data/imagenet", "--addr=10.0.0.5", "--seed=49", "--workers=192",
    "--learning-rate=4", "--print-freq=1", "--eval-freq=5", "--arch=shufflenet_v2_x1_0",
    "--dist-url=tcp://127.0.0.1:50000", "--dist-backend=hccl", "--multiprocessing-distributed",
    "--world-size=1", "--batch-size=8192", "--epochs=240", "--warm_up_epochs=5",
    "--device_num=8", "--rank=0", "--amp", "--momentum=0", "--device-list=0,1,2,3,4,5,6,7",
    "--num-classes=1000",
]  # fmt: skip


def translate(argv: list[str], environ: dict[str, str] | None = None, devices: int = 1):
    ns = parse_namespace(argv)
    return compat.translate(argv, ns, environ or {}, host_devices=lambda: devices)


def test_normalize_tells_switches_from_values(tmp_path: Path) -> None:
    def norm(*args: str) -> list[str]:
        return compat.normalize_argv(args, is_dir=os.path.isdir)

    assert norm("--amp") == ["--amp=apex"]
    assert norm("--amp", str(tmp_path)) == ["--amp=apex", str(tmp_path)]
    assert norm("--amp", "fp8") == ["--amp", "fp8"]  # a wrong mode stays --amp's error
    assert norm("--amp", "bf16") == ["--amp", "bf16"]
    assert norm("--pretrained", "-b", "8") == ["--pretrained=torchvision", "-b", "8"]
    assert norm("--pretrained", str(tmp_path)) == ["--pretrained=torchvision", str(tmp_path)]
    assert norm("--pretrained", "w.pth") == ["--pretrained", "w.pth"]
    assert norm("--pretrained") == ["--pretrained=torchvision"]


def test_strip_flags() -> None:
    argv = ["--rank", "0", "--world-size=2", "-b", "8", "--multiprocessing-distributed", "x"]
    out = compat.strip_flags(argv, ("--rank", "--world-size"), ("--multiprocessing-distributed",))
    assert out == ["-b", "8", "x"]


def test_modelzoo_setting_flags_map_onto_ours() -> None:
    argv = translate([*MODELZOO_8P, "--local_rank=0"]).argv
    cfg = parse_config(argv, world_size=8, default_device="cpu")
    assert cfg.data == "/data/imagenet" and cfg.device == "npu"  # hccl picks the device
    assert (cfg.amp, cfg.loss_scale) == ("apex-O2", 64.0)  # ModelZoo's amp defaults
    assert (cfg.warmup_epochs, cfg.momentum, cfg.lr, cfg.eval_freq) == (5, 0, 4, 5)
    assert cfg.num_classes == 1000 and cfg.seed == 49


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--amp", "--opt-level", "O1", "--loss-scale", "-1"], "amp", "apex-O1"),
        (["--amp", "--opt-level", "O1", "--loss-scale", "-1"], "loss_scale", "dynamic"),
        (["--amp", "--opt-level", "O0"], "loss_scale", None),
        (["--device", "gpu"], "device", "cuda"),
        (["--dist-backend", "gloo"], "device", "cpu"),
        (["--mom", "0.5"], "momentum", 0.5),
        (["-ef", "3", "--epochs", "9"], "eval_freq", 3),
        (["--workspace", "/ckpt"], "output_dir", "/ckpt"),
        (["--warm-up-epochs", "2", "--epochs", "9"], "warmup_epochs", 2.0),
        (["--pretrained"], "torchvision_weights", True),
        (["--pretrained", "w.pth"], "pretrained", "w.pth"),
        (["--weights", "w.pth"], "pretrained", "w.pth"),
        (["--pretrained", "--resume", "w.pth"], "pretrained", "w.pth"),  # ModelZoo fine-tune
        (["--pretrained", "--resume", "w.pth"], "resume", None),
        (["--pretrained", "--resume", "auto"], "torchvision_weights", True),
        (["--amp", "fp16"], "amp", "fp16"),  # our own form stays
    ],
)
def test_setting_flag(argv: list[str], field: str, value: object) -> None:
    cfg = parse_config(["--dummy", *argv], default_device="cuda")
    assert getattr(cfg, field) == value


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--benchmark", "1"], "-b"),
        (["--amp", "--opt-level", "O3"], "--amp fp16"),
        (["--amp", "bf16", "--opt-level", "O2"], "drop --opt-level"),
        (["--device", "cuda", "--dist-backend", "hccl"], "drop --dist-backend"),
        (["--data", "/a", "/b"], "pass one of them"),
        (["--weights", "a", "--pretrained", "b"], "--weights"),
        (["--num-classes", "0"], "--num-classes"),
        (["--checkpoint-freq", "5"], "written every epoch .* drop the flag"),
        (["--checkpoint-nameprefix", "shufflenet"], "checkpoint.pth.tar .* --output-dir"),
    ],
)
def test_setting_flag_errors(argv: list[str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_config(["--dummy", *argv], default_device="cuda")


def test_modelzoo_shell_loop_is_one_rank_each() -> None:
    out = translate([*MODELZOO_8P, "--local_rank=3"])
    assert out.env == {
        "MASTER_ADDR": "10.0.0.5",  # --addr wins over the --dist-url host, as in ModelZoo
        "MASTER_PORT": "50000",
        "WORLD_SIZE": "8",
        "LOCAL_WORLD_SIZE": "8",
        "RANK": "3",
        "LOCAL_RANK": "3",
    }
    ours = build_parser().parse_args(compat.normalize_argv(out.argv, is_dir=os.path.isdir))
    assert (ours.batch_size, ours.workers, ours.device_id, ours.nproc) == (8192, 24, 3, None)
    assert ours.legacy_world_size is None and not ours.multiprocessing_distributed


def test_multiprocessing_distributed_starts_the_node() -> None:
    argv = ["--multiprocessing-distributed", "--world-size", "1", "--rank", "0", "-b", "64"]
    out = translate([*argv, "--device-list", "4,5"])
    ns = parse_namespace(out.argv)
    assert (ns.nproc, ns.device_list, ns.batch_size) == (2, (4, 5), 64)
    assert out.env == {}  # one node, no port given: the launcher picks a free one
    ns = parse_namespace(translate(argv, devices=4).argv)  # devices of the host
    assert ns.nproc == 4 and ns.device_list is None
    single = parse_namespace(translate(["--multiprocessing-distributed", "--device-list=6"]).argv)
    assert (single.nproc, single.device_id) == (None, 6)  # ModelZoo run_1p.sh


def test_pytorch_examples_multi_node() -> None:
    # World size in nodes, processes per node from its devices, -b per node.
    argv = ["--multiprocessing-distributed", "--world-size", "2", "--rank", "1", "-b", "256"]
    out = translate([*argv, "--dist-url", "tcp://10.1.1.1:23456", "-j", "8"], devices=4)
    assert out.env == {
        "MASTER_ADDR": "10.1.1.1",
        "MASTER_PORT": "23456",
        "WORLD_SIZE": "8",
        "LOCAL_WORLD_SIZE": "4",
        "RANK": "4",
        "LOCAL_RANK": "0",
    }
    ns = parse_namespace(out.argv)
    assert (ns.nproc, ns.batch_size, ns.workers) == (4, 512, 2)


def test_pytorch_examples_one_process_per_rank() -> None:
    argv = ["--world-size", "4", "--rank", "2", "--dist-url", "tcp://h:1", "-b", "32"]
    out = translate([*argv, "--gpu", "1"])
    assert out.env["RANK"] == "2" and out.env["WORLD_SIZE"] == "4"
    ns = parse_namespace(out.argv)
    assert (ns.batch_size, ns.device_id) == (128, 1)  # -b is the process's batch there


def test_plain_command_lines_pass_unchanged() -> None:
    for argv in (
        ["--dummy", "-b", "8"],
        ["--world-size", "1", "--rank", "0"],
        ["--dist-url", "env://"],
    ):
        assert translate(argv) == compat.Translation(argv)
    # torch.distributed.launch passes --local_rank next to the environment it sets.
    out = translate(["--local_rank=1"], {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert out.argv == [] and out.env == {}


@pytest.mark.parametrize(
    ("argv", "environ", "says"),
    [
        (["--multiprocessing-distributed", "--gpu", "0"], {}, "--device-list"),
        (["--world-size", "2"], {}, "--rank"),
        (["--rank", "1"], {}, "--world-size"),
        (["--world-size", "2", "--rank", "0", "--dist-url", "file:///x"], {}, "tcp://"),
        (["--multiprocessing-distributed"], {"RANK": "0", "WORLD_SIZE": "2"}, "drop"),
        (["--multiprocessing-distributed", "--world-size", "2", "--rank", "2"], {}, "node"),
        (["--multiprocessing-distributed", "--device-list=0,1", "--local_rank=2"], {}, "[0, 2)"),
    ],
)
def test_process_flag_errors(argv: list[str], environ: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        translate(argv, environ)


def test_help_says_each_default_once() -> None:
    text = build_parser().format_help()
    assert "(default: None)" not in text
    assert all(line.count("default") <= 1 for line in text.split("\n  -"))


def test_torchvision_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"put https://\S+shufflenetv2_x0.5-f707e7126e.pth at "):
        ckpt.torchvision_weights_file("shufflenet_v2_x0_5", tmp_path)
    (tmp_path / "checkpoints").mkdir()
    want = tmp_path / "checkpoints" / "shufflenetv2_x0.5-f707e7126e.pth"
    torch.save({}, want)
    assert ckpt.torchvision_weights_file("shufflenet_v2_x0_5", tmp_path) == want


def test_mpi_env() -> None:
    mpi = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}
    mpi |= {"OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    assert compat.mpi_env(mpi) == {
        "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"
    }  # fmt: skip
    assert compat.mpi_env({**mpi, "RANK": "0"}) == {} and compat.mpi_env({}) == {}
