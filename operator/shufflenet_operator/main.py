"""`shufflenet-operator`: run the kopf operator for ShuffleNetTrainingJobs."""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from . import handlers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="shufflenet-operator",
        description="Reconcile ShuffleNetTrainingJobs: rank pods, rank tables, restarts.",
    )
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; default: all namespaces)",
    )
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus port; 0: off")
    p.add_argument("--metrics-addr", default="0.0.0.0")
    p.add_argument(
        "--liveness",
        default="http://0.0.0.0:8081/healthz",
        help="kopf's liveness endpoint URL; empty: off",
    )
    p.add_argument(
        "--restart-backoff",
        type=float,
        default=10.0,
        help="seconds before the first whole-job restart, doubling with each one",
    )
    p.add_argument("--max-backoff", type=float, default=300.0)
    p.add_argument("--resync", type=float, default=60.0, help="look at every job this often")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=30.0,
        help="seconds between scrapes of a running job's rank 0 metrics for status.progress; "
        "0: off",
    )
    p.add_argument("--watch-timeout", type=int, default=60, help="seconds per watch request")
    p.add_argument("--workers", type=int, default=2, help="jobs reconciled in parallel")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handlers.OPTIONS.namespaces = list(args.namespace)
    handlers.OPTIONS.metrics_port = args.metrics_port
    handlers.OPTIONS.metrics_addr = args.metrics_addr
    handlers.OPTIONS.restart_backoff_seconds = args.restart_backoff
    handlers.OPTIONS.max_backoff_seconds = args.max_backoff
    handlers.OPTIONS.resync_seconds = args.resync
    handlers.OPTIONS.progress_seconds = args.progress_interval
    handlers.OPTIONS.watch_timeout_seconds = args.watch_timeout
    handlers.OPTIONS.workers = args.workers
    kopf.configure(verbose=args.verbose, quiet=args.quiet)
    if not args.verbose:
        # kopf logs every handler call at INFO: a line per pod change of every rank.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        # One replica; peering (leader election between replicas) needs kopf's peering CRDs.
        standalone=True,
        namespaces=args.namespace,
        clusterwide=not args.namespace,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
