"""An example job manifest, adapted to the one-machine cluster of `make demo-cluster`.

    python scripts/cluster/local_job.py manifests/examples/cpu-digits-2rank.yaml \
        --image localhost/shufflenet/trainer-cpu:TAG --data DIR --checkpoints DIR

prints the manifest with: the image built here (pulled never: no registry can have it), the
data and checkpoint volumes as hostPath directories of this machine (the node's mount
namespace sees the host's files), and the pods locked down as a careful cluster would run
them: non-root, read-only root filesystem, no privilege escalation, all capabilities dropped
(the operator gives every rank pod an emptyDir at /tmp, where the image points HOME and the
caches). Everything else stays as the example says, unless overridden with --set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

TRAINER_UID = 10001  # the image's user (images/trainer-cpu/Dockerfile)


def locked_down_container() -> dict[str, Any]:
    return {
        "name": "trainer",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _set(spec: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for key in path:
        spec = spec.setdefault(key, {})
    spec[last] = value


def local_job(
    example: dict[str, Any],
    *,
    image: str,
    data: Path | None,
    checkpoints: Path,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`example` adapted as the module docstring says (a new dict)."""
    job = yaml.safe_load(yaml.safe_dump(example))
    if name:
        job["metadata"]["name"] = name
    spec = job["spec"]
    spec["image"] = image
    spec["imagePullPolicy"] = "Never"
    if data is not None:
        spec["data"]["volume"] = {"hostPath": {"path": str(data), "type": "Directory"}}
    spec["checkpoint"]["volume"] = {"hostPath": {"path": str(checkpoints), "type": "Directory"}}
    template = spec.setdefault("podTemplate", {}).setdefault("spec", {})
    template.setdefault("containers", []).append(locked_down_container())
    for dotted, value in (overrides or {}).items():
        _set(spec, dotted, value)
    return job


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("example", type=Path)
    p.add_argument("--image", required=True)
    p.add_argument("--data", type=Path)
    p.add_argument("--checkpoints", type=Path, required=True)
    p.add_argument("--name")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=YAML",
        help="a spec field, e.g. training.epochs=3 (repeatable)",
    )
    args = p.parse_args(argv)
    overrides = {}
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected FIELD=VALUE, e.g. training.epochs=3")
        overrides[field] = yaml.safe_load(value)
    example = yaml.safe_load(args.example.read_text(encoding="utf-8"))
    job = local_job(
        example,
        image=args.image,
        data=args.data,
        checkpoints=args.checkpoints,
        name=args.name,
        overrides=overrides,
    )
    yaml.safe_dump(job, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
