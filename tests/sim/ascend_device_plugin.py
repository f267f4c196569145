"""SIMULATED Ascend device plugin that speaks the kubelet's real device-plugin API.

Only the hardware is fake: N chips that are always there and Healthy, with made-up RoCE
addresses. Everything the kubelet sees is the real protocol, so a real kubelet's device
manager advertises the chips as node capacity, picks chips for admitted pods, calls Allocate
and hands the returned env to the container runtime; the plugin then annotates the pod the way
Huawei's plugin does, which is what the operator waits for before it writes the rank table.

Run it next to a kubelet:

    python tests/sim/ascend_device_plugin.py --kubelet-root /var/lib/kubelet \\
        --kubeconfig kubeconfig --node-name node-1 --chips 8

or from a test: `AscendDevicePlugin(PluginConfig(...))`, `start()`, `wait_registered()`,
`stop()` (also a context manager).

What it does, and where each rule comes from
--------------------------------------------
Kubernetes 1.20.2 (`staging/src/k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/api.proto`,
`constants.go`, `pkg/apis/podresources/v1alpha1/api.proto`, `pkg/kubelet/cm/devicemanager/
manager.go`, `endpoint.go`):

* gRPC over unix sockets. Services `v1beta1.Registration` (the kubelet's, at
  `<plugin dir>/kubelet.sock`) and `v1beta1.DevicePlugin` (ours, at `<plugin dir>/<name>.sock`).
  The messages are declared below in our own compact notation, with the field names and numbers
  of the 1.20 protos (1.20 spells `devicesIDs`; later releases renamed it `devices_ids`, same
  number, same bytes). No generated code: classes are built at import time from descriptors.
* Register: version `v1beta1` (the only supported one), endpoint = our socket's file name
  (the kubelet joins it to its plugin dir), resource name, options. The kubelet answers at once
  and dials the endpoint afterwards (10 s, blocking), so our server serves before we register.
* ListAndWatch streams the full device list at once and again on every change; devices are
  `{ID, health}` with health `Healthy` or `Unhealthy`.
* On start the kubelet deletes every file in its plugin dir except its checkpoint ("Device
  plugins can monitor this and use it as a signal to re-register"), then listens on a new
  kubelet.sock. We poll for both (our socket gone, kubelet.sock replaced), then serve again on
  a new socket and register again.
* Right after Allocate returns, the kubelet records the allocation in its pod devices, which
  the pod-resources API (`<kubelet root>/pod-resources/kubelet.sock`,
  `v1alpha1.PodResourcesLister/List`) reports by pod name and namespace: that is how we learn
  which pod got the chips (Allocate itself names no pod).

Huawei's plugin (Ascend/mind-cluster `component/ascend-device-plugin/pkg/server/plugin.go`,
`manager.go`, `pkg/common/common.go`, `constants.go`; `component/ascend-common/api/
default_name.go`):

* Chips are named `Ascend910-<physical id>` for `huawei.com/Ascend910`, and `npu-<id>` for
  `huawei.com/npu` (`AscendMinuxPrefix`); the annotation key is
  `ascend.kubectl.kubernetes.io/ascend-910-configuration` or `...-npu-configuration`.
* Allocate (its ascend-docker mode: env only, no /dev/davinci* device specs, which do not
  exist here) sets `ASCEND_VISIBLE_DEVICES` = the physical ids joined by commas and
  `ASCEND_RUNTIME_OPTIONS` = "" (`VIRTUAL` only for virtual NPUs).
* GetDevicePluginOptions returns empty options: no PreStartContainer, no preferred
  allocation (Huawei's GetPreferredAllocation answers "not support"). Ours answers both
  anyway, and `PluginConfig` can advertise them.
* After allocation it patches the pod with the configuration JSON
  `{"pod_name", "server_id", "devices": [{"device_id", "device_ip"}]}` (devices sorted by id;
  `server_id` is the node's InternalIP, `GetNodeServerID`), plus `huawei.com/kltDev` (what the
  kubelet asked for) and `huawei.com/AscendReal` (what it mounted). We also write `host_ip`
  (the node's IP; our rank-table code keys whole-node pods by it, see
  shufflenet_contract.ranktable) and `huawei.com/Ascend910` = the chip names (on a real
  cluster Volcano writes that one), as tests/sim/node_agent.py does.

Addresses: chip k gets `<device-ip-base>.(101 + k)`, default 127.100.0.x, never connected to.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

log = logging.getLogger("ascend_device_plugin")

# --- the wire format ---------------------------------------------------------------------

API_VERSION = "v1beta1"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
KUBELET_SOCKET = "kubelet.sock"
# Where the kubelet keeps its plugin sockets and its pod-resources socket, under --root-dir.
DEVICE_PLUGINS_DIR = "device-plugins"
POD_RESOURCES_SOCKET = "pod-resources/kubelet.sock"

# Our notation: one message per line (a trailing backslash continues it), fields
# `[repeated] type name = number` separated by ';'. Names and numbers as in Kubernetes 1.20's
# v1beta1 device-plugin API.
_DEVICEPLUGIN_MESSAGES = """
DevicePluginOptions: bool pre_start_required = 1; bool get_preferred_allocation_available = 2
RegisterRequest: string version = 1; string endpoint = 2; string resource_name = 3; \
DevicePluginOptions options = 4
Empty:
ListAndWatchResponse: repeated Device devices = 1
TopologyInfo: repeated NUMANode nodes = 1
NUMANode: int64 ID = 1
Device: string ID = 1; string health = 2; TopologyInfo topology = 3
PreStartContainerRequest: repeated string devicesIDs = 1
PreStartContainerResponse:
PreferredAllocationRequest: repeated ContainerPreferredAllocationRequest container_requests = 1
ContainerPreferredAllocationRequest: repeated string available_deviceIDs = 1; \
repeated string must_include_deviceIDs = 2; int32 allocation_size = 3
PreferredAllocationResponse: repeated ContainerPreferredAllocationResponse container_responses = 1
ContainerPreferredAllocationResponse: repeated string deviceIDs = 1
AllocateRequest: repeated ContainerAllocateRequest container_requests = 1
ContainerAllocateRequest: repeated string devicesIDs = 1
AllocateResponse: repeated ContainerAllocateResponse container_responses = 1
ContainerAllocateResponse: map<string,string> envs = 1; repeated Mount mounts = 2; \
repeated DeviceSpec devices = 3; map<string,string> annotations = 4
Mount: string container_path = 1; string host_path = 2; bool read_only = 3
DeviceSpec: string container_path = 1; string host_path = 2; string permissions = 3
"""
# Kubernetes 1.20's v1alpha1 pod-resources API (1.20 also serves v1, which lists the same
# allocations in the same fields plus topology).
_PODRESOURCES_MESSAGES = """
ListPodResourcesRequest:
ListPodResourcesResponse: repeated PodResources pod_resources = 1
PodResources: string name = 1; string namespace = 2; repeated ContainerResources containers = 3
ContainerResources: string name = 1; repeated ContainerDevices devices = 2
ContainerDevices: string resource_name = 1; repeated string device_ids = 2
"""

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _F.TYPE_STRING,
    "bool": _F.TYPE_BOOL,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
}
_FIELD = re.compile(r"^(repeated\s+)?(map<string,string>|\w+)\s+(\w+)\s*=\s*(\d+)$")
# One private pool: the package names `v1beta1`/`v1alpha1` are generic, and the default pool
# would refuse a second, different definition from anything else loaded in the process.
_POOL = descriptor_pool.DescriptorPool()


def _build_messages(filename: str, package: str, spec: str) -> dict[str, type[Message]]:
    """Message classes for the messages of `spec` (our notation above) in `package`."""
    fdp = descriptor_pb2.FileDescriptorProto(name=filename, package=package, syntax="proto3")
    for line in spec.strip().splitlines():
        name, _, body = line.partition(":")
        msg = fdp.message_type.add(name=name.strip())
        for decl in filter(None, (d.strip() for d in body.split(";"))):
            m = _FIELD.match(decl)
            if m is None:
                raise ValueError(f"{name}: cannot read field {decl!r}")
            repeated, ftype, fname, number = m.groups()
            f = msg.field.add(name=fname, number=int(number), label=_F.LABEL_OPTIONAL)
            if repeated:
                f.label = _F.LABEL_REPEATED
            if ftype in _SCALARS:
                f.type = _SCALARS[ftype]
            elif ftype == "map<string,string>":
                # A proto3 map is a repeated nested entry message flagged map_entry.
                entry = msg.nested_type.add(name=fname.title().replace("_", "") + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
                entry.field.add(
                    name="value", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL
                )
                f.label = _F.LABEL_REPEATED
                f.type = _F.TYPE_MESSAGE
                f.type_name = f".{package}.{msg.name}.{entry.name}"
            else:
                f.type = _F.TYPE_MESSAGE
                f.type_name = f".{package}.{ftype}"
    _POOL.Add(fdp)
    return {
        m.name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{package}.{m.name}"))
        for m in fdp.message_type
    }


# Message classes as attributes: `DP.AllocateRequest(...)`, `PR.ListPodResourcesResponse`.
DP: Any = SimpleNamespace(
    **_build_messages("sim_deviceplugin_v1beta1.proto", "v1beta1", _DEVICEPLUGIN_MESSAGES)
)
PR: Any = SimpleNamespace(
    **_build_messages("sim_podresources_v1alpha1.proto", "v1alpha1", _PODRESOURCES_MESSAGES)
)

REGISTRATION_SERVICE = "v1beta1.Registration"
DEVICE_PLUGIN_SERVICE = "v1beta1.DevicePlugin"
POD_RESOURCES_SERVICE = "v1alpha1.PodResourcesLister"


def method_path(service: str, method: str) -> str:
    """The gRPC path of a method, e.g. `/v1beta1.Registration/Register`."""
    return f"/{service}/{method}"


def unary_call(
    channel: grpc.Channel, service: str, method: str, response_cls: type
) -> Callable[..., Any]:
    """A callable for one unary RPC on `channel` (no generated stubs here)."""
    return channel.unary_unary(
        method_path(service, method),
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_cls.FromString,
    )


def unix_target(path: str | os.PathLike[str]) -> str:
    """A gRPC address for a unix socket path (absolute: `unix:///abs/path`)."""
    return "unix://" + os.path.abspath(path)


def _check_socket_path(path: Path) -> None:
    # sun_path holds 108 bytes with the terminating NUL; a longer path fails deep in gRPC with
    # an unhelpful message.
    if len(os.fsencode(path)) > 107:
        raise ValueError(f"unix socket path too long (max 107 bytes): {path}")


# --- pure parts: names, env, annotations --------------------------------------------------

ASCEND_VISIBLE_DEVICES = "ASCEND_VISIBLE_DEVICES"
ASCEND_RUNTIME_OPTIONS = "ASCEND_RUNTIME_OPTIONS"
KLT_DEV_ANNOTATION = "huawei.com/kltDev"
REAL_ALLOC_ANNOTATION = "huawei.com/AscendReal"


@dataclass(frozen=True)
class ResourceKind:
    """How Huawei's plugin names one resource's chips and its configuration annotation."""

    resource: str  # the extended resource, e.g. huawei.com/Ascend910
    chip_prefix: str  # chip k is f"{chip_prefix}{k}"
    config_annotation: str  # the JSON configuration the operator reads

    @property
    def socket_name(self) -> str:
        """Huawei's socket name: the resource without its domain (`Ascend910.sock`)."""
        return self.resource.rsplit("/", 1)[-1] + ".sock"


RESOURCES = {
    k.resource: k
    for k in (
        ResourceKind(
            "huawei.com/Ascend910",
            "Ascend910-",
            "ascend.kubectl.kubernetes.io/ascend-910-configuration",
        ),
        ResourceKind(
            "huawei.com/npu", "npu-", "ascend.kubectl.kubernetes.io/ascend-npu-configuration"
        ),
    )
}


def resource_kind(resource: str) -> ResourceKind:
    """The naming of `resource`; ValueError for a resource Huawei's plugin does not serve."""
    try:
        return RESOURCES[resource]
    except KeyError:
        raise ValueError(f"unsupported resource {resource!r}: one of {sorted(RESOURCES)}") from None


def chip_name(kind: ResourceKind, chip: int) -> str:
    """The device ID the kubelet sees for physical chip `chip`."""
    return f"{kind.chip_prefix}{chip}"


def chip_id(kind: ResourceKind, name: str) -> int:
    """The physical chip id of device ID `name`; ValueError if it is not one of this kind."""
    if not name.startswith(kind.chip_prefix) or not name[len(kind.chip_prefix) :].isdigit():
        raise ValueError(f"not a {kind.resource} device: {name!r}")
    return int(name[len(kind.chip_prefix) :])


def device_ip(base: str, chip: int) -> str:
    """The simulated RoCE address of chip `chip`: `<base>.(101 + chip)`, as node_agent does."""
    return f"{base}.{101 + chip}"


def allocate_envs(chips: Iterable[int]) -> dict[str, str]:
    """The env Huawei's plugin returns for physical chips (ascend-docker mode)."""
    return {
        ASCEND_VISIBLE_DEVICES: ",".join(str(c) for c in sorted(chips)),
        ASCEND_RUNTIME_OPTIONS: "",  # "VIRTUAL" only for virtual NPUs
    }


def configuration(
    pod_name: str, server_id: str, host_ip: str, chips: Iterable[int], device_ip_base: str
) -> str:
    """The configuration annotation's JSON value, devices sorted by chip id."""
    return json.dumps(
        {
            "pod_name": pod_name,
            "server_id": server_id,
            "host_ip": host_ip,
            "devices": [
                {"device_id": str(c), "device_ip": device_ip(device_ip_base, c)}
                for c in sorted(chips)
            ],
        },
        separators=(",", ":"),
    )


def pod_annotations(
    kind: ResourceKind,
    pod_name: str,
    node_ip: str,
    chips: Iterable[int],
    device_ip_base: str,
) -> dict[str, str]:
    """Every annotation the plugin writes on a pod that got `chips` on a node at `node_ip`."""
    ordered = sorted(chips)
    names = ",".join(chip_name(kind, c) for c in ordered)
    return {
        kind.config_annotation: configuration(pod_name, node_ip, node_ip, ordered, device_ip_base),
        kind.resource: names,
        KLT_DEV_ANNOTATION: names,
        REAL_ALLOC_ANNOTATION: names,
    }


def preferred(available: Sequence[str], must_include: Sequence[str], size: int) -> list[str]:
    """A preferred allocation: the required devices, then the rest in listed order."""
    chosen = list(dict.fromkeys(must_include))
    for dev in available:
        if len(chosen) >= size:
            break
        if dev not in chosen:
            chosen.append(dev)
    return chosen[: max(size, len(must_include))]


@dataclass(frozen=True)
class PodAllocation:
    """A pod holding devices of one resource, as the pod-resources API lists it."""

    namespace: str
    name: str
    device_ids: frozenset[str]


def find_pod(response: Message, resource: str, device_ids: Iterable[str]) -> PodAllocation | None:
    """The pod of a ListPodResourcesResponse whose container holds exactly `device_ids`.

    The allocation reported is the pod's, all containers together, for `resource`.
    """
    wanted = frozenset(device_ids)
    for pod in response.pod_resources:
        held: set[str] = set()
        match = False
        for container in pod.containers:
            for dev in container.devices:
                if dev.resource_name != resource:
                    continue
                held.update(dev.device_ids)
                match = match or frozenset(dev.device_ids) == wanted
        if match:
            return PodAllocation(pod.namespace, pod.name, frozenset(held))
    return None


# --- the API server side ------------------------------------------------------------------


@dataclass(frozen=True)
class PodInfo:
    uid: str
    node_name: str
    annotations: dict[str, str] = field(default_factory=dict)


class PodAPI(Protocol):
    """What the plugin needs from the API server."""

    def get_pod(self, namespace: str, name: str) -> PodInfo: ...

    def node_ip(self, node_name: str) -> str: ...

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None: ...


class KubePodAPI:
    """PodAPI through the API server with a kubeconfig (the `kubernetes` client)."""

    def __init__(self, kubeconfig: str) -> None:
        # Imported here: the gRPC side and its tests do not need the client.
        from kubernetes import client, config

        self._core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))

    def get_pod(self, namespace: str, name: str) -> PodInfo:
        pod = self._core.read_namespaced_pod(name, namespace)
        return PodInfo(
            pod.metadata.uid, pod.spec.node_name or "", dict(pod.metadata.annotations or {})
        )

    def node_ip(self, node_name: str) -> str:
        # Huawei's GetNodeServerID: the first InternalIP that parses.
        node = self._core.read_node(node_name)
        for a in node.status.addresses or []:
            if a.type == "InternalIP":
                return str(a.address)
        return ""

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self._core.patch_namespaced_pod(
            name,
            namespace,
            {"metadata": {"annotations": annotations}},
            _content_type="application/merge-patch+json",
        )


# --- the plugin ---------------------------------------------------------------------------


@dataclass
class PluginConfig:
    resource: str = "huawei.com/Ascend910"
    chips: int = 8
    device_ip_base: str = "127.100.0"
    kubelet_root: str = "/var/lib/kubelet"
    plugin_dir: str | None = None  # default <kubelet_root>/device-plugins
    node_name: str | None = None  # default: the node the pod is bound to
    kubeconfig: str | None = None  # None: no pod annotations
    socket_name: str | None = None  # default Huawei's, e.g. Ascend910.sock
    pre_start_required: bool = False  # Huawei's plugin asks for neither
    preferred_allocation: bool = False
    poll_interval_s: float = 0.5  # how often to look for a restarted kubelet
    annotate_timeout_s: float = 10.0  # how long to wait for the allocation in pod-resources


class AscendDevicePlugin:
    """The device-plugin server, its registration with the kubelet and its pod annotations.

    `start()` serves and registers in the background (now, or when kubelet.sock appears, and
    again after every kubelet restart); `wait_registered()` waits for the next registration;
    `stop()` stops and removes the socket. `set_health()` marks a chip (un)healthy, which the
    open ListAndWatch streams report. `pod_api` replaces the API server (tests).
    """

    def __init__(self, config: PluginConfig, pod_api: PodAPI | None = None) -> None:
        if config.chips < 0:
            raise ValueError("chips must be >= 0")
        self.config = config
        self.kind = resource_kind(config.resource)
        root = Path(config.kubelet_root)
        self.plugin_dir = Path(config.plugin_dir or root / DEVICE_PLUGINS_DIR)
        self.socket_path = self.plugin_dir / (config.socket_name or self.kind.socket_name)
        self.kubelet_socket = self.plugin_dir / KUBELET_SOCKET
        self.pod_resources_socket = root / POD_RESOURCES_SOCKET
        _check_socket_path(self.socket_path)
        self._pod_api = pod_api
        if pod_api is None and config.kubeconfig:
            self._pod_api = KubePodAPI(config.kubeconfig)

        self._health = dict.fromkeys(range(config.chips), HEALTHY)
        self._cond = threading.Condition()
        self._version = 0  # bumped on every health change; ListAndWatch resends
        self._stopped = threading.Event()
        self._server_lock = threading.Lock()  # the watcher and stop() both restart/stop
        self._server: grpc.Server | None = None
        self._server_stop: threading.Event | None = None  # ends the streams of one server
        self._socket_id: tuple[int, int] | None = None
        self._registered_kubelet: tuple[int, int] | None = None
        self.registrations = 0
        self.allocations: list[list[str]] = []  # device IDs of each container, in call order
        self._watcher: threading.Thread | None = None
        self._annotate_queue: queue.Queue[list[str] | None] = queue.Queue()
        self._annotator: threading.Thread | None = None

    # lifecycle

    def __enter__(self) -> AscendDevicePlugin:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Serve on the plugin socket and keep registered with the kubelet (background)."""
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        with self._server_lock:
            self._serve()
        self._watcher = threading.Thread(target=self._watch, name="dp-watch", daemon=True)
        self._watcher.start()
        self._annotator = threading.Thread(target=self._annotate_loop, name="dp-annot", daemon=True)
        self._annotator.start()

    def stop(self) -> None:
        """Stop serving, end the streams and remove our socket."""
        self._stopped.set()
        self._annotate_queue.put(None)
        for t in (self._watcher, self._annotator):
            if t is not None and t is not threading.current_thread():
                t.join(timeout=15)
        with self._server_lock:
            self._stop_server()

    def wait_registered(self, timeout: float = 30, after: int = 0) -> bool:
        """Wait until more than `after` registrations have succeeded."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.registrations <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def set_health(self, chip: int, healthy: bool) -> None:
        """Mark chip `chip` Healthy or Unhealthy; open ListAndWatch streams resend the list."""
        with self._cond:
            if chip not in self._health:
                raise ValueError(f"no chip {chip}")
            self._health[chip] = HEALTHY if healthy else UNHEALTHY
            self._version += 1
            self._cond.notify_all()

    # serving

    def _serve(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="dp"))
        stop = threading.Event()
        handlers = {
            "GetDevicePluginOptions": grpc.unary_unary_rpc_method_handler(
                self._get_options, DP.Empty.FromString, _serialize
            ),
            "ListAndWatch": grpc.unary_stream_rpc_method_handler(
                lambda req, ctx: self._list_and_watch(req, ctx, stop),
                DP.Empty.FromString,
                _serialize,
            ),
            "GetPreferredAllocation": grpc.unary_unary_rpc_method_handler(
                self._get_preferred, DP.PreferredAllocationRequest.FromString, _serialize
            ),
            "Allocate": grpc.unary_unary_rpc_method_handler(
                self._allocate, DP.AllocateRequest.FromString, _serialize
            ),
            "PreStartContainer": grpc.unary_unary_rpc_method_handler(
                self._pre_start, DP.PreStartContainerRequest.FromString, _serialize
            ),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(DEVICE_PLUGIN_SERVICE, handlers),)
        )
        # A stale socket of ours (a killed run) would make the bind fail.
        self.socket_path.unlink(missing_ok=True)
        if server.add_insecure_port(unix_target(self.socket_path)) == 0:
            raise RuntimeError(f"cannot listen on {self.socket_path}")
        server.start()
        self._server, self._server_stop = server, stop
        self._socket_id = _file_id(self.socket_path)
        log.debug("serving %s on %s", self.kind.resource, self.socket_path)

    def _stop_server(self) -> None:
        server, stop, sock_id = self._server, self._server_stop, self._socket_id
        self._server = self._server_stop = self._socket_id = None
        if stop is not None:
            stop.set()
            with self._cond:
                self._cond.notify_all()
        if server is not None:
            server.stop(grace=1).wait(5)
        # Only the socket this server created: after a kubelet restart the path may be gone.
        if sock_id is not None and _file_id(self.socket_path) == sock_id:
            self.socket_path.unlink(missing_ok=True)

    def _watch(self) -> None:
        # The kubelet's restart: our socket deleted, kubelet.sock recreated. Serve again on a
        # new socket when ours is gone, and register whenever kubelet.sock is not the one we
        # registered with (first start, restart), retrying while the kubelet does not answer.
        while not self._stopped.is_set():
            try:
                if _file_id(self.socket_path) != self._socket_id:
                    log.info("plugin socket %s gone: serving again", self.socket_path)
                    with self._server_lock:
                        self._stop_server()
                        self._serve()
                    self._registered_kubelet = None
                kubelet = _file_id(self.kubelet_socket)
                if kubelet is not None and kubelet != self._registered_kubelet:
                    self._register()
                    self._registered_kubelet = kubelet
            except Exception as exc:  # keep watching: the next poll retries
                log.warning("registration with %s failed: %s", self.kubelet_socket, exc)
            self._stopped.wait(self.config.poll_interval_s)

    def _register(self) -> None:
        request = DP.RegisterRequest(
            version=API_VERSION,
            endpoint=self.socket_path.name,
            resource_name=self.kind.resource,
            options=self._options(),
        )
        with grpc.insecure_channel(unix_target(self.kubelet_socket)) as channel:
            register = unary_call(channel, REGISTRATION_SERVICE, "Register", DP.Empty)
            register(request, timeout=5, wait_for_ready=True)
        with self._cond:
            self.registrations += 1
            self._cond.notify_all()
        log.info(
            "registered %s (%d chips) with %s as %s",
            self.kind.resource,
            len(self._health),
            self.kubelet_socket,
            self.socket_path.name,
        )

    # the DevicePlugin service

    def _options(self) -> Message:
        return DP.DevicePluginOptions(
            pre_start_required=self.config.pre_start_required,
            get_preferred_allocation_available=self.config.preferred_allocation,
        )

    def _get_options(self, request: Message, context: grpc.ServicerContext) -> Message:
        return self._options()

    def _device_list(self) -> Message:
        return DP.ListAndWatchResponse(
            devices=[
                DP.Device(ID=chip_name(self.kind, c), health=h)
                for c, h in sorted(self._health.items())
            ]
        )

    def _list_and_watch(
        self, request: Message, context: grpc.ServicerContext, stop: threading.Event
    ) -> Iterator[Message]:
        sent = -1
        while not stop.is_set() and not self._stopped.is_set() and context.is_active():
            with self._cond:
                if self._version == sent:
                    # Bounded wait: a stream whose kubelet went away is noticed within 1 s.
                    self._cond.wait(timeout=1)
                    continue
                sent = self._version
                response = self._device_list()
            yield response

    def _get_preferred(self, request: Message, context: grpc.ServicerContext) -> Message:
        return DP.PreferredAllocationResponse(
            container_responses=[
                DP.ContainerPreferredAllocationResponse(
                    deviceIDs=preferred(
                        r.available_deviceIDs, r.must_include_deviceIDs, r.allocation_size
                    )
                )
                for r in request.container_requests
            ]
        )

    def _allocate(self, request: Message, context: grpc.ServicerContext) -> Message:
        responses = []
        for container in request.container_requests:
            names = list(container.devicesIDs)
            try:
                chips = [chip_id(self.kind, n) for n in names]
            except ValueError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            unknown = [n for n, c in zip(names, chips, strict=True) if c not in self._health]
            if unknown:
                # Huawei's checkAllocateRequest: "plugin doesn't have device ...".
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"plugin doesn't have device {unknown[0]}"
                )
            envs = allocate_envs(chips)
            responses.append(DP.ContainerAllocateResponse(envs=envs))
            self.allocations.append(names)
            log.info(
                "allocated %s: %s=%s",
                ",".join(names),
                ASCEND_VISIBLE_DEVICES,
                envs[ASCEND_VISIBLE_DEVICES],
            )
            if self._pod_api is not None and names:
                self._annotate_queue.put(names)
        return DP.AllocateResponse(container_responses=responses)

    def _pre_start(self, request: Message, context: grpc.ServicerContext) -> Message:
        return DP.PreStartContainerResponse()

    # pod annotations

    def _annotate_loop(self) -> None:
        while True:
            names = self._annotate_queue.get()
            if names is None or self._stopped.is_set():
                return
            try:
                self._annotate(names)
            except Exception as exc:  # one pod's failure must not end the loop
                log.warning("annotation for %s failed: %s", ",".join(names), exc)

    def _find_allocation(self, names: list[str]) -> PodAllocation | None:
        # The kubelet records the allocation right after Allocate returns: poll briefly.
        deadline = time.monotonic() + self.config.annotate_timeout_s
        with grpc.insecure_channel(unix_target(self.pod_resources_socket)) as channel:
            request = PR.ListPodResourcesRequest()
            list_pods = unary_call(
                channel, POD_RESOURCES_SERVICE, "List", PR.ListPodResourcesResponse
            )
            while not self._stopped.is_set():
                try:
                    found = find_pod(list_pods(request, timeout=5), self.kind.resource, names)
                except grpc.RpcError as exc:
                    log.debug("pod-resources List: %s", exc)
                    found = None
                if found is not None or time.monotonic() > deadline:
                    return found
                time.sleep(0.1)
        return None

    def _annotate(self, names: list[str]) -> None:
        assert self._pod_api is not None
        found = self._find_allocation(names)
        if found is None:
            log.warning("no pod holds %s in %s", ",".join(names), self.pod_resources_socket)
            return
        pod = self._pod_api.get_pod(found.namespace, found.name)
        node = self.config.node_name or pod.node_name
        node_ip = self._pod_api.node_ip(node) if node else ""
        chips = [chip_id(self.kind, n) for n in found.device_ids]
        wanted = pod_annotations(self.kind, found.name, node_ip, chips, self.config.device_ip_base)
        if all(pod.annotations.get(k) == v for k, v in wanted.items()):
            return
        self._pod_api.annotate(found.namespace, found.name, wanted)
        log.info(
            "annotated pod %s/%s (uid %s): %s",
            found.namespace,
            found.name,
            pod.uid,
            wanted[self.kind.resource],
        )


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _file_id(path: Path) -> tuple[int, int] | None:
    """Identity of the file at `path` (inode, change time), None if there is none."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_ctime_ns


# --- command line -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> PluginConfig:
    """The PluginConfig of a command line."""
    p = argparse.ArgumentParser(
        description="SIMULATED Ascend device plugin (fake chips, real kubelet API)."
    )
    p.add_argument("--resource", default="huawei.com/Ascend910", choices=sorted(RESOURCES))
    p.add_argument("--chips", type=int, default=8, help="number of chips (default 8)")
    p.add_argument(
        "--device-ip-base",
        default="127.100.0",
        help="chip k gets <base>.(101+k) as its RoCE address (never connected to)",
    )
    p.add_argument("--kubelet-root", default="/var/lib/kubelet", help="the kubelet's --root-dir")
    p.add_argument("--plugin-dir", help="default <kubelet-root>/device-plugins")
    p.add_argument("--kubeconfig", help="API server access for pod annotations (none: skip)")
    p.add_argument("--node-name", help="the node (default: the node each pod is bound to)")
    p.add_argument("--socket-name", help="default Huawei's (Ascend910.sock, npu.sock)")
    p.add_argument("--pre-start-required", action="store_true")
    p.add_argument("--preferred-allocation", action="store_true")
    p.add_argument("--poll-interval", type=float, default=0.5, help="seconds between checks")
    a = p.parse_args(argv)
    return PluginConfig(
        resource=a.resource,
        chips=a.chips,
        device_ip_base=a.device_ip_base,
        kubelet_root=a.kubelet_root,
        plugin_dir=a.plugin_dir,
        node_name=a.node_name,
        kubeconfig=a.kubeconfig,
        socket_name=a.socket_name,
        pre_start_required=a.pre_start_required,
        preferred_allocation=a.preferred_allocation,
        poll_interval_s=a.poll_interval,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGTERM or SIGINT; then stop and remove the socket."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    config = parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    plugin = AscendDevicePlugin(config)
    if not config.kubeconfig:
        log.info("no --kubeconfig: pods will not be annotated")
    plugin.start()
    log.info("serving %s x%d on %s", plugin.kind.resource, config.chips, plugin.socket_path)
    while not done.wait(1):
        pass
    plugin.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
