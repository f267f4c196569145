"""The simulated Ascend device plugin against a fake kubelet over real unix sockets.

The fake kubelet here plays what Kubernetes 1.20's device manager does on the wire: it serves
`v1beta1.Registration` on `<plugin dir>/kubelet.sock`, dials the endpoint a plugin registers,
calls the plugin's RPCs, and on restart deletes the plugin dir's files and listens anew. The
pod-resources fake answers `v1alpha1.PodResourcesLister/List` as the kubelet does once it has
recorded an allocation. The real kubelet is exercised by the real-node tests.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from sim import ascend_device_plugin as dp
from sim.ascend_device_plugin import DP, PR

from shufflenet_contract import ranktable

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "sim" / "ascend_device_plugin.py"


# --- fakes of the kubelet and the API server ----------------------------------------------


def _serve(socket: Path, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    assert server.add_insecure_port(dp.unix_target(socket)) != 0
    server.start()
    return server


class FakeKubelet:
    """Registration on kubelet.sock and pod-resources List, as a 1.20 kubelet serves them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.plugin_dir = root / dp.DEVICE_PLUGINS_DIR
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        (root / "pod-resources").mkdir(exist_ok=True)
        self.registrations: queue.Queue[Any] = queue.Queue()
        self.pod_resources = PR.ListPodResourcesResponse()
        self._registration: grpc.Server | None = None
        self._pod_resources: grpc.Server | None = None

    def start(self) -> None:
        def register(request: Any, context: grpc.ServicerContext) -> Any:
            if request.version != dp.API_VERSION:  # the 1.20 manager's checks
                context.abort(grpc.StatusCode.UNKNOWN, f"unsupported version {request.version}")
            self.registrations.put(request)
            return DP.Empty()

        self._registration = _serve(
            self.plugin_dir / dp.KUBELET_SOCKET,
            dp.REGISTRATION_SERVICE,
            {
                "Register": grpc.unary_unary_rpc_method_handler(
                    register, DP.RegisterRequest.FromString, lambda m: m.SerializeToString()
                )
            },
        )
        if self._pod_resources is None:
            self._pod_resources = _serve(
                self.root / dp.POD_RESOURCES_SOCKET,
                dp.POD_RESOURCES_SERVICE,
                {
                    "List": grpc.unary_unary_rpc_method_handler(
                        lambda req, ctx: self.pod_resources,
                        PR.ListPodResourcesRequest.FromString,
                        lambda m: m.SerializeToString(),
                    )
                },
            )

    def restart(self) -> None:
        """What a kubelet restart does to the plugin dir: remove its files, listen anew."""
        assert self._registration is not None
        self._registration.stop(None).wait()
        for name in os.listdir(self.plugin_dir):
            (self.plugin_dir / name).unlink()
        self.start()

    def stop(self) -> None:
        for server in (self._registration, self._pod_resources):
            if server is not None:
                server.stop(None).wait()

    def next_registration(self, timeout: float = 20) -> Any:
        return self.registrations.get(timeout=timeout)

    def channel(self, endpoint: str) -> grpc.Channel:
        """The kubelet's connection to a registered endpoint (relative to its plugin dir)."""
        return grpc.insecure_channel(dp.unix_target(self.plugin_dir / endpoint))


def call(channel: grpc.Channel, method: str, request: Any, response_cls: type) -> Any:
    return dp.unary_call(channel, dp.DEVICE_PLUGIN_SERVICE, method, response_cls)(
        request, timeout=10
    )


class FakePodAPI:
    """The API server as the plugin uses it: pods, node addresses, annotation patches."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dp.PodInfo] = {}
        self.node_ips: dict[str, str] = {}
        self.patches: queue.Queue[tuple[str, str, dict[str, str]]] = queue.Queue()

    def get_pod(self, namespace: str, name: str) -> dp.PodInfo:
        return self.pods[(namespace, name)]

    def node_ip(self, node_name: str) -> str:
        return self.node_ips[node_name]

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self.patches.put((namespace, name, annotations))


@pytest.fixture
def root() -> Iterator[Path]:
    # A short directory: unix socket paths are limited to 107 bytes, which pytest's tmp_path
    # under a long test name can exceed.
    path = Path(tempfile.mkdtemp(prefix="dp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kubelet(root: Path) -> Iterator[FakeKubelet]:
    k = FakeKubelet(root)
    k.start()
    yield k
    k.stop()


def make_plugin(root: Path, pod_api: Any = None, **kw: Any) -> dp.AscendDevicePlugin:
    config = dp.PluginConfig(kubelet_root=str(root), poll_interval_s=0.05, **kw)
    return dp.AscendDevicePlugin(config, pod_api=pod_api)


# --- the wire format: field numbers checked against hand-encoded bytes --------------------


def test_register_request_bytes_match_the_1_20_field_numbers() -> None:
    request = DP.RegisterRequest(
        version="v1beta1",
        endpoint="a.sock",
        resource_name="huawei.com/Ascend910",
        options=DP.DevicePluginOptions(
            pre_start_required=True, get_preferred_allocation_available=True
        ),
    )
    expected = (
        b"\x0a\x07v1beta1"  # 1: version
        b"\x12\x06a.sock"  # 2: endpoint
        b"\x1a\x14huawei.com/Ascend910"  # 3: resource_name
        b"\x22\x04\x08\x01\x10\x01"  # 4: options {1: pre_start_required, 2: preferred}
    )
    assert request.SerializeToString() == expected


def test_device_and_allocate_bytes_match_the_1_20_field_numbers() -> None:
    device = DP.Device(
        ID="Ascend910-0", health="Healthy", topology=DP.TopologyInfo(nodes=[DP.NUMANode(ID=1)])
    )
    assert device.SerializeToString() == (
        b"\x0a\x0bAscend910-0\x12\x07Healthy\x1a\x04\x0a\x02\x08\x01"
    )
    assert DP.ContainerAllocateRequest(devicesIDs=["x"]).SerializeToString() == b"\x0a\x01x"
    response = DP.ContainerAllocateResponse(envs={"K": "V"}, annotations={"a": "b"})
    # map<string,string>: repeated entries {1: key, 2: value}; envs is 1, annotations 4.
    assert response.SerializeToString() == b"\x0a\x06\x0a\x01K\x12\x01V\x22\x06\x0a\x01a\x12\x01b"
    mounts = DP.ContainerAllocateResponse(
        mounts=[DP.Mount(container_path="c", host_path="h", read_only=True)],
        devices=[DP.DeviceSpec(container_path="c", host_path="h", permissions="rw")],
    )
    assert mounts.SerializeToString() == (
        b"\x12\x08\x0a\x01c\x12\x01h\x18\x01\x1a\x0a\x0a\x01c\x12\x01h\x1a\x02rw"
    )
    preferred = DP.ContainerPreferredAllocationRequest(
        available_deviceIDs=["a"], must_include_deviceIDs=["b"], allocation_size=2
    )
    assert preferred.SerializeToString() == b"\x0a\x01a\x12\x01b\x18\x02"


def test_pod_resources_decode_from_the_1_20_field_numbers() -> None:
    devices = b"\x0a\x14huawei.com/Ascend910" + b"\x12\x0bAscend910-3"  # 1: resource, 2: ids
    container = b"\x0a\x01c" + b"\x12" + bytes([len(devices)]) + devices  # 1: name, 2: devices
    pod = b"\x0a\x01p\x12\x02ns" + b"\x1a" + bytes([len(container)]) + container
    response = PR.ListPodResourcesResponse.FromString(b"\x0a" + bytes([len(pod)]) + pod)
    (p,) = response.pod_resources
    assert (p.name, p.namespace, p.containers[0].name) == ("p", "ns", "c")
    (d,) = p.containers[0].devices
    assert (d.resource_name, list(d.device_ids)) == ("huawei.com/Ascend910", ["Ascend910-3"])


# --- pure functions -----------------------------------------------------------------------


def test_chip_names_follow_huaweis_plugin() -> None:
    a910 = dp.resource_kind("huawei.com/Ascend910")
    npu = dp.resource_kind("huawei.com/npu")
    assert dp.chip_name(a910, 3) == "Ascend910-3"
    assert dp.chip_name(npu, 3) == "npu-3"
    assert (a910.socket_name, npu.socket_name) == ("Ascend910.sock", "npu.sock")
    assert dp.chip_id(a910, "Ascend910-12") == 12
    for bad in ("npu-1", "Ascend910-", "Ascend910-x", "Ascend910-1c"):
        with pytest.raises(ValueError, match=r"not a huawei\.com/Ascend910 device"):
            dp.chip_id(a910, bad)
    with pytest.raises(ValueError, match="unsupported resource"):
        dp.resource_kind("nvidia.com/gpu")


def test_allocate_envs_are_the_sorted_physical_ids() -> None:
    assert dp.allocate_envs([5, 3]) == {
        "ASCEND_VISIBLE_DEVICES": "3,5",
        "ASCEND_RUNTIME_OPTIONS": "",
    }
    assert dp.allocate_envs([0])["ASCEND_VISIBLE_DEVICES"] == "0"


def test_pod_annotations_parse_with_the_contract() -> None:
    kind = dp.resource_kind("huawei.com/Ascend910")
    notes = dp.pod_annotations(kind, "j-rank-0", "127.0.1.7", [4, 3], "127.100.0")
    assert notes[kind.resource] == "Ascend910-3,Ascend910-4"
    assert notes["huawei.com/kltDev"] == notes["huawei.com/AscendReal"] == "Ascend910-3,Ascend910-4"
    assert kind.config_annotation == ranktable.ANNOTATION
    config = json.loads(notes[ranktable.ANNOTATION])
    assert config == {
        "pod_name": "j-rank-0",
        "server_id": "127.0.1.7",
        "host_ip": "127.0.1.7",
        "devices": [
            {"device_id": "3", "device_ip": "127.100.0.104"},
            {"device_id": "4", "device_ip": "127.100.0.105"},
        ],
    }
    # A whole-node pod is keyed by its node's address, a per-device pod by its UID.
    (whole,) = ranktable.pods_from_annotations(
        [ranktable.AnnotatedPod(0, "uid-0", "j-rank-0", notes[ranktable.ANNOTATION])], 2
    )
    assert whole.server_id == "127.0.1.7"
    assert whole.devices == (
        ranktable.Device("3", "127.100.0.104"),
        ranktable.Device("4", "127.100.0.105"),
    )
    single = dp.pod_annotations(kind, "j-rank-1", "127.0.1.7", [6], "127.100.0")
    (one,) = ranktable.pods_from_annotations(
        [ranktable.AnnotatedPod(1, "uid-1", "j-rank-1", single[ranktable.ANNOTATION])], 1
    )
    assert (one.server_id, one.devices) == ("uid-1", (ranktable.Device("6", "127.100.0.107"),))


def test_npu_resource_uses_the_npu_annotation() -> None:
    kind = dp.resource_kind("huawei.com/npu")
    notes = dp.pod_annotations(kind, "p", "127.0.1.1", [0], "127.100.3")
    assert set(notes) == {
        "ascend.kubectl.kubernetes.io/ascend-npu-configuration",
        "huawei.com/npu",
        "huawei.com/kltDev",
        "huawei.com/AscendReal",
    }
    assert notes["huawei.com/npu"] == "npu-0"
    devices = json.loads(notes["ascend.kubectl.kubernetes.io/ascend-npu-configuration"])["devices"]
    assert devices == [{"device_id": "0", "device_ip": "127.100.3.101"}]


def test_find_pod_matches_the_container_holding_exactly_those_devices() -> None:
    def pod(name: str, *containers: list[str], resource: str = "huawei.com/Ascend910") -> Any:
        return PR.PodResources(
            name=name,
            namespace="ns",
            containers=[
                PR.ContainerResources(
                    name=f"c{i}",
                    devices=[PR.ContainerDevices(resource_name=resource, device_ids=ids)],
                )
                for i, ids in enumerate(containers)
            ],
        )

    response = PR.ListPodResourcesResponse(
        pod_resources=[
            pod("other", ["Ascend910-1"]),
            pod("gpu", ["Ascend910-2"], resource="nvidia.com/gpu"),
            pod("two", ["Ascend910-2"], ["Ascend910-5", "Ascend910-4"]),
        ]
    )
    found = dp.find_pod(response, "huawei.com/Ascend910", ["Ascend910-4", "Ascend910-5"])
    assert found == dp.PodAllocation(
        "ns", "two", frozenset({"Ascend910-2", "Ascend910-4", "Ascend910-5"})
    )
    assert dp.find_pod(response, "huawei.com/Ascend910", ["Ascend910-4"]) is None
    assert dp.find_pod(response, "huawei.com/Ascend910", ["Ascend910-9"]) is None


def test_preferred_allocation_keeps_required_devices_first() -> None:
    assert dp.preferred(["a", "b", "c"], ["c"], 2) == ["c", "a"]
    assert dp.preferred(["a", "b"], [], 1) == ["a"]
    assert dp.preferred(["a"], ["a", "b"], 1) == ["a", "b"]


def test_socket_path_length_is_checked(root: Path) -> None:
    with pytest.raises(ValueError, match="too long"):
        make_plugin(root, plugin_dir=str(root / ("x" * 120)))


# --- the plugin against the fake kubelet --------------------------------------------------


def test_registers_with_the_fields_the_kubelet_checks(kubelet: FakeKubelet) -> None:
    with make_plugin(kubelet.root, chips=4) as plugin:
        request = kubelet.next_registration()
        assert request.version == "v1beta1"
        assert request.endpoint == "Ascend910.sock"
        assert request.resource_name == "huawei.com/Ascend910"
        assert not request.options.pre_start_required
        assert not request.options.get_preferred_allocation_available
        assert plugin.wait_registered(timeout=5)
        assert (kubelet.plugin_dir / request.endpoint).is_socket()
        with kubelet.channel(request.endpoint) as channel:
            options = call(channel, "GetDevicePluginOptions", DP.Empty(), DP.DevicePluginOptions)
        assert options == request.options
    assert not (kubelet.plugin_dir / "Ascend910.sock").exists()  # removed on stop
    assert kubelet.registrations.empty()  # exactly one registration


def test_registers_when_the_kubelet_comes_up_later(root: Path) -> None:
    kubelet = FakeKubelet(root)
    with make_plugin(root) as plugin:
        time.sleep(0.3)  # several polls without a kubelet: nothing to register with
        assert plugin.registrations == 0
        kubelet.start()
        try:
            assert kubelet.next_registration().resource_name == "huawei.com/Ascend910"
        finally:
            kubelet.stop()


def test_list_and_watch_streams_healthy_chips_and_changes(kubelet: FakeKubelet) -> None:
    with make_plugin(kubelet.root, chips=4) as plugin, kubelet.channel("Ascend910.sock") as ch:
        stream = ch.unary_stream(
            dp.method_path(dp.DEVICE_PLUGIN_SERVICE, "ListAndWatch"),
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=DP.ListAndWatchResponse.FromString,
        )(DP.Empty(), timeout=20)
        first = next(stream)
        assert [(d.ID, d.health) for d in first.devices] == [
            (f"Ascend910-{k}", "Healthy") for k in range(4)
        ]
        plugin.set_health(2, False)
        second = next(stream)
        assert [d.health for d in second.devices] == ["Healthy", "Healthy", "Unhealthy", "Healthy"]
        stream.cancel()


def test_allocate_returns_the_visible_devices_env(kubelet: FakeKubelet) -> None:
    with make_plugin(kubelet.root) as plugin, kubelet.channel("Ascend910.sock") as ch:
        request = DP.AllocateRequest(
            container_requests=[
                DP.ContainerAllocateRequest(devicesIDs=["Ascend910-5", "Ascend910-3"])
            ]
        )
        response = call(ch, "Allocate", request, DP.AllocateResponse)
        (container,) = response.container_responses
        assert dict(container.envs) == {
            "ASCEND_VISIBLE_DEVICES": "3,5",
            "ASCEND_RUNTIME_OPTIONS": "",
        }
        assert not container.devices and not container.mounts  # ascend-docker mode: env only
        assert plugin.allocations == [["Ascend910-5", "Ascend910-3"]]
        for bad in ("Ascend910-8", "npu-1"):
            wrong = DP.AllocateRequest(
                container_requests=[DP.ContainerAllocateRequest(devicesIDs=[bad])]
            )
            with pytest.raises(grpc.RpcError) as err:
                call(ch, "Allocate", wrong, DP.AllocateResponse)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert bad in err.value.details()


def test_preferred_allocation_and_pre_start(kubelet: FakeKubelet) -> None:
    with make_plugin(kubelet.root, preferred_allocation=True, pre_start_required=True):
        assert kubelet.next_registration().options.get_preferred_allocation_available
        with kubelet.channel("Ascend910.sock") as ch:
            request = DP.PreferredAllocationRequest(
                container_requests=[
                    DP.ContainerPreferredAllocationRequest(
                        available_deviceIDs=["Ascend910-1", "Ascend910-2", "Ascend910-6"],
                        must_include_deviceIDs=["Ascend910-6"],
                        allocation_size=2,
                    )
                ]
            )
            response = call(ch, "GetPreferredAllocation", request, DP.PreferredAllocationResponse)
            assert list(response.container_responses[0].deviceIDs) == ["Ascend910-6", "Ascend910-1"]
            pre = DP.PreStartContainerRequest(devicesIDs=["Ascend910-1"])
            assert call(ch, "PreStartContainer", pre, DP.PreStartContainerResponse) == (
                DP.PreStartContainerResponse()
            )


def test_reregisters_after_a_kubelet_restart(kubelet: FakeKubelet) -> None:
    with make_plugin(kubelet.root, chips=2) as plugin:
        first = kubelet.next_registration()
        assert plugin.wait_registered(timeout=5)
        kubelet.restart()  # our socket is deleted and kubelet.sock is new
        second = kubelet.next_registration()
        assert second == first
        assert plugin.wait_registered(timeout=5, after=1)
        # The new endpoint serves: the restarted kubelet can list the chips.
        with kubelet.channel(second.endpoint) as ch:
            stream = ch.unary_stream(
                dp.method_path(dp.DEVICE_PLUGIN_SERVICE, "ListAndWatch"),
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=DP.ListAndWatchResponse.FromString,
            )(DP.Empty(), timeout=20)
            assert [d.ID for d in next(stream).devices] == ["Ascend910-0", "Ascend910-1"]
            stream.cancel()
    assert kubelet.registrations.empty()


def test_allocated_pod_is_annotated_as_the_operator_reads_it(kubelet: FakeKubelet) -> None:
    api = FakePodAPI()
    api.pods[("ns", "job-rank-1")] = dp.PodInfo(uid="uid-1", node_name="node-a")
    api.node_ips["node-a"] = "127.0.1.9"
    with make_plugin(kubelet.root, pod_api=api), kubelet.channel("Ascend910.sock") as ch:
        request = DP.AllocateRequest(
            container_requests=[DP.ContainerAllocateRequest(devicesIDs=["Ascend910-3"])]
        )
        call(ch, "Allocate", request, DP.AllocateResponse)

        # The kubelet records the allocation after Allocate returns: the plugin must poll.
        def record() -> None:
            time.sleep(0.3)
            kubelet.pod_resources = PR.ListPodResourcesResponse(
                pod_resources=[
                    PR.PodResources(
                        name="job-rank-1",
                        namespace="ns",
                        containers=[
                            PR.ContainerResources(
                                name="trainer",
                                devices=[
                                    PR.ContainerDevices(
                                        resource_name="huawei.com/Ascend910",
                                        device_ids=["Ascend910-3"],
                                    )
                                ],
                            )
                        ],
                    )
                ]
            )

        threading.Thread(target=record).start()
        namespace, name, notes = api.patches.get(timeout=20)
    assert (namespace, name) == ("ns", "job-rank-1")
    assert notes["huawei.com/Ascend910"] == "Ascend910-3"
    config = json.loads(notes[ranktable.ANNOTATION])
    assert (config["pod_name"], config["server_id"]) == ("job-rank-1", "127.0.1.9")
    (entry,) = ranktable.pods_from_annotations(
        [ranktable.AnnotatedPod(1, "uid-1", name, notes[ranktable.ANNOTATION])], 1
    )
    assert entry == ranktable.PodDevices(1, "uid-1", (ranktable.Device("3", "127.100.0.104"),))


def test_npu_plugin_serves_npu_chips(kubelet: FakeKubelet) -> None:
    with make_plugin(kubelet.root, resource="huawei.com/npu", chips=1):
        request = kubelet.next_registration()
        assert (request.resource_name, request.endpoint) == ("huawei.com/npu", "npu.sock")
        with kubelet.channel("npu.sock") as ch:
            alloc = DP.AllocateRequest(
                container_requests=[DP.ContainerAllocateRequest(devicesIDs=["npu-0"])]
            )
            (c,) = call(ch, "Allocate", alloc, DP.AllocateResponse).container_responses
            assert c.envs["ASCEND_VISIBLE_DEVICES"] == "0"


def test_command_line_registers_logs_and_exits_on_sigterm(kubelet: FakeKubelet) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--kubelet-root", str(kubelet.root), "--chips", "2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        request = kubelet.next_registration(timeout=60)
        assert (request.endpoint, request.resource_name) == (
            "Ascend910.sock",
            "huawei.com/Ascend910",
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert (
        sum("registered huawei.com/Ascend910 (2 chips)" in line for line in err.splitlines()) == 1
    )
    assert not (kubelet.plugin_dir / "Ascend910.sock").exists()
