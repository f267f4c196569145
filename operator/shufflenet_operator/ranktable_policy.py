"""The rank-table ConfigMap of an NPU job: what it should say now (a pure function).

`decide()` turns a valid job, its current rank pods and its ConfigMap (as read) into the
table the ranks should see: `initializing` until every rank pod got its NPUs (the device
plugin's annotation), then the HCCL table built from those annotations, as long as the
ranks would accept it and it fits in a ConfigMap. It says what to write (only when the text
or the attempt changed: an unchanged pod set writes nothing) and the RankTableReady
condition that explains it. `policy` puts this into its plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shufflenet_contract import job as jobs
from shufflenet_contract import ranktable

from . import status as st

# Why the table stays initializing, by the annotation whose content blocks it.
_BLOCKED_BY = {ranktable.RANK_INDEX_ANNOTATION: "InvalidRankIndex"}


@dataclass(frozen=True)
class TableDecision:
    """The rank table a job's ConfigMap should hold, and why."""

    status: str  # the table's own status: initializing or completed
    version: int  # the ConfigMap's version once `configmap_data` (if any) is written
    reason: str  # of the RankTableReady condition
    message: str
    configmap_data: dict[str, str] | None  # None: the ConfigMap already says this

    @property
    def complete(self) -> bool:
        return self.status == ranktable.STATUS_COMPLETED


def decide(
    job: Mapping[str, Any],
    current: Mapping[int, Mapping[str, Any]],
    configmap: Mapping[str, Any] | None,
    attempt: int,
) -> TableDecision:
    """The table that the `current` rank pods (by pod index) of attempt `attempt` imply for
    the valid NPU `job`, given its ConfigMap as read (None: not there yet)."""
    table, text, reason, message = _table(job, current)
    version = _version_of(configmap)
    # Compared as text: the table is written from this very text, so an unchanged pod set
    # writes nothing (and parsing a large table back every reconcile would cost more). The
    # attempt too: a whole-node table, keyed by host IPs, reads the same in a new attempt, and
    # only the attempt key tells its ranks that it is theirs.
    data = (configmap or {}).get("data") or {}
    write = None
    if data.get(ranktable.FILE_KEY) != text or data.get(ranktable.ATTEMPT_KEY) != str(attempt):
        version += 1
        write = ranktable.configmap_data(text, version, attempt)
    return TableDecision(table["status"], version, reason, message, write)


def _table(
    job: Mapping[str, Any], current: Mapping[int, Mapping[str, Any]]
) -> tuple[dict[str, Any], str, str, str]:
    """(table, its text, reason, message): the built table once every pod has its NPUs and
    the table is one the ranks accept and a ConfigMap holds, else an initializing one."""
    pods = jobs.pod_count(job)
    table: dict[str, Any] = ranktable.initializing_table()
    text = ranktable.dump(table)
    try:
        annotated = _annotated_pods(job, current)
        reason = "WaitingForDevices"
        message = f"{len(annotated)} of {pods} rank pods have their NPUs"
        if len(annotated) == pods:
            entries = ranktable.pods_from_annotations(annotated, jobs.devices_per_pod(job))
            scheduling = job["spec"]["scheduling"]
            super_pod = ranktable.wants_super_pod(
                job["metadata"].get("annotations"), scheduling.get("nodeSelector")
            )
            built = ranktable.build_rank_table(entries, super_pod=super_pod)
            world = jobs.world_size(job)
            # What every rank will check before HCCL sees it: a table the ranks would refuse
            # is not written (the reason says why) rather than found wrong in each pod.
            ranktable.validate_rank_table(built, 0, world)
            built_text = ranktable.dump(built)
            size = len(built_text.encode())
            if size > ranktable.MAX_CONFIGMAP_BYTES:
                reason = "RankTableTooLarge"
                message = (
                    f"spec.devices.perPod: the rank table of {pods} pods takes {size} bytes, "
                    "more than a ConfigMap holds: put several devices in each pod (perPod 8)"
                )
            else:
                table, text = built, built_text
                reason = "RankTableWritten"
                message = f"HCCL rank table v{built['version']} of {world} ranks written"
    except ranktable.RankTableError as exc:
        reason, message = _BLOCKED_BY.get(exc.field, "InvalidDeviceAnnotation"), str(exc)
    except ValueError as exc:
        reason, message = "InvalidDeviceAnnotation", str(exc)
    return table, text, reason, message


def _version_of(configmap: Mapping[str, Any] | None) -> int:
    text = ((configmap or {}).get("data") or {}).get(ranktable.VERSION_KEY, "0")
    return int(text) if str(text).isdigit() else 0


def _annotated_pods(
    job: Mapping[str, Any], current: Mapping[int, Mapping[str, Any]]
) -> list[ranktable.AnnotatedPod]:
    """The current rank pods that got their NPUs (scheduled, carrying the device plugin's
    annotation), with the rank index each will have in the table (RankTableError when its
    `hccl/rankIndex` disagrees with its index)."""
    resource = jobs.resource_name(job)
    out = []
    for index, pod in sorted(current.items()):
        meta = pod.get("metadata") or {}
        found = ranktable.device_annotation(meta.get("annotations"), resource)
        if found is None or not st.is_scheduled(pod) or st.is_deleting(pod):
            continue
        name = str(meta.get("name"))
        rank = ranktable.rank_index(meta.get("annotations"), index, name)
        out.append(ranktable.AnnotatedPod(rank, str(meta.get("uid")), name, found[1], found[0]))
    return out
