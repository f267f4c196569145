"""The Pod Security Standards checks (pod_security.violations): each rule at each level."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.jobs import TRAINER_IMAGES, job_manifest

from shufflenet_contract import job as jobs
from shufflenet_operator import pod_security, render, trainer_images

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "manifests" / "examples").glob("*.yaml"))
LEVELS = pod_security.LEVELS


def restricted_pod() -> dict[str, Any]:
    """A pod that passes every level."""
    return {
        "metadata": {"name": "p"},
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "trainer",
                    "image": "trainer:1",
                    "ports": [{"name": "metrics", "containerPort": 9400}],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


Patch = Callable[[dict[str, Any]], None]


def spec(**fields: Any) -> Patch:
    return lambda pod: pod["spec"].update(fields)


def pod_context(**fields: Any) -> Patch:
    return lambda pod: pod["spec"]["securityContext"].update(fields)


def container_context(**fields: Any) -> Patch:
    return lambda pod: pod["spec"]["containers"][0]["securityContext"].update(fields)


def volume(**source: Any) -> Patch:
    return lambda pod: pod["spec"]["volumes"].append({"name": "data", **source})


def annotation(key: str, value: str) -> Patch:
    return lambda pod: pod["metadata"].setdefault("annotations", {}).update({key: value})


def unset(*path: str) -> Patch:
    def patch(pod: dict[str, Any]) -> None:
        node = pod["spec"]
        for key in path[:-1]:
            node = node[key] if isinstance(node, dict) else node[int(key)]
        del node[path[-1]]

    return patch


def add_container(kind: str, name: str, context: dict[str, Any] | None) -> Patch:
    container: dict[str, Any] = {"name": name, "image": "busybox"}
    if context is not None:
        container["securityContext"] = context

    return lambda pod: pod["spec"].setdefault(kind, []).append(copy.deepcopy(container))


SAFE_CONTEXT = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
C = "spec.containers[trainer].securityContext"
APPARMOR = "container.apparmor.security.beta.kubernetes.io/trainer"

# (id, patch, the field refused, the lowest level that refuses it)
REFUSED: list[tuple[str, Patch, str, str]] = [
    # baseline (and so restricted)
    (
        "hostProcess-pod",
        pod_context(windowsOptions={"hostProcess": True}),
        "spec.securityContext.windowsOptions.hostProcess",
        "baseline",
    ),
    (
        "hostProcess-container",
        container_context(windowsOptions={"hostProcess": True}),
        f"{C}.windowsOptions.hostProcess",
        "baseline",
    ),
    ("hostNetwork", spec(hostNetwork=True), "spec.hostNetwork", "baseline"),
    ("hostPID", spec(hostPID=True), "spec.hostPID", "baseline"),
    ("hostIPC", spec(hostIPC=True), "spec.hostIPC", "baseline"),
    ("hostNetwork-not-a-bool", spec(hostNetwork="yes"), "spec.hostNetwork", "baseline"),
    ("privileged", container_context(privileged=True), f"{C}.privileged", "baseline"),
    (
        "privileged-init",
        add_container("initContainers", "init", {**SAFE_CONTEXT, "privileged": True}),
        "spec.initContainers[init].securityContext.privileged",
        "baseline",
    ),
    (
        "privileged-ephemeral",
        add_container("ephemeralContainers", "debug", {**SAFE_CONTEXT, "privileged": True}),
        "spec.ephemeralContainers[debug].securityContext.privileged",
        "baseline",
    ),
    (
        "capability-SYS_ADMIN",
        container_context(capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
        f"{C}.capabilities.add",
        "baseline",
    ),
    ("hostPath", volume(hostPath={"path": "/"}), "spec.volumes[data].hostPath", "baseline"),
    (
        "hostPort",
        lambda pod: pod["spec"]["containers"][0]["ports"][0].update(hostPort=9400),
        "spec.containers[trainer].ports[metrics].hostPort",
        "baseline",
    ),
    (
        "apparmor-annotation-unconfined",
        annotation(APPARMOR, "unconfined"),
        f"metadata.annotations[{APPARMOR}]",
        "baseline",
    ),
    (
        "apparmor-field-unconfined",
        pod_context(appArmorProfile={"type": "Unconfined"}),
        "spec.securityContext.appArmorProfile.type",
        "baseline",
    ),
    (
        "selinux-type",
        pod_context(seLinuxOptions={"type": "spc_t"}),
        "spec.securityContext.seLinuxOptions.type",
        "baseline",
    ),
    (
        "selinux-user",
        container_context(seLinuxOptions={"user": "system_u"}),
        f"{C}.seLinuxOptions.user",
        "baseline",
    ),
    (
        "selinux-role",
        container_context(seLinuxOptions={"role": "system_r"}),
        f"{C}.seLinuxOptions.role",
        "baseline",
    ),
    ("procMount", container_context(procMount="Unmasked"), f"{C}.procMount", "baseline"),
    (
        "seccomp-pod-unconfined",
        pod_context(seccompProfile={"type": "Unconfined"}),
        "spec.securityContext.seccompProfile.type",
        "baseline",
    ),
    (
        "seccomp-container-unconfined",
        container_context(seccompProfile={"type": "Unconfined"}),
        f"{C}.seccompProfile.type",
        "baseline",
    ),
    (
        "sysctl-unsafe",
        pod_context(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
        "spec.securityContext.sysctls[kernel.msgmax]",
        "baseline",
    ),
    # restricted only
    (
        "volume-nfs",
        volume(nfs={"server": "n", "path": "/"}),
        "spec.volumes[data].nfs",
        "restricted",
    ),
    (
        "allowPrivilegeEscalation-unset",
        unset("containers", "0", "securityContext", "allowPrivilegeEscalation"),
        f"{C}.allowPrivilegeEscalation",
        "restricted",
    ),
    (
        "allowPrivilegeEscalation-true",
        container_context(allowPrivilegeEscalation=True),
        f"{C}.allowPrivilegeEscalation",
        "restricted",
    ),
    (
        "runAsNonRoot-false-on-pod",
        pod_context(runAsNonRoot=False),
        "spec.securityContext.runAsNonRoot",
        "restricted",
    ),
    (
        "runAsNonRoot-unset",
        unset("securityContext", "runAsNonRoot"),
        f"{C}.runAsNonRoot",
        "restricted",
    ),
    (
        "runAsNonRoot-false-on-container",
        container_context(runAsNonRoot=False),
        f"{C}.runAsNonRoot",
        "restricted",
    ),
    ("runAsUser-0-pod", pod_context(runAsUser=0), "spec.securityContext.runAsUser", "restricted"),
    ("runAsUser-0-container", container_context(runAsUser=0), f"{C}.runAsUser", "restricted"),
    (
        "seccomp-unset",
        unset("securityContext", "seccompProfile"),
        f"{C}.seccompProfile.type",
        "restricted",
    ),
    (
        "capabilities-not-dropped",
        container_context(capabilities={}),
        f"{C}.capabilities.drop",
        "restricted",
    ),
    (
        "capability-CHOWN",
        container_context(capabilities={"drop": ["ALL"], "add": ["CHOWN"]}),
        f"{C}.capabilities.add",
        "restricted",
    ),
    (
        "sidecar-without-context",
        add_container("containers", "sidecar", None),
        "spec.containers[sidecar].securityContext.allowPrivilegeEscalation",
        "restricted",
    ),
]

ALLOWED: list[tuple[str, Patch]] = [
    (
        "NET_BIND_SERVICE",
        container_context(capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}),
    ),
    ("seccomp-localhost", pod_context(seccompProfile={"type": "Localhost"})),
    (
        "safe-sysctls",
        pod_context(
            sysctls=[
                {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"},
                {"name": "net.ipv4.tcp_keepalive_time", "value": "60"},
            ]
        ),
    ),
    ("apparmor-runtime-default", annotation(APPARMOR, "runtime/default")),
    ("apparmor-localhost", annotation(APPARMOR, "localhost/trainer")),
    ("apparmor-field", container_context(appArmorProfile={"type": "RuntimeDefault"})),
    ("selinux-container_t", container_context(seLinuxOptions={"type": "container_t", "user": ""})),
    ("selinux-level", pod_context(seLinuxOptions={"level": "s0:c123,c456"})),
    ("procMount-Default", container_context(procMount="Default")),
    ("hostPort-0", lambda pod: pod["spec"]["containers"][0]["ports"][0].update(hostPort=0)),
    ("hostNetwork-false", spec(hostNetwork=False, hostPID=False, hostIPC=False)),
    ("privileged-false", container_context(privileged=False)),
    ("runAsUser-1000", pod_context(runAsUser=1000, runAsGroup=1000, supplementalGroups=[1001])),
    (
        "runAsNonRoot-and-seccomp-on-every-container",
        lambda pod: (
            pod["spec"].pop("securityContext"),
            container_context(runAsNonRoot=True, seccompProfile={"type": "RuntimeDefault"})(pod),
        ),
    ),
    (
        "restricted-volume-types",
        lambda pod: pod["spec"]["volumes"].extend(
            [
                {"name": "a", "persistentVolumeClaim": {"claimName": "x"}},
                {"name": "b", "configMap": {"name": "x"}},
                {"name": "c", "secret": {"secretName": "x"}},
                {"name": "d", "projected": {"sources": []}},
                {"name": "e", "downwardAPI": {"items": []}},
                {"name": "f", "csi": {"driver": "x"}},
                {"name": "g", "ephemeral": {"volumeClaimTemplate": {}}},
                {"name": "h"},  # no source: the API server makes it an emptyDir
            ]
        ),
    ),
    (
        "windows-pods-are-exempt-from-linux-only-fields",
        lambda pod: (
            pod["spec"].update(os={"name": "windows"}),
            unset("securityContext", "seccompProfile")(pod),
            pod["spec"]["containers"][0].pop("securityContext"),
        ),
    ),
]


def paths(pod: dict[str, Any], level: str) -> list[str]:
    return [v.path for v in pod_security.violations(pod, level)]


def test_the_restricted_pod_passes_every_level() -> None:
    for level in LEVELS:
        assert pod_security.violations(restricted_pod(), level) == []


@pytest.mark.parametrize(
    ("patch", "path", "lowest"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_each_rule_refuses_from_its_level_on(patch: Patch, path: str, lowest: str) -> None:
    pod = restricted_pod()
    patch(pod)
    assert paths(pod, "privileged") == []
    assert (path in paths(pod, "baseline")) == (lowest == "baseline"), paths(pod, "baseline")
    refused = pod_security.violations(pod, "restricted")
    assert path in [v.path for v in refused]
    assert all(v.reason for v in refused)


@pytest.mark.parametrize("patch", [c[1] for c in ALLOWED], ids=[c[0] for c in ALLOWED])
def test_allowed_values_pass_restricted(patch: Patch) -> None:
    pod = restricted_pod()
    patch(pod)
    assert pod_security.violations(pod, "restricted") == []


def test_a_field_refused_by_both_levels_is_named_once() -> None:
    pod = restricted_pod()
    volume(hostPath={"path": "/"})(pod)
    container_context(capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]})(pod)
    found = paths(pod, "restricted")
    assert found == [
        "spec.containers[trainer].securityContext.capabilities.add",
        "spec.volumes[data].hostPath",
    ]
    (reason,) = [v.reason for v in pod_security.violations(pod, "baseline") if "capab" in v.path]
    assert "SYS_ADMIN" in reason


def test_baseline_allows_the_default_capabilities_and_any_volume_but_hostpath() -> None:
    pod = restricted_pod()
    container_context(capabilities={"add": ["CHOWN", "NET_RAW", "KILL"]})(pod)
    volume(nfs={"server": "n", "path": "/"})(pod)
    (refused,) = pod_security.violations(pod, "baseline")
    assert refused.path == f"{C}.capabilities.add" and "NET_RAW" in refused.reason
    assert "CHOWN" not in refused.reason


@pytest.mark.parametrize(
    "pod",
    [
        {},
        {"spec": None},
        {"spec": {"securityContext": "x", "containers": "y", "volumes": [None, 3]}},
        {"spec": {"containers": [{"securityContext": {"seccompProfile": {"type": {}}}}]}},
        {"spec": {"containers": [{"securityContext": {"capabilities": {"add": [{}], "drop": 1}}}]}},
        {
            "metadata": {"annotations": {APPARMOR: None}},
            "spec": {"securityContext": {"sysctls": [1]}},
        },
    ],
)
def test_any_shape_is_checked_without_raising(pod: dict[str, Any]) -> None:
    for level in LEVELS:
        pod_security.violations(pod, level)


def test_an_unknown_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown Pod Security level 'strict'"):
        pod_security.violations(restricted_pod(), "strict")


# --- the operator's own rank pods -------------------------------------------------------------


@pytest.mark.parametrize(
    "devices",
    [
        {"type": "cpu", "count": 2},
        {"type": "gpu", "count": 2},
        {"type": "npu", "count": 8},
        {"type": "npu", "count": 16, "perPod": 8},
    ],
    ids=["cpu", "gpu", "npu", "npu-perPod"],
)
def test_rank_pods_as_rendered_pass_restricted(devices: dict[str, Any]) -> None:
    job = jobs.validate_job(
        job_manifest(
            metadata={"namespace": "ns", "uid": "job-uid"},
            devices=devices,
            training={"batchSize": 64},
            data={"volume": {"persistentVolumeClaim": {"claimName": "d"}}},
            checkpoint={"volume": {"persistentVolumeClaim": {"claimName": "c"}}},
        )
    )
    for rank in range(jobs.pod_count(job)):
        for group in (None, 1001):
            pod = render.render_pod(job, rank, restarts=1, device_group=group)
            assert pod_security.violations(pod, "restricted") == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_the_shipped_examples_pass_restricted(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    obj["metadata"] = {**obj["metadata"], "namespace": "ns", "uid": "job-uid"}
    # They name no image: the operator's default for their device type (the chart's).
    job = trainer_images.with_default(jobs.validate_job(obj), TRAINER_IMAGES)
    for rank in range(jobs.pod_count(job)):
        assert pod_security.violations(render.render_pod(job, rank), "restricted") == []
