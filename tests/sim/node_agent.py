"""SIMULATED kubelet and Ascend device plugin for fake Nodes of a real control plane.

A real cluster has, on each node, a kubelet (registers the Node, reports it Ready, runs the
pods the scheduler binds there and reports their status) and a device plugin per accelerator
kind (advertises `huawei.com/Ascend910` capacity, hands chips to containers, and, for Ascend,
annotates each pod with the chips it got). None of that can run here, so `NodeAgent` plays
those parts through the API server, the way they would:

* `add_node()` creates a Node with `huawei.com/Ascend910` / `nvidia.com/gpu` / cpu / memory /
  pods capacity and a host IP 127.0.1.N, posts the Ready condition and clears the
  `node.kubernetes.io/not-ready:NoSchedule` taint that the API server puts on new Nodes
  (the real kube-scheduler then places pods on it by their resource requests).
* For every pod the scheduler binds to one of its nodes, the agent "admits" it as kubelet
  would: allocates chips without overlap on that node (or fails the pod with
  `UnexpectedAdmissionError` when there are none, as kubelet does), gives it a pod IP
  127.2.N.M from its node's range, writes the Ascend device plugin's annotation
  `ascend.kubectl.kubernetes.io/ascend-910-configuration` and marks it Running (or leaves it
  Pending in ContainerCreating with `auto_start=False`, until `start()` is called).
* A container that cannot be started (`wait(pod, reason, message)`) is posted as kubelet posts
  one: left `state.waiting` with the error's reason (ErrImagePull, ImagePullBackOff,
  CreateContainerConfigError...) and message, the pod Pending, until `start()`.
* Containers do not run. Tests end them with `finish(pod, exit_code=...)`, and the agent posts
  what kubelet would: terminated container states with that exit code, and the pod phase the
  restart policy implies (Never: Succeeded/Failed; OnFailure/Always: restarted, with
  restartCount and lastState).
* A pod being deleted (deletionTimestamp set, by a client or the garbage collector) is
  finalised as kubelet does once its containers are gone: chips released and the pod deleted
  with grace period 0.

Addresses are all loopback: hosts 127.0.1.N, pods 127.2.N.M (each node its own range, as a
node's podCIDR, so agents never race for an address), chips 127.100.N.(101 + chip id) (the
layout of Huawei's examples, where chip 0 of a server is x.x.x.101).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from kubernetes import client, watch
from kubernetes.client import ApiException, CoreV1Api, V1Pod

from .ascend_device_plugin import chip_name, resource_kind
from .runtime import ProcessRuntime

log = logging.getLogger(__name__)

NPU_RESOURCE = "huawei.com/Ascend910"
GPU_RESOURCE = "nvidia.com/gpu"
ASCEND_910_ANNOTATION = "ascend.kubectl.kubernetes.io/ascend-910-configuration"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
AGENT_LABEL = "sim.shufflenet.io/node-agent"

HOST_NET = "127.0.1."
POD_NET = "127.2."  # + "<node index>.<pod index>"
DEVICE_NET = "127.100."

_SMP = "application/strategic-merge-patch+json"
_MERGE = "application/merge-patch+json"

PodRef = V1Pod | tuple[str, str]
"""A pod as the client returned it, or (namespace, name)."""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def device_ip(node_index: int, device_id: int) -> str:
    """The simulated RoCE address of chip `device_id` on node number `node_index`."""
    return f"{DEVICE_NET}{node_index}.{101 + device_id}"


@dataclass
class SimNode:
    """A fake Node and its chips."""

    name: str
    index: int
    host_ip: str
    npus: int
    gpus: int
    free_npus: set[int] = field(default_factory=set)
    free_gpus: set[int] = field(default_factory=set)
    unhealthy: set[int] = field(default_factory=set)


@dataclass
class _Container:
    name: str
    image: str
    running: bool = True
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: str = ""
    finished_at: str | None = None
    restart_count: int = 0
    last_state: dict[str, Any] | None = None
    # (reason, message) of the error that keeps it from being started (see NodeAgent.wait).
    waiting: tuple[str, str] | None = None


@dataclass
class _PodRecord:
    namespace: str
    name: str
    uid: str
    node: SimNode
    pod_ip: str
    restart_policy: str
    npu_ids: list[int]
    gpu_ids: list[int]
    containers: list[_Container]
    started: bool = False
    start_time: str = ""
    terminal: bool = False


def _requested(pod: V1Pod, resource: str) -> int:
    """Units of an extended resource the pod's containers ask for (limits == requests)."""
    total = 0
    for c in pod.spec.containers or []:
        res = c.resources
        amounts = (res.limits or res.requests or {}) if res else {}
        if resource in amounts:
            total += int(str(amounts[resource]))
    return total


class NodeAgent:
    """SIMULATED kubelet + Ascend device plugin for the fake nodes it creates.

    Use as a context manager, or call `start_watch()` and `close()`. `sync()` processes every
    pod once without the background watch, for step-by-step tests.

    Nodes: `add_node()`, `set_node_ready()`, `delete_node()`; `nodes` maps name -> SimNode.
    Pods (a V1Pod or (namespace, name); each call first waits until the pod is admitted):
    `start()` (with auto_start=False), `wait(reason, message)` (a container it cannot start),
    `finish(exit_code=...)`, `device_ids()`.
    Several agents may share a cluster: host and pod IPs stay unique across them.
    """

    def __init__(
        self,
        core: CoreV1Api,
        *,
        name: str = "sim",
        auto_start: bool = True,
        watch_timeout_s: int = 5,
        runtime: ProcessRuntime | None = None,
        npu_resource: str = NPU_RESOURCE,
    ) -> None:
        self.core = core
        # The resource its nodes advertise for Ascend chips, which also names the device
        # plugin's annotation (huawei.com/npu: `ascend-npu-configuration`, chips `npu-<id>`).
        self.npu = resource_kind(npu_resource)
        # With a runtime, started pods run their containers as processes (sim/runtime.py);
        # without, containers only "run" until a test calls finish().
        self.runtime = runtime
        self.name = name
        self.auto_start = auto_start
        self.watch_timeout_s = watch_timeout_s
        self.nodes: dict[str, SimNode] = {}
        self._pods: dict[tuple[str, str], _PodRecord] = {}
        self._used_pod_ips: set[str] = set()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: watch.Watch | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> NodeAgent:
        self.start_watch()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_watch(self) -> None:
        """Start watching pods in the background."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop, name=f"node-agent-{self.name}", daemon=True
            )
            self._thread.start()

    def stop_watch(self) -> None:
        """Stop the background watch (nodes and pods stay)."""
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(timeout=self.watch_timeout_s + 10)
            self._thread = None

    def close(self) -> None:
        """Stop, then remove every pod bound to this agent's nodes, and the nodes."""
        self.stop_watch()
        if self.runtime is not None:
            self.runtime.close()
        with self._lock:
            for pod in self._pods_on_my_nodes():
                self._force_delete(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)
            for name in list(self.nodes):
                self.delete_node(name)
            self._pods.clear()

    # -- nodes -----------------------------------------------------------------------------

    def add_node(
        self,
        name: str | None = None,
        *,
        npus: int = 8,
        gpus: int = 0,
        cpu: str = "64",
        memory: str = "512Gi",
        max_pods: int = 110,
        labels: dict[str, str] | None = None,
    ) -> SimNode:
        """Register a Ready node with `npus` Ascend 910 chips (and `gpus` NVIDIA GPUs)."""
        with self._lock:
            # Host IPs must be unique in the cluster, also with other agents' nodes.
            taken = {
                a.address
                for n in self.core.list_node().items
                for a in (n.status.addresses or [])
                if a.type == "InternalIP"
            }
            index = next((i for i in range(1, 255) if f"{HOST_NET}{i}" not in taken), 0)
            if not index:
                raise RuntimeError("the simulated host network 127.0.1.0/24 is full")
            name = name or f"{self.name}-node-{index}"
            node = SimNode(
                name=name,
                index=index,
                host_ip=f"{HOST_NET}{index}",
                npus=npus,
                gpus=gpus,
                free_npus=set(range(npus)),
                free_gpus=set(range(gpus)),
            )
            meta_labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                AGENT_LABEL: self.name,
            }
            if npus:
                # Labels Huawei's MindX stack puts on Ascend training nodes.
                meta_labels["accelerator"] = "huawei-Ascend910"
            meta_labels |= labels or {}
            metadata = {"name": name, "labels": meta_labels}
            self.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": metadata})
            self.nodes[name] = node
            resources = {"cpu": cpu, "memory": memory, "pods": str(max_pods)}
            if npus:
                resources[self.npu.resource] = str(npus)
            if gpus:
                resources[GPU_RESOURCE] = str(gpus)
            self.core.patch_node_status(
                name,
                {
                    "status": {
                        "capacity": resources,
                        "allocatable": resources,
                        "addresses": [
                            {"type": "InternalIP", "address": node.host_ip},
                            {"type": "Hostname", "address": name},
                        ],
                        "conditions": self._node_conditions(ready=True),
                        "nodeInfo": {
                            "kubeletVersion": "v1.20.2-sim",
                            "kubeProxyVersion": "v1.20.2-sim",
                            "containerRuntimeVersion": "sim://0",
                            "operatingSystem": "linux",
                            "architecture": "amd64",
                            "osImage": "simulated",
                            "kernelVersion": "",
                            "machineID": "",
                            "systemUUID": "",
                            "bootID": "",
                        },
                    }
                },
                _content_type=_SMP,
            )
            self._set_not_ready_taint(name, present=False)
            return node

    def set_node_ready(self, name: str, ready: bool) -> None:
        """Flip the node's Ready condition, with the NoSchedule taint that goes with it."""
        self.core.patch_node_status(
            name, {"status": {"conditions": self._node_conditions(ready)}}, _content_type=_SMP
        )
        self._set_not_ready_taint(name, present=not ready)

    def lose_node(self, name: str) -> None:
        """The node's kubelet is gone: it stops posting, and what the node lifecycle
        controller then posts (pkg/controller/nodelifecycle: past --node-monitor-grace-period
        its conditions go Unknown, reason NodeStatusUnknown, and the node is tainted
        node.kubernetes.io/unreachable) is posted here at once. Its pods are left as they
        are: deleting one leaves it Terminating, as no kubelet confirms it."""
        with self._lock:
            self.nodes.pop(name, None)
        conditions = self._node_conditions(ready=True)
        for c in conditions:
            c.update(
                status="Unknown",
                reason="NodeStatusUnknown",
                message="Kubelet stopped posting node status.",
            )
        self.core.patch_node_status(
            name, {"status": {"conditions": conditions}}, _content_type=_SMP
        )
        node = self.core.read_node(name)
        node.spec.taints = [
            *(node.spec.taints or []),
            *(
                client.V1Taint(key=UNREACHABLE_TAINT, effect=effect)
                for effect in ("NoSchedule", "NoExecute")
            ),
        ]
        self.core.replace_node(name, node)

    def set_unhealthy_chips(self, name: str, chips: Iterable[int]) -> None:
        """The device plugin reports these chips Unhealthy (ListAndWatch), and the kubelet
        lowers the node's allocatable to the healthy ones (its device manager counts only
        healthy devices as allocatable); capacity stays. No new pod gets them."""
        with self._lock:
            node = self.nodes[name]
            node.unhealthy |= set(chips)
            node.free_npus -= node.unhealthy
            healthy = node.npus - len(node.unhealthy)
        self.core.patch_node_status(
            name,
            {"status": {"allocatable": {self.npu.resource: str(healthy)}}},
            _content_type=_SMP,
        )

    def delete_node(self, name: str) -> None:
        with self._lock:
            self.nodes.pop(name, None)
            try:
                self.core.delete_node(name)
            except ApiException as e:
                if e.status != 404:
                    raise

    @staticmethod
    def _node_conditions(ready: bool) -> list[dict[str, str]]:
        now = _now()
        conds = [
            {"type": t, "status": "False", "reason": f"KubeletHasNo{t}"}
            for t in ("MemoryPressure", "DiskPressure", "PIDPressure")
        ]
        conds.append(
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": "KubeletReady" if ready else "KubeletNotReady",
                "message": "simulated kubelet is posting ready status"
                if ready
                else "simulated kubelet reports the node not ready",
            }
        )
        for c in conds:
            c["lastHeartbeatTime"] = now
            c["lastTransitionTime"] = now
        return conds

    def _set_not_ready_taint(self, name: str, *, present: bool) -> None:
        # Read-modify-write with the resourceVersion: a plain patch would replace the whole
        # taint list and could drop a taint someone else added in between.
        for _ in range(10):
            node = self.core.read_node(name)
            taints = [t for t in (node.spec.taints or []) if t.key != NOT_READY_TAINT]
            if present:
                taints.append(client.V1Taint(key=NOT_READY_TAINT, effect="NoSchedule"))
            node.spec.taints = taints or None
            try:
                self.core.replace_node(name, node)
                return
            except ApiException as e:
                if e.status != 409:
                    raise
        raise RuntimeError(f"could not update the taints of node {name}")

    # -- pods: what tests call -------------------------------------------------------------

    def start(self, pod: PodRef, timeout: float = 30) -> None:
        """Mark an admitted pod Running (only needed with auto_start=False)."""
        rec = self._wait_admitted(pod, timeout)
        with self._lock:
            if not rec.started and not rec.terminal:
                self._post_running(rec)

    def wait(
        self,
        pod: PodRef,
        reason: str,
        message: str,
        *,
        container: str | None = None,
        timeout: float = 30,
    ) -> None:
        """Leave the pod's containers (or one of them) not started, for `reason`, as kubelet
        posts a container it could not start: `state.waiting` with the error's reason and
        message (pkg/kubelet/kubelet_pods.go, convertToAPIContainerStatuses: the reasons are
        the error strings of pkg/kubelet/images/types.go, e.g. ErrImagePull with the
        runtime's pull error, ImagePullBackOff with `Back-off pulling image "<image>"`, and
        of kuberuntime_container.go, e.g. CreateContainerConfigError with `secret "s" not
        found`). The pod stays Pending; `start()` runs it (pulled at last, Secret made).
        Only for pods not started (auto_start=False)."""
        rec = self._wait_admitted(pod, timeout)
        with self._lock:
            if rec.started or rec.terminal:
                raise RuntimeError(f"pod {rec.namespace}/{rec.name} has already started")
            for c in rec.containers:
                if container in (None, c.name):
                    c.waiting = (reason, message)
            self._post_status(rec)

    def finish(
        self,
        pod: PodRef,
        exit_code: int = 0,
        *,
        container: str | None = None,
        reason: str | None = None,
        message: str | None = None,
        timeout: float = 30,
    ) -> None:
        """End the pod's containers (or one of them) with `exit_code`, as kubelet reports it.

        reason defaults to kubelet's: "Completed" for 0, "Error" otherwise ("OOMKilled" and
        the like can be passed). What happens next follows the pod's restartPolicy.
        """
        rec = self._wait_admitted(pod, timeout)
        with self._lock:
            if not rec.started and not rec.terminal:
                self._post_running(rec)
            if rec.terminal:
                raise RuntimeError(f"pod {rec.namespace}/{rec.name} has already terminated")
            now = _now()
            targets = [c for c in rec.containers if container in (None, c.name) and c.running]
            if not targets:
                where = f"{rec.namespace}/{rec.name}"
                raise ValueError(f"no running container {container!r} in {where}")
            for c in targets:
                c.running = False
                c.exit_code = exit_code
                c.reason = reason or ("Completed" if exit_code == 0 else "Error")
                c.message = message
                c.finished_at = now
                restart = rec.restart_policy == "Always" or (
                    rec.restart_policy == "OnFailure" and exit_code != 0
                )
                if restart:
                    c.last_state = {"terminated": self._terminated(rec, c)}
                    c.restart_count += 1
                    c.running = True
                    c.exit_code = c.reason = c.message = c.finished_at = None
                    c.started_at = now
            self._post_status(rec)

    def device_ids(self, pod: PodRef) -> list[int]:
        """The Ascend chips allocated to the pod."""
        return list(self._wait_admitted(pod, 30).npu_ids)

    def sync(self) -> None:
        """Process every pod once (what the background watch does continuously)."""
        with self._lock:
            for pod in self.core.list_pod_for_all_namespaces().items:
                self._reconcile(pod)

    # -- pods: what kubelet does on its own ------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                listing = self.core.list_pod_for_all_namespaces()
                with self._lock:
                    for pod in listing.items:
                        self._reconcile(pod)
                self._watch = watch.Watch()
                # A short server-side timeout: the loop relists often, which also covers any
                # event it missed, and notices stop() quickly.
                for event in self._watch.stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=self.watch_timeout_s,
                ):
                    if self._stop.is_set():
                        break
                    pod = event["object"]
                    with self._lock:
                        if event["type"] == "DELETED":
                            self._forget(pod)
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            self._reconcile(pod)
            except Exception:
                if self._stop.is_set():
                    break
                log.exception("node agent %s: watch failed; relisting", self.name)
                time.sleep(0.5)

    def _reconcile(self, pod: V1Pod) -> None:
        node = self.nodes.get(pod.spec.node_name or "")
        if node is None:
            return
        key = (pod.metadata.namespace, pod.metadata.name)
        rec = self._pods.get(key)
        if rec is not None and rec.uid != pod.metadata.uid:
            # The name now belongs to a new pod: the old one is gone.
            self._release(rec)
            rec = None
        try:
            if pod.metadata.deletion_timestamp is not None:
                # kubelet stops the containers, then removes the pod for good: with a
                # runtime, only once its processes are gone (a rank stopped by SIGSTOP takes
                # the grace period), so a new pod of the name never meets the old processes.
                uid = pod.metadata.uid
                if rec is not None:
                    self._release(rec)
                if self.runtime is not None:
                    self.runtime.stop(uid, then=lambda: self._force_delete(*key, uid))
                else:
                    self._force_delete(*key, uid)
                return
            if pod.status.phase in ("Succeeded", "Failed"):
                if rec is not None:
                    self._release(rec)
                return
            if rec is None:
                self._admit(pod, node)
            elif not rec.terminal:
                # Updates the API server missed (it was restarting) are posted again.
                annotations = pod.metadata.annotations or {}
                if rec.npu_ids and self.npu.config_annotation not in annotations:
                    self._annotate_devices(rec)
                if rec.started and pod.status.phase == "Pending":
                    self._post_status(rec)
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def _admit(self, pod: V1Pod, node: SimNode) -> None:
        ns, name, uid = pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
        want_npu, want_gpu = _requested(pod, self.npu.resource), _requested(pod, GPU_RESOURCE)
        annotations = pod.metadata.annotations or {}
        config_key = self.npu.config_annotation
        if config_key in annotations and want_npu:
            # Admitted before (by an earlier agent): take back the chips it already holds.
            config = json.loads(annotations[config_key])
            held = [int(d["device_id"]) for d in config["devices"]]
            node.free_npus -= set(held)
            npu_ids = held
        elif want_npu > len(node.free_npus) or want_gpu > len(node.free_gpus):
            self._reject(pod, node, want_npu, want_gpu)
            return
        else:
            npu_ids = sorted(node.free_npus)[:want_npu]
            node.free_npus -= set(npu_ids)
        gpu_ids = sorted(node.free_gpus)[:want_gpu]
        node.free_gpus -= set(gpu_ids)
        containers = [
            _Container(name=c.name, image=c.image or "", started_at="")
            for c in pod.spec.containers or []
        ]
        rec = _PodRecord(
            namespace=ns,
            name=name,
            uid=uid,
            node=node,
            pod_ip=self._alloc_pod_ip(node),
            restart_policy=pod.spec.restart_policy or "Always",
            npu_ids=npu_ids,
            gpu_ids=gpu_ids,
            containers=containers,
        )
        self._pods[(ns, name)] = rec
        try:
            if npu_ids and config_key not in annotations:
                self._annotate_devices(rec)
            if self.auto_start:
                self._post_running(rec)
            else:
                self._post_status(rec)
        finally:
            # The containers start even when the API server missed an update: _reconcile
            # posts it again at the next look, as kubelet's status manager does.
            if self.auto_start and self.runtime is not None:
                self.runtime.start(pod, rec.pod_ip, lambda code: self._exited(rec, code))

    def pod_ip(self, namespace: str, name: str) -> str | None:
        """The IP of a live pod on this agent's nodes (what cluster DNS would answer)."""
        with self._lock:
            rec = self._pods.get((namespace, name))
            return rec.pod_ip if rec is not None and not rec.terminal else None

    def _exited(self, rec: _PodRecord, code: int) -> None:
        # The runtime's process ended: its exit code is the container's.
        with self._lock:
            if self._pods.get((rec.namespace, rec.name)) is not rec or rec.terminal:
                return
            try:
                self.finish((rec.namespace, rec.name), exit_code=code)
                return
            except (ApiException, RuntimeError) as e:
                log.warning("pod %s/%s: exit %s not posted: %s", rec.namespace, rec.name, code, e)
                return
            except Exception as e:  # the API server is away (restarting)
                log.warning(
                    "pod %s/%s: exit %s not posted yet: %s", rec.namespace, rec.name, code, e
                )
        # kubelet's status manager keeps the update until the API server takes it.
        while not self._stop.is_set():
            time.sleep(1.0)
            with self._lock:
                if self._pods.get((rec.namespace, rec.name)) is not rec or rec.terminal:
                    return
                try:
                    self._post_status(rec)
                    return
                except ApiException as e:
                    if e.status in (404, 409):
                        return
                except Exception:
                    continue

    def _annotate_devices(self, rec: _PodRecord) -> None:
        # What the Ascend device plugin writes after Allocate: the chips, their RoCE addresses
        # and the server they sit on (server_id: the node's host IP, as the plugin reports it),
        # and the chips by name under the resource's key ("Ascend910-3,Ascend910-4").
        config = {
            "pod_name": rec.name,
            "server_id": rec.node.host_ip,
            "host_ip": rec.node.host_ip,
            "devices": [
                {"device_id": str(d), "device_ip": device_ip(rec.node.index, d)}
                for d in rec.npu_ids
            ],
        }
        self.core.patch_namespaced_pod(
            rec.name,
            rec.namespace,
            {
                "metadata": {
                    "annotations": {
                        self.npu.config_annotation: json.dumps(config, separators=(",", ":")),
                        self.npu.resource: ",".join(chip_name(self.npu, d) for d in rec.npu_ids),
                    }
                }
            },
            _content_type=_MERGE,
        )

    def _reject(self, pod: V1Pod, node: SimNode, want_npu: int, want_gpu: int) -> None:
        # kubelet's answer when a pod is bound without the devices being free (the scheduler
        # prevents it; a pod created with spec.nodeName bypasses the scheduler).
        resource, want, free = (
            (self.npu.resource, want_npu, len(node.free_npus))
            if want_npu > len(node.free_npus)
            else (GPU_RESOURCE, want_gpu, len(node.free_gpus))
        )
        self.core.patch_namespaced_pod_status(
            pod.metadata.name,
            pod.metadata.namespace,
            {
                "status": {
                    "phase": "Failed",
                    "reason": "UnexpectedAdmissionError",
                    "message": "Pod Allocate failed due to requested number of devices "
                    f"unavailable for {resource}. Requested: {want}, Available: {free}, "
                    "which is unexpected",
                    "hostIP": node.host_ip,
                }
            },
            _content_type=_SMP,
        )

    def _post_running(self, rec: _PodRecord) -> None:
        now = _now()
        rec.started = True
        rec.start_time = rec.start_time or now
        for c in rec.containers:
            c.started_at = now
            c.waiting = None
        self._post_status(rec)

    def _terminated(self, rec: _PodRecord, c: _Container) -> dict[str, Any]:
        t: dict[str, Any] = {
            "exitCode": c.exit_code,
            "reason": c.reason,
            "startedAt": c.started_at,
            "finishedAt": c.finished_at,
            "containerID": f"sim://{rec.uid}/{c.name}",
        }
        if c.message:
            t["message"] = c.message
        return t

    def _post_status(self, rec: _PodRecord) -> None:
        statuses = []
        for c in rec.containers:
            if not rec.started and c.waiting:
                state: dict[str, Any] = {
                    "waiting": {"reason": c.waiting[0], "message": c.waiting[1]}
                }
            elif not rec.started:
                state = {"waiting": {"reason": "ContainerCreating"}}
            elif c.running:
                state = {"running": {"startedAt": c.started_at}}
            else:
                state = {"terminated": self._terminated(rec, c)}
            s: dict[str, Any] = {
                "name": c.name,
                "image": c.image,
                "imageID": f"sim://{c.image}",
                "ready": rec.started and c.running,
                "started": rec.started and c.running,
                "restartCount": c.restart_count,
                "state": state,
                "lastState": c.last_state or {},
            }
            if rec.started:
                s["containerID"] = f"sim://{rec.uid}/{c.name}"
            statuses.append(s)
        done = rec.started and all(not c.running for c in rec.containers)
        if not rec.started:
            phase = "Pending"
        elif done:
            phase = "Succeeded" if all(c.exit_code == 0 for c in rec.containers) else "Failed"
        else:
            phase = "Running"
        ready = rec.started and all(c.running for c in rec.containers)
        now = _now()
        cond_reason = {} if ready or not done else {"reason": "PodCompleted"}
        conditions = [{"type": "Initialized", "status": "True", "lastTransitionTime": now}] + [
            {"type": t, "status": str(ready), "lastTransitionTime": now, **cond_reason}
            for t in ("Ready", "ContainersReady")
        ]
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": rec.node.host_ip,
            "podIP": rec.pod_ip,
            "podIPs": [{"ip": rec.pod_ip}],
            "conditions": conditions,
            "containerStatuses": statuses,
        }
        if rec.start_time:
            status["startTime"] = rec.start_time
        self.core.patch_namespaced_pod_status(
            rec.name, rec.namespace, {"status": status}, _content_type=_SMP
        )
        if phase in ("Succeeded", "Failed"):
            self._release(rec)

    # -- bookkeeping -----------------------------------------------------------------------

    def _alloc_pod_ip(self, node: SimNode) -> str:
        # A node's pods draw from that node's own range (its index is its host IP's last
        # octet), so only this agent, which owns the node, ever hands them out.
        node_index = node.host_ip.rsplit(".", 1)[1]
        for n in range(1, 255):
            ip = f"{POD_NET}{node_index}.{n}"
            if ip not in self._used_pod_ips:
                self._used_pod_ips.add(ip)
                return ip
        raise RuntimeError(f"the simulated pod range of node {node.name} is full")

    def _release(self, rec: _PodRecord) -> None:
        """Give back the chips and the pod IP of a pod that ended or went away."""
        if rec.terminal:
            return
        rec.terminal = True

        def free() -> None:
            with self._lock:
                rec.node.free_npus |= set(rec.npu_ids) - rec.node.unhealthy
                rec.node.free_gpus |= set(rec.gpu_ids)
                self._used_pod_ips.discard(rec.pod_ip)

        if self.runtime is not None:
            # Only once the processes are gone, as kubelet tears down a pod's sandbox: a
            # new pod given the address at once could not bind the ports the old one holds.
            self.runtime.stop(rec.uid, then=free)
        else:
            free()

    def _forget(self, pod: V1Pod) -> None:
        key = (pod.metadata.namespace, pod.metadata.name)
        rec = self._pods.get(key)
        if rec is not None and rec.uid == pod.metadata.uid:
            self._release(rec)
            del self._pods[key]

    def _force_delete(self, namespace: str, name: str, uid: str) -> None:
        try:
            self.core.delete_namespaced_pod(
                name,
                namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
            )
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def _pods_on_my_nodes(self) -> Iterable[V1Pod]:
        return [
            p
            for p in self.core.list_pod_for_all_namespaces().items
            if (p.spec.node_name or "") in self.nodes
        ]

    def _wait_admitted(self, pod: PodRef, timeout: float) -> _PodRecord:
        key = pod if isinstance(pod, tuple) else (pod.metadata.namespace, pod.metadata.name)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                rec = self._pods.get(key)
                if rec is None:
                    # Not bound yet, or the watch has not got to it: look ourselves.
                    try:
                        self._reconcile(self.core.read_namespaced_pod(key[1], key[0]))
                    except ApiException as e:
                        if e.status != 404:
                            raise
                    rec = self._pods.get(key)
                if rec is not None:
                    return rec
            if time.monotonic() > deadline:
                raise TimeoutError(f"pod {key[0]}/{key[1]} was not admitted on a simulated node")
            time.sleep(0.2)


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll until `predicate()` returns something truthy, and return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)
