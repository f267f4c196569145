"""The package's layout: old import paths still work, dependencies run one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import shufflenet_trainer

PACKAGE = Path(shufflenet_trainer.__file__).parent

# Which parts of the trainer package each subpackage may import (besides itself and the
# torch-free leaves errors/atomic/console). model/ and data/ are the bottom, train/ builds
# on them, metrics/ observes train/; jobs/ only starts processes and reads manifests.
LEAVES = {"errors", "atomic", "console", "compat"}
ALLOWED = {
    "model": set(),
    "data": set(),
    "train": {"model", "data"},
    "metrics": {"train"},
    "jobs": set(),
}


def test_old_import_paths_are_the_new_modules() -> None:
    from shufflenet_trainer import models, ops
    from shufflenet_trainer.model import ops as new_ops
    from shufflenet_trainer.model import shufflenetv2
    from shufflenet_trainer.models import build_model
    from shufflenet_trainer.ops import channel_shuffle_split

    assert models is shufflenetv2
    assert ops is new_ops
    assert build_model is shufflenetv2.build_model
    assert channel_shuffle_split is new_ops.channel_shuffle_split


@pytest.mark.parametrize("script", ["shufflenet-train", "snjob", "shufflenet-operator"])
def test_console_scripts_resolve(script: str) -> None:
    (entry,) = metadata.entry_points(group="console_scripts", name=script)
    assert callable(entry.load())


def _runtime_imports(path: Path) -> set[str]:
    """The package's modules `path` imports at run time (TYPE_CHECKING blocks excluded)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    here = parts[:-1]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = here[: len(here) - node.level + 1]
            target = [*base, *(node.module or "").split(".")] if node.module else list(base)
        elif (node.module or "").startswith("shufflenet_trainer"):
            target = node.module.split(".")[1:]
        else:
            continue
        if target:
            found.add(target[0])
        else:  # `from .. import x`
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("sub", sorted(ALLOWED))
def test_dependencies_run_one_way(sub: str) -> None:
    allowed = ALLOWED[sub] | LEAVES | {sub}
    for path in sorted((PACKAGE / sub).rglob("*.py")):
        extra = _runtime_imports(path) - allowed
        assert not extra, f"{path.relative_to(PACKAGE)} imports {sorted(extra)}"


def test_job_tools_and_data_package_import_without_torch() -> None:
    # snjob (run-local, valprep, status) must start fast and work without torch installed.
    modules = [
        "shufflenet_trainer.snjob",
        "shufflenet_trainer.jobs.runlocal",
        "shufflenet_trainer.jobs.launch",
        "shufflenet_trainer.jobs.status",
        "shufflenet_trainer.data",
        "shufflenet_trainer.data.prep.valprep",
        "shufflenet_trainer.train.config",
    ]
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'numpy'):\n"
        "    sys.modules[name] = None  # any import of it raises ImportError\n"
        f"for name in {modules!r}:\n"
        "    __import__(name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
