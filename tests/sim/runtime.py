"""SIMULATED container runtime: runs a pod's containers as local processes.

With it, the simulated kubelet (node_agent.NodeAgent(runtime=ProcessRuntime(...))) runs what
the operator put in a rank pod, for real: the container's command and args (the image is
ignored: the processes use this checkout's Python environment), with the pod's environment.
What a node and a pod network would give a container is stood in for, and nothing else:

* `valueFrom.fieldRef` env (status.podIP, status.hostIP, metadata.name/namespace/uid) is
  filled in;
* cluster DNS: an env value naming a pod through its headless Service
  (`<pod>.<service>.<namespace>.svc`, e.g. MASTER_ADDR) becomes that pod's IP; the container
  is started once that pod has an IP, as a pod waits for DNS to resolve;
* a pod's own network namespace: METRICS_ADDR is set to the pod IP, so that the ranks'
  exporters, all on the job's one metrics port, bind their own addresses (127.2.N.M);
* volumes: only `hostPath` mounted at its own path (so paths need no rewriting) and
  `emptyDir`/`configMap`/`secret` (not mounted: the processes see the host's files) are
  accepted; a pod with another volume fails (exit 1) with the reason in the log.

The process's exit code becomes the container's terminated state, through the agent's
`finish()`; deleting the pod stops the process (SIGTERM, then SIGKILL after the grace period),
as kubelet does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes.client import V1Pod

log = logging.getLogger(__name__)

# <pod>.<service>.<namespace>.svc, as the operator names rank 0 in MASTER_ADDR.
POD_DNS = re.compile(r"^([a-z0-9-]+)\.([a-z0-9-]+)\.([a-z0-9-]+)\.svc$")
STOP_GRACE_S = 10.0
DNS_TIMEOUT_S = 60.0


class ProcessRuntime:
    def __init__(self, log_dir: Path, pod_ip: Callable[[str, str], str | None]) -> None:
        """`pod_ip(namespace, name)`: the IP the pod has been given, or None (yet)."""
        self.log_dir = log_dir
        self.pod_ip = pod_ip
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping: set[str] = set()
        self._lock = threading.Lock()
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, pod: V1Pod, ip: str, on_exit: Callable[[int], None]) -> None:
        """Start the pod's (single) container in the background; `on_exit(code)` after."""
        (container,) = pod.spec.containers
        try:
            _check_volumes(pod)
        except ValueError as exc:
            # A setup this simulation cannot give: the container fails, with the reason logged.
            log.error("pod %s: %s", pod.metadata.name, exc)
            on_exit(1)
            return
        threading.Thread(
            target=self._run,
            args=(pod, container, ip, on_exit),
            name=f"container-{pod.metadata.name}",
            daemon=True,
        ).start()

    def stop(self, uid: str) -> None:
        with self._lock:
            proc = self._procs.get(uid)
            self._stopping.add(uid)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        threading.Thread(target=self._kill_after_grace, args=(proc,), daemon=True).start()

    def kill(self, uid: str) -> None:
        """SIGKILL the pod's processes (an OOM kill, a crashed node...)."""
        with self._lock:
            proc = self._procs.get(uid)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def _kill_after_grace(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def _run(self, pod: V1Pod, container: Any, ip: str, on_exit: Callable[[int], None]) -> None:
        uid = pod.metadata.uid
        try:
            env = self._environment(pod, container, ip)
        except TimeoutError as exc:
            log.warning("pod %s: %s", pod.metadata.name, exc)
            on_exit(128 + signal.SIGKILL)
            return
        with self._lock:
            if uid in self._stopping:
                return
            out = (self.log_dir / f"{pod.metadata.name}-{uid[:8]}.log").open("ab")
            proc = subprocess.Popen(
                [*(container.command or []), *(container.args or [])],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            out.close()
            self._procs[uid] = proc
        code = proc.wait()
        # The pod's process group goes with its main process (a container's PID namespace).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with self._lock:
            stopped = uid in self._stopping
        if not stopped:
            on_exit(128 - code if code < 0 else code)

    def _environment(self, pod: V1Pod, container: Any, ip: str) -> dict[str, str]:
        fields = {
            "status.podIP": ip,
            "metadata.name": pod.metadata.name,
            "metadata.namespace": pod.metadata.namespace,
            "metadata.uid": pod.metadata.uid,
            "status.hostIP": (pod.status.host_ip if pod.status else None) or "",
        }
        env = {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", "/tmp"),
            "METRICS_ADDR": ip,
        }
        for var in container.env or []:
            if var.value_from is not None:
                env[var.name] = fields[var.value_from.field_ref.field_path]
            else:
                env[var.name] = self._resolve(var.value or "")
        return env

    def _resolve(self, value: str) -> str:
        match = POD_DNS.match(value)
        if match is None:
            return value
        name, _service, namespace = match.groups()
        deadline = time.monotonic() + DNS_TIMEOUT_S
        while (ip := self.pod_ip(namespace, name)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{value} did not resolve in {DNS_TIMEOUT_S:g}s")
            time.sleep(0.2)
        return ip


def _check_volumes(pod: V1Pod) -> None:
    volumes = {v.name: v for v in pod.spec.volumes or []}
    for mount in pod.spec.containers[0].volume_mounts or []:
        volume = volumes[mount.name]
        if volume.host_path is not None:
            if volume.host_path.path != mount.mount_path:
                raise ValueError(
                    f"simulated runtime: hostPath {volume.host_path.path} must be mounted at "
                    f"its own path, not {mount.mount_path}"
                )
        elif volume.empty_dir is None and volume.config_map is None and volume.secret is None:
            raise ValueError(f"simulated runtime: volume {mount.name} is not supported")
