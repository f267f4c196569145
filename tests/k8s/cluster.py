"""Start and stop a real Kubernetes control plane on loopback for tests.

A thin layer over scripts/cluster/{build,up,down}.sh, usable from pytest fixtures
(tests/k8s/conftest.py) and from other test suites (e.g. end-to-end runs).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "cluster"
KUBE_VERSION = "v1.20.2"
# A first build compiles Kubernetes (minutes on 2 cores); the per-test timeout must allow it.
BUILD_TIMEOUT_S = 3600


def _cache_bin() -> Path:
    cache = os.environ.get("SHUFFLENET_CACHE") or str(Path.home() / ".cache" / "shufflenet-k8s")
    return Path(cache) / f"kube-{KUBE_VERSION}" / "bin"


def binaries_cached() -> bool:
    return all(
        (_cache_bin() / b).exists()
        for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
    )


@dataclass
class ControlPlane:
    """A running control plane: its state dir, kubeconfig and binaries."""

    state_dir: Path
    kubeconfig: Path
    bin_dir: Path
    api: client.ApiClient

    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG and PATH (kubectl) pointing at this cluster."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=input,
            env=self.env(),
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )


def _run_script(name: str, env: dict[str, str], timeout: float, *args: str) -> str:
    proc = subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"scripts/cluster/{name} failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
        )
    return proc.stdout


def start_control_plane(state_dir: Path, *, node: bool = False) -> ControlPlane:
    """Build the binaries if needed, then start a control plane with its state in state_dir;
    with `node`, also the real node (scripts/cluster/node.sh: images are built first).

    state_dir must not exist or be empty; ports are picked free, so several control planes
    can run at once, but only one real node (they share containerd's image store).
    """
    env = {**os.environ, "SHUFFLENET_CLUSTER_DIR": str(state_dir)}
    _run_script("build.sh", env, BUILD_TIMEOUT_S, *(["--node"] if node else []))
    try:
        out = _run_script("up.sh", env, BUILD_TIMEOUT_S, *(["--node"] if node else []))
    except BaseException:
        stop_control_plane(state_dir)
        raise
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.splitlines()
        if line.startswith("export ")
    )
    kubeconfig = Path(shlex.split(exports["KUBECONFIG"])[0])
    return ControlPlane(
        state_dir=state_dir,
        kubeconfig=kubeconfig,
        bin_dir=Path((state_dir / "bindir").read_text().strip()),
        api=config.new_client_from_config(config_file=str(kubeconfig)),
    )


def stop_control_plane(state_dir: Path) -> None:
    """Stop what start_control_plane started and remove state_dir (a no-op if not there)."""
    env = {**os.environ, "SHUFFLENET_CLUSTER_DIR": str(state_dir)}
    _run_script("down.sh", env, 300)


def _running(pid: int) -> bool:
    """Alive and not a zombie (reaped here when it is a child of this process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def api_ready(cp: ControlPlane) -> bool:
    """Whether the API server answers /readyz with ok (as up.sh's api_ready asks it)."""
    port = (cp.state_dir / "ports" / "apiserver").read_text().strip()
    name, value = (cp.state_dir / "auth-header").read_text().strip().split(": ", 1)
    request = urllib.request.Request(f"https://127.0.0.1:{port}/readyz", headers={name: value})
    context = ssl.create_default_context(cafile=str(cp.state_dir / "pki" / "ca.crt"))
    try:
        with urllib.request.urlopen(request, timeout=3, context=context) as resp:
            return resp.read() == b"ok"
    except OSError:  # refused, reset, 500 while it starts: not ready
        return False


def restart_apiserver(cp: ControlPlane, *, down_s: float = 0.0, timeout: float = 120) -> float:
    """SIGKILL the control plane's kube-apiserver and start it again with the command line
    up.sh gave it (same flags, certificates and etcd, so the cluster's state stays), after
    `down_s` seconds; the seconds from the kill until /readyz answered again.

    The new process is recorded in the pid files as up.sh records it, so down.sh stops it.
    """
    pids = cp.state_dir / "pids"
    pid = int((pids / "kube-apiserver.pid").read_text())
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    killed = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while _running(pid):
        time.sleep(0.05)
    time.sleep(down_s)
    with (cp.state_dir / "logs" / "kube-apiserver.log").open("ab") as log:
        proc = subprocess.Popen(
            [c.decode() for c in cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (pids / "kube-apiserver.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while not api_ready(cp):
        if proc.poll() is not None:
            raise RuntimeError(f"kube-apiserver exited {proc.returncode} after a restart")
        if time.monotonic() > deadline:
            raise TimeoutError(f"kube-apiserver not ready {timeout:g}s after a restart")
        time.sleep(0.2)
    return time.monotonic() - killed
