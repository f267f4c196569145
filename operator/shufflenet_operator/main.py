"""`shufflenet-operator`: run the kopf operator for ShuffleNetTrainingJobs."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

import kopf

from shufflenet_contract import crd

from . import handlers, job_policy, leader, render, trainer_images


def _gid(text: str) -> int:
    # Group 0 would give the trainer root's group: never what the driver's files need.
    if not text.isdigit() or not 0 < int(text) < 2**31:
        raise argparse.ArgumentTypeError(f"{text!r}: a group id from 1 to {2**31 - 1}")
    return int(text)


RANK_RESOURCES_FORM = (
    f"DEVICE=KEY:QUANTITY[,KEY:QUANTITY...] with DEVICE one of {', '.join(crd.DEVICE_TYPES)} "
    f"and KEY one of {', '.join(render.RANK_RESOURCE_KEYS)}, e.g. npu=cpu:8,memory:64Gi,shm:8Gi"
)


def _rank_resources(text: str) -> tuple[str, dict[str, str]]:
    """`gpu=cpu:8,memory:32Gi` -> ("gpu", {"cpu": "8", "memory": "32Gi"})."""
    device, _, items = text.partition("=")
    pairs = [item.partition(":") for item in items.split(",")]
    if device not in crd.DEVICE_TYPES or any(
        key not in render.RANK_RESOURCE_KEYS or not sep for key, sep, _ in pairs
    ):
        raise argparse.ArgumentTypeError(f"{text!r}: {RANK_RESOURCES_FORM}")
    try:
        return device, {key: render.check_quantity(value) for key, _, value in pairs}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _trainer_image(text: str) -> tuple[str, str]:
    try:
        return trainer_images.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # Defaults come from handlers.Options, which also serves `kopf run -m`.
    d = handlers.Options()
    p = argparse.ArgumentParser(
        prog="shufflenet-operator",
        description="Reconcile ShuffleNetTrainingJobs: rank pods, rank tables, restarts.",
    )
    p.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        default=[],
        help="watch this namespace (repeatable; default: all namespaces)",
    )
    p.add_argument(
        "--metrics-port", type=int, default=d.metrics_port, help="Prometheus port; 0: off"
    )
    p.add_argument("--metrics-addr", default=d.metrics_addr)
    p.add_argument(
        "--liveness",
        default="http://0.0.0.0:8081/healthz",
        help="kopf's liveness endpoint URL; empty: off",
    )
    p.add_argument(
        "--restart-backoff",
        dest="restart_backoff_seconds",
        type=float,
        default=d.restart_backoff_seconds,
        help="seconds before the first whole-job restart, doubling with each one",
    )
    p.add_argument(
        "--max-backoff", dest="max_backoff_seconds", type=float, default=d.max_backoff_seconds
    )
    p.add_argument(
        "--resync",
        dest="resync_seconds",
        type=float,
        default=d.resync_seconds,
        help="look at every job this often",
    )
    p.add_argument(
        "--progress-interval",
        dest="progress_seconds",
        type=float,
        default=d.progress_seconds,
        help="seconds between scrapes of a running job's rank 0 metrics for status.progress; "
        "0: off",
    )
    p.add_argument(
        "--watch-timeout",
        dest="watch_timeout_seconds",
        type=int,
        default=d.watch_timeout_seconds,
        help="seconds per watch request",
    )
    p.add_argument("--workers", type=int, default=d.workers, help="jobs reconciled in parallel")
    p.add_argument(
        "--job-policy",
        choices=job_policy.LEVELS,
        default=d.job_policy,
        help="what a job may ask of its rank pods (spec.podTemplate, its volumes), by the Pod "
        "Security level its rank pods must pass; a job asking for more fails InvalidSpec "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--npu-device-group",
        type=_gid,
        default=d.npu_device_group,
        metavar="GID",
        help="the group owning the NPU driver's device files on the nodes, added to NPU rank "
        "pods' groups; default: none (the image's HwHiAiUser group, 1000)",
    )
    p.add_argument(
        "--rank-resources",
        type=_rank_resources,
        action="append",
        default=[],
        metavar="DEVICE=KEY:QUANTITY,...",
        help="what each rank of a pod of DEVICE (cpu, gpu, npu) jobs gets, times the ranks "
        "in the pod, unless the job's podTemplate sets the container's own: KEY cpu and "
        "memory are requests (no limits), shm is /dev/shm's sizeLimit; repeatable, keys not "
        "given keep their defaults: "
        + "; ".join(
            f"{device}=cpu:{r.cpu},memory:{r.memory},shm:{r.shm}"
            for device, r in render.RANK_RESOURCES.items()
        ),
    )
    _leader_election_flags(p, d)
    p.add_argument(
        trainer_images.FLAG,
        dest="trainer_images",
        type=_trainer_image,
        action="append",
        default=[],
        metavar="DEVICE=REF",
        help="the image of DEVICE (cpu, gpu, npu) jobs that leave spec.image empty; "
        "repeatable; a job of a device type without one must name its image",
    )
    p.add_argument(
        "--scheduler-wait",
        dest="scheduler_wait_seconds",
        type=float,
        default=d.scheduler_wait_seconds,
        help="seconds after which a rank pod no scheduler has looked at makes its job say "
        "SchedulerNotResponding (default: %(default)g)",
    )
    _quarantine_flags(p, d)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    # The flags change the defaults, one device type and key at a time.
    args.rank_resources = render.rank_resources(args.rank_resources, d.rank_resources)
    args.trainer_images = dict(args.trainer_images)
    if args.leader_elect:
        _check_leader_election(p, args)
    return args


def _check_leader_election(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """client-go's checks of the durations; the Lease's namespace found (exits if not)."""
    timing = leader.Timing(
        args.leader_elect_lease_duration,
        args.leader_elect_renew_deadline,
        args.leader_elect_retry_period,
    )
    if problem := timing.problem():
        p.error(problem)
    args.leader_elect_namespace = args.leader_elect_namespace or leader.default_namespace()
    if not args.leader_elect_namespace:
        p.error("--leader-elect-resource-namespace: name the Lease's namespace (outside a pod)")


def _quarantine_flags(p: argparse.ArgumentParser, d: handlers.Options) -> None:
    # docs/operator.md, Quarantine.
    for flag, dest, what in (
        ("quarantine", "quarantine_seconds", "a node blamed for a rank's failure is kept "
         "off by the job's next attempts, doubling each time it is blamed again; 0: off"),
        ("quarantine-max", "quarantine_max_seconds", "the doubling stops here"),
        ("quarantine-forgive", "quarantine_forgive_seconds", "after its quarantine ends, a "
         "node not blamed again for this long starts over"),
        ("terminating-timeout", "terminating_timeout_seconds", "past its deletion grace "
         "period, a rank pod stuck Terminating on a NotReady node is force-deleted; "
         "negative: never"),
    ):  # fmt: skip
        p.add_argument(
            f"--{flag}",
            dest=dest,
            type=float,
            default=getattr(d, dest),
            metavar="SECONDS",
            help=f"seconds {what} (default: %(default)g)",
        )


def _leader_election_flags(p: argparse.ArgumentParser, d: handlers.Options) -> None:
    # kube-controller-manager's flag names and client-go's defaults.
    p.add_argument(
        "--leader-elect",
        action="store_true",
        default=d.leader_elect,
        help="run as one of several replicas: only the holder of a coordination.k8s.io "
        "Lease reconciles, the others stand by to take over",
    )
    p.add_argument(
        "--leader-elect-resource-name",
        dest="leader_elect_name",
        default=d.leader_elect_name,
        help="the Lease's name (default: %(default)s)",
    )
    p.add_argument(
        "--leader-elect-resource-namespace",
        dest="leader_elect_namespace",
        default=d.leader_elect_namespace,
        help="the Lease's namespace (default: the operator pod's own)",
    )
    for flag, default, what in (
        ("lease-duration", d.leader_elect_lease_duration, "a standby waits after the "
         "leader's last renewal it saw before it takes over"),
        ("renew-deadline", d.leader_elect_renew_deadline, "the leader tries to renew "
         "before it gives up leading (and exits)"),
        ("retry-period", d.leader_elect_retry_period, "between tries to acquire or renew"),
    ):  # fmt: skip
        p.add_argument(
            f"--leader-elect-{flag}",
            type=float,
            default=default,
            metavar="SECONDS",
            help=f"seconds {what} (default: %(default)s)",
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    given = vars(args)
    options = handlers.Options(
        **{f.name: given[f.name] for f in dataclasses.fields(handlers.Options)}
    )
    kopf.configure(verbose=args.verbose, quiet=args.quiet)
    if not args.verbose:
        # kopf logs every handler call at INFO: a line per pod change of every rank.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        # No kopf peering (it needs kopf's own CRDs): with --leader-elect, a Lease decides
        # which replica reconciles (leader.py); every replica's kopf only watches.
        standalone=True,
        namespaces=args.namespaces,
        clusterwide=not args.namespaces,
        liveness_endpoint=args.liveness or None,
        # The handlers' shared state lives in kopf's memo, not in module globals.
        memo=kopf.Memo(options=options),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
