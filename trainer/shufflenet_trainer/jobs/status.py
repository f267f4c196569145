"""`snjob status NAME`: a job's state on a cluster, in a few lines a person reads.

What `kubectl get snjob` shows in columns, plus what it does not: why its ranks wait (the
kubelet's or the scheduler's reason, with the pod and the message), the conditions with their
reasons, the rank table, why the last restart happened, its goodput and last recovery (tier,
cause, seconds to each phase: status.recoveries), and the job's latest Events. The
cluster is read with kubectl (its configuration, context and credentials, nothing of ours),
so the trainer's package needs no Kubernetes client. `describe` is pure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from shufflenet_contract import crd

from ..errors import ConfigError, TrainerError

EVENTS_SHOWN = 10


class ClusterError(TrainerError):
    """kubectl could not read the job (not found, no access, no cluster)."""

    exit_code = 1


def _progress(progress: Mapping[str, Any], epochs: Any) -> str:
    parts = []
    if "epoch" in progress:
        of = f" of {epochs}" if epochs else ""
        parts.append(f"epoch {float(progress['epoch']):.2f}{of}")
    if "imagesPerSecond" in progress:
        parts.append(f"{float(progress['imagesPerSecond']):.1f} images/s")
    if "top1" in progress:
        parts.append(f"val top-1 {float(progress['top1']):.2f}%")
    return ", ".join(parts) or "none yet"


# status.recoveries' seconds, in the order a recovery reaches them.
_PHASES = (
    ("detectSeconds", "detected"),
    ("podsReadySeconds", "pods ready"),
    ("rendezvousSeconds", "rendezvous"),
    ("checkpointLoadedSeconds", "checkpoint loaded"),
    ("firstStepSeconds", "first step"),
)


def _recovery(entry: Mapping[str, Any]) -> str:
    """`tier 3 at <time> (<cause>): detected 1s, pods ready 9s, first step 14s; 20 steps lost`."""
    phases = ", ".join(f"{word} {float(entry[k]):g}s" for k, word in _PHASES if k in entry)
    lost = f"; {entry['stepsLost']} steps lost" if "stepsLost" in entry else ""
    head = f"tier {entry.get('tier', '?')} at {entry.get('at', '?')} ({entry.get('cause', '?')})"
    return f"{head}: {phases or 'no phase known yet'}{lost}"


def describe(job: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = ()) -> str:
    """The status of a ShuffleNetTrainingJob (as the API returns it) and its Events."""
    meta = job.get("metadata") or {}
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    devices = spec.get("devices") or {}
    limit = (spec.get("runPolicy") or {}).get("backoffLimit")
    lines = [
        f"job {meta.get('namespace')}/{meta.get('name')}: {status.get('phase', 'not seen yet')}"
        f" ({devices.get('count', '?')} x {devices.get('type', '?')}, "
        f"restarts {status.get('restarts', 0)} of {limit if limit is not None else '?'})"
    ]
    waiting = status.get("waiting")
    if waiting:
        # Why the ranks have not started (the job's Waiting column), before the detail.
        lines.append(f"waiting:  {waiting.get('reason', '?')}: {waiting.get('message', '')}")
    ranks = status.get("ranks")
    if ranks:
        lines.append(
            "ranks:    "
            + ", ".join(
                f"{ranks.get(k, 0)} {k}"
                for k in ("total", "scheduled", "running", "succeeded", "failed")
            )
        )
    epochs = (spec.get("training") or {}).get("epochs")
    lines.append(f"progress: {_progress(status.get('progress') or {}, epochs)}")
    if status.get("goodput") is not None:
        seconds = float(status.get("trainingSeconds") or 0)
        lines.append(f"goodput:  {100 * float(status['goodput']):.1f}% ({seconds:.0f}s training)")
    recoveries = status.get("recoveries") or []
    if recoveries:
        count = f"last of {len(recoveries)}" if len(recoveries) > 1 else "1"
        lines.append(f"recovery ({count}): {_recovery(recoveries[-1])}")
    table = status.get("rankTable")
    if table:
        lines.append(f"rank table: {table.get('status')} (version {table.get('version')})")
    for entry in status.get("quarantine") or []:
        # Nodes the job's next attempts keep off (docs/operator.md, Quarantine).
        chip = f", {entry['chip']}" if entry.get("chip") else ""
        lines.append(
            f"quarantined: {entry.get('node')} ({entry.get('reason')}{chip}) "
            f"until {entry.get('until')}"
        )
    for key, word in (("startTime", "started"), ("completionTime", "finished")):
        if status.get(key):
            lines.append(f"{word}: {status[key]}")
    conditions = status.get("conditions") or []
    if conditions:
        lines.append("conditions:")
        for c in conditions:
            lines.append(
                f"  {c.get('type', '?'):<15} {c.get('status', '?'):<6} "
                f"{c.get('reason', '')}: {c.get('message', '')}".rstrip(": ")
            )
    if events:
        lines.append(f"events (last {min(len(events), EVENTS_SHOWN)}):")
        ordered = sorted(events, key=lambda e: str(e.get("lastTimestamp") or ""))
        for e in ordered[-EVENTS_SHOWN:]:
            lines.append(
                f"  {e.get('lastTimestamp', '')} {e.get('type', '')} {e.get('reason', '')}: "
                f"{e.get('message', '')}"
            )
    return "\n".join(lines)


def _kubectl(args: Sequence[str], kubectl: str) -> Any:
    try:
        proc = subprocess.run(
            [kubectl, *args, "-o", "json"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"{kubectl} {' '.join(args)}: {exc}") from None
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["failed"])[0]
        raise ClusterError(first)
    return json.loads(proc.stdout)


def job_status(name: str, namespace: str | None = None, kubectl: str | None = None) -> str:
    """Read the job and its Events with kubectl and describe them."""
    binary = kubectl or shutil.which("kubectl")
    if binary is None:
        raise ConfigError("kubectl: not found on PATH: install it, or pass --kubectl PATH")
    ns = ["-n", namespace] if namespace else []
    job = _kubectl(["get", f"{crd.PLURAL}.{crd.GROUP}", name, *ns], binary)
    selector = f"involvedObject.name={name},involvedObject.kind={crd.KIND}"
    events = _kubectl(["get", "events", *ns, "--field-selector", selector], binary)
    return describe(job, events.get("items") or [])
