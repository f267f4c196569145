"""snjob valprep on a miniature ILSVRC2012 validation layout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shufflenet_trainer import snjob
from shufflenet_trainer.data.prep.valprep import Move, parse_labels, plan_valprep, valprep
from shufflenet_trainer.errors import ConfigError, DataError

WNIDS = ["n01440764", "n01443537", "n01484850"]
N = 9


def _name(i: int) -> str:
    return f"ILSVRC2012_val_{i:08d}"


def _labels() -> list[str]:
    return [WNIDS[(i * 7) % 3] for i in range(1, N + 1)]


def _layout(tmp: Path) -> Path:
    val = tmp / "val"
    val.mkdir()
    for i in range(1, N + 1):
        (val / f"{_name(i)}.JPEG").write_bytes(f"jpeg {i}".encode())
    return val


def _csv(tmp: Path) -> Path:
    rows = ["ImageId,PredictionString"]
    # Kaggle's file is not in image order and repeats the wnid per box.
    for i in reversed(range(1, N + 1)):
        w = _labels()[i - 1]
        rows.append(f"{_name(i)},{w} 1 2 30 40 {w} 5 6 70 80 ")
    f = tmp / "LOC_val_solution.csv"
    f.write_text("\n".join(rows) + "\n")
    return f


def _txt(tmp: Path) -> Path:
    f = tmp / "val_wnids.txt"
    f.write_text("\n".join(_labels()) + "\n")
    return f


def _tree(val: Path) -> dict[str, bytes]:
    return {str(p.relative_to(val)): p.read_bytes() for p in sorted(val.rglob("*")) if p.is_file()}


def test_both_label_formats_agree(tmp_path: Path) -> None:
    a = parse_labels(_csv(tmp_path).read_text())
    b = parse_labels(_txt(tmp_path).read_text())
    assert a == b and len(a) == N and a[_name(1)] == WNIDS[7 % 3]


def test_plan_is_pure_and_complete() -> None:
    labels = {_name(1): "n01", _name(2): "n02", _name(3): "n01"}
    files = [f"{_name(1)}.JPEG", f"n02/{_name(2)}.JPEG", f"{_name(3)}.JPEG"]
    assert plan_valprep(files, labels) == [
        Move(f"{_name(1)}.JPEG", f"n01/{_name(1)}.JPEG"),
        Move(f"{_name(3)}.JPEG", f"n01/{_name(3)}.JPEG"),
    ]
    with pytest.raises(DataError, match=r"1 listed images are missing .*00000003"):
        plan_valprep(files[:2], labels)
    with pytest.raises(DataError, match=r"not in the labels file .*00000009"):
        plan_valprep([*files, f"{_name(9)}.JPEG"], labels)
    with pytest.raises(DataError, match=r"another class's folder .*n01/"):
        plan_valprep([f"n01/{_name(2)}.JPEG", files[0], files[2]], labels)


@pytest.mark.parametrize("fmt", ["csv", "txt"])
def test_dry_run_real_run_second_run(tmp_path: Path, fmt: str, capsys) -> None:
    val = _layout(tmp_path)
    labels = _csv(tmp_path) if fmt == "csv" else _txt(tmp_path)
    before = _tree(val)
    assert snjob.main(["valprep", str(val), "--labels", str(labels), "--dry-run"]) == 0
    assert f"would move {N} images into 3 class folders" in capsys.readouterr().out
    assert _tree(val) == before
    assert snjob.main(["valprep", str(val), "--labels", str(labels)]) == 0
    assert f"moved {N} images" in capsys.readouterr().out
    after = _tree(val)
    assert len(after) == N
    for i, w in enumerate(_labels(), start=1):
        assert after[f"{w}/{_name(i)}.JPEG"] == f"jpeg {i}".encode()
    assert snjob.main(["valprep", str(val), "--labels", str(labels)]) == 0
    assert f"nothing to do: all {N} images" in capsys.readouterr().out
    assert _tree(val) == after


def test_link_keeps_originals_and_is_idempotent(tmp_path: Path) -> None:
    val = _layout(tmp_path)
    report = valprep(val, _txt(tmp_path), link=True)
    assert report.planned == N and report.applied
    placed = val / WNIDS[7 % 3] / f"{_name(1)}.JPEG"
    assert os.path.samefile(placed, val / f"{_name(1)}.JPEG")
    assert valprep(val, _txt(tmp_path), link=True).planned == 0
    # A later move run finds everything placed and removes nothing.
    assert valprep(val, _txt(tmp_path)).planned == 0
    assert (val / f"{_name(1)}.JPEG").exists()


def test_mismatch_changes_nothing(tmp_path: Path, capsys) -> None:
    val = _layout(tmp_path)
    labels = _txt(tmp_path)
    (val / f"{_name(4)}.JPEG").unlink()
    before = _tree(val)
    assert snjob.main(["valprep", str(val), "--labels", str(labels)]) == 3
    err = capsys.readouterr().err
    assert "missing" in err and _name(4) in err and err.count("\n") == 1
    assert _tree(val) == before
    (val / f"{_name(4)}.JPEG").write_bytes(b"x")
    (val / "ILSVRC2012_val_00050001.JPEG").write_bytes(b"y")
    assert snjob.main(["valprep", str(val), "--labels", str(labels)]) == 3
    assert "not in the labels file" in capsys.readouterr().err
    assert not any(p.is_dir() for p in val.iterdir())


def test_never_overwrites(tmp_path: Path) -> None:
    val = _layout(tmp_path)
    labels = _txt(tmp_path)
    # A stray file at a destination name that the plan cannot see (not an image).
    w = _labels()[0]
    (val / w).mkdir()
    (val / w / f"{_name(1)}.JPEG.tmp").write_bytes(b"keep")
    valprep(val, labels)
    assert (val / w / f"{_name(1)}.JPEG.tmp").read_bytes() == b"keep"


def test_bad_flags_and_files(tmp_path: Path, capsys) -> None:
    val = _layout(tmp_path)
    with pytest.raises(SystemExit) as e:
        snjob.main(["valprep", str(val)])  # --labels missing
    assert e.value.code == 2
    assert snjob.main(["valprep", str(val), "--labels", str(tmp_path / "nope.csv")]) == 2
    bad = tmp_path / "ids.txt"
    bad.write_text("490\n361\n")
    with pytest.raises(ConfigError, match=r"meta\.mat"):
        valprep(val, bad)
    assert snjob.main(["valprep", str(tmp_path / "none"), "--labels", str(bad)]) == 3
    capsys.readouterr()


@pytest.mark.parametrize("mode", ["--dry-run", "--link", "move", "mismatch"])
def test_snjob_valprep_runs_where_torch_is_not_installed(tmp_path: Path, mode: str) -> None:
    # `snjob valprep` is a data-preparation step on a machine that may have only the base
    # package: torch, torchvision, numpy and PIL are made unimportable for the whole run.
    val, labels = _layout(tmp_path), _txt(tmp_path)
    if mode == "mismatch":
        (val / f"{_name(N)}.JPEG").unlink()
    before = _tree(val)
    args = ["valprep", str(val), "--labels", str(labels)]
    args += [mode] if mode.startswith("--") else []
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'numpy', 'PIL', 'simplejpeg', 'kopf'):\n"
        "    sys.modules[name] = None  # any import of it raises ImportError\n"
        "from shufflenet_trainer import snjob\n"
        f"sys.exit(snjob.main({args!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if mode == "mismatch":
        assert proc.returncode == 3, proc.stderr
        assert "error: " in proc.stderr and len(proc.stderr.splitlines()) == 1
        assert _tree(val) == before
        return
    assert proc.returncode == 0, proc.stderr
    after = _tree(val)
    if mode == "--dry-run":
        assert after == before
    else:
        assert sorted(p.split("/")[0] for p in after if "/" in p) == sorted(
            f"{w}" for w in _labels()
        )
