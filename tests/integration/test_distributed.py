"""Multi-rank training on CPU with gloo: equivalence with one rank, preemption, dead peers.

Ranks are started as the operator starts them: separate processes whose environment comes
from `shufflenet_contract.env.rank_env` (or through `shufflenet-train --nproc`, which uses it
too). Sizes are for 2 cores: ShuffleNetV2 x0.5, 32-pixel digits, a few steps, 1 thread a rank.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import pytest
import torch

from shufflenet_contract.env import INPLACE_RESTARTS, RankEnv, rank_env
from shufflenet_trainer.errors import EXIT_DIST, EXIT_SIGTERM
from shufflenet_trainer.jobs.launch import free_port
from shufflenet_trainer.train.config import parse_config
from shufflenet_trainer.train.loop import Hooks, StepEvent
from shufflenet_trainer.train.results import read_jsonl
from shufflenet_trainer.train.run import run

pytestmark = pytest.mark.slow

SMALL = [
    "-a", "shufflenet_v2_x0_5", "--image-size", "32", "--val-resize", "32", "-j", "0",
    "--metrics-port", "0",
]  # fmt: skip


# The rank's process trains itself (no restarts in place): what the tests of a rank that
# loses its peer look at. Supervised ranks: tests/integration/test_recovery_in_place.py.
def without_supervisor(rank: int) -> dict[str, str]:
    return {INPLACE_RESTARTS: "0"}


def cli(*args: Any, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shufflenet_trainer.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def start_ranks(
    n: int,
    args: list[Any],
    logs: Path,
    extra_env: Callable[[int], Mapping[str, str]] = lambda rank: {},
) -> list[subprocess.Popen[bytes]]:
    """n rank processes with the environment the operator gives rank pods, and extra_env's."""
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for k in range(n):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            **rank_env(
                RankEnv(
                    rank=k,
                    world_size=n,
                    master_addr="127.0.0.1",
                    master_port=port,
                    device_id=0,
                    job_name="t",
                    metrics_port=0,
                ),
                device_type="cpu",
            ),
            **extra_env(k),
        }
        out: IO[bytes] = open(logs / f"rank{k}.out", "ab")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "shufflenet_trainer.cli", *map(str, args)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
        out.close()
    return procs


def wait_all(procs: list[subprocess.Popen[bytes]], timeout: float = 300) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def folder(root: Path) -> Path:
    (found,) = sorted(root.glob("training_*"))
    return found


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def step_records(root: Path) -> list[dict[str, Any]]:
    found = sorted(root.glob("training_*/train.jsonl"))
    if not found:
        return []
    try:
        return [r for r in read_jsonl(found[0]) if r["kind"] == "step"]
    except ValueError:  # a line being written
        return []


def test_one_two_and_four_ranks_reach_the_same_weights(digits32: Path, tmp_path: Path) -> None:
    # The same global batch (16) and seed on 1, 2 and 4 ranks: the sampler gives the ranks
    # disjoint quarters/halves of the very images the 1-rank run batches together (with the
    # same augmentation, which depends on (seed, epoch, index) only), and DDP averages the
    # gradients, so each step is the same SGD step up to float summation order.
    # BatchNorm in training mode would break that on purpose-less grounds: each rank
    # normalises with the statistics of its own 8 or 4 images, not of all 16, so the
    # forward pass itself differs. --freeze-bn normalises with the (shared) running
    # statistics instead, so any difference left is the distributed machinery's. (CPU has
    # no SyncBatchNorm, which would be the other honest way.)
    flags = [
        digits32, *SMALL, "-b", "16", "--epochs", "1", "--max-steps-per-epoch", "4",
        "--lr", "0.2", "--warmup-epochs", "0", "--freeze-bn", "-p", "4",
    ]  # fmt: skip
    states: dict[Any, dict[str, Any]] = {}
    for n in (1, 2, 4):
        launch = [] if n == 1 else ["--nproc", n]
        proc = cli(*flags, *launch, "--output-dir", tmp_path / f"n{n}")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        run_dir = folder(tmp_path / f"n{n}")
        assert run_dir.name.startswith(f"training_{n}p_job_")
        states[n] = load(run_dir / "checkpoint.pth.tar")["state_dict"]
        if n > 1:
            assert {f"rank{k}.log" for k in range(1, n)} <= {p.name for p in run_dir.iterdir()}
    torch.manual_seed(0)
    from shufflenet_trainer.model.shufflenetv2 import build_model

    init = build_model("shufflenet_v2_x0_5", num_classes=10).state_dict()
    moved = max((states[1][k].float() - init[k].float()).abs().max().item() for k in init)
    assert moved > 0.01  # the steps changed the weights by far more than the tolerance
    # Two "pods" of two devices each (spec.devices.perPod 2): each pod's launcher gets its
    # first rank's environment from the operator and starts ranks 0-1 and 2-3 of one job.
    port = free_port()
    pods = []
    for first in (0, 2):
        first_rank = RankEnv(
            rank=first,
            world_size=4,
            local_world_size=2,
            master_addr="127.0.0.1",
            master_port=port,
            device_id=0,
            job_name="t",
        )
        pod_env = rank_env(first_rank, device_type="cpu")
        pods.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "shufflenet_trainer.cli", *map(str, flags)),
                    *("--nproc", "2", "--output-dir", str(tmp_path / "pods")),
                ],
                env={**os.environ, "OMP_NUM_THREADS": "1", **pod_env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in pods]
    assert [p.returncode for p in pods] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "starting ranks 2..3 of 4" in outputs[1]
    run_dir = folder(tmp_path / "pods")
    assert run_dir.name.startswith("training_4p_job_")
    states["2x2"] = load(run_dir / "checkpoint.pth.tar")["state_dict"]
    for n in (2, 4, "2x2"):
        diff = max((states[1][k].float() - states[n][k].float()).abs().max().item() for k in init)
        # Measured: ~1e-8 (float32 summation order in the all-reduce).
        assert diff < 1e-6, (n, diff)


# Two epochs of four steps, logged every other step: room for a stop at any step.
TWO_SHORT_EPOCHS = [
    *SMALL, "-b", "16", "--epochs", "2", "--max-steps-per-epoch", "4",
    "--lr", "0.1", "--warmup-epochs", "0.5", "-p", "2",
]  # fmt: skip


def test_sigterm_in_process_checkpoints_mid_epoch_and_resumes_exactly(
    digits32: Path, tmp_path: Path
) -> None:
    flags = [str(digits32), *TWO_SHORT_EPOCHS]
    assert run(parse_config([*flags, "--output-dir", str(tmp_path / "whole")])) == 0

    def term_at_second_step(event: StepEvent) -> None:
        if event.epoch == 0 and event.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    cut = parse_config([*flags, "--output-dir", str(tmp_path / "cut")])
    assert run(cut, hooks=Hooks(on_step=[term_at_second_step])) == EXIT_SIGTERM
    state = load(folder(tmp_path / "cut") / "checkpoint.pth.tar")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 2, 2)

    resumed = parse_config([*flags, "--output-dir", str(tmp_path / "cut"), "--resume", "auto"])
    assert run(resumed) == 0
    a = load(folder(tmp_path / "whole") / "checkpoint.pth.tar")
    b = load(sorted((tmp_path / "cut").glob("training_*"))[-1] / "checkpoint.pth.tar")
    assert a["global_step"] == b["global_step"] == 8
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


@pytest.mark.parametrize(
    ("at_epoch", "code", "saved_epoch"),
    [(0, EXIT_SIGTERM, 1), (1, 0, 2)],
    ids=["last-step-of-an-epoch", "last-step-of-the-run"],
)
def test_sigterm_at_the_last_step_of_an_epoch_resumes_or_finishes(
    digits32: Path, tmp_path: Path, at_epoch: int, code: int, saved_epoch: int
) -> None:
    # The stop vote can agree on the step that ends an epoch. The epoch is then complete:
    # it must end as epochs end (validated, an epoch-end checkpoint that resumes at the next
    # epoch), not as a mid-epoch stop after all of its steps, which no run could resume.
    flags = [str(digits32), *TWO_SHORT_EPOCHS]
    assert run(parse_config([*flags, "--output-dir", str(tmp_path / "whole")])) == 0

    def term_at_last_step(event: StepEvent) -> None:
        if event.epoch == at_epoch and event.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    cut = parse_config([*flags, "--output-dir", str(tmp_path / "cut")])
    assert run(cut, hooks=Hooks(on_step=[term_at_last_step])) == code
    state = load(folder(tmp_path / "cut") / "checkpoint.pth.tar")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (
        saved_epoch,
        0,
        4 * saved_epoch,
    )
    if code == 0:  # the run's last step: the run is done, nothing is left to resume
        b = state
    else:
        resumed = parse_config([*flags, "--output-dir", str(tmp_path / "cut"), "--resume", "auto"])
        assert run(resumed) == 0
        b = load(sorted((tmp_path / "cut").glob("training_*"))[-1] / "checkpoint.pth.tar")
    a = load(folder(tmp_path / "whole") / "checkpoint.pth.tar")
    assert a["global_step"] == b["global_step"] == 8
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    if code != 0:
        # Earlier versions saved this stop as (epoch 0, step 4 of 4): such a file resumes too.
        legacy = {**state, "epoch": 0, "step_in_epoch": 4, "history": []}
        torch.save(legacy, tmp_path / "legacy.pth.tar")
        again = [*flags, "--output-dir", str(tmp_path / "legacy")]
        assert run(parse_config([*again, "--resume", str(tmp_path / "legacy.pth.tar")])) == 0
        c = load(folder(tmp_path / "legacy") / "checkpoint.pth.tar")
        assert (c["epoch"], c["global_step"]) == (2, 8)


def test_sigterm_to_one_rank_stops_all_and_resume_matches(digits32: Path, tmp_path: Path) -> None:
    flags = [
        digits32, *SMALL, "-b", "16", "--epochs", "2", "--max-steps-per-epoch", "24",
        "--lr", "0.1", "--warmup-epochs", "0.5", "-p", "1", "--dist-timeout", "60",
    ]  # fmt: skip
    whole = cli(*flags, "--nproc", "2", "--output-dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "job"
    procs = start_ranks(2, [*flags, "--output-dir", out], tmp_path / "logs")
    wait_for(lambda: len(step_records(out)) >= 2, 120, "two steps")
    procs[1].send_signal(signal.SIGTERM)  # only rank 1 is preempted
    assert wait_all(procs, 120) == [EXIT_SIGTERM, EXIT_SIGTERM]
    state = load(folder(out) / "checkpoint.pth.tar")  # loadable, written by rank 0
    log = (folder(out) / "train.log").read_text()
    assert "stopped by SIGTERM" in log
    # SIGTERM lands after step 2 with 22 steps of epoch 0 to go: the ranks finish the
    # current step and rank 0 saves a mid-epoch checkpoint (epoch = the one cut short,
    # step_in_epoch = its steps done), not an epoch-end one (step_in_epoch 0).
    assert "stopped by SIGTERM after step" in log
    assert state["epoch"] in (0, 1) and 0 < state["step_in_epoch"] < 24, state["step_in_epoch"]
    assert state["global_step"] == 24 * state["epoch"] + state["step_in_epoch"]

    procs = start_ranks(2, [*flags, "--output-dir", out, "--resume", "auto"], tmp_path / "logs")
    assert wait_all(procs, 300) == [0, 0], (tmp_path / "logs" / "rank0.out").read_text()[-3000:]
    a = load(folder(tmp_path / "whole") / "checkpoint.pth.tar")
    b = load(sorted(out.glob("training_*"))[-1] / "checkpoint.pth.tar")
    assert a["global_step"] == b["global_step"] == 48
    for key, value in a["state_dict"].items():
        if key.endswith(("running_mean", "running_var")):
            # Rank 1's own BatchNorm statistics are not saved; the resumed ranks start from
            # the average, which the epoch-end averaging gives anyway (the update is linear),
            # so only the rounding differs.
            torch.testing.assert_close(value, b["state_dict"][key], rtol=1e-4, atol=1e-6)
        else:
            assert torch.equal(value, b["state_dict"][key]), key


def test_killed_rank_ends_the_others_and_resume_auto_continues(
    digits32: Path, tmp_path: Path
) -> None:
    timeout = 15
    flags = [
        digits32, *SMALL, "-b", "16", "--epochs", "3", "--max-steps-per-epoch", "40",
        "--lr", "0.1", "-p", "5", "--dist-timeout", timeout,
    ]  # fmt: skip
    out = tmp_path / "job"
    procs = start_ranks(2, [*flags, "--output-dir", out], tmp_path / "logs", without_supervisor)
    wait_for(lambda: any(out.glob("training_*/checkpoint.pth.tar")), 120, "a checkpoint")
    procs[1].kill()
    t0 = time.monotonic()
    code = procs[0].wait(timeout=timeout + 10)
    waited = time.monotonic() - t0
    procs[1].wait()
    assert code == EXIT_DIST, (tmp_path / "logs" / "rank0.out").read_text()[-2000:]
    assert waited < timeout, waited  # measured: well under a second (connection reset)
    assert "lost a peer rank" in (tmp_path / "logs" / "rank0.out").read_text()

    procs = start_ranks(2, [*flags, "--output-dir", out, "--resume", "auto"], tmp_path / "logs")
    assert wait_all(procs, 300) == [0, 0], (tmp_path / "logs" / "rank0.out").read_text()[-3000:]
    last = sorted(out.glob("training_*"))[-1]
    assert "resumed from" in (last / "train.log").read_text()
    state = load(last / "checkpoint.pth.tar")
    assert state["epoch"] == 3 and [r["epoch"] for r in state["history"]][-1] == 2


def test_frozen_rank_ends_the_others_within_the_timeout(digits32: Path, tmp_path: Path) -> None:
    # A peer that stops answering without closing its connections (a frozen process, a node
    # that dropped off the network) is only noticed by the timeout.
    timeout = 6
    flags = [
        digits32, *SMALL, "-b", "16", "--epochs", "3", "--max-steps-per-epoch", "40",
        "-p", "1", "--dist-timeout", timeout,
    ]  # fmt: skip
    out = tmp_path / "job"
    procs = start_ranks(2, [*flags, "--output-dir", out], tmp_path / "logs", without_supervisor)
    try:
        wait_for(lambda: len(step_records(out)) >= 2, 120, "two steps")
        procs[1].send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        code = procs[0].wait(timeout=timeout * 3)
        waited = time.monotonic() - t0
    finally:
        procs[1].kill()
        procs[1].wait()
    assert code == EXIT_DIST, (tmp_path / "logs" / "rank0.out").read_text()[-2000:]
    assert waited < timeout + 3, waited
