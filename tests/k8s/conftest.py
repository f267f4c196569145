"""Fixtures for tests against a real Kubernetes control plane on loopback.

`control_plane` (session) starts a private etcd + kube-apiserver + kube-controller-manager +
kube-scheduler with scripts/cluster/up.sh in its own state dir, on free ports, so parallel
sessions do not collide, and stops it at the end. When the binaries are not cached yet it
builds them first (scripts/cluster/build.sh, several minutes, once per machine): on a fresh CI
machine these tests build, they do not skip.

There is no kubelet: `node_agent` gives a SIMULATED kubelet + Ascend device plugin
(tests/sim/node_agent.py) for fake nodes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client
from sim.node_agent import NodeAgent

from k8s.cluster import (
    BUILD_TIMEOUT_S,
    ControlPlane,
    binaries_cached,
    start_control_plane,
    stop_control_plane,
)
from k8s.operator_harness import Jobs, OperatorProcess, install_crd, new_namespace


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The build happens inside the first test that asks for the cluster; give the tests here
    # room for it when it is still to come (`make test` builds beforehand, so normally not).
    if binaries_cached():
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT_S))


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    state = tmp_path_factory.mktemp("k8s") / "cluster"
    cp = start_control_plane(state)
    try:
        yield cp
    finally:
        cp.api.close()
        stop_control_plane(state)


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def k8s_api(control_plane: ControlPlane) -> client.ApiClient:
    """The official Python client, authenticated as a cluster admin."""
    return control_plane.api


@pytest.fixture(scope="session")
def core_v1(k8s_api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_api)


@pytest.fixture
def namespace(core_v1: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace whose `default` ServiceAccount is ready (pods are refused before)."""
    name = new_namespace(core_v1)
    yield name
    core_v1.delete_namespace(name)


@pytest.fixture
def node_agent(core_v1: client.CoreV1Api) -> Iterator[NodeAgent]:
    """A SIMULATED kubelet + Ascend device plugin, watching; add nodes with add_node().

    At the end it removes its nodes and the pods bound to them.
    """
    with NodeAgent(core_v1, name=f"sim{uuid.uuid4().hex[:6]}") as agent:
        yield agent


# Tests list `node_agent` before `operator`: fixtures are torn down in reverse, so the
# operator stops before the simulated nodes delete their pods (which it would answer with
# one more restart).
@pytest.fixture
def operator(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator as its own process (as in its Deployment), watching `namespace`."""
    install_crd(control_plane.api)
    op = OperatorProcess(control_plane, namespace, tmp_path)
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def start_operator(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Starts the operator watching `namespace` with the given extra flags; stops it after."""
    started: list[OperatorProcess] = []

    def start(*args: str) -> OperatorProcess:
        install_crd(control_plane.api)
        log_dir = tmp_path / f"operator-{len(started)}"
        log_dir.mkdir()
        op = OperatorProcess(control_plane, namespace, log_dir, args=args)
        started.append(op)
        op.start()
        return op

    yield start
    for op in started:
        op.stop()


@pytest.fixture
def jobs(k8s_api: client.ApiClient, namespace: str) -> Jobs:
    return Jobs(k8s_api, namespace)
