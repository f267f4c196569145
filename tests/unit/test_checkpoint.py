"""Atomic checkpoint saves and clear errors for unusable checkpoint files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision

from shufflenet_trainer.errors import ConfigError
from shufflenet_trainer.model.shufflenetv2 import build_model
from shufflenet_trainer.train import checkpoint as ckpt


def _state(arch: str = "shufflenet_v2_x0_5", epoch: int = 1) -> dict:
    return {
        "arch": arch,
        "epoch": epoch,
        "state_dict": {"w": torch.full((3,), float(epoch))},
        "optimizer": {"state": {}, "param_groups": []},
        "best_top1": 12.5,
        "config": {"lr": 0.1, "resume": None},
        "history": [{"epoch": 0, "val_top1": None}],
    }


def test_roundtrip(tmp_path: Path) -> None:
    path = ckpt.save_checkpoint(_state(), tmp_path / ckpt.CHECKPOINT_NAME)
    got = ckpt.load_checkpoint(path, arch="shufflenet_v2_x0_5")
    assert got["epoch"] == 1 and got["best_top1"] == 12.5
    assert torch.equal(got["state_dict"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == [ckpt.CHECKPOINT_NAME]  # no temp file left


def test_failure_mid_save_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / ckpt.CHECKPOINT_NAME
    ckpt.save_checkpoint(_state(epoch=1), path)
    good = path.read_bytes()

    def half_write(obj: object, f: object) -> None:
        f.write(b"PK\x03\x04 partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(_state(epoch=2), path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == [ckpt.CHECKPOINT_NAME]
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path, arch="shufflenet_v2_x0_5")["epoch"] == 1


def test_copy_atomic(tmp_path: Path) -> None:
    src = ckpt.save_checkpoint(_state(epoch=3), tmp_path / ckpt.CHECKPOINT_NAME)
    dst = ckpt.copy_atomic(src, tmp_path / ckpt.BEST_NAME)
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(os.listdir(tmp_path)) == sorted([ckpt.CHECKPOINT_NAME, ckpt.BEST_NAME])


def test_corrupt_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.pth.tar"
    bad.write_bytes(b"\x00garbage, not a zip archive" * 10)
    for load in (
        lambda: ckpt.load_checkpoint(bad, arch="shufflenet_v2_x0_5"),
        lambda: ckpt.load_pretrained(
            build_model("shufflenet_v2_x0_5"), bad, arch="shufflenet_v2_x0_5", allow_new_head=False
        ),
    ):
        with pytest.raises(ConfigError) as err:
            load()
        msg = str(err.value)
        assert str(bad) in msg and "not a readable checkpoint" in msg and "\n" not in msg


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = ckpt.save_checkpoint(_state(), tmp_path / "c.pth.tar")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(path, arch="shufflenet_v2_x0_5")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        ckpt.load_checkpoint(tmp_path / "nope.pth.tar", arch="shufflenet_v2_x0_5")


def test_other_arch_checkpoint(tmp_path: Path) -> None:
    path = ckpt.save_checkpoint(_state("shufflenet_v2_x1_0"), tmp_path / "c.pth.tar")
    with pytest.raises(ConfigError) as err:
        ckpt.load_checkpoint(path, arch="shufflenet_v2_x0_5")
    msg = str(err.value)
    assert "shufflenet_v2_x1_0" in msg and "-a shufflenet_v2_x1_0" in msg and str(path) in msg


def test_weights_only_file_is_not_resumable(tmp_path: Path) -> None:
    path = tmp_path / "sd.pth"
    torch.save({"w": torch.ones(1)}, path)
    with pytest.raises(ConfigError, match="not a shufflenet-train checkpoint"):
        ckpt.load_checkpoint(path, arch="shufflenet_v2_x0_5")
    state = _state()
    del state["optimizer"]
    torch.save(state, path)
    with pytest.raises(ConfigError, match="--pretrained"):
        ckpt.load_checkpoint(path, arch="shufflenet_v2_x0_5")


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    # weights_only loading: an arbitrary object in the file is an error, not code to run.
    path = tmp_path / "evil.pth"
    torch.save({"arch": "shufflenet_v2_x0_5", "state_dict": {}, "obj": Path("/")}, path)
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(path, arch="shufflenet_v2_x0_5")


def test_pretrained_torchvision_state_dict(tmp_path: Path) -> None:
    tv = torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=10)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    ours = build_model("shufflenet_v2_x0_5", num_classes=10)
    note = ckpt.load_pretrained(ours, path, arch="shufflenet_v2_x0_5", allow_new_head=False)
    assert "loaded" in note
    for k, v in tv.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k


def test_pretrained_with_module_prefix_and_our_checkpoint(tmp_path: Path) -> None:
    tv = torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=10)
    path = tmp_path / "ddp.pth.tar"
    sd = {f"module.{k}": v for k, v in tv.state_dict().items()}
    torch.save({"arch": "shufflenet_v2_x0_5", "state_dict": sd, "epoch": 3}, path)
    ours = build_model("shufflenet_v2_x0_5", num_classes=10)
    ckpt.load_pretrained(ours, path, arch="shufflenet_v2_x0_5", allow_new_head=False)
    assert torch.equal(ours.state_dict()["fc.weight"], tv.state_dict()["fc.weight"])


def test_pretrained_other_arch_and_head(tmp_path: Path) -> None:
    path = tmp_path / "x10.pth"
    torch.save(torchvision.models.shufflenet_v2_x1_0(weights=None).state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit shufflenet_v2_x0_5"):
        ckpt.load_pretrained(
            build_model("shufflenet_v2_x0_5"), path, arch="shufflenet_v2_x0_5", allow_new_head=True
        )
    # ImageNet weights (1000 classes) on a 10-class dataset: the head is re-initialised when
    # training, refused when evaluating.
    path = tmp_path / "x05.pth"
    src = torchvision.models.shufflenet_v2_x0_5(weights=None)
    torch.save(src.state_dict(), path)
    ours = build_model("shufflenet_v2_x0_5", num_classes=10)
    head = ours.fc.weight.detach().clone()
    note = ckpt.load_pretrained(ours, path, arch="shufflenet_v2_x0_5", allow_new_head=True)
    assert "fc.weight" in note and torch.equal(ours.fc.weight, head)
    assert torch.equal(ours.conv1[0].weight, src.conv1[0].weight)
    with pytest.raises(ConfigError, match=r"fc\.weight"):
        ckpt.load_pretrained(ours, path, arch="shufflenet_v2_x0_5", allow_new_head=False)


def test_checkpoint_candidates_newest_first(tmp_path: Path) -> None:
    assert ckpt.checkpoint_candidates(tmp_path) == []
    old = tmp_path / "training_1p_job_20240101000000" / ckpt.CHECKPOINT_NAME
    new = tmp_path / "training_1p_job_20240102000000" / ckpt.CHECKPOINT_NAME
    for i, p in enumerate((old, new)):
        p.parent.mkdir()
        ckpt.save_checkpoint(_state(epoch=i), p)
        os.utime(p, ns=(10**18 + i, 10**18 + i))
    assert ckpt.checkpoint_candidates(tmp_path) == [new, old]


def _run_folder(root: Path, *epochs: int, arch: str = "shufflenet_v2_x0_5") -> list[Path]:
    """Result folders under `root`, one per epoch given, each newer than the one before."""
    paths = []
    for i, epoch in enumerate(epochs):
        p = root / f"training_1p_job_2024010{i + 1}000000" / ckpt.CHECKPOINT_NAME
        p.parent.mkdir(parents=True)
        ckpt.save_checkpoint(_state(arch, epoch=epoch), p)
        os.utime(p, ns=(10**18 + i, 10**18 + i))
        paths.append(p)
    return paths


def test_init_from_takes_a_file_a_result_folder_or_a_run_folder(tmp_path: Path) -> None:
    arch = "shufflenet_v2_x0_5"
    old, new = _run_folder(tmp_path / "team" / "a", 1, 2)
    # A job's run folder: its newest checkpoint, as --resume auto would find it.
    assert ckpt.find_init(tmp_path / "team" / "a", arch=arch) == (new, [])
    # A result folder as it is, and a file as it is (checked when it is loaded).
    assert ckpt.find_init(old.parent, arch=arch) == (old, [])
    assert ckpt.find_init(old, arch=arch) == (old, [])
    # An unusable newest file is skipped with a note, as for --resume auto.
    new.write_bytes(b"cut")
    found, notes = ckpt.find_init(tmp_path / "team" / "a", arch=arch)
    assert found == old and len(notes) == 1 and "unreadable" in notes[0]


def test_init_from_that_names_nothing_is_one_line_naming_the_field(tmp_path: Path) -> None:
    arch = "shufflenet_v2_x0_5"
    empty = tmp_path / "team" / "b"
    empty.mkdir(parents=True)
    for path, words in ((tmp_path / "nope", "no such file or folder"), (empty, "no checkpoint")):
        with pytest.raises(ConfigError) as err:
            ckpt.find_init(path, arch=arch)
        msg = str(err.value)
        assert msg.startswith(f"--init-from {path} (spec.checkpoint.initFrom): {words}"), msg
        assert "\n" not in msg
    (other,) = _run_folder(tmp_path / "team" / "c", 1, arch="shufflenet_v2_x1_0")
    with pytest.raises(ConfigError, match=r"^--init-from: .* holds a shufflenet_v2_x1_0 .* "
                       r"or another --init-from$"):  # fmt: skip
        ckpt.find_init(other.parents[1], arch=arch)
    # Searching a run folder never looks at the folder itself; only --init-from does.
    assert ckpt.checkpoint_candidates(other.parent) == []
    assert ckpt.checkpoint_candidates(other.parent, own=True) == [other]
