"""An example job on the one-machine cluster of `make demo-cluster`, and the volumes it claims.

    # The admin's part: PersistentVolumes on directories of this machine, bound to claims
    # named as the example's (the node's mount namespace sees the host's files).
    python scripts/cluster/local_job.py volumes manifests/examples/cpu-digits-2rank.yaml \
        --data DIR --checkpoints DIR [--namespace NS] | kubectl apply -f -
    # The user's part: the example as shipped (or renamed, or with spec fields set).
    python scripts/cluster/local_job.py job manifests/examples/cpu-digits-2rank.yaml \
        [--name NAME] [--set FIELD=YAML]... | kubectl apply -f -

The job names no image: the operator runs the trainer image the chart configured for its
device type, which the node's containerd pulls from the cluster's registry. No
securityContext, no volumes: the operator locks the rank pods down by itself, and the
example's claims are the volumes above. --set overrides a spec field (e.g.
training.epochs=3).

The volumes: one PersistentVolume per claim of the example (data, checkpoints), a hostPath
of this machine's directory (the node is this machine), pre-bound both ways (the PV's
claimRef, the claim's volumeName, no storage class), so that no other claim takes them. The
checkpoint directory must be writable by the trainer image's user (uid 10001): hostPath
volumes get no fsGroup ownership change, so whoever makes the directory chowns it, as an
admin of such a volume would.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

# hostPath ignores the size; the API wants one.
CAPACITY = "10Gi"


def _set(spec: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for key in path:
        spec = spec.setdefault(key, {})
    spec[last] = value


def local_job(
    example: dict[str, Any],
    *,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`example` renamed (a new dict); `overrides` set dotted spec fields."""
    job = copy.deepcopy(example)
    if name:
        job["metadata"]["name"] = name
    spec = job["spec"]
    for dotted, value in (overrides or {}).items():
        _set(spec, dotted, value)
    return job


def claim_name(volume: dict[str, Any] | None) -> str | None:
    claim = (volume or {}).get("persistentVolumeClaim") or {}
    return claim.get("claimName")


def host_volume(claim: str, namespace: str, path: Path, access_mode: str) -> list[dict[str, Any]]:
    """A hostPath PersistentVolume at `path` and the claim `namespace/claim` bound to it."""
    pv = f"{namespace}-{claim}"  # cluster-wide: one per claim and namespace
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": CAPACITY},
                "accessModes": [access_mode],
                # The files outlive the claim: they are the admin's directory.
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": claim},
                "hostPath": {"path": str(path), "type": "Directory"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "storageClassName": "",
                "volumeName": pv,
                "accessModes": [access_mode],
                "resources": {"requests": {"storage": CAPACITY}},
            },
        },
    ]


def claim_volumes(
    example: dict[str, Any], *, data: Path, checkpoints: Path, namespace: str = "default"
) -> list[dict[str, Any]]:
    """The PersistentVolumes and claims of the example's data and checkpoint claims
    (a volume that is not a claim needs none)."""
    spec = example["spec"]
    objects = []
    for volume, path, mode in [
        (spec["data"].get("volume"), data, "ReadOnlyMany"),
        (spec["checkpoint"].get("volume"), checkpoints, "ReadWriteOnce"),
    ]:
        claim = claim_name(volume)
        if claim:
            objects += host_volume(claim, namespace, path.resolve(), mode)
    return objects


def _overrides(p: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected FIELD=VALUE, e.g. training.epochs=3")
        overrides[field] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    job = sub.add_parser("job", help="the example job, renamed or with spec fields set")
    job.add_argument("example", type=Path)
    job.add_argument("--name")
    job.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=YAML",
        help="a spec field, e.g. training.epochs=3 (repeatable)",
    )
    volumes = sub.add_parser("volumes", help="hostPath PersistentVolumes for its claims")
    volumes.add_argument("example", type=Path)
    volumes.add_argument("--data", type=Path, required=True)
    volumes.add_argument("--checkpoints", type=Path, required=True)
    volumes.add_argument("--namespace", default="default")
    args = p.parse_args(argv)
    example = yaml.safe_load(args.example.read_text(encoding="utf-8"))
    if args.what == "job":
        out = [local_job(example, name=args.name, overrides=_overrides(p, args.set))]
    else:
        out = claim_volumes(
            example, data=args.data, checkpoints=args.checkpoints, namespace=args.namespace
        )
    yaml.safe_dump_all(out, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
