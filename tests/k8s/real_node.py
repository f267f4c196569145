"""The one-machine cluster with a REAL node, for tests and `make demo-cluster` alike.

Real: the control plane, the kubelet v1.20.2 with containerd and runc, the CNI bridge,
kube-proxy, dnsmasq as cluster DNS, the cluster's registry (Debian's docker-registry, TLS with
the cluster's CA), the images built by scripts/images/build.sh and pushed there, which the
node's containerd pulls, the chart installed by helm with only the image values (and the
tests' pacing) with the operator running from its image under the chart's ServiceAccount.
SIMULATED: only the hardware side of the Ascend device plugin
(tests/sim/ascend_device_plugin.py), which speaks the kubelet's real device-plugin API.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from integration.metrics_tools import CHART, helm
from sim.ascend_device_plugin import AscendDevicePlugin, PluginConfig

from k8s.cluster import REPO, ControlPlane

PUSH_TOOL = REPO / "scripts" / "cluster" / "push-images.sh"
OPERATOR_NAMESPACE = "shufflenet-system"
RELEASE = "shufflenet"
NPU_CHIPS = 8


def _load_script_module(name: str) -> ModuleType:
    path = REPO / "scripts" / "cluster" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The demo's manifest adapter (scripts/cluster/local_job.py): tests apply what the demo does.
_demo = _load_script_module("local_job")
local_job, claim_volumes = _demo.local_job, _demo.claim_volumes


def _assignments(argv: list[str], timeout: float, env: dict[str, str]) -> dict[str, str]:
    """The NAME=VALUE lines a script prints."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-6000:]}")
    return dict(
        line.split("=", 1)
        for line in proc.stdout.splitlines()
        if "=" in line and not line.startswith("export ")
    )


def push_images(cp: ControlPlane, timeout: float = 1800) -> dict[str, str]:
    """The operator and trainer images pushed to the cluster's registry: REGISTRY and each
    image's reference, tag and digest (OPERATOR_IMAGE, _TAG, _DIGEST; TRAINER_...)."""
    env = {**os.environ, "SHUFFLENET_CLUSTER_DIR": str(cp.state_dir)}
    return _assignments(["bash", str(PUSH_TOOL)], timeout, env)


def pinned(images: dict[str, str], name: str) -> str:
    """The reference the chart makes of a pushed image: registry/repository:tag@digest."""
    return f"{images[name + '_IMAGE']}@{images[name + '_DIGEST']}"


@dataclass
class RealNode:
    """A running cluster with a real node, the images in its registry, and the chart."""

    cp: ControlPlane
    images: dict[str, str]
    plugins: list[AscendDevicePlugin]

    @property
    def containerd(self) -> Path:
        return self.cp.state_dir / "containerd" / "containerd.sock"

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.containerd), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def kill_container(self, container_id: str) -> None:
        """SIGKILL a container's processes through containerd, as the OOM killer would."""
        self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", container_id.split("://")[-1])

    def container_pid(self, container_id: str) -> int:
        """The host pid of a container's first process (its task in containerd)."""
        cid = container_id.split("://")[-1]
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return int(fields[1])
        raise LookupError(f"container {cid} has no task in containerd")

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        # Longer than any --timeout the callers give helm, so that helm says what it waited on.
        proc = subprocess.run(
            [helm(), *args, "--kubeconfig", str(self.cp.kubeconfig)],
            capture_output=True,
            text=True,
            timeout=420,
            env=self.cp.env(),
        )
        if proc.returncode != 0:
            said = f"{proc.stdout}{proc.stderr}"
            raise RuntimeError(
                f"helm {' '.join(args)}: {said}\n{self.describe(OPERATOR_NAMESPACE)}"
            )
        return proc

    def describe(self, namespace: str) -> str:
        """What a failed wait leaves to read: the pods, their events, the containers' logs."""
        out = []
        for args in (
            ("get", "pods", "-o", "wide"),
            ("describe", "pods"),
            ("get", "events", "--sort-by=.lastTimestamp"),
            ("logs", "--all-containers", "--prefix", "--tail=40", "-l", "app.kubernetes.io/name"),
        ):
            proc = self.cp.kubectl(*args, "-n", namespace, check=False)
            out.append(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")
        return "\n".join(out)


def helm_install_operator(node: RealNode, *values: str) -> None:
    """The chart as a user installs it: the images' registry, tags and digests (pushed by
    push_images), nothing else but `values`."""
    images = node.images
    node.helm(
        "upgrade", "--install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE,
        "--create-namespace", "--set", f"global.imageRegistry={images['REGISTRY']}",
        "--set", f"operator.image.tag={images['OPERATOR_TAG']}",
        "--set", f"operator.image.digest={images['OPERATOR_DIGEST']}",
        "--set", f"trainer.images.cpu.tag={images['TRAINER_TAG']}",
        "--set", f"trainer.images.cpu.digest={images['TRAINER_DIGEST']}",
        *values, "--wait", "--timeout", "300s",
    )  # fmt: skip


def start_device_plugin(cp: ControlPlane, resource: str) -> AscendDevicePlugin:
    """The Ascend device plugin stand-in for `resource` (huawei.com/Ascend910, or
    huawei.com/npu of newer plugins), registered with the node's kubelet."""
    plugin = AscendDevicePlugin(
        PluginConfig(
            resource=resource,
            # The kubelet's pod-resources socket is under its --root-dir; its device-plugin
            # registry is at a fixed path inside the node's namespace, which up.sh binds to
            # the state dir's kubelet/device-plugins.
            kubelet_root=str(cp.state_dir / "kubelet" / "root"),
            plugin_dir=str(cp.state_dir / "kubelet" / "device-plugins"),
            kubeconfig=str(cp.kubeconfig),
            node_name="shufflenet-node",
            chips=NPU_CHIPS,
        )
    )
    plugin.start()
    plugin.wait_registered(timeout=60)
    return plugin
