"""`snjob run-local`: every example manifest on CPU, and manifests it must refuse.

The examples run as shipped except for sizes (`--set`), so that each takes seconds on 2 cores:
x0.5 at 32 pixels, one epoch of 2 steps, on the digits dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from shufflenet_contract import job as jobs
from shufflenet_contract import ranktable
from shufflenet_trainer.jobs import runlocal
from shufflenet_trainer.snjob import main
from shufflenet_trainer.train import checkpoint as ckpt
from shufflenet_trainer.train.results import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"
TINY = [
    "spec.model.arch=shufflenet_v2_x0_5", "spec.training.imageSize=32",
    "spec.training.valResize=32", "spec.training.epochs=1", "spec.training.workers=0",
    "spec.training.printFreq=1", "spec.training.distTimeoutSeconds=120",
    "spec.training.warmupEpochs=0",
    'spec.training.extraArgs=["--max-steps-per-epoch", "2"]',
]  # fmt: skip


def snjob(*args: Any, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shufflenet_trainer.snjob", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sets(*extra: str) -> list[str]:
    out = []
    for item in [*TINY, *extra]:
        out += ["--set", item]
    return out


# Every example, with its own rank count: the 8-NPU one keeps its 8 ranks (its rank table
# is the point), two images each.
CASES = ["cpu-digits-2rank.yaml", "gpu-2rank.yaml", "npu-8rank.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_example_runs_on_cpu(name: str, digits32: Path, tmp_path: Path) -> None:
    manifest = EXAMPLES / name
    spec = jobs.validate_job(yaml.safe_load(manifest.read_text()))
    n = jobs.world_size(spec)
    batch = 2 * n
    proc = snjob(
        "run-local", manifest, "--cpu", "--data", digits32, "--output-dir", tmp_path,
        "--metrics-port", "0", *sets(f"spec.training.batchSize={batch}"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # The job's folder is its run folder, as on the checkpoint volume: <root>/<ns>/<name>.
    (job_dir,) = tmp_path.glob("*/*")
    assert job_dir == tmp_path / "default" / spec["metadata"]["name"]
    (result,) = job_dir.glob("training_*")
    assert result.name.startswith(f"training_{n}p_job_")
    assert f"=> result folder: {result}" in proc.stdout
    assert "succeeded" in proc.stdout
    if spec["spec"]["devices"]["type"] != "cpu":
        assert "running the" in proc.stdout and "on CPU with gloo" in proc.stdout
    names = {p.name for p in result.iterdir()}
    assert {"train.log", "checkpoint.pth.tar", "curves.png", "config.json"} <= names
    assert {f"rank{k}.log" for k in range(1, n)} <= names
    logs = sorted(p.name for p in (job_dir / "logs").iterdir())
    assert len(logs) == n and all((job_dir / "logs" / x).stat().st_size > 0 for x in logs)
    config = json.loads((result / "config.json").read_text())
    assert config["world_size"] == n and config["device"] == "cpu"
    assert config["resume"] == "auto" and config["per_process_batch"] == batch // n
    assert torch.load(result / "checkpoint.pth.tar", weights_only=True)["epoch"] == 1
    if spec["spec"]["devices"]["type"] == "npu":
        mounted = job_dir / "ranktable" / ranktable.FILE_KEY
        assert mounted.is_symlink()  # published as the kubelet mounts a ConfigMap key
        table = json.loads(mounted.read_text())
        for k in range(n):
            ranktable.validate_rank_table(table, k, n)
            # Each rank handed HCCL a regular-file copy of exactly that table, and said so once.
            log = (job_dir / "logs" / f"{spec['metadata']['name']}-rank-{k}.log").read_text()
            (line,) = [x for x in log.splitlines() if "HCCL gets RANK_TABLE_FILE=" in x]
            copy = Path(line.split("RANK_TABLE_FILE=", 1)[1].split(" ", 1)[0])
            assert copy.parent == mounted.parent / "copies" and not copy.is_symlink()
            assert copy.is_file() and copy.read_text() == mounted.read_text()
            assert f"=> rank {k}: " in line and "attempt 0" in line


def test_npu_job_without_npus_needs_cpu_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["run-local", str(EXAMPLES / "npu-8rank.yaml"), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "spec.devices: the job wants 8 x npu but this machine has 0" in err and "--cpu" in err
    assert not any(tmp_path.iterdir())


def test_schema_error_is_refused_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    obj = yaml.safe_load((EXAMPLES / "cpu-digits-2rank.yaml").read_text())
    obj["spec"]["devices"]["count"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(obj))
    out = tmp_path / "out"
    code = main(["run-local", str(bad), "--output-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"snjob run-local: error: {bad}: spec.devices.count: must be >= 1"
    assert not out.exists()
    code = main(["run-local", str(EXAMPLES / "cpu-digits-2rank.yaml"), "--set", "spec.x=1"])
    assert code == 2 and "spec.x: unknown field" in capsys.readouterr().err


def test_dry_run_env_is_the_operators(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = EXAMPLES / "npu-8rank.yaml"
    code = main(["run-local", str(manifest), "--cpu", "--dry-run", "--data", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and not any(tmp_path.iterdir())
    job = jobs.validate_job(yaml.safe_load(manifest.read_text()))
    lines = [line for line in out.splitlines() if line.startswith("rank ")]
    assert len(lines) == 8
    for k, line in enumerate(lines):
        env = dict(item.split("=", 1) for item in line.split(": ", 1)[1].split())
        want = jobs.pod_env(
            job,
            k,
            master_addr="127.0.0.1",
            master_port=int(env["MASTER_PORT"]),
            pod_ip="127.0.0.1",
            metrics_port=9400 + k,
            rank_table_file=env["RANK_TABLE_FILE"],
        )
        assert {key: env[key] for key in want} == want


def test_supervise_stops_the_job_on_the_first_failure() -> None:
    from shufflenet_trainer.jobs.launch import Rank, spawn, supervise

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    failer = [sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(3)"]
    ranks = [Rank(0, spawn(sleeper, os.environ)), Rank(1, spawn(failer, os.environ))]
    outcome = supervise(ranks, grace=5, log=lambda _: None)
    assert (outcome.code, outcome.failed_rank) == (3, 1)
    assert outcome.codes[0] == 128 + 15  # the sleeper was stopped with SIGTERM


def test_set_overrides_and_data_path(tmp_path: Path) -> None:
    obj: dict[str, Any] = {"spec": {"devices": {"count": 8}}}
    runlocal.apply_sets(obj, ["spec.devices.count=2", "spec.training.extraArgs=[-p, '1']"])
    assert obj["spec"]["devices"]["count"] == 2
    assert obj["spec"]["training"]["extraArgs"] == ["-p", "1"]
    job = jobs.validate_job(yaml.safe_load((EXAMPLES / "gpu-2rank.yaml").read_text()))
    with pytest.raises(runlocal.ConfigError, match=r"spec.data.path /data/imagenet .* --data"):
        runlocal.local_data_path(job, None)
    job["spec"]["data"]["volume"] = {"hostPath": {"path": str(tmp_path)}}
    assert runlocal.local_data_path(job, None) == str(tmp_path)


def _rank_pid(marker: str, rank: int) -> int | None:
    """The pid of the rank process whose command line mentions `marker` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            marker.encode() in cmd
            and b"shufflenet_trainer.cli" in cmd
            and f"RANK={rank}".encode() in env
        ):
            return int(entry.name)
    return None


@pytest.mark.slow
def test_killed_rank_restarts_the_job_from_its_checkpoint(digits32: Path, tmp_path: Path) -> None:
    # runPolicy.backoffLimit of the example is 1: one whole-job restart, resuming.
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "shufflenet_trainer.snjob", "run-local",
            str(EXAMPLES / "cpu-digits-2rank.yaml"), "--data", str(digits32),
            "--output-dir", str(tmp_path), "--metrics-port", "0",
            *sets("spec.training.epochs=3", "spec.training.batchSize=16"),
            "--set", 'spec.training.extraArgs=["--max-steps-per-epoch", "30"]',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*/*/training_*/checkpoint.pth.tar")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        pid = _rank_pid(str(tmp_path), 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "rank 1 exited with 137" in out and "restart 1 of 1" in out and "succeeded" in out
    (job_dir,) = tmp_path.glob("*/*")
    runs = sorted(job_dir.glob("training_*"))
    assert len(runs) == 2
    assert "resumed from" in (runs[1] / "train.log").read_text()
    assert torch.load(runs[1] / "checkpoint.pth.tar", weights_only=True)["epoch"] == 3


# --- run folders: jobs sharing one checkpoint volume ------------------------------------


def run_job(root: Path, data: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The digits example as job `name`, one rank, under the checkpoint root `root`."""
    proc = snjob(
        "run-local", EXAMPLES / "cpu-digits-2rank.yaml", "--data", data, "--output-dir", root,
        "--metrics-port", "0", *sets(f"metadata.name={name}", "spec.devices.count=1",
                                     "spec.training.batchSize=8", *extra),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def files_of(folder: Path) -> dict[Path, tuple[int, str]]:
    """Every file below `folder` with its mtime and content hash."""
    return {
        p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def epochs_run(result: Path) -> list[int]:
    return [r["epoch"] for r in read_jsonl(result / "train.jsonl") if r["kind"] == "epoch"]


@pytest.mark.slow
def test_jobs_sharing_a_volume_each_keep_their_run(digits32: Path, tmp_path: Path) -> None:
    run_a = tmp_path / "default" / "job-a"
    run_job(tmp_path, digits32, "job-a")
    (a1,) = run_a.glob("training_*")
    before = files_of(run_a)

    # Another job on the same volume starts a run of its own, at epoch 0 (earlier versions
    # resumed job-a's finished run here and ended at once), and leaves job-a's files alone.
    run_job(tmp_path, digits32, "job-b")
    (b1,) = (tmp_path / "default" / "job-b").glob("training_*")
    assert epochs_run(b1) == [0]
    assert "resumed from" not in (b1 / "train.log").read_text()
    assert files_of(run_a) == before

    # The same job again, with more epochs: it continues its own run (its own checkpoint
    # wins over an initFrom); with the same epochs again there is nothing left to train.
    more = ("spec.training.epochs=2", "spec.checkpoint.initFrom=default/job-b")
    run_job(tmp_path, digits32, "job-a", *more)
    a2 = max(run_a.glob("training_*"))
    log = (a2 / "train.log").read_text()
    assert f"resumed from {a1 / ckpt.CHECKPOINT_NAME} at epoch 1" in log
    assert f"--init-from {tmp_path / 'default' / 'job-b'} ignored" in log
    assert epochs_run(a2) == [1]
    done = run_job(tmp_path, digits32, "job-a", *more)
    assert "succeeded" in done.stdout and len(list(run_a.glob("training_*"))) == 2
    assert f"=> result folder: {a2} (an earlier run of this job" in done.stdout
    rank_log = (run_a / "logs" / "job-a-rank-0.log").read_text()
    assert "nothing left to train" in rank_log


@pytest.mark.slow
def test_init_from_starts_from_another_runs_weights_only(digits32: Path, tmp_path: Path) -> None:
    run_job(tmp_path, digits32, "job-a", "spec.training.epochs=2")
    source = max((tmp_path / "default" / "job-a").glob("training_*")) / ckpt.CHECKPOINT_NAME
    # A learning rate too small to move a weight, and BatchNorm statistics kept: the
    # weights job-c saves after its one step are the ones it started from.
    run_job(
        tmp_path, digits32, "job-c", "spec.checkpoint.initFrom=default/job-a",
        "spec.training.lr=1.0e-30", 'spec.training.extraArgs=["--max-steps-per-epoch", "1", '
        '"--freeze-bn"]',
    )  # fmt: skip
    (c1,) = (tmp_path / "default" / "job-c").glob("training_*")
    assert f"loaded {source} (--init-from: its weights only)" in (c1 / "train.log").read_text()
    assert epochs_run(c1) == [0]  # epoch 0: the source's epoch and optimizer are not taken
    start = torch.load(source, weights_only=True)["state_dict"]
    saved = torch.load(c1 / ckpt.CHECKPOINT_NAME, weights_only=True)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    for key, value in start.items():
        assert torch.allclose(saved["state_dict"][key], value, rtol=1e-6, atol=1e-12), key


def test_a_missing_init_from_fails_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "ns" / "job"
    proc = subprocess.run(
        [sys.executable, "-m", "shufflenet_trainer.cli", "--dummy", "-a", "shufflenet_v2_x0_5",
         "--epochs", "1", "-b", "2", "--output-dir", str(out), "--resume", "auto",
         "--init-from", str(tmp_path / "gone")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert f"--init-from {tmp_path / 'gone'} (spec.checkpoint.initFrom): no such file" in line
    assert not (tmp_path / "ns").exists()  # the run folder is made with the result folder
