"""`make bench-gpu` (bench/gpu/run.sh): the parts that run without a GPU.

The script itself is meant for a CUDA machine; `--dry-run` runs its sections on the CPU at
tiny sizes, which checks the wiring (arguments, JSON files, the summary), not the figures.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "bench" / "gpu" / "run.sh"


def load_summarize():
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "bench/gpu/summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_sh(*args: str, out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(RUN), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env},
        timeout=300,
    )


def test_the_script_parses_and_documents_itself(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(RUN)]).returncode == 0
    shown = run_sh("--help", out=tmp_path)
    assert shown.returncode == 0
    for section in ("ops", "kernels", "train_bf16", "cli_dummy", "cli_jpeg", "decode"):
        assert f"  {section} " in shown.stdout
    bad = run_sh("--fast", out=tmp_path)
    assert bad.returncode == 2 and "unknown argument --fast" in bad.stderr


def test_a_dry_run_of_the_op_sections_passes_and_writes_its_figures(tmp_path: Path) -> None:
    proc = run_sh("--dry-run", out=tmp_path, SECTIONS="ops kernels")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "all cpu op checks passed" in proc.stdout
    assert proc.stdout.rstrip().endswith("all sections passed")
    choices = json.loads((tmp_path / "kernels.json").read_text())["choices"]
    assert choices and all(": " in line for line in choices)


def test_a_broken_section_fails_the_run_by_name(tmp_path: Path) -> None:
    # A kernel-table run that cannot start (no such architecture): loud, named, exit 1.
    proc = run_sh("--dry-run", out=tmp_path, SECTIONS="kernels", PYTHON="false")
    assert proc.returncode == 1
    assert "FAILED: kernels (exit 1)" in proc.stdout


def test_the_summary_requires_the_figures_of_the_sections_that_ran(tmp_path: Path) -> None:
    summarize = load_summarize()
    assert summarize.main(tmp_path, ["kernels"]) == 1
    (tmp_path / "kernels.json").write_text(json.dumps({"choices": ["split ...: copy"]}))
    assert summarize.main(tmp_path, ["kernels"]) == 0
    assert summarize.main(tmp_path) == 1  # all sections: the training figures are missing


@pytest.mark.parametrize(
    "rate, fps, share, want",
    [
        (2_200, 1_000, 0.5, 0.5238),  # 0.5 ms wait per image against 0.4545 ms of compute
        (10_000, 1_000, 0.5, 0.8333),
        (10_000, 5_000, 0.0, 0.0),
    ],
)
def test_data_wait_share_at_another_rate(rate, fps, share, want) -> None:
    assert load_summarize().wait_share_at(rate, fps, share) == pytest.approx(want, abs=1e-4)
