"""kopf handlers: thin, one per event; the work happens in the Controller's workers.

Job and rank-pod events only put the job's key on the work queue, so that a burst of pod
changes becomes one reconcile, and all decisions live in pure functions (policy.plan). The
handlers are event handlers (no create/update/delete handlers): kopf then keeps no state
on the objects and adds no finalizer, so deleting a job is left to the garbage collector and
works even while the operator is down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import kopf

from shufflenet_contract import crd

from . import metrics, policy, render
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


OPTIONS = Options()
_controller: Controller | None = None


def controller() -> Controller:
    if _controller is None:
        raise RuntimeError("the operator has not started")
    return _controller


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    global _controller
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
    settings.watching.server_timeout = OPTIONS.watch_timeout_seconds
    settings.watching.client_timeout = OPTIONS.watch_timeout_seconds + 10
    settings.watching.connect_timeout = 10
    if OPTIONS.metrics_port:
        metrics.serve(OPTIONS.metrics_port, OPTIONS.metrics_addr)
    _controller = Controller(
        Kube(load_api_client()),
        policy.Settings(
            restart_backoff_seconds=OPTIONS.restart_backoff_seconds,
            max_backoff_seconds=OPTIONS.max_backoff_seconds,
        ),
        resync_seconds=OPTIONS.resync_seconds,
        progress_seconds=OPTIONS.progress_seconds,
        workers=OPTIONS.workers,
    )
    _controller.start()
    logger.info("shufflenet-operator started (namespaces: %s)", OPTIONS.namespaces or "all")


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    if _controller is not None:
        _controller.stop()


@kopf.on.event(crd.GROUP, crd.VERSION, crd.PLURAL)
async def job_event(namespace: str, name: str, **_: Any) -> None:
    # Also on DELETED: the reconcile then finds the job gone and drops its metrics.
    controller().enqueue(namespace, name)


@kopf.on.event("v1", "pods", labels={render.JOB_LABEL: kopf.PRESENT})
async def pod_event(namespace: str, labels: dict[str, str], **_: Any) -> None:
    controller().enqueue(namespace, labels[render.JOB_LABEL])
