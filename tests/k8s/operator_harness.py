"""Run the real operator (`python -m shufflenet_operator`) against the test control plane.

The operator runs as a subprocess watching one namespace, with short watch timeouts and
restart backoff so that tests are quick; it can be killed and started again mid-job.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers import jobs
from kubernetes import client
from sim.node_agent import wait_for

from k8s.cluster import REPO, ControlPlane
from shufflenet_contract import crd
from shufflenet_operator import render
from shufflenet_trainer.jobs.launch import free_port

CRD_PATH = REPO / "manifests" / "crd" / "shufflenettrainingjobs.yaml"


def install_crd(api: client.ApiClient, body: dict[str, Any] | None = None) -> None:
    """Create a CRD (default: ours, from crd.py; the committed YAML equals it, a unit test
    checks) unless it exists, and wait until it is served."""
    ext = client.ApiextensionsV1Api(api)
    body = body or crd.crd()
    try:
        ext.create_custom_resource_definition(body)
    except client.ApiException as e:
        if e.status != 409:
            raise

    def established() -> bool:
        conds = ext.read_custom_resource_definition(body["metadata"]["name"]).status.conditions
        return any(c.type == "Established" and c.status == "True" for c in conds or [])

    wait_for(established, timeout=60, what=f"CRD {body['metadata']['name']} established")


# How often the test operator looks at every job (its --resync), seconds.
RESYNC_S = 5


class OperatorProcess:
    """The operator watching `namespace`; or the namespaces in `namespaces` ([]: all of them).

    It authenticates with the control plane's kubeconfig (an admin) unless `env` overrides
    KUBECONFIG (e.g. with a ServiceAccount's token, as in its Deployment).
    """

    def __init__(
        self,
        cp: ControlPlane,
        namespace: str,
        log_dir: Path,
        *,
        namespaces: list[str] | None = None,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        """`args`: more operator flags, after (and so over) the quick ones tests use."""
        self.cp = cp
        self.args = list(args)
        self.namespace = namespace
        self.namespaces = [namespace] if namespaces is None else list(namespaces)
        self.env = dict(env or {})
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.live_port = 0
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.metrics_port = free_port()
        self.live_port = live_port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "shufflenet_operator",
            *(f"--namespace={ns}" for ns in self.namespaces),
            "--metrics-addr",
            "127.0.0.1",
            "--metrics-port",
            str(self.metrics_port),
            "--liveness",
            f"http://127.0.0.1:{live_port}/healthz",
            "--restart-backoff",
            "0.5",
            "--resync",
            str(RESYNC_S),
            "--progress-interval",
            "1",
            "--watch-timeout",
            "10",
            "--verbose",
            # As the chart starts it: a default trainer image per device type.
            *(f"--trainer-image={d}={ref}" for d, ref in jobs.TRAINER_IMAGES.items()),
            *self.args,
        ]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                env={**self.cp.env(), **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

        def live() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{live_port}/healthz", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(live, timeout=60, what="operator liveness endpoint")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def logs(self) -> str:
        return "\n".join(
            f"--- operator run {i}\n" + (self.log_dir / f"operator-{i}.log").read_text()[-8000:]
            for i in range(1, self.starts + 1)
            if (self.log_dir / f"operator-{i}.log").exists()
        )

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()


def job_manifest(name: str, *, device: str = "npu", count: int = 8, **spec: Any) -> dict[str, Any]:
    """A small job the test cluster can schedule (default scheduler, synthetic data)."""
    small = {
        "image": "shufflenet/trainer:test",
        "devices": {"type": device, "count": count},
        "model": {"arch": "shufflenet_v2_x0_5"},
        "training": {"epochs": 1, "batchSize": 8 * count},
        "data": {"dummy": True},
        "runPolicy": {"backoffLimit": 2},
        # No Volcano here: the default scheduler, and no PodGroup unless a test asks.
        "scheduling": {"schedulerName": "default-scheduler", "gang": False},
        # A port nothing listens on: the operator scrapes rank 0's pod IP (loopback here)
        # at this port, and a trainer elsewhere on the machine on 9400 would answer.
        "metrics": {"port": free_port()},
    }
    return jobs.job_manifest(name, **{**small, **spec})


def new_namespace(core: client.CoreV1Api) -> str:
    """A fresh namespace whose `default` ServiceAccount is ready (pods are refused before)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})

    def sa_ready() -> bool:
        try:
            return bool(core.read_namespaced_service_account("default", name).secrets)
        except client.ApiException as e:
            if e.status == 404:
                return False
            raise

    wait_for(sa_ready, timeout=60, what=f"ServiceAccount {name}/default")
    return name


class Jobs:
    """ShuffleNetTrainingJobs and their children in one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(
            crd.GROUP, crd.VERSION, self.namespace, crd.PLURAL, manifest
        )

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            crd.GROUP, crd.VERSION, self.namespace, crd.PLURAL, name
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            crd.GROUP, crd.VERSION, self.namespace, crd.PLURAL, name
        )

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            crd.GROUP,
            crd.VERSION,
            self.namespace,
            crd.PLURAL,
            name,
            {"spec": spec},
            _content_type="application/merge-patch+json",
        )

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def gone(self, name: str) -> bool:
        try:
            self.get(name)
        except client.ApiException as e:
            return e.status == 404
        return False

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        conds = self.status(name).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), {})

    def pods(self, name: str) -> list[client.V1Pod]:
        items = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{render.JOB_LABEL}={name}"
        ).items
        return sorted(items, key=lambda p: int(p.metadata.labels[render.RANK_LABEL]))

    def wait_phase(self, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(name)
            if status.get("phase") == phase:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {name}: phase {phase} not reached in {timeout}s: {status}")
            time.sleep(0.2)

    def events(self, name: str) -> list[client.CoreV1Event]:
        return [
            e
            for e in self.core.list_namespaced_event(self.namespace).items
            if e.involved_object.name == name and e.involved_object.kind == crd.KIND
        ]


def serve_rank_0(jobs: Jobs, name: str, port: int, resumed: int, steps: int) -> Any:
    """Rank 0's training process as the operator scrapes it: the trainer's own exporter on
    rank 0's pod IP (the simulated pods run nothing), its checkpoint of step `resumed`
    loaded, then `steps` steps of 0.5 s. Close it when the process is to end."""
    from shufflenet_trainer.metrics.exporter import MetricsExporter
    from shufflenet_trainer.train.config import parse_config
    from shufflenet_trainer.train.loop import StepEvent

    cfg = parse_config(["--dummy", "-a", "shufflenet_v2_x0_5", "-b", "8"], world_size=2, rank=0)
    exporter = MetricsExporter(cfg, {"JOB_NAME": name})
    exporter.start(port, addr=jobs.pods(name)[0].status.pod_ip)
    plan = {"folder": None, "device": "cpu", "epochs": 3, "steps_per_epoch": 50}
    exporter.on_start({**plan, "global_step": resumed})
    for n in range(steps):
        exporter.on_step(StepEvent(0, n, resumed + n + 1, 16, 0.5, 0.0, 0.1))
    return exporter
