"""Start and stop a real Kubernetes control plane on loopback for tests.

A thin layer over scripts/cluster/{build,up,down}.sh, usable from pytest fixtures
(tests/k8s/conftest.py) and from other test suites (e.g. end-to-end runs).
"""

from __future__ import annotations

import os
import shlex
import subprocess
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
