"""`snjob run-local job.yaml`: run a ShuffleNetTrainingJob manifest on this machine.

What a cluster would do, on one host:
- validate the manifest against the CRD schema (shufflenet_contract.crd) and default it;
- start one process per rank with the environment the operator gives each rank pod
  (shufflenet_contract.job.pod_env) and the same trainer command line; for NPU jobs, a rank
  table delivered as the operator and the kubelet do (first `initializing`, then
  `completed`, each with its version and attempt, published like a ConfigMap volume);
- supervise the ranks (launch.py): a failed rank stops the job; a retryable failure
  (exit >= 128) restarts the whole job from its last checkpoint, up to
  spec.runPolicy.backoffLimit times;
- show one progress bar for the job, read from rank 0's train.jsonl, and keep each rank's
  output in its own file, as `kubectl logs` would.

The job's folder is its run folder under --output-dir, `<output-dir>/<namespace>/<name>`
(namespace "default" when the manifest names none), laid out as on the checkpoint volume
(shufflenet_contract.job.run_dir), with the rank logs beside the result folders: two jobs
never share a run, and running a job again continues its run, as re-applying it does.

Without the job's devices on this machine, `--cpu` runs the same ranks on CPU with gloo
(SHUFFLENET_FORCE_CPU=1 in each rank's environment, the job's command line unchanged).
Local stand-ins: addresses are loopback, each rank's device is made the only visible one (as
in a one-device pod), metrics ports are spec.metrics.port + rank (the ranks share a host),
POD_UID is the rank's pod name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from shufflenet_contract import crd, exitcodes, ranktable
from shufflenet_contract import env as contract_env
from shufflenet_contract import job as jobs

from ..console import Progress
from ..errors import ConfigError
from .launch import Rank, cpu_threads, free_port, spawn, supervise

DEVICE_WORDS = {"npu": "Ascend NPU", "gpu": "CUDA GPU"}
# Each rank's device as the only visible one, like the device plugin does for a pod.
VISIBLE_DEVICES = {"npu": "ASCEND_RT_VISIBLE_DEVICES", "gpu": "CUDA_VISIBLE_DEVICES"}
LOG_TAIL_LINES = 15


def load_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ShuffleNetTrainingJob document of a YAML file (other kinds in it are ignored)."""
    try:
        docs = list(yaml.safe_load_all(Path(path).read_text(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the manifest ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == crd.KIND]
    if len(found) != 1:
        raise ConfigError(f"{path}: expected one {crd.KIND} document, found {len(found)}")
    return found[0]


def apply_sets(obj: dict[str, Any], sets: Sequence[str]) -> None:
    """`--set spec.devices.count=2`: override fields (values are YAML) before validation."""
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: use PATH=VALUE, e.g. spec.devices.count=2")
        value = yaml.safe_load(text)
        node = obj
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a mapping")
            node = child
        node[parts[-1]] = value


def device_count(device_type: str) -> int:
    """Devices of this type visible here (0 when their runtime is not installed)."""
    if device_type == "gpu":
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device_type == "npu":
        try:
            import torch
            import torch_npu  # noqa: F401  (registers torch.npu)
        except ImportError:
            return 0
        return int(torch.npu.device_count())  # type: ignore[attr-defined]
    return os.cpu_count() or 1


def local_data_path(job: dict[str, Any], override: str | None) -> str | None:
    """Where the dataset is on this machine (None for synthetic data)."""
    data = job["spec"]["data"]
    if data["dummy"]:
        return None
    if override:
        return override
    host_path = (data.get("volume") or {}).get("hostPath", {}).get("path")
    if host_path:
        return str(host_path)
    if Path(data["path"]).exists():
        return str(data["path"])
    raise ConfigError(
        f"spec.data.path {data['path']} is where the pods see the data and does not exist "
        "here: pass --data DIR (the dataset on this machine), or set spec.data.dummy=true"
    )


@dataclass
class LocalJob:
    """Everything needed to start the job's ranks here."""

    name: str
    ranks: int
    device_type: str  # the manifest's
    on_cpu: bool  # ranks run on CPU although the manifest asks for npu/gpu
    command: list[str]
    envs: list[dict[str, str]]
    root: Path  # the job's run folder
    rank_table: Path | None
    epochs: int
    note: str = ""  # what is run differently from the manifest, for the user


def make_local_job(
    job: dict[str, Any],
    *,
    cpu: bool,
    data: str | None,
    output_dir: str,
    metrics_port: int | None,
) -> LocalJob:
    """The validated `job` as processes on this machine: one command, one env per rank.
    `output_dir` stands for the checkpoint volume: the job runs in its run folder below it."""
    name = job["metadata"]["name"]
    ranks = jobs.world_size(job)
    dtype = jobs.device_type(job)
    on_cpu, note = _where_ranks_run(dtype, ranks, cpu)
    root = Path(jobs.run_dir(job, output_dir))
    rank_table = root / "ranktable" / ranktable.FILE_KEY if dtype == "npu" and on_cpu else None
    command = [
        sys.executable,
        "-m",
        "shufflenet_trainer.cli",
        *jobs.trainer_args(job, data_path=local_data_path(job, data), output_dir=output_dir),
    ]
    base_port = job["spec"]["metrics"]["port"] if metrics_port is None else metrics_port
    envs = _rank_envs(job, on_cpu, rank_table, base_port)
    epochs = int(job["spec"]["training"]["epochs"])
    return LocalJob(name, ranks, dtype, on_cpu, command, envs, root, rank_table, epochs, note)


def _where_ranks_run(dtype: str, ranks: int, cpu: bool) -> tuple[bool, str]:
    """(whether an npu/gpu job runs on CPU instead, what to tell the user about it)."""
    if dtype == "cpu":
        return False, ""
    have = device_count(dtype)
    if have < ranks and not cpu:
        raise ConfigError(
            f"spec.devices: the job wants {ranks} x {dtype} but this machine has {have} "
            f"{DEVICE_WORDS[dtype]}(s): pass --cpu to run its {ranks} ranks on CPU with gloo"
        )
    if not cpu:
        return False, ""
    return True, (
        f"this machine has {have} {DEVICE_WORDS[dtype]}(s); running the {ranks} ranks "
        "on CPU with gloo (--cpu), in the CPU's default precision"
    )


def _rank_envs(
    job: dict[str, Any], on_cpu: bool, rank_table: Path | None, base_port: int
) -> list[dict[str, str]]:
    """Each rank's environment: the operator's pod env with loopback addresses, and the
    rank's device as its only visible one (as the device plugin does for a pod)."""
    name, ranks, dtype = job["metadata"]["name"], jobs.world_size(job), jobs.device_type(job)
    port = free_port()
    envs = []
    for k in range(ranks):
        env = jobs.pod_env(
            job,
            k,
            master_addr="127.0.0.1",
            master_port=port,
            pod_ip="127.0.0.1",
            metrics_port=base_port + k if base_port else 0,
            rank_table_file=str(rank_table) if rank_table else None,
            per_pod=1,
            attempt=0,
        )
        env[contract_env.POD_UID] = local_pod_uid(name, k)
        if rank_table is not None:
            # The ranks' copies for HCCL go with the job's files, not into the shared /tmp.
            env[contract_env.RANK_TABLE_DIR] = str(rank_table.parent / "copies")
        if on_cpu:
            env[contract_env.FORCE_CPU] = "1"
        if dtype == "cpu" or on_cpu:
            env["OMP_NUM_THREADS"] = str(cpu_threads(ranks))
        else:
            env[VISIBLE_DEVICES[dtype]] = str(k)
        envs.append(env)
    return envs


def local_pod_uid(name: str, rank: int) -> str:
    """Rank `rank`'s stand-in for a pod UID (POD_UID, and its server_id in the table)."""
    return f"{name}-rank-{rank}"


def write_rank_table(local: LocalJob, table: dict[str, Any], version: int, attempt: int) -> None:
    """Publish the table with its version and attempt as the kubelet updates a ConfigMap
    volume, so that the ranks read it as in a pod."""
    assert local.rank_table is not None
    data = ranktable.configmap_data(ranktable.dump(table), version, attempt)
    ranktable.publish(local.rank_table.parent, data)


def local_rank_table(local: LocalJob) -> dict[str, Any]:
    """The table the operator would build for one-NPU pods on one node: each pod its own
    server entry; chip k of the node with a loopback stand-in for its RoCE address."""
    pods = [
        ranktable.PodDevices(
            rank=k,
            server_id=local_pod_uid(local.name, k),
            devices=(ranktable.Device(str(k % 8), f"127.100.{k // 8}.{k % 8 + 1}"),),
        )
        for k in range(local.ranks)
    ]
    return ranktable.build_rank_table(pods)


def _fmt_seconds(s: float) -> str:
    s = max(0, int(s))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


class JobProgress:
    """One bar for the job, fed by rank 0's train.jsonl (records at each print step)."""

    def __init__(self, local: LocalJob, stream: TextIO | None = None) -> None:
        self.local = local
        self.progress = Progress(stream)
        self.before = set(local.root.glob(jobs.RESULT_DIR_GLOB))
        self.folder: Path | None = None
        self._pos = 0
        self._partial = ""
        self._first: tuple[float, int] | None = None

    def line(self, text: str) -> None:
        self.progress.line(text)

    def tick(self) -> None:
        if self.folder is None:
            new = sorted(set(self.local.root.glob(jobs.RESULT_DIR_GLOB)) - self.before)
            if not new:
                return
            self.folder = new[-1]
        path = self.folder / "train.jsonl"
        try:
            with open(path, encoding="utf-8") as f:
                f.seek(self._pos)
                chunk = f.read()
                self._pos = f.tell()
        except FileNotFoundError:
            return
        text = self._partial + chunk
        *lines, self._partial = text.split("\n")
        for line in lines:
            if line.strip():
                self._show(json.loads(line))

    def _show(self, rec: dict[str, Any]) -> None:
        epochs = self.local.epochs
        if rec.get("kind") == "step":
            steps = int(rec["steps"])
            done = int(rec["epoch"]) * steps + int(rec["step"])
            now = time.monotonic()
            if self._first is None:
                self._first = (now, done)
            t0, d0 = self._first
            rate = (done - d0) / (now - t0) if now > t0 and done > d0 else None
            eta = _fmt_seconds((epochs * steps - done) / rate) if rate else "?"
            text = (
                f"epoch {rec['epoch'] + 1}/{epochs} step {rec['step']}/{steps} "
                f"{rec['images_per_sec']:.0f} img/s loss {rec['loss']:.3f} ETA {eta}"
            )
            if self.progress.tty:
                self.progress.step_line(text, text)
                self.progress.advance(self.local.name, done, epochs * steps)
        elif rec.get("kind") == "epoch":
            val = rec.get("val_top1")
            self.progress.line(
                f"epoch {rec['epoch'] + 1}/{epochs}: loss {rec['loss']:.4f}, "
                + (f"val top-1 {val:.2f}%, " if val is not None else "")
                + f"{rec['images_per_sec']:.0f} img/s (all ranks), {rec['epoch_seconds']:.1f}s"
            )


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _result_folder_line(progress: JobProgress, code: int) -> str | None:
    """The line naming the attempt's result folder. A job run again after it finished
    succeeds without one (nothing left to train): then its newest earlier one."""
    if progress.folder is not None:
        return f"=> result folder: {progress.folder}"
    if code != 0 or not progress.before:
        return None
    latest = max(progress.before, key=lambda p: p.stat().st_mtime_ns)
    return (
        f"=> result folder: {latest} (an earlier run of this job, which had finished; "
        "raise spec.training.epochs to train on)"
    )


def run_local_job(local: LocalJob, *, backoff_limit: int, grace: float) -> int:
    """Start and supervise the ranks, restarting on retryable failures; the job's exit code."""
    logs = local.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_paths = [logs / f"{local.name}-rank-{k}.log" for k in range(local.ranks)]
    device = "cpu (gloo)" if local.on_cpu or local.device_type == "cpu" else local.device_type
    print(
        f"=> job {local.name}: {local.ranks} rank(s) on {device}; job folder {local.root}\n"
        f"=> rank logs: {logs}/{local.name}-rank-<k>.log",
        flush=True,
    )
    restarts = 0
    t_start = time.monotonic()
    version = 0
    while True:
        if local.rank_table is not None:
            version += 1
            write_rank_table(local, ranktable.initializing_table(), version, restarts)
        files = [open(p, "a", encoding="utf-8") for p in log_paths]  # noqa: SIM115
        try:
            for f in files:
                f.write(f"=== attempt {restarts + 1}: {datetime.now():%Y-%m-%d %H:%M:%S} ===\n")
                f.flush()
            progress = JobProgress(local)
            # A fresh rendezvous port per attempt: the last attempt's may still be held (as
            # new pods get new addresses on a cluster).
            port = str(free_port()) if restarts else None
            attempt = {contract_env.ATTEMPT: str(restarts)}
            envs = [
                {**env, **attempt, **({"MASTER_PORT": port} if port else {})} for env in local.envs
            ]
            ranks = [
                Rank(
                    k,
                    spawn(local.command, {**os.environ, **env}, stdout=f, stderr=subprocess.STDOUT),
                )
                for k, (env, f) in enumerate(zip(envs, files, strict=True))
            ]
            if local.rank_table is not None:
                # Every "pod" is up: the operator would now build and publish the table.
                version += 1
                write_rank_table(local, local_rank_table(local), version, restarts)
            outcome = supervise(ranks, grace=grace, on_tick=progress.tick, log=progress.line)
            progress.tick()
        finally:
            for f in files:
                f.close()
        line = _result_folder_line(progress, outcome.code)
        if line:
            print(line, flush=True)
        if outcome.code == 0:
            print(f"=> job {local.name} succeeded in {_fmt_seconds(time.monotonic() - t_start)}")
            return 0
        retryable = exitcodes.is_retryable(outcome.code)
        meaning = exitcodes.MEANINGS.get(outcome.code, "retryable" if retryable else "")
        who = f"rank {outcome.failed_rank}" if outcome.failed_rank is not None else "the job"
        print(
            f"=> {who} exited with {outcome.code}" + (f" ({meaning})" if meaning else ""),
            file=sys.stderr,
            flush=True,
        )
        if outcome.failed_rank is not None:
            path = log_paths[outcome.failed_rank]
            print(f"--- last lines of {path}:\n{_tail(path)}\n---", file=sys.stderr, flush=True)
        retryable = retryable and not outcome.interrupted
        if not retryable or restarts >= backoff_limit:
            if retryable:
                print(f"=> backoffLimit {backoff_limit} reached: job failed", file=sys.stderr)
            return outcome.code
        restarts += 1
        print(
            f"=> restarting the job from its last checkpoint "
            f"(restart {restarts} of {backoff_limit})",
            flush=True,
        )


def run_local(
    manifest: str,
    *,
    cpu: bool = False,
    data: str | None = None,
    output_dir: str = "result",
    sets: Sequence[str] = (),
    metrics_port: int | None = None,
    dry_run: bool = False,
    grace: float = 60.0,
) -> int:
    """Validate and run a manifest here; returns the job's exit code."""
    obj = load_manifest(manifest)
    apply_sets(obj, sets)
    try:
        job = jobs.validate_job(obj)
    except jobs.ManifestError as exc:
        raise ConfigError(f"{manifest}: {exc}") from None
    local = make_local_job(
        job, cpu=cpu, data=data, output_dir=output_dir, metrics_port=metrics_port
    )
    if local.note:
        print(f"=> {local.note}", flush=True)
    if dry_run:
        print("command: " + " ".join(local.command))
        for k, env in enumerate(local.envs):
            print(f"rank {k}: " + " ".join(f"{key}={value}" for key, value in env.items()))
        return 0
    return run_local_job(local, backoff_limit=job["spec"]["runPolicy"]["backoffLimit"], grace=grace)
