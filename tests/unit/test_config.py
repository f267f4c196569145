"""Flag parsing and validation of shufflenet-train (pure, milliseconds)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
import torch

from shufflenet_trainer.errors import ConfigError
from shufflenet_trainer.train.config import ARCH_NAMES, TrainConfig, build_parser, parse_config


def parse(*args: str, **kw: object) -> TrainConfig:
    return parse_config(list(args), **kw)  # type: ignore[arg-type]


def test_defaults_follow_the_published_recipe() -> None:
    cfg = parse("/data")
    assert cfg.arch == "shufflenet_v2_x1_0"
    assert cfg.batch_size == 1024
    assert cfg.lr == pytest.approx(0.5)
    assert cfg.momentum == 0.9
    assert cfg.weight_decay == pytest.approx(4e-5)
    assert cfg.label_smoothing == pytest.approx(0.1)
    assert cfg.bn_weight_decay is False
    assert cfg.epochs == 240
    assert cfg.warmup_epochs == 5
    assert cfg.lr_schedule == "cosine"
    assert cfg.optimizer == "sgd"
    assert cfg.print_freq == 10
    assert cfg.image_size == 224 and cfg.val_resize == 256
    assert cfg.output_dir == "result"
    assert cfg.device == "cpu" and cfg.amp == "off" and cfg.loss_scale is None
    assert cfg.world_size == 1 and cfg.rank == 0 and cfg.is_main


def test_lr_scales_linearly_with_the_global_batch() -> None:
    assert parse("/d", "-b", "256").lr == pytest.approx(0.125)
    assert parse("/d", "-b", "8192").lr == pytest.approx(4.0)
    assert parse("/d", "-b", "256", "--lr", "0.3").lr == pytest.approx(0.3)


def test_batch_is_global_and_split_over_ranks() -> None:
    cfg = parse("/d", "-b", "1024", world_size=8, rank=3)
    assert cfg.per_process_batch == 128
    assert cfg.to_dict()["per_process_batch"] == 128


@pytest.mark.parametrize(
    ("batch", "world"),
    [("100", 8), ("0", 1), ("-4", 1), ("4", 8)],
)
def test_impossible_batch_sizes_are_config_errors(batch: str, world: int) -> None:
    with pytest.raises(ConfigError, match="batch-size"):
        parse("/d", "-b", batch, world_size=world)


def test_unknown_arch_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="shufflenet_v2_x0_5") as err:
        parse("/d", "-a", "resnet50")
    assert "\n" not in str(err.value)


def test_arch_names_match_the_model_registry() -> None:
    from shufflenet_trainer.model.shufflenetv2 import ARCHS

    assert tuple(ARCH_NAMES) == tuple(ARCHS)


def test_unknown_flag_is_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match="--bogus") as err:
        parse("/d", "--bogus")
    assert "\n" not in str(err.value)


def test_data_is_required_unless_dummy() -> None:
    with pytest.raises(ConfigError, match="--dummy"):
        parse()
    assert parse("--dummy").data is None


@pytest.mark.parametrize(
    ("device", "amp", "scale"),
    [("cpu", "off", None), ("cuda", "bf16", None), ("npu", "fp16", "dynamic")],
)
def test_amp_default_depends_on_device(device: str, amp: str, scale: object) -> None:
    cfg = parse("/d", default_device=device)
    assert (cfg.device, cfg.amp, cfg.loss_scale) == (device, amp, scale)
    # An explicit --device wins over the probed default.
    assert parse("/d", "--device", "cpu", default_device=device).amp == "off"


def test_loss_scale_values() -> None:
    assert parse("/d", "--amp", "fp16").loss_scale == "dynamic"
    assert parse("/d", "--amp", "fp16", "--loss-scale", "128").loss_scale == 128.0
    assert parse("/d", "--device", "cuda", "--amp", "apex-O2").loss_scale == "dynamic"
    assert parse("/d", "--amp", "fp16", "--loss-scale", "-1").loss_scale == "dynamic"  # ModelZoo
    with pytest.raises(ConfigError, match="--loss-scale"):
        parse("/d", "--amp", "fp16", "--loss-scale", "-2")
    with pytest.raises(ConfigError, match="--loss-scale"):
        parse("/d", "--amp", "fp16", "--loss-scale", "big")
    with pytest.raises(ConfigError, match="--loss-scale applies"):
        parse("/d", "--loss-scale", "128")  # amp off on cpu
    with pytest.raises(ConfigError, match="--loss-scale applies"):
        parse("/d", "--device", "cuda", "--amp", "bf16", "--loss-scale", "dynamic")


def test_apex_needs_an_accelerator() -> None:
    with pytest.raises(ConfigError, match="apex-O2"):
        parse("/d", "--amp", "apex-O2")
    with pytest.raises(ConfigError, match="--compile"):
        parse("/d", "--device", "cuda", "--amp", "apex-O1", "--compile")


def test_apex_missing_is_config_error() -> None:
    # Precision checks importability before touching the device, so this runs without a GPU.
    from shufflenet_trainer.train.device import Precision

    if importlib.util.find_spec("apex") is not None:
        pytest.skip("apex is installed here")
    with pytest.raises(ConfigError, match="apex is not installed"):
        Precision("apex-O2", torch.device("cuda"), "dynamic")


def test_absent_devices_are_config_errors() -> None:
    from shufflenet_trainer.train.device import select_device

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda"):
            select_device("cuda")
    with pytest.raises(ConfigError, match="--device npu"):
        select_device("npu")
    assert select_device("cpu") == torch.device("cpu")


def test_invalid_choices_and_ranges() -> None:
    for args, field in [
        (("--device", "tpu"), "--device"),
        (("--amp", "fp8"), "--amp"),
        (("--lr-schedule", "poly"), "--lr-schedule"),
        (("--optimizer", "adam"), "--optimizer"),
        (("--lr", "0"), "--lr"),
        (("--momentum", "1.5"), "--momentum"),
        (("--label-smoothing", "1"), "--label-smoothing"),
        (("--image-size", "16"), "--image-size"),
        (("--image-size", "224", "--val-resize", "200"), "--val-resize"),
        (("--eval-freq", "0"), "--eval-freq"),
        (("-j", "-1"), "--workers"),
        (("--max-steps-per-epoch", "0"), "--max-steps-per-epoch"),
        (("--epochs", "0"), "--epochs"),
        (("--epochs", "10", "--start-epoch", "10"), "--start-epoch"),
    ]:
        with pytest.raises(ConfigError, match=field):
            parse("/d", *args)


def test_warmup_must_end_before_training_does() -> None:
    with pytest.raises(ConfigError, match="--warmup-epochs"):
        parse("/d", "--epochs", "3", "--warmup-epochs", "3")
    # The default shrinks to a tenth of a short run.
    assert parse("/d", "--epochs", "3").warmup_epochs == pytest.approx(0.3)
    assert parse("/d", "--epochs", "100").warmup_epochs == 5
    assert parse("/d", "--epochs", "3", "--warmup-epochs", "0.5").warmup_epochs == 0.5
    # Evaluation runs no epochs, so the warm-up does not matter there.
    assert parse("/d", "--epochs", "1", "-e").evaluate


def test_bn_weight_decay_toggle() -> None:
    assert parse("/d", "--bn-weight-decay").bn_weight_decay is True
    assert parse("/d", "--no-bn-weight-decay").bn_weight_decay is False


def test_pytorch_examples_flag_spellings() -> None:
    cfg = parse(
        "/d", "-a", "shufflenet_v2_x0_5", "-j", "2", "-b", "64", "--wd", "1e-4", "-p", "5",
        "-e", "--resume", "ck.pth.tar", "--seed", "7", "--learning-rate", "0.1",
    )  # fmt: skip
    assert (cfg.arch, cfg.workers, cfg.batch_size, cfg.weight_decay) == (
        "shufflenet_v2_x0_5",
        2,
        64,
        1e-4,
    )
    assert (cfg.print_freq, cfg.evaluate, cfg.resume, cfg.seed, cfg.lr) == (
        5,
        True,
        "ck.pth.tar",
        7,
        0.1,
    )
    assert parse("/d", "--weight-decay", "0").weight_decay == 0


def test_config_is_frozen_and_json_ready() -> None:
    cfg = parse("/d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    assert json.loads(json.dumps(cfg.to_dict()))["lr"] == 0.5


def test_help_lists_the_flags() -> None:
    text = build_parser().format_help()
    for flag in ("--arch", "--batch-size", "--max-steps-per-epoch", "--amp", "--bn-weight-decay"):
        assert flag in text


def test_the_shuffle_kernel_variable_is_the_flags_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUFFLENET_SHUFFLE_KERNEL", "stack")
    assert parse("--dummy").shuffle_kernel == "stack"
    assert parse("--dummy", "--shuffle-kernel", "gather").shuffle_kernel == "gather"
    monkeypatch.setenv("SHUFFLENET_SHUFFLE_KERNEL", "fast")
    with pytest.raises(ConfigError, match="SHUFFLENET_SHUFFLE_KERNEL='fast' is not a kernel"):
        parse("--dummy")
    monkeypatch.delenv("SHUFFLENET_SHUFFLE_KERNEL")
    assert parse("--dummy").shuffle_kernel == "auto"


def test_init_from_gives_the_starting_weights_alone() -> None:
    assert parse("--dummy").init_from is None
    cfg = parse("--dummy", "--resume", "auto", "--init-from", "/c/team/a")
    assert cfg.init_from == "/c/team/a" and cfg.pretrained is None and cfg.resume == "auto"
    assert "--init-from" in build_parser().format_help()
    for other in (["--weights", "w.pth"], ["--pretrained", "w.pth"], ["--pretrained"]):
        with pytest.raises(ConfigError, match="--init-from and --weights/--pretrained") as err:
            parse("--dummy", "--init-from", "/c/a", *other)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="--init-from must not be empty"):
        parse("--dummy", "--init-from", "")
