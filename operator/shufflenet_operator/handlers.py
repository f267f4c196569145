"""kopf handlers: thin, one per event; the work happens in the Controller's workers.

Job and rank-pod events only put the job's key on the work queue, so that a burst of pod
changes becomes one reconcile, and all decisions live in pure functions (policy.plan). The
handlers are event handlers (no create/update/delete handlers): kopf then keeps no state
on the objects and adds no finalizer, so deleting a job is left to the garbage collector and
works even while the operator is down.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import kopf

from shufflenet_contract import crd

from . import leader, metrics, policy, quarantine, render
from .controller import Controller
from .kube import Kube, load_api_client


@dataclass
class Options:
    """What `shufflenet-operator` was started with (these defaults under `kopf run -m`)."""

    namespaces: list[str] = field(default_factory=list)
    metrics_port: int = 8080
    metrics_addr: str = "0.0.0.0"
    restart_backoff_seconds: float = 10.0
    max_backoff_seconds: float = 300.0
    resync_seconds: float = 60.0
    progress_seconds: float = 30.0
    watch_timeout_seconds: int = 60
    workers: int = 2
    job_policy: str = policy.Settings.job_policy
    npu_device_group: int | None = None
    rank_resources: dict[str, render.RankResources] = field(
        default_factory=lambda: dict(render.RANK_RESOURCES)
    )
    # Leader election (leader.py): off, the process reconciles from the start.
    leader_elect: bool = False
    leader_elect_name: str = "shufflenet-operator"
    leader_elect_namespace: str | None = None  # None: the pod's own (leader.default_namespace)
    leader_elect_lease_duration: float = leader.Timing.lease_duration
    leader_elect_renew_deadline: float = leader.Timing.renew_deadline
    leader_elect_retry_period: float = leader.Timing.retry_period
    scheduler_wait_seconds: float = policy.Settings.scheduler_wait_seconds
    trainer_images: dict[str, str] = field(default_factory=dict)
    quarantine_seconds: float = quarantine.Rules.base
    quarantine_max_seconds: float = quarantine.Rules.cap
    quarantine_forgive_seconds: float = quarantine.Rules.forgive
    terminating_timeout_seconds: float = policy.Settings.terminating_timeout_seconds


def options_of(memo: kopf.Memo) -> Options:
    """The options `shufflenet-operator` put in kopf's memo (the defaults under `kopf run`)."""
    options = memo.get("options")
    return options if isinstance(options, Options) else Options()


@kopf.on.startup()
def startup(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    options = options_of(memo)
    # kopf's own bookkeeping (unused by event handlers, but kept under our group's prefix
    # rather than kopf.zalando.org should a change handler ever be added).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=crd.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=crd.GROUP, key="last-handled-configuration"
    )
    # kopf would post an Event for every handler it runs; the controller posts the
    # meaningful ones (condition transitions) itself.
    settings.posting.level = logging.WARNING
    # Watches are re-established this often (a stale connection is noticed within it).
    settings.watching.server_timeout = options.watch_timeout_seconds
    settings.watching.client_timeout = options.watch_timeout_seconds + 10
    settings.watching.connect_timeout = 10
    if options.metrics_port:
        metrics.serve(options.metrics_port, options.metrics_addr)
    controller = Controller(
        Kube(load_api_client()),
        policy.Settings(
            restart_backoff_seconds=options.restart_backoff_seconds,
            max_backoff_seconds=options.max_backoff_seconds,
            job_policy=options.job_policy,
            npu_device_group=options.npu_device_group,
            rank_resources=options.rank_resources,
            scheduler_wait_seconds=options.scheduler_wait_seconds,
            trainer_images=options.trainer_images,
            quarantine=quarantine.Rules(
                options.quarantine_seconds,
                options.quarantine_max_seconds,
                options.quarantine_forgive_seconds,
            ),
            terminating_timeout_seconds=options.terminating_timeout_seconds,
        ),
        resync_seconds=options.resync_seconds,
        progress_seconds=options.progress_seconds,
        workers=options.workers,
    )
    if options.leader_elect:
        # Only the leader's workers run; a standby's kopf watches and fills the queue, so
        # that the jobs are all looked at the moment it takes over.
        memo.elector = _elector(options, controller)
        memo.elector.start()
    else:
        metrics.LEADER.set(1)
        controller.start()
    # Startup handlers get the operator's memo; each object's handlers get a shallow copy of
    # it made when the object is first seen, which is after startup: they all see this one.
    memo.controller = controller
    logger.info(
        "shufflenet-operator started (namespaces: %s, job policy: %s)",
        options.namespaces or "all",
        options.job_policy,
    )


def _elector(options: Options, controller: Controller) -> leader.LeaderElector:
    timing = leader.Timing(
        options.leader_elect_lease_duration,
        options.leader_elect_renew_deadline,
        options.leader_elect_retry_period,
    )
    namespace = options.leader_elect_namespace or leader.default_namespace()
    if namespace is None:  # main() checks this first; `kopf run -m` does not
        raise kopf.PermanentError("--leader-elect-resource-namespace: needed outside a pod")
    leases = leader.Leases(load_api_client(), namespace, options.leader_elect_name)
    return leader.LeaderElector(
        leases,
        leader.default_identity(),
        timing,
        on_started_leading=controller.start,
        on_lost=_exit_lost,
    )


def _exit_lost() -> None:
    # client-go's users exit in OnStoppedLeading: a reconcile may be mid-way in a worker,
    # and only a new process is sure to do nothing until it leads again. The kubelet
    # restarts the container; it comes back as a standby.
    logging.shutdown()
    os._exit(1)


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    controller = memo.get("controller")
    if controller is not None:
        controller.stop()
    # After the workers stopped, never before: the lease, released, lets a standby start
    # at once (client-go's ReleaseOnCancel asks the same order).
    elector = memo.get("elector")
    if elector is not None:
        elector.stop()


@kopf.on.event(crd.GROUP, crd.VERSION, crd.PLURAL)
async def job_event(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    # Also on DELETED: the reconcile then finds the job gone and drops its metrics.
    memo.controller.enqueue(namespace, name)


@kopf.on.event("v1", "pods", labels={render.JOB_LABEL: kopf.PRESENT})
async def pod_event(namespace: str, labels: dict[str, str], memo: kopf.Memo, **_: Any) -> None:
    memo.controller.enqueue(namespace, labels[render.JOB_LABEL])
