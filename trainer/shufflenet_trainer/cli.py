"""`shufflenet-train`: the entry point (flags in train/config.py, the run in train/run.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import EXIT_DIST, TrainerError, first_line, one_line

if TYPE_CHECKING:
    from .jobs.launch import Node
    from .train.config import TrainConfig
    from .train.loop import Hooks
    from .train.supervisor import Supervisor


@dataclass(frozen=True)
class Plan:
    """What a command line asks for, checked: the config, the flags as ours (pytorch/examples
    and ModelZoo ones translated), and for --nproc the job its ranks form."""

    cfg: TrainConfig
    argv: list[str]
    node: Node | None
    env_world_size: int  # of this process's rank environment (1 without one)


def configure(argv: Sequence[str]) -> Plan:
    """Parse and check a command line as `main` does before anything runs; raises TrainerError.

    Nothing is written (no folder, no file, no port); the rank environment a pytorch/examples
    or ModelZoo command line implies (compat.translate) is set in os.environ, as the ranks
    read it from there.
    """
    from .jobs.launch import node_of
    from .train.config import parse_config
    from .train.device import default_device_type
    from .train.distributed import rank_environment

    ours = _translate(list(argv))
    env = rank_environment()
    device_id = env.device_id if env.device_id is not None else env.local_rank
    common = {
        "default_device": default_device_type(),
        "env_device_id": device_id,
        "force_cpu": env.force_cpu,
    }
    cfg = parse_config(ours, world_size=env.world_size, rank=env.rank, **common)
    node = None
    if cfg.nproc is not None:
        node = node_of(env, cfg.nproc)
        # Checked for the world size the ranks will have (-b must divide by it).
        cfg = parse_config(ours, world_size=node.world_size, **common)
    return Plan(cfg, ours, node, env.world_size)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, run, and turn a TrainerError into one `error:` line and its exit code.

    The rank environment (RANK, WORLD_SIZE, DEVICE_ID...) sets the rank and the device;
    `--nproc N` instead starts N ranks on this host (launch.py) and waits for them.
    """
    world_size = 1
    try:
        plan = configure(sys.argv[1:] if argv is None else argv)
        world_size = plan.env_world_size
        if plan.node is not None:
            from .jobs.launch import launch_nproc

            return launch_nproc(plan.cfg, plan.argv, plan.node)
        supervisor = _supervisor(plan)
        if supervisor is not None:
            return supervisor.run()
        from .metrics.exporter import start_exporter
        from .train.loop import Hooks
        from .train.run import run

        hooks = Hooks()
        _record_recovery(hooks)
        # Bound before training starts: a taken port is a configuration error (exit 2), not
        # a crash hours into the run.
        exporter = start_exporter(plan.cfg, hooks)
        try:
            return run(plan.cfg, hooks=hooks)
        finally:
            if exporter is not None:
                exporter.close()
    except TrainerError as exc:
        sys.stdout.flush()
        print(error_line(exc), file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        from .train.distributed import is_peer_failure

        if world_size == 1 or not is_peer_failure(exc):
            raise
        sys.stdout.flush()
        print(
            f"error: lost a peer rank or timed out waiting for one ({first_line(exc)}); "
            "retryable: the job restarts from its last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        # Leave at once: interpreter shutdown would tear down a process group whose peers are
        # gone, which can hang (the reason this rank is exiting).
        os._exit(EXIT_DIST)


def _supervisor(plan: Plan) -> Supervisor | None:
    """The supervisor this process is, as a rank of a multi-rank job restarted in place
    (train/supervisor.py); None where it trains itself: one process, a training process
    already supervised, under torchrun (its agent restarts workers), or no restarts."""
    from shufflenet_contract.env import EnvError, read_generation, read_inplace_policy

    from .errors import ConfigError

    try:
        policy = read_inplace_policy(os.environ)
        supervised = read_generation(os.environ) is not None
    except EnvError as exc:
        raise ConfigError(f"rank environment: {exc}") from None
    if plan.env_world_size == 1 or supervised or policy.restarts == 0:
        return None
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return None
    from .train.distributed import rank_environment
    from .train.supervisor import Supervisor

    return Supervisor(plan.argv, rank_environment(), policy, plan.cfg.dist_timeout)


def _record_recovery(hooks: Hooks) -> None:
    """In a supervised training process: die with the supervisor, and after a recovery
    record its times (train/supervisor.py)."""
    import json

    from shufflenet_contract.env import GENERATION, RECOVERY

    if GENERATION not in os.environ:
        return
    from .train.supervisor import RecoveryRecord, die_with_parent

    die_with_parent()
    if RECOVERY in os.environ:
        record = RecoveryRecord(json.loads(os.environ[RECOVERY]), int(os.environ.get("RANK", 0)))
        hooks.on_start.append(record.on_start)
        hooks.on_step.append(record.on_step)


def error_line(exc: TrainerError) -> str:
    """The one line a TrainerError ends a run with."""
    return f"error: {one_line(str(exc))}"


def _translate(argv: list[str]) -> list[str]:
    """pytorch/examples and ModelZoo process flags (and mpirun's variables) -> ours, their
    rank environment set here so that this process and the ranks it starts read it as from
    any other launcher."""
    from . import compat
    from .train.config import parse_namespace

    os.environ.update(compat.mpi_env(os.environ))
    ns = parse_namespace(argv)
    out = compat.translate(argv, ns, os.environ, host_devices=lambda: _host_devices(ns))
    os.environ.update(out.env)
    return out.argv


def _host_devices(ns: object) -> int:
    """Devices of this host for --multiprocessing-distributed without --device-list
    (pytorch/examples: the visible CUDA GPUs; ModelZoo on Ascend: $RANK_SIZE)."""
    from .compat import BACKEND_DEVICE
    from .train.device import default_device_type

    backend = getattr(ns, "dist_backend", None)
    kind = getattr(ns, "device", None) or (backend and BACKEND_DEVICE[backend])
    kind = kind or default_device_type()
    if kind == "npu":
        return int(os.environ.get("RANK_SIZE") or 1)
    if kind == "cuda":
        import torch

        return torch.cuda.device_count()
    return 1


if __name__ == "__main__":
    sys.exit(main())
