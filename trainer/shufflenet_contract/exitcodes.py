"""The trainer's exit codes and what the operator makes of them: one table for both sides.

Configuration and data errors are permanent (the job fails, no restart); a lost peer, a
SIGTERM after checkpointing and any other code >= 128 are retryable (the operator restarts
the whole job from its last checkpoint, up to backoffLimit); other codes 1-127 are errors
in the program and fail the job, as Kubeflow's ExitCode restart policy does.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 2  # bad flags, manifest or checkpoint: permanent
EXIT_DATA = 3  # a missing or unreadable data folder: permanent
# A peer rank was lost, or waiting on one timed out (set-up, collective, rank table, watchdog).
# The same code torch's NCCL watchdog exits with when it aborts a hung collective (SIGABRT).
EXIT_DIST = 134
EXIT_SIGTERM = 143  # stopped by SIGTERM after saving a checkpoint

# Permanent failures by code, with the reason the job's Failed condition gives.
PERMANENT_REASONS: dict[int, str] = {EXIT_CONFIG: "InvalidConfiguration", EXIT_DATA: "InvalidData"}

# What each documented code means, for messages (`snjob run-local`, docs).
MEANINGS: dict[int, str] = {
    EXIT_CONFIG: "bad configuration",
    EXIT_DATA: "bad data",
    EXIT_DIST: "lost a peer rank or timed out",
    EXIT_SIGTERM: "stopped by SIGTERM after saving a checkpoint",
}


def is_retryable(code: int) -> bool:
    """Whether a rank that exited with `code` may succeed when the job is restarted."""
    return code >= 128
