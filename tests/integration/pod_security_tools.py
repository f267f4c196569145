"""Pod Security "restricted", judged by a checker that is not ours: checkov (PyPI `checkov`,
installed by scripts/install-checkov.sh in a virtualenv of its own; `make test-deps`).

checkov has no "Pod Security restricted" switch: CHECKS names the checks of its Kubernetes
framework (checkov/kubernetes/checks/resource/k8s/*.py) that match a rule of the Pod
Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
all run in one invocation. The rules it has no check for are in NOT_IN_CHECKOV and are
checked by beyond_checkov(), more strictly than the standard (we set none of those fields).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INSTALLER = ROOT / "scripts" / "install-checkov.sh"

# checkov check -> the Pod Security rule it stands for, with where it differs.
CHECKS = {
    "CKV_K8S_16": "baseline Privileged Containers: securityContext.privileged unset or false",
    "CKV_K8S_17": "baseline Host Namespaces: hostPID unset or false",
    "CKV_K8S_18": "baseline Host Namespaces: hostIPC unset or false",
    "CKV_K8S_19": "baseline Host Namespaces: hostNetwork unset or false",
    "CKV_K8S_25": "baseline Capabilities: nothing added (stricter: restricted admits "
    "NET_BIND_SERVICE)",
    "CKV_K8S_26": "baseline Host Ports: no hostPort (stricter: baseline admits 0)",
    "CKV_K8S_27": "baseline HostPath Volumes: only the docker socket's path",
    "CKV_K8S_31": "baseline and restricted Seccomp: RuntimeDefault (stricter: restricted "
    "admits Localhost)",
    "CKV_K8S_20": "restricted Privilege Escalation: allowPrivilegeEscalation false",
    "CKV_K8S_23": "restricted Running as Non-root: runAsNonRoot true, or a runAsUser above 0",
    "CKV_K8S_37": "restricted Capabilities: drop ALL",
    "CKV_K8S_28": "restricted Capabilities: NET_RAW dropped (ALL includes it)",
}
# Not Pod Security rules: the defaults of rank pods on top of "restricted".
BEYOND_PSS = {
    "CKV_K8S_22": "readOnlyRootFilesystem true",
    "CKV_K8S_38": "automountServiceAccountToken false",
}
# As the standard lists them, not taken from the operator (shufflenet_operator.pod_security):
# the judge stays independent of what it judges.
VOLUME_TYPES = (
    "configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected, secret"
)
RESTRICTED_VOLUMES = set(VOLUME_TYPES.split(", "))
# Rules checkov has no check for, checked by beyond_checkov().
NOT_IN_CHECKOV = {
    "baseline HostProcess": "securityContext.windowsOptions.hostProcess",
    "baseline HostPath Volumes": "any hostPath (CKV_K8S_27 sees only the docker socket)",
    "baseline AppArmor": "securityContext.appArmorProfile (its older annotation is not read)",
    "baseline SELinux": "securityContext.seLinuxOptions",
    "baseline /proc Mount Type": "securityContext.procMount",
    "baseline Sysctls": "securityContext.sysctls",
    "restricted Volume Types": f"only {VOLUME_TYPES}",
    "restricted Running as Non-root user": "runAsUser 0 (CKV_K8S_23 lets runAsNonRoot hide it)",
}
# Fields baseline restricts that the operator and the chart never set: any value fails.
UNSET_FIELDS = ("windowsOptions", "seLinuxOptions", "procMount", "sysctls", "appArmorProfile")


@dataclass
class Report:
    """What one check_restricted() found."""

    checkov_version: str
    objects: int  # what checkov read
    workloads: int  # of them, objects with a pod spec
    passed: int  # checks passed
    findings: list[str]  # "Kind.namespace.name: what", sorted

    def __str__(self) -> str:
        return (
            f"checkov {self.checkov_version}: {self.objects} objects ({self.workloads} with "
            f"pods), {self.passed} checks passed, {len(self.findings)} findings"
        )


def checkov() -> str:
    """$CHECKOV, else the binary scripts/install-checkov.sh caches."""
    if os.environ.get("CHECKOV"):
        return os.environ["CHECKOV"]
    match = re.search(r"^VERSION=(\S+)$", INSTALLER.read_text(), re.MULTILINE)
    assert match, INSTALLER
    cache = Path(os.environ.get("SHUFFLENET_CACHE", Path.home() / ".cache" / "shufflenet-k8s"))
    path = cache / f"checkov-{match[1]}" / "bin" / "checkov"
    if not path.exists():
        pytest.fail(f"checkov not found ({path}): run `make test-deps`")
    return str(path)


def resource_id(obj: dict[str, Any]) -> str:
    """How checkov names an object: Kind.namespace.name."""
    meta = obj["metadata"]
    return f"{obj['kind']}.{meta.get('namespace') or 'default'}.{meta['name']}"


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a Pod or of a workload's template (None for other kinds)."""
    if obj["kind"] == "Pod":
        return obj["spec"]
    template = (obj.get("spec") or {}).get("template")
    return template["spec"] if isinstance(template, dict) else None


def beyond_checkov(spec: dict[str, Any]) -> list[str]:
    """The rules of NOT_IN_CHECKOV that a pod spec breaks."""
    found = [
        f"volume {v['name']}: {kind}"
        for v in spec.get("volumes") or []
        for kind in v
        if kind != "name" and kind not in RESTRICTED_VOLUMES
    ]
    contexts = {"pod": spec.get("securityContext") or {}}
    for c in (spec.get("initContainers") or []) + spec["containers"]:
        contexts[f"container {c['name']}"] = c.get("securityContext") or {}
    for where, context in contexts.items():
        if context.get("runAsUser") == 0:
            found.append(f"{where}: runAsUser 0")
        found += [f"{where}: {field} set" for field in UNSET_FIELDS if context.get(field)]
    return found


def _run_checkov(folder: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [
            checkov(),
            "--directory", str(folder),
            "--framework", "kubernetes",
            "--check", ",".join([*CHECKS, *BEYOND_PSS]),
            "--output", "json",
            "--compact",
            # Offline: no guidelines or custom policies from the vendor's platform.
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    # Exit 1 means findings; anything else, or no report, is checkov failing.
    assert proc.returncode in (0, 1) and proc.stdout.startswith("{"), proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def check_restricted(
    objects: list[dict[str, Any]], folder: Path, allowed: dict[str, set[str]] | None = None
) -> Report:
    """`objects` (manifests as dicts, unique by Kind.namespace.name) written to `folder`
    (checkov reads all of it: a folder of their own) and judged by one checkov run plus
    beyond_checkov(); `allowed` maps an object's resource_id to the checks it may fail, each
    for a reason its caller gives."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, obj in enumerate(objects):
        (folder / f"{i:03d}.yaml").write_text(yaml.safe_dump(obj))
    report = _run_checkov(folder)
    summary, results = report["summary"], report["results"]
    assert summary["parsing_errors"] == 0, summary
    # Every workload was judged: checkov skips what it cannot read without a word.
    judged = {r["resource"] for r in results["passed_checks"] + results["failed_checks"]}
    workloads = {resource_id(o) for o in objects if pod_spec(o) is not None}
    assert workloads <= judged, sorted(workloads - judged)

    rules = {**CHECKS, **BEYOND_PSS}
    findings = [
        f"{r['resource']}: {r['check_id']} {rules[r['check_id']]}"
        for r in results["failed_checks"]
        if r["check_id"] not in (allowed or {}).get(r["resource"], set())
    ]
    findings += [
        f"{resource_id(o)}: {problem}"
        for o in objects
        if (spec := pod_spec(o)) is not None
        for problem in beyond_checkov(spec)
    ]
    return Report(
        checkov_version=summary["checkov_version"],
        objects=summary["resource_count"],
        workloads=len(workloads),
        passed=summary["passed"],
        findings=sorted(findings),
    )
