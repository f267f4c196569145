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
# torch-free leaves in LEAVES). model/ and data/ are the bottom, train/ builds
# on them, metrics/ observes train/; jobs/ only starts processes and reads manifests.
LEAVES = {"errors", "atomic", "console", "compat", "argparsing"}
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


def _contract_imports(path: Path) -> set[str]:
    """The shufflenet_contract modules that `path`, a module of its ranktable package,
    imports, named from shufflenet_contract: `from .format import x` is ranktable.format,
    `from ..env import x` is env."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = "ranktable." if node.level == 1 else ""
            modules = [node.module] if node.module else [a.name for a in node.names]
            found.update(base + module for module in modules)
        elif (node.module or "").startswith("shufflenet_contract."):
            found.add(node.module.split(".", 1)[1])
    return found


def test_rank_table_modules_depend_on_the_format_only() -> None:
    # The format is the bottom; the operator's side (build) and the rank's (mount) each sit
    # on it and not on each other, so either can change without the other.
    from shufflenet_contract import ranktable

    allowed = {
        "format": set(),
        "build": {"ranktable.format"},
        "mount": {"ranktable.format", "env"},
    }
    here = Path(ranktable.__file__).parent
    assert {p.stem for p in here.glob("*.py")} - {"__init__"} == set(allowed)
    for name, deps in allowed.items():
        extra = _contract_imports(here / f"{name}.py") - deps
        assert not extra, f"ranktable/{name}.py imports {sorted(extra)}"


def test_operator_uses_only_the_rank_table_format_and_build() -> None:
    # The operator builds and checks tables; waiting for one and copying it is a rank's job.
    # It imports the package (which loads mount too), so what is checked is the names it uses.
    from importlib.util import find_spec

    from shufflenet_contract import ranktable

    spec = find_spec("shufflenet_operator")
    assert spec is not None and spec.submodule_search_locations
    operator = Path(next(iter(spec.submodule_search_locations)))
    ours = set(vars(ranktable.format)) | set(vars(ranktable.build))
    used: set[str] = set()
    for path in sorted(operator.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                modules = {node.module or "", *(f"{node.module}.{a.name}" for a in node.names)}
            else:
                modules = set()
            assert "shufflenet_contract.ranktable.mount" not in modules, path.name
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "ranktable":
                used.add(node.attr)
    assert used, "the operator no longer uses ranktable: drop this test"
    assert used <= ours, f"the operator uses mount's {sorted(used - ours)}"
