"""`shufflenet-train`: the command-line entry point (flags in config.py, loops in engine.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .errors import EXIT_DIST, TrainerError, first_line


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, run, and turn a TrainerError into one `error:` line and its exit code.

    The rank environment (RANK, WORLD_SIZE, DEVICE_ID...) sets the rank and the device;
    `--nproc N` instead starts N ranks on this host (launch.py) and waits for them.
    """
    world_size = 1
    try:
        from .train.config import parse_config
        from .train.device import default_device_type
        from .train.distributed import rank_environment

        env = rank_environment()
        world_size = env.world_size
        device_id = env.device_id if env.device_id is not None else env.local_rank
        common = {
            "default_device": default_device_type(),
            "env_device_id": device_id,
            "force_cpu": env.force_cpu,
        }
        cfg = parse_config(argv, world_size=env.world_size, rank=env.rank, **common)
        if cfg.nproc is not None:
            from .jobs.launch import launch_nproc, node_of

            node = node_of(env, cfg.nproc)
            # Checked for the world size the ranks will have (-b must divide by it).
            cfg = parse_config(argv, world_size=node.world_size, **common)
            return launch_nproc(cfg, list(sys.argv[1:] if argv is None else argv), node)
        from .metrics.exporter import start_exporter
        from .train.loop import Hooks
        from .train.run import run

        hooks = Hooks()
        # Bound before training starts: a taken port is a configuration error (exit 2), not
        # a crash hours into the run.
        exporter = start_exporter(cfg, hooks)
        try:
            return run(cfg, hooks=hooks)
        finally:
            if exporter is not None:
                exporter.close()
    except TrainerError as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
