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
  accepted; a pod with another volume fails (exit 1) with the reason in the log. Given
  `config_map(namespace, name)` (the ConfigMap's data, or None), a configMap volume is
  mounted as kubelet does it (ranktable.publish: `..data` swapped atomically), in a
  directory of the pod's own, and updated every `sync_s` seconds while the container runs;
  env values under its mount path are rewritten to that directory.

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

from shufflenet_contract import ranktable

log = logging.getLogger(__name__)

# <pod>.<service>.<namespace>.svc, as the operator names rank 0 in MASTER_ADDR.
POD_DNS = re.compile(r"^([a-z0-9-]+)\.([a-z0-9-]+)\.([a-z0-9-]+)\.svc$")
STOP_GRACE_S = 10.0
DNS_TIMEOUT_S = 60.0


class ProcessRuntime:
    def __init__(
        self,
        log_dir: Path,
        pod_ip: Callable[[str, str], str | None],
        *,
        config_map: Callable[[str, str], dict[str, str] | None] | None = None,
        sync_s: float = 1.0,
    ) -> None:
        """`pod_ip(namespace, name)`: the IP the pod has been given, or None (yet);
        `config_map(namespace, name)`: a ConfigMap's data, to mount configMap volumes."""
        self.log_dir = log_dir
        self.pod_ip = pod_ip
        self.config_map = config_map
        self.sync_s = sync_s
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping: set[str] = set()
        self._on_stopped: dict[str, list[Callable[[], None]]] = {}
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

    def stop(self, uid: str, then: Callable[[], None] | None = None) -> None:
        """Stop the pod's processes (SIGTERM, SIGKILL after the grace period); `then()` once
        they are gone, as kubelet removes a deleted pod only after its containers."""
        with self._lock:
            proc = self._procs.get(uid)
            self._stopping.add(uid)
            live = proc is not None and proc.poll() is None
            if then is not None and live:
                self._on_stopped.setdefault(uid, []).append(then)
        if not live:
            if then is not None:
                then()
            return
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
            # A stopped process (SIGSTOP: a hung rank) only takes SIGTERM once continued.
            os.killpg(proc.pid, signal.SIGCONT)
        threading.Thread(target=self._kill_after_grace, args=(proc,), daemon=True).start()

    def kill(self, uid: str) -> None:
        """SIGKILL the pod's processes (an OOM kill, a crashed node...)."""
        self.signal(uid, signal.SIGKILL)

    def signal(self, uid: str, sig: int) -> bool:
        """Send `sig` to the pod's processes (SIGSTOP: a hung rank); False if none run."""
        with self._lock:
            proc = self._procs.get(uid)
        if proc is None or proc.poll() is not None:
            return False
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def pids(self) -> dict[str, int]:
        """The main process of each pod whose container still runs, by pod UID."""
        with self._lock:
            return {uid: p.pid for uid, p in self._procs.items() if p.poll() is None}

    def _stopped(self, uid: str) -> None:
        with self._lock:
            callbacks = self._on_stopped.pop(uid, [])
        for then in callbacks:
            try:
                then()
            except Exception:  # the API server may be away; the agent's relist retries
                log.exception("after pod %s stopped", uid)

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
            self._stopped(uid)
            return
        mounts = self._mount_config_maps(pod, container)
        for var, value in env.items():
            for path, local in mounts.items():
                if value == path or value.startswith(path + "/"):
                    env[var] = str(local) + value[len(path) :]
        with self._lock:
            proc = None
            if uid not in self._stopping:
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
        if proc is None:
            self._stopped(uid)
            return
        if mounts:
            threading.Thread(
                target=self._sync_config_maps, args=(pod, container, proc), daemon=True
            ).start()
        code = proc.wait()
        # The pod's process group goes with its main process (a container's PID namespace).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with self._lock:
            stopped = uid in self._stopping
        if not stopped:
            on_exit(128 - code if code < 0 else code)
        self._stopped(uid)

    def _config_map_mounts(self, pod: V1Pod, container: Any) -> dict[str, tuple[str, Path]]:
        """mount path -> (ConfigMap name, the pod's local directory for it)."""
        if self.config_map is None:
            return {}
        volumes = {v.name: v for v in pod.spec.volumes or []}
        out = {}
        for mount in container.volume_mounts or []:
            source = volumes[mount.name].config_map
            if source is not None:
                local = self.log_dir / "volumes" / pod.metadata.uid / mount.name
                out[mount.mount_path] = (source.name, local)
        return out

    def _publish(self, pod: V1Pod, name: str, local: Path, last: dict[str, str] | None) -> Any:
        assert self.config_map is not None
        try:
            data = self.config_map(pod.metadata.namespace, name)
        except Exception as exc:  # the API server may be away: kubelet keeps what it has
            log.debug("pod %s: configMap %s not read: %s", pod.metadata.name, name, exc)
            return last
        if data is not None and data != last:
            ranktable.publish(local, data)
            return data
        return last

    def _mount_config_maps(self, pod: V1Pod, container: Any) -> dict[str, Path]:
        mounts = self._config_map_mounts(pod, container)
        for name, local in mounts.values():
            local.mkdir(parents=True, exist_ok=True)
            self._publish(pod, name, local, None)
        return {path: local for path, (_, local) in mounts.items()}

    def _sync_config_maps(self, pod: V1Pod, container: Any, proc: subprocess.Popen[bytes]) -> None:
        mounts = list(self._config_map_mounts(pod, container).values())
        last: dict[str, dict[str, str] | None] = {}
        while proc.poll() is None:
            for name, local in mounts:
                last[name] = self._publish(pod, name, local, last.get(name))
            time.sleep(self.sync_s)

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
