"""The Pod Security Standards: which fields of a pod a level refuses (pure functions).

The rules of https://kubernetes.io/docs/concepts/security/pod-security-standards/ as they
stand for the "latest" policy version of Kubernetes v1.30 (what the built-in Pod Security
admission enforces there), read from that page:

- `privileged`: no restriction.
- `baseline`: no HostProcess (Windows), no host namespaces (hostNetwork, hostPID, hostIPC), no
  privileged container, no capability added beyond the default set, no hostPath volume, no
  hostPort, AppArmor only runtime/default or localhost profiles, SELinux only the container
  types (no user, no role), the Default /proc mount, seccomp not Unconfined, sysctls only
  from the safe set.
- `restricted`: baseline, and volumes only of the types listed in `RESTRICTED_VOLUMES`,
  allowPrivilegeEscalation false, runAsNonRoot true (on the pod, or on every container),
  runAsUser not 0, seccomp RuntimeDefault or Localhost (on the pod, or on every container),
  capabilities: drop ALL, add only NET_BIND_SERVICE. The page exempts pods of
  spec.os.name windows from the last three (Linux-only fields), and so does this module.

Every container counts: containers, initContainers and ephemeralContainers. The page's
optional "non-root groups" control is not part of Pod Security admission, nor of this module.

A field holding something other than a value the page allows counts as set, even when it is
not even of the right type (`hostNetwork: "yes"`): the API server would refuse such a pod
anyway, and nothing that might mean "on" gets through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

PRIVILEGED, BASELINE, RESTRICTED = "privileged", "baseline", "restricted"
LEVELS = (PRIVILEGED, BASELINE, RESTRICTED)

# Docker's default capabilities, which the baseline level lets a container add back.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
# Namespaced sysctls isolated from other pods (the kubelet's safe set of v1.29+).
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")


@dataclass(frozen=True)
class Violation:
    """A field of the pod a level refuses: its path (`spec.hostNetwork`,
    `spec.containers[trainer].securityContext.privileged`, `spec.volumes[data].hostPath`)
    and why, in a few words."""

    path: str
    reason: str


def violations(pod: Mapping[str, Any], level: str) -> list[Violation]:
    """What `pod` (a manifest in the API's camelCase form) does that `level` refuses, one
    violation per field, in the page's order of the rules."""
    if level not in LEVELS:
        raise ValueError(f"unknown Pod Security level {level!r}: one of {', '.join(LEVELS)}")
    rules = {
        PRIVILEGED: (),
        BASELINE: BASELINE_RULES,
        RESTRICTED: BASELINE_RULES + RESTRICTED_RULES,
    }
    view = _Pod(pod)
    found: dict[str, Violation] = {}
    for rule in rules[level]:
        for v in rule(view):
            found.setdefault(v.path, v)  # a field refused by both levels counts once
    return list(found.values())


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _is_set(value: Any) -> bool:
    """Anything but unset (None) or false."""
    return value is not None and value is not False


def _one_of(value: Any, allowed: frozenset[str]) -> bool:
    return isinstance(value, str) and value in allowed


class _Pod:
    """The parts of a pod the rules read, tolerant of any shape."""

    def __init__(self, pod: Mapping[str, Any]) -> None:
        self.metadata = _mapping(pod.get("metadata"))
        self.spec = _mapping(pod.get("spec"))
        self.context = _mapping(self.spec.get("securityContext"))
        self.linux = _mapping(self.spec.get("os")).get("name") != "windows"
        # (path, container, its securityContext) of every container.
        self.containers: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = []
        for kind in CONTAINER_LISTS:
            for i, c in enumerate(_items(self.spec.get(kind))):
                c = _mapping(c)
                name = c.get("name")
                key = name if isinstance(name, str) and name else str(i)
                self.containers.append(
                    (f"spec.{kind}[{key}]", c, _mapping(c.get("securityContext")))
                )

    def contexts(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """(path, securityContext) of the pod, then of each container."""
        yield "spec.securityContext", self.context
        for path, _, context in self.containers:
            yield f"{path}.securityContext", context

    def volumes(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        for i, v in enumerate(_items(self.spec.get("volumes"))):
            v = _mapping(v)
            name = v.get("name")
            yield f"spec.volumes[{name if isinstance(name, str) and name else i}]", v


Rule = Callable[[_Pod], Iterator[Violation]]

# --- baseline ------------------------------------------------------------------------------


def _host_process(pod: _Pod) -> Iterator[Violation]:
    for path, context in pod.contexts():
        if _is_set(_mapping(context.get("windowsOptions")).get("hostProcess")):
            yield Violation(f"{path}.windowsOptions.hostProcess", "HostProcess is not allowed")


def _host_namespaces(pod: _Pod) -> Iterator[Violation]:
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if _is_set(pod.spec.get(field)):
            yield Violation(f"spec.{field}", "host namespaces are not allowed")


def _privileged(pod: _Pod) -> Iterator[Violation]:
    for path, _, context in pod.containers:
        if _is_set(context.get("privileged")):
            yield Violation(
                f"{path}.securityContext.privileged", "privileged containers are not allowed"
            )


def _added_capabilities(pod: _Pod, allowed: frozenset[str]) -> Iterator[Violation]:
    for path, _, context in pod.containers:
        added = _items(_mapping(context.get("capabilities")).get("add"))
        extra = [str(cap) for cap in added if not _one_of(cap, allowed)]
        if extra:
            yield Violation(
                f"{path}.securityContext.capabilities.add",
                f"adding capabilities {', '.join(extra)} is not allowed",
            )


def _capabilities(pod: _Pod) -> Iterator[Violation]:
    return _added_capabilities(pod, BASELINE_CAPABILITIES)


def _host_path(pod: _Pod) -> Iterator[Violation]:
    for path, volume in pod.volumes():
        if _is_set(volume.get("hostPath")):
            yield Violation(f"{path}.hostPath", "hostPath volumes are not allowed")


def _host_ports(pod: _Pod) -> Iterator[Violation]:
    for path, container, _ in pod.containers:
        for i, port in enumerate(_items(container.get("ports"))):
            port = _mapping(port)
            if port.get("hostPort") not in (None, 0):
                name = port.get("name") or i
                yield Violation(f"{path}.ports[{name}].hostPort", "hostPorts are not allowed")


def _app_armor(pod: _Pod) -> Iterator[Violation]:
    for key, value in _mapping(pod.metadata.get("annotations")).items():
        if str(key).startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or str(value).startswith("localhost/")
        ):
            yield Violation(
                f"metadata.annotations[{key}]", f"AppArmor profile {value!r} is not allowed"
            )
    yield from _profile_types(pod, "appArmorProfile", APPARMOR_TYPES, "AppArmor")


def _profile_types(
    pod: _Pod, field: str, allowed: frozenset[str], what: str
) -> Iterator[Violation]:
    """A profile (seccompProfile, appArmorProfile) of the pod or a container of a type that
    is not allowed."""
    for path, context in pod.contexts():
        kind = _mapping(context.get(field)).get("type")
        if kind is not None and not _one_of(kind, allowed):
            yield Violation(f"{path}.{field}.type", f"{what} profile {kind!r} is not allowed")


def _se_linux(pod: _Pod) -> Iterator[Violation]:
    for path, context in pod.contexts():
        options = _mapping(context.get("seLinuxOptions"))
        kind = options.get("type")
        if kind is not None and not _one_of(kind, SELINUX_TYPES):
            yield Violation(f"{path}.seLinuxOptions.type", f"SELinux type {kind!r} is not allowed")
        for field in ("user", "role"):
            if options.get(field) not in (None, ""):
                yield Violation(
                    f"{path}.seLinuxOptions.{field}", f"setting the SELinux {field} is not allowed"
                )


def _proc_mount(pod: _Pod) -> Iterator[Violation]:
    for path, _, context in pod.containers:
        if context.get("procMount") not in (None, "Default"):
            yield Violation(
                f"{path}.securityContext.procMount",
                "a /proc mount other than Default is not allowed",
            )


def _seccomp(pod: _Pod) -> Iterator[Violation]:
    return _profile_types(pod, "seccompProfile", SECCOMP_TYPES, "seccomp")


def _sysctls(pod: _Pod) -> Iterator[Violation]:
    for i, sysctl in enumerate(_items(pod.context.get("sysctls"))):
        name = _mapping(sysctl).get("name")
        if not _one_of(name, SAFE_SYSCTLS):
            yield Violation(
                f"spec.securityContext.sysctls[{name or i}]", f"sysctl {name!r} is not safe"
            )


BASELINE_RULES: tuple[Rule, ...] = (
    _host_process,
    _host_namespaces,
    _privileged,
    _capabilities,
    _host_path,
    _host_ports,
    _app_armor,
    _se_linux,
    _proc_mount,
    _seccomp,
    _sysctls,
)

# --- restricted ----------------------------------------------------------------------------


def _volume_types(pod: _Pod) -> Iterator[Violation]:
    for path, volume in pod.volumes():
        # A volume of no source is an emptyDir (the API server's default).
        for source in sorted(set(volume) - RESTRICTED_VOLUMES - {"name"}):
            yield Violation(f"{path}.{source}", f"{source} volumes are not allowed")


def _privilege_escalation(pod: _Pod) -> Iterator[Violation]:
    if not pod.linux:
        return
    for path, _, context in pod.containers:
        if context.get("allowPrivilegeEscalation") is not False:
            yield Violation(
                f"{path}.securityContext.allowPrivilegeEscalation",
                "allowPrivilegeEscalation must be false",
            )


def _run_as_non_root(pod: _Pod) -> Iterator[Violation]:
    on_pod = pod.context.get("runAsNonRoot")
    if on_pod is not None and on_pod is not True:
        yield Violation("spec.securityContext.runAsNonRoot", "runAsNonRoot must be true")
    for path, _, context in pod.containers:
        value = context.get("runAsNonRoot")
        # Unset in a container: the pod's value holds.
        if value is not True and (value is not None or on_pod is not True):
            yield Violation(
                f"{path}.securityContext.runAsNonRoot",
                "runAsNonRoot must be true (on the pod or the container)",
            )


def _run_as_user(pod: _Pod) -> Iterator[Violation]:
    for path, context in pod.contexts():
        uid = context.get("runAsUser")
        if uid is not None and (uid == 0 or not isinstance(uid, int) or isinstance(uid, bool)):
            yield Violation(f"{path}.runAsUser", "running as uid 0 (root) is not allowed")


def _seccomp_required(pod: _Pod) -> Iterator[Violation]:
    if not pod.linux:
        return
    on_pod = _mapping(pod.context.get("seccompProfile")).get("type")
    for path, _, context in pod.containers:
        # Set to another type: the baseline rule names it already.
        if on_pod is None and _mapping(context.get("seccompProfile")).get("type") is None:
            yield Violation(
                f"{path}.securityContext.seccompProfile.type",
                "a seccomp profile (RuntimeDefault or Localhost) must be set on the pod or "
                "the container",
            )


def _capabilities_dropped(pod: _Pod) -> Iterator[Violation]:
    if not pod.linux:
        return
    for path, _, context in pod.containers:
        if "ALL" not in _items(_mapping(context.get("capabilities")).get("drop")):
            yield Violation(
                f"{path}.securityContext.capabilities.drop", "capabilities must drop ALL"
            )
    yield from _added_capabilities(pod, RESTRICTED_CAPABILITIES)


RESTRICTED_RULES: tuple[Rule, ...] = (
    _volume_types,
    _privilege_escalation,
    _run_as_non_root,
    _run_as_user,
    _seccomp_required,
    _capabilities_dropped,
)
