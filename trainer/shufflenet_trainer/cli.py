"""`shufflenet-train`: the command-line entry point (flags in config.py, loops in engine.py)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .errors import TrainerError


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, run, and turn a TrainerError into one `error:` line and its exit code."""
    try:
        from .config import parse_config
        from .device import default_device_type

        cfg = parse_config(argv, default_device=default_device_type())
        from .engine import run

        return run(cfg)
    except TrainerError as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
