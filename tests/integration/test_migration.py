"""The command lines users bring run unchanged (docs/migration.md).

pytorch/examples `imagenet/main.py`, the Ascend ModelZoo ShuffleNetV2 scripts and torchrun,
each typed as a user would, on CPU with gloo and tiny sizes (synthetic data, x0.5, 32 pixels,
two steps). Each run must train and write its result folder.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from shufflenet_trainer.models import build_model

BIN = Path(sys.executable).parent
TINY = [
    "--dummy", "-a", "shufflenet_v2_x0_5", "--image-size", "32", "--val-resize", "32",
    "--epochs", "1", "--max-steps-per-epoch", "2", "-j", "0", "--metrics-port", "0",
]  # fmt: skip
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a shell with the venv activated, no rank variables inherited."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def start(command: Sequence[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, env=user_env(**env)
        )


def finish(procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    for proc, log in zip(procs, logs, strict=True):
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, log.read_text()[-3000:]


def trained_folder(root: Path, ranks: int) -> Path:
    """The one result folder of a finished run of `ranks` ranks, with its epoch logged."""
    (folder,) = root.glob(f"training_{ranks}p_job_*")
    assert {"config.json", "train.log", "checkpoint.pth.tar"} <= {p.name for p in folder.iterdir()}
    log = (folder / "train.log").read_text()
    assert "FPS@all " in log and " * Acc@1 " in log
    return folder


def run(command: Sequence[str], tmp_path: Path, **env: str) -> str:
    log = tmp_path / "out.log"
    finish([start(command, log, **env)], [log])
    return log.read_text()


def test_pytorch_examples_line_from_the_issue(tmp_path: Path) -> None:
    out = tmp_path / "r"
    run(
        ["shufflenet-train", "--dummy", "--multiprocessing-distributed", "--world-size", "1",
         "--rank", "0", "--dist-url", f"tcp://127.0.0.1:{free_port()}", "--dist-backend",
         "gloo", "-b", "8", *TINY, "--output-dir", str(out)],
        tmp_path,
    )  # fmt: skip
    trained_folder(out, 1)


def test_pretrained_switch_reads_the_torch_hub_cache(tmp_path: Path) -> None:
    home = tmp_path / "torch"
    cmd = [sys.executable, "-m", "shufflenet_trainer", "--pretrained", "-b", "8", *TINY]
    missing = subprocess.run(
        [*cmd, "--output-dir", str(tmp_path / "r0")],
        capture_output=True,
        text=True,
        env=user_env(TORCH_HOME=str(home)),
        timeout=TIMEOUT,
    )
    assert missing.returncode == 2, missing.stderr
    cached = home / "hub" / "checkpoints" / "shufflenetv2_x0.5-f707e7126e.pth"
    assert missing.stderr.strip().count("\n") == 0 and str(cached) in missing.stderr
    # Seeded as an offline cluster would be: the file torchvision names, built locally.
    cached.parent.mkdir(parents=True)
    torch.save(build_model("shufflenet_v2_x0_5", num_classes=1000).state_dict(), cached)
    text = run([*cmd, "--output-dir", str(tmp_path / "r")], tmp_path, TORCH_HOME=str(home))
    assert "=> pretrained: " in text
    trained_folder(tmp_path / "r", 1)


def modelzoo_8p(local_rank: int, port: int, out: Path) -> list[str]:
    """ModelZoo's scripts/run_8p.sh line for one rank of its shell loop, on two devices."""
    return [
        "shufflenet-train", "--data=/data/imagenet", "--addr=127.0.0.1", "--seed=49",
        "--workers=2", "--learning-rate=4", "--print-freq=1", "--eval-freq=5",
        "--arch=shufflenet_v2_x0_5", f"--dist-url=tcp://127.0.0.1:{port}",
        "--dist-backend=hccl", "--multiprocessing-distributed", "--world-size=1",
        "--batch-size=16", "--epochs=1", "--warm_up_epochs=0", "--device_num=2", "--rank=0",
        "--amp", "--momentum=0", "--device-list=0,1", "--num-classes=10",
        f"--local_rank={local_rank}", "--benchmark", "0",
        # Not ModelZoo's: the synthetic data and the tiny sizes of these tests.
        *TINY, "--output-dir", str(out),
    ]  # fmt: skip


def test_modelzoo_8p_shell_loop_and_its_log_parsing(tmp_path: Path) -> None:
    # The CPU stand-in for the NPUs (hccl, apex): the command line itself is unchanged.
    port, out = free_port(), tmp_path / "r"
    logs = [tmp_path / f"train_{i}.log" for i in range(2)]
    procs = [
        start(modelzoo_8p(i, port, out), log, SHUFFLENET_FORCE_CPU="1")
        for i, log in enumerate(logs)
    ]
    finish(procs, logs)
    trained_folder(out, 2)
    # The parsing of its log by train_full_8p.sh and train_performance_1p.sh, verbatim.
    script = """
    FPS=`grep FPS $1|awk '{print $(NF-2)}'|awk '{sum+=$1} END {print  sum/NR}'`
    acc=`grep -a '* Acc@1' $1|awk 'END {print}'|awk -F "Acc@1" '{print $NF}'|awk -F " " '{print $1}'`
    loss=`grep Epoch $1|awk -F 'Loss' '{print $2}' |awk '{print $1}'|awk 'END {print}'`
    FPS2=`grep "FPS@all" $1 | awk 'END {print $7}'|tr -d ,| sed s/[[:space:]]//g`
    loss2=`grep "Loss" $1 | awk 'END {print $12}'`
    echo "$FPS $acc $loss $FPS2 $loss2"
    """  # noqa: E501 (verbatim)
    parsed = subprocess.run(
        ["bash", "-c", script, "-", str(logs[0])], capture_output=True, text=True, check=True
    ).stdout.split()
    fps, acc, loss, fps2, loss2 = map(float, parsed)
    assert fps > 0 and 0 <= acc <= 100 and loss > 0
    assert (fps2, loss2) == (fps, loss)  # one epoch: the mean is that epoch's


def test_modelzoo_multiprocessing_distributed_without_the_loop(tmp_path: Path) -> None:
    # The launcher form (pytorch/examples' mp.spawn): one invocation starts the node's ranks.
    out = tmp_path / "r"
    run(
        [sys.executable, "-m", "shufflenet_trainer", "--multiprocessing-distributed",
         "--device-list", "0,1", "--dist-backend", "gloo", "--world-size", "1", "--rank", "0",
         "-b", "8", *TINY, "--output-dir", str(out)],
        tmp_path,
    )  # fmt: skip
    trained_folder(out, 2)


def examples_node(rank: int, url: str, out: Path) -> list[str]:
    return [
        "shufflenet-train", "--multiprocessing-distributed", "--world-size", "2", "--rank",
        str(rank), "--dist-url", url, "--dist-backend", "gloo", "-b", "4", *TINY,
        "--output-dir", str(out),
    ]  # fmt: skip


def test_pytorch_examples_two_nodes_on_one_machine(tmp_path: Path) -> None:
    url, out = f"tcp://127.0.0.1:{free_port()}", tmp_path / "r"
    logs = [tmp_path / f"node{r}.log" for r in range(2)]
    finish([start(examples_node(r, url, out), logs[r]) for r in range(2)], logs)
    folder = trained_folder(out, 2)
    assert '"batch_size": 8' in (folder / "config.json").read_text()  # -b per node x 2 nodes


def test_torchrun_no_python_console_script(tmp_path: Path) -> None:
    out = tmp_path / "r"
    run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "--no-python", "shufflenet-train", "-b", "8", *TINY, "--output-dir", str(out)],
        tmp_path,
    )  # fmt: skip
    trained_folder(out, 2)


def torchrun_node(rank: int, port: int, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank",
        str(rank), "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port",
        str(port), "-m", "shufflenet_trainer", "-b", "8", *TINY, "--output-dir", str(out),
    ]  # fmt: skip


def test_torchrun_two_nodes_static_rendezvous_module_entry(tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "r"
    logs = [tmp_path / f"node{r}.log" for r in range(2)]
    finish([start(torchrun_node(r, port, out), logs[r]) for r in range(2)], logs)
    trained_folder(out, 2)


def test_mpirun_environment(tmp_path: Path) -> None:
    # What `mpirun -np 2 -x MASTER_ADDR -x MASTER_PORT shufflenet-train ...` gives each rank.
    port, out = str(free_port()), tmp_path / "r"
    logs = [tmp_path / f"rank{r}.log" for r in range(2)]
    procs = [
        start(
            ["shufflenet-train", "-b", "8", *TINY, "--output-dir", str(out)],
            logs[r],
            OMPI_COMM_WORLD_RANK=str(r),
            OMPI_COMM_WORLD_SIZE="2",
            OMPI_COMM_WORLD_LOCAL_RANK=str(r),
            OMPI_COMM_WORLD_LOCAL_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        for r in range(2)
    ]
    finish(procs, logs)
    trained_folder(out, 2)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--benchmark", "1"], "-b"),
        (["--multiprocessing-distributed", "--gpu", "0"], "--device-list"),
        (["--world-size", "2", "--rank", "0", "--dist-url", "file:///tmp/x"], "tcp://"),
    ],
)
def test_flags_that_cannot_mean_the_same_exit_2(flags: list[str], says: str) -> None:
    proc = subprocess.run(
        ["shufflenet-train", *TINY, *flags],
        capture_output=True,
        text=True,
        env=user_env(),
        timeout=TIMEOUT,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and says in proc.stderr
