"""End-to-end runs of the training CLI on real data (scikit-learn's digits as an ImageFolder).

Each run is a subprocess, as a user or the operator starts it. Sizes are chosen for 2 CPU
cores: ShuffleNetV2 x0.5, 64-pixel (convergence) or 32-pixel (everything else) images,
workers 0, and --max-steps-per-epoch where only the mechanics matter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import torch
import torchvision

from shufflenet_trainer.cli import main
from shufflenet_trainer.data.prep.demo_data import write_digits_imagefolder
from shufflenet_trainer.train import checkpoint as ckpt
from shufflenet_trainer.train.results import create_result_dir, read_jsonl

ARCH = "shufflenet_v2_x0_5"
SMALL = ["-a", ARCH, "--image-size", "32", "--val-resize", "32", "-j", "0"]

# Measured on 2 CPU cores: 10 epochs reach about 87-90% val top-1 (chance: 10%).
CONVERGENCE_ARGS = [
    "-a", ARCH, "--image-size", "64", "--val-resize", "64", "--epochs", "10", "-b", "64",
    "--lr", "0.05", "--warmup-epochs", "1", "-j", "0", "-p", "10",
]  # fmt: skip
MIN_TOP1 = 70.0


def run_cli(*args: str | os.PathLike[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shufflenet_trainer.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def only_folder(root: Path) -> Path:
    folders = sorted(root.glob("training_*"))
    assert len(folders) == 1, folders
    return folders[0]


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_imagefolder(tmp_path_factory.mktemp("data") / "digits", size=64)


@pytest.fixture(scope="module")
def trained(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real training run whose result folder several tests inspect."""
    out = tmp_path_factory.mktemp("trained")
    proc = run_cli(digits, *CONVERGENCE_ARGS, "--output-dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_folder(out)


@pytest.mark.slow
def test_converges_on_real_data(trained: Path) -> None:
    epochs = [r for r in read_jsonl(trained / "train.jsonl") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(10))
    final = epochs[-1]
    assert final["val_top1"] >= MIN_TOP1, [r["val_top1"] for r in epochs]
    assert epochs[0]["loss"] > final["loss"]
    assert final["best_top1"] == max(r["val_top1"] for r in epochs)


@pytest.mark.slow
def test_result_folder_contents(trained: Path) -> None:
    from PIL import Image

    assert trained.name.startswith("training_1p_job_")
    names = {p.name for p in trained.iterdir()}
    assert {
        "config.json",
        "train.log",
        "train.jsonl",
        "checkpoint.pth.tar",
        "model_best.pth.tar",
        "curves.png",
    } <= names
    assert not [n for n in names if ".tmp-" in n]

    import json

    config = json.loads((trained / "config.json").read_text())
    assert config["arch"] == ARCH and config["lr"] == 0.05 and config["per_process_batch"] == 64

    log = (trained / "train.log").read_text()
    assert log.count("FPS@all ") == 10 and " * Acc@1 " in log

    records = read_jsonl(trained / "train.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert steps and len(epochs) == 10
    for r in steps + epochs:
        for key in ("epoch", "step", "loss", "lr", "top1", "top5", "images_per_sec"):
            assert r[key] is not None, (key, r)
        assert 0.0 <= r["data_wait_share"] <= 1.0
    for r in epochs:
        assert r["images_per_sec"] > 0 and r["fps_steps"] == [11, 22]
        assert r["val_top1"] is not None and r["epoch_seconds"] > 0

    state = torch.load(trained / "checkpoint.pth.tar", weights_only=True)
    assert state["arch"] == ARCH and state["epoch"] == 10 and len(state["history"]) == 10
    best = torch.load(trained / "model_best.pth.tar", weights_only=True)
    assert best["best_top1"] == max(r["val_top1"] for r in epochs)

    with Image.open(trained / "curves.png") as im:
        im.load()
        assert im.format == "PNG" and im.width > 600 and im.height > 200


@pytest.mark.slow
def test_evaluate_pretrained_torchvision_state_dict(trained: Path, digits: Path) -> None:
    # Our best checkpoint -> a plain torchvision model (strict load proves the key layout) ->
    # its state_dict file -> `-e --pretrained` must reproduce the recorded best top-1.
    best = torch.load(trained / "model_best.pth.tar", weights_only=True)
    tv = torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=10)
    tv.load_state_dict(best["state_dict"])
    weights = trained.parent / "tv_state_dict.pth"
    torch.save(tv.state_dict(), weights)

    out = trained.parent / "eval"
    proc = run_cli(
        digits, "-e", "--pretrained", weights, "-a", ARCH, "--image-size", "64",
        "--val-resize", "64", "-b", "64", "-j", "0", "--output-dir", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert " * Acc@1 " in proc.stdout
    (record,) = read_jsonl(only_folder(out) / "train.jsonl")
    assert record["kind"] == "eval"
    assert record["val_top1"] == pytest.approx(best["best_top1"], abs=1e-6)


INTERRUPT = textwrap.dedent(
    """
    import sys
    from shufflenet_trainer.train.config import parse_config
    from shufflenet_trainer.train.loop import Hooks
    from shufflenet_trainer.train.run import run

    class Killed(Exception):
        pass

    def kill_after(record):
        # on_epoch runs after the epoch's checkpoint is on disk: like a kill at that moment.
        if record["epoch"] == int(sys.argv[1]):
            raise Killed

    try:
        run(parse_config(sys.argv[2:]), hooks=Hooks(on_epoch=[kill_after]))
    except Killed:
        sys.exit(143)
    """
)


@pytest.mark.slow
def test_resume_gives_the_same_weights(digits: Path, tmp_path: Path) -> None:
    flags = [
        digits, *SMALL, "--epochs", "2", "-b", "16", "--lr", "0.05", "--warmup-epochs", "0.5",
        "-p", "2", "--max-steps-per-epoch", "3",
    ]  # fmt: skip
    whole = run_cli(*flags, "--output-dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    cut = subprocess.run(
        [sys.executable, "-c", INTERRUPT, "0", *map(str, flags), "--output-dir", tmp_path / "cut"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    # 143 is the script's own code, but reaching it means the product ran epoch 0 to its
    # on_epoch hook and let the hook's exception out (0: the hook never fired; 1: a crash).
    assert cut.returncode == 143, cut.stderr[-3000:]
    cut_ckpt = only_folder(tmp_path / "cut") / "checkpoint.pth.tar"
    assert torch.load(cut_ckpt, weights_only=True)["epoch"] == 1

    resumed = run_cli(*flags, "--resume", cut_ckpt, "--output-dir", tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout

    a = torch.load(only_folder(tmp_path / "whole") / "checkpoint.pth.tar", weights_only=True)
    b = torch.load(only_folder(tmp_path / "resumed") / "checkpoint.pth.tar", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 6
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for pid, st in a["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], b["optimizer"]["state"][pid]["momentum_buffer"])
    # The resumed run carries the history, so its curves and log show both epochs.
    assert [r["epoch"] for r in b["history"]] == [0, 1]
    # The interrupted run's folder is left as it was: the resumed run wrote a new one.
    assert torch.load(cut_ckpt, weights_only=True)["epoch"] == 1


@pytest.mark.slow
def test_dummy_data_runs(tmp_path: Path) -> None:
    proc = run_cli(
        "--dummy", *SMALL, "-b", "8", "--epochs", "1", "--warmup-epochs", "0",
        "--max-steps-per-epoch", "2", "--output-dir", tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "only 2 steps" in proc.stdout and "FPS@all " in proc.stdout
    records = read_jsonl(only_folder(tmp_path) / "train.jsonl")
    (epoch,) = [r for r in records if r["kind"] == "epoch"]
    assert epoch["images"] == 16 and epoch["fps_steps"] == [2, 2]


# --- bad input: exit code, one `error:` line, and no result folder touched or created ---


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """An output dir that already holds a finished run's folder."""
    old = tmp_path / "results" / "training_1p_job_20200101000000"
    old.mkdir(parents=True)
    (old / "train.log").write_text("an earlier run\n")
    ckpt.save_checkpoint({"arch": ARCH, "state_dict": {}}, old / "checkpoint.pth.tar")
    return tmp_path / "results"


def _other_arch_checkpoint(tmp: Path) -> Path:
    return ckpt.save_checkpoint(
        {"arch": "shufflenet_v2_x1_0", "epoch": 1, "state_dict": {}, "optimizer": {}},
        tmp / "x1_0.pth.tar",
    )


def _corrupt(tmp: Path) -> Path:
    path = tmp / "corrupt.pth.tar"
    path.write_bytes(b"this is not a checkpoint")
    return path


def _tv_other_arch(tmp: Path) -> Path:
    path = tmp / "tv_x1_0.pth"
    torch.save(torchvision.models.shufflenet_v2_x1_0(weights=None).state_dict(), path)
    return path


BAD_INPUTS: list[tuple[str, Callable[[Path, Path], list[str]], int, str]] = [
    ("missing data", lambda d, t: [str(t / "nowhere"), *SMALL], 3, "does not exist"),
    ("empty data", lambda d, t: [str(t.joinpath("empty")), *SMALL], 3, "has no train/ folder"),
    ("unknown arch", lambda d, t: [str(d), *SMALL, "-a", "resnet50"], 2, "--arch"),
    ("batch 0", lambda d, t: [str(d), *SMALL, "-b", "0"], 2, "batch"),
    ("batch too big", lambda d, t: [str(d), *SMALL, "-b", "100000"], 2, "batch"),
    (
        "corrupt resume",
        lambda d, t: [str(d), *SMALL, "--resume", str(_corrupt(t))],
        2,
        "--resume",
    ),
    (
        "other-arch resume",
        lambda d, t: [str(d), *SMALL, "--resume", str(_other_arch_checkpoint(t))],
        2,
        "shufflenet_v2_x1_0",
    ),
    (
        "corrupt pretrained",
        lambda d, t: [str(d), *SMALL, "--pretrained", str(_corrupt(t))],
        2,
        "--pretrained",
    ),
    (
        "other-arch pretrained",
        lambda d, t: [str(d), *SMALL, "--pretrained", str(_tv_other_arch(t))],
        2,
        "--pretrained",
    ),
    ("apex on cpu", lambda d, t: [str(d), *SMALL, "--amp", "apex-O2"], 2, "apex"),
    ("npu absent", lambda d, t: [str(d), *SMALL, "--device", "npu"], 2, "--device npu"),
    ("cuda absent", lambda d, t: [str(d), *SMALL, "--device", "cuda"], 2, "--device cuda"),
    (
        "apex on cuda",
        lambda d, t: [str(d), *SMALL, "--device", "cuda", "--amp", "apex-O1"],
        2,
        "apex",
    ),
]
# Without a GPU, "apex on cuda" only meets "--device cuda: no CUDA GPU" (the "cuda absent"
# case), so it runs only where CUDA is; "cuda absent" only where it is not.
_NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
_NEEDS_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
_MARKS = {"apex on cuda": [_NEEDS_CUDA], "cuda absent": [_NEEDS_NO_CUDA]}
BAD_INPUT_PARAMS = [pytest.param(*c, id=c[0], marks=_MARKS.get(c[0], ())) for c in BAD_INPUTS]


def _check_bad(code: int, err: str, want_code: int, want_text: str) -> None:
    lines = err.strip().splitlines()
    assert code == want_code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert want_text in lines[0]


@pytest.mark.parametrize(("name", "make_args", "code", "text"), BAD_INPUT_PARAMS)
def test_bad_input_in_process(
    name: str,
    make_args: Callable[[Path, Path], list[str]],
    code: int,
    text: str,
    digits: Path,
    results: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty").mkdir()
    before = snapshot(results)
    got = main([*make_args(digits, tmp_path), "--epochs", "2", "--output-dir", str(results)])
    _check_bad(got, capsys.readouterr().err, code, text)
    assert snapshot(results) == before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["missing data", "unknown arch", "other-arch resume"])
def test_bad_input_exit_codes_of_the_process(
    name: str, digits: Path, results: Path, tmp_path: Path
) -> None:
    _, make_args, code, text = next(c for c in BAD_INPUTS if c[0] == name)
    before = snapshot(results)
    proc = run_cli(*make_args(digits, tmp_path), "--epochs", "2", "--output-dir", results)
    _check_bad(proc.returncode, proc.stderr, code, text)
    assert snapshot(results) == before


def test_result_folders_are_never_reused(tmp_path: Path) -> None:
    now = datetime(2024, 5, 6, 7, 8, 9)
    first = create_result_dir(tmp_path, 8, now)
    second = create_result_dir(tmp_path, 8, now)
    assert first.name == "training_8p_job_20240506070809"
    assert second.name == "training_8p_job_20240506070809_1"
