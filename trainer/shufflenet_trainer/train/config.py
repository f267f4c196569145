"""Command-line flags of `shufflenet-train`, parsed and validated into a frozen `TrainConfig`.

Pure: nothing here touches devices, files or the environment (but for telling `--pretrained
DIR`, a switch and the dataset, from `--pretrained FILE`). What must be probed (is CUDA
there, is apex importable, does the data folder exist) is checked where it is used, so that
this module can be tested in milliseconds and reused by the operator side without torch.

Flag names follow pytorch/examples `imagenet/main.py` first; defaults follow the published
ShuffleNetV2 recipe (global batch 1024, lr 0.5 scaled linearly with the batch, label smoothing
0.1, weight decay 4e-5 without decay on BatchNorm parameters and biases).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os.path
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shufflenet_contract import crd
from shufflenet_contract import env as contract_env

from .. import compat
from ..argparsing import StrictParser
from ..errors import ConfigError

# The choices a job manifest allows are the flags' choices: one list, in the contract (torch-free,
# so flag parsing needs no torch import). A test checks the model registry has every arch.
ARCH_NAMES: tuple[str, ...] = tuple(crd.ARCHS)
DEVICES = ("cpu", "cuda", "npu")
AMP_MODES: tuple[str, ...] = tuple(crd.AMP_MODES)
SCHEDULES: tuple[str, ...] = tuple(crd.SCHEDULES)
OPTIMIZERS: tuple[str, ...] = tuple(crd.OPTIMIZERS)
SHUFFLES = ("fused", "reference")
# model/kernel_choice.POLICIES (kept torch-free here; a test keeps the two equal).
SHUFFLE_KERNELS = ("auto", "measure", "copy", "stack", "gather", "triton")

# The recipe's reference point: lr 0.5 at a global batch of 1024, scaled linearly.
REFERENCE_LR = 0.5
REFERENCE_BATCH = 1024

# Warm-up of the recipe; short runs (tests, demos) warm up for a tenth of their epochs.
DEFAULT_WARMUP_EPOCHS = 5.0

# Mixed precision picked when --amp is not given: CPUs train in fp32 (autocast there is slow
# and buys nothing); CUDA GPUs use bf16 (no loss scaling needed); Ascend uses fp16 with a
# dynamic loss scale because the 910A generation has no bf16 units.
DEFAULT_AMP = {"cpu": "off", "cuda": "bf16", "npu": "fp16"}

# Seconds a rank waits on its peers (process group set-up, a collective, the rank table, a
# step) before it gives up and ends the job: long enough for a first step that compiles or
# a rank 0 that writes a large checkpoint, short enough not to hold a cluster for hours.
DEFAULT_DIST_TIMEOUT = 1800.0
# A year: longer waits are no timeout, and torch's timedelta overflows past about 1e14 s.
MAX_DIST_TIMEOUT = 365 * 86400.0


@dataclass(frozen=True)
class TrainConfig:
    """The resolved configuration of one training (or evaluation) run."""

    data: str | None
    arch: str = "shufflenet_v2_x1_0"
    workers: int = 4
    epochs: int = 240
    start_epoch: int = 0
    batch_size: int = 1024  # global, over all ranks
    lr: float = REFERENCE_LR
    momentum: float = 0.9
    weight_decay: float = 4e-5
    print_freq: int = 10
    resume: str | None = None
    evaluate: bool = False
    pretrained: str | None = None  # local weights (--weights PATH, --pretrained PATH)
    torchvision_weights: bool = False  # --pretrained as a switch: torchvision's, from the hub cache
    init_from: str | None = None  # --init-from: weights of another run, unless this one resumes
    num_classes: int | None = None  # --num-classes: of --dummy data; else checked against the data
    seed: int = 0
    dummy: bool = False
    device: str = "cpu"
    device_id: int = 0
    amp: str = "off"
    loss_scale: float | str | None = None  # None: no scaling; "dynamic"; or a fixed factor
    label_smoothing: float = 0.1
    nesterov: bool = False
    bn_weight_decay: bool = False
    warmup_epochs: float = 5.0
    lr_schedule: str = "cosine"
    optimizer: str = "sgd"
    lars_eta: float = 0.001
    channels_last: bool = False
    compile: bool = False
    image_size: int = 224
    val_resize: int = 256
    eval_freq: int = 1
    output_dir: str = "result"
    shuffle: str = "fused"
    shuffle_kernel: str = "auto"
    strict_data: bool = False
    max_steps_per_epoch: int | None = None
    checkpoint_steps: int | None = None  # also save every N training steps (None: epoch ends)
    # None: not given on the command line; the exporter then reads METRICS_PORT / METRICS_ADDR
    # (this module stays free of environment reads). Port 0 disables the exporter.
    metrics_port: int | None = None
    metrics_addr: str | None = None
    freeze_bn: bool = False
    dist_timeout: float = DEFAULT_DIST_TIMEOUT
    # Local launcher (--nproc): processes to start on this host and their device indices.
    nproc: int | None = None
    device_list: tuple[int, ...] | None = None
    world_size: int = 1
    rank: int = 0

    @property
    def per_process_batch(self) -> int:
        """Batch size of one rank: the global batch split evenly."""
        return self.batch_size // self.world_size

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, plots and the main log."""
        return self.rank == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the derived per-process batch for the reader's benefit."""
        out = dataclasses.asdict(self)
        out["per_process_batch"] = self.per_process_batch
        return out


class _Parser(StrictParser):
    """argparse that raises ConfigError (one line, exit 2) instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see shufflenet-train --help)")


def _loss_scale(text: str) -> float | str:
    if text in ("dynamic", "-1"):  # ModelZoo: -1 means dynamic
        return "dynamic"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--loss-scale {text!r}: pass a positive number or 'dynamic'"
        ) from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(
            f"--loss-scale {text!r}: pass a positive number or 'dynamic'"
        )
    return value


def _amp_mode(text: str) -> str:
    # Not `choices=`: the bare --amp switch arrives as compat.AMP_SWITCH, which is no mode.
    if text in AMP_MODES or text == compat.AMP_SWITCH:
        return text
    modes = ", ".join(AMP_MODES)
    raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {modes})")


def _device(text: str) -> str:
    # ModelZoo spells CUDA GPUs "gpu".
    return "cuda" if text == "gpu" else text


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where the help text does not already say its default,
    and not for None (resolved later, or the help says what not giving the flag means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is None:
            return text
        return super()._get_help_string(action)


def _device_list(text: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--device-list {text!r}: pass comma-separated device indices, e.g. 0,1,2,3"
        ) from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(
            f"--device-list {text!r}: indices must be distinct and >= 0"
        )
    return ids


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser; its help text is the flag reference.

    Defaults are TrainConfig's (`d`), except where None means "resolved in parse_config"
    (--lr, --device, --amp, --warmup-epochs...).
    """
    d = TrainConfig(data=None)
    p = _Parser(
        prog="shufflenet-train",
        description="Train ShuffleNetV2 on an ImageFolder dataset (ImageNet layout: "
        "DIR/train/<class>/*.JPEG, DIR/val/<class>/*.JPEG). A drop-in for pytorch/examples "
        "imagenet/main.py.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("data", nargs="?", default=None, help="dataset root (optional with --dummy)")
    p.add_argument("-a", "--arch", default=d.arch, help=f"one of {ARCH_NAMES}")
    p.add_argument("-j", "--workers", type=int, default=d.workers, help="data loading processes")
    p.add_argument("--epochs", type=int, default=d.epochs, help="total epochs")
    p.add_argument(
        "--start-epoch", type=int, default=d.start_epoch, help="first epoch (resume overrides)"
    )
    p.add_argument(
        "-b", "--batch-size", type=int, default=d.batch_size, help="GLOBAL batch, split over ranks"
    )
    p.add_argument(
        "--lr",
        "--learning-rate",
        dest="lr",
        type=float,
        default=None,
        help="peak learning rate (default: 0.5 x batch/1024)",
    )
    p.add_argument("--momentum", "--mom", dest="momentum", type=float, default=d.momentum)
    p.add_argument(
        "--wd",
        "--weight-decay",
        dest="weight_decay",
        type=float,
        default=d.weight_decay,
        help="weight decay",
    )
    p.add_argument("-p", "--print-freq", type=int, default=d.print_freq, help="log every N steps")
    p.add_argument(
        "--resume",
        default=None,
        metavar="PATH",
        help="checkpoint to resume from; 'auto' picks the newest checkpoint under --output-dir",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="PATH",
        help="start from the weights (not the optimizer state or epoch) of a checkpoint file, "
        "or of the newest checkpoint of a result folder or of the result folders under PATH "
        "(another run's --output-dir); ignored when --resume finds a checkpoint of this run "
        "(a job's spec.checkpoint.initFrom)",
    )
    p.add_argument("-e", "--evaluate", action="store_true", help="only evaluate on val")
    p.add_argument(
        "--pretrained",
        default=None,
        metavar="PATH",
        nargs="?",
        const=compat.PRETRAINED_SWITCH,
        help="as a switch: torchvision's ImageNet weights for -a from the torch hub cache "
        "($TORCH_HOME/hub/checkpoints); with a PATH: as --weights PATH; with --resume PATH "
        "(ModelZoo): PATH's weights, starting at epoch 0",
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help="seed (runs are reproducible by default)"
    )
    p.add_argument("--dummy", action="store_true", help="synthetic data, no dataset needed")
    p.add_argument(
        "--device",
        type=_device,
        choices=DEVICES,
        default=None,
        help="default: cuda if available, else cpu ('gpu' means cuda)",
    )
    p.add_argument(
        "--device-id",
        type=int,
        default=None,
        help="device index on this host (default: $DEVICE_ID, else $LOCAL_RANK, else 0)",
    )
    p.add_argument(
        "--amp",
        type=_amp_mode,
        nargs="?",
        const=compat.AMP_SWITCH,
        default=None,
        help=f"mixed precision, one of {', '.join(AMP_MODES)} (default: off on cpu, bf16 on "
        "cuda, fp16 on npu); bare --amp (ModelZoo): apex at --opt-level, loss scale 64",
    )
    p.add_argument(
        "--loss-scale",
        type=_loss_scale,
        default=None,
        help="fp16/apex loss scale: a number, or 'dynamic' (also -1) (default: dynamic)",
    )
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    p.add_argument(
        "--bn-weight-decay",
        action=argparse.BooleanOptionalAction,
        default=d.bn_weight_decay,
        help="apply weight decay to BatchNorm parameters and biases (recipe: off)",
    )
    p.add_argument(
        "--warmup-epochs",
        "--warm_up_epochs",
        "--warm-up-epochs",
        dest="warmup_epochs",
        type=float,
        default=None,
        help="linear lr warm-up (fractions allowed; must be < --epochs). Default: 5, or a "
        "tenth of --epochs for runs shorter than 50 epochs",
    )
    p.add_argument("--lr-schedule", choices=SCHEDULES, default=d.lr_schedule)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--lars-eta", type=float, default=d.lars_eta, help="LARS trust coefficient")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--image-size", type=int, default=d.image_size, help="train/val crop size")
    p.add_argument(
        "--val-resize", type=int, default=d.val_resize, help="val short side before crop"
    )
    p.add_argument(
        "-ef", "--eval-freq", type=int, default=d.eval_freq, help="validate every N epochs"
    )
    p.add_argument(
        "--output-dir",
        "--workspace",
        dest="output_dir",
        default=d.output_dir,
        help="root of the result folders (--workspace: ModelZoo's name)",
    )
    p.add_argument("--shuffle", choices=SHUFFLES, default=d.shuffle, help="channel shuffle op")
    p.add_argument(
        "--shuffle-kernel",
        choices=SHUFFLE_KERNELS,
        # The variable sets the default, so a pod or a test session can choose without
        # touching every command line; argparse does not check a default against choices.
        default=os.environ.get(contract_env.SHUFFLE_KERNEL) or d.shuffle_kernel,
        help="kernel of the fused shuffle ops: auto (measured on CPU, copy elsewhere), measure "
        "(measured on every device), or one kernel (docs/training.md)",
    )
    p.add_argument(
        "--strict-data", action="store_true", help="fail on an unreadable image instead of skip"
    )
    p.add_argument(
        "--max-steps-per-epoch",
        type=int,
        default=None,
        help="cap train and val steps per epoch (smoke runs and tests)",
    )
    p.add_argument(
        "--checkpoint-steps",
        type=int,
        default=None,
        metavar="N",
        help="also save the checkpoint every N training steps inside an epoch, so that a "
        "killed run (preempted node, OOM kill) loses at most N steps (default: at epoch ends "
        "and on SIGTERM only)",
    )
    p.add_argument(
        "--freeze-bn",
        action="store_true",
        help="BatchNorm uses and keeps its running statistics while training (fine-tuning; "
        "also makes runs with different world sizes compute the same steps)",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=d.dist_timeout,
        metavar="SECONDS",
        help="a rank that waits longer than this on its peers (set-up, collective, rank "
        "table, no step done) ends with exit 134 instead of hanging",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="start this many ranks on this host (one per device), like torchrun",
    )
    p.add_argument(
        "--device-list",
        type=_device_list,
        default=None,
        metavar="IDS",
        help="comma-separated device indices of the --nproc ranks, e.g. 0,1,2,3,4,5,6,7; "
        "None: 0..nproc-1",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Prometheus metrics port of this rank (+ LOCAL_RANK when several ranks share a "
        "host); 0 disables the exporter (default: $METRICS_PORT, else 9400)",
    )
    p.add_argument(
        "--metrics-addr",
        default=None,
        help="address the metrics endpoint binds (default: $METRICS_ADDR, else 0.0.0.0)",
    )
    compat.add_flags(p)
    return p


def parse_namespace(argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed flags, with the switch forms of --amp/--pretrained told apart first."""
    args = sys.argv[1:] if argv is None else argv
    # The one file-system read of this module: `--pretrained DIR` is the switch and a dataset.
    normal = compat.normalize_argv(args, is_dir=os.path.isdir)
    return build_parser().parse_args(normal)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Raise ConfigError naming the field and the fix for the first impossible setting."""
    _check(
        cfg.arch in ARCH_NAMES,
        f"-a/--arch {cfg.arch!r} is unknown: pass one of {', '.join(ARCH_NAMES)}",
    )
    _check(cfg.data is not None or cfg.dummy, "data: pass the dataset folder, or --dummy")
    _check(cfg.world_size >= 1, f"world size {cfg.world_size} must be >= 1")
    _check(
        0 <= cfg.rank < cfg.world_size,
        f"rank {cfg.rank} must be in [0, {cfg.world_size})",
    )
    _check(cfg.batch_size >= 1, f"-b/--batch-size {cfg.batch_size} must be >= 1")
    _check(
        cfg.batch_size % cfg.world_size == 0,
        f"-b/--batch-size {cfg.batch_size} is the global batch and must divide evenly over "
        f"{cfg.world_size} ranks: pass a multiple of {cfg.world_size}",
    )
    _check(cfg.epochs >= 1, f"--epochs {cfg.epochs} must be >= 1")
    _check(
        0 <= cfg.start_epoch < cfg.epochs or cfg.evaluate,
        f"--start-epoch {cfg.start_epoch} must be in [0, --epochs {cfg.epochs})",
    )
    _check(cfg.workers >= 0, f"-j/--workers {cfg.workers} must be >= 0")
    _check(cfg.lr > 0 and math.isfinite(cfg.lr), f"--lr {cfg.lr} must be a positive number")
    _check(0 <= cfg.momentum < 1, f"--momentum {cfg.momentum} must be in [0, 1)")
    _check(
        cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay),
        f"--wd {cfg.weight_decay} must be a number >= 0",
    )
    _check(cfg.print_freq >= 1, f"-p/--print-freq {cfg.print_freq} must be >= 1")
    _check(
        0 <= cfg.label_smoothing < 1,
        f"--label-smoothing {cfg.label_smoothing} must be in [0, 1)",
    )
    _check(cfg.warmup_epochs >= 0, f"--warmup-epochs {cfg.warmup_epochs} must be >= 0")
    _check(
        cfg.evaluate or cfg.warmup_epochs < cfg.epochs,
        f"--warmup-epochs {cfg.warmup_epochs:g} must be smaller than --epochs {cfg.epochs}: "
        "pass a smaller --warmup-epochs (0 disables warm-up)",
    )
    _check(
        cfg.lars_eta > 0 and math.isfinite(cfg.lars_eta),
        f"--lars-eta {cfg.lars_eta} must be a number > 0",
    )
    _check(
        not (cfg.nesterov and cfg.momentum == 0),
        "--nesterov needs --momentum > 0",
    )
    _check(cfg.image_size >= 32, f"--image-size {cfg.image_size} must be >= 32")
    _check(
        cfg.val_resize >= cfg.image_size,
        f"--val-resize {cfg.val_resize} must be >= --image-size {cfg.image_size}",
    )
    _check(cfg.eval_freq >= 1, f"--eval-freq {cfg.eval_freq} must be >= 1")
    _check(
        cfg.max_steps_per_epoch is None or cfg.max_steps_per_epoch >= 1,
        f"--max-steps-per-epoch {cfg.max_steps_per_epoch} must be >= 1",
    )
    _check(
        cfg.checkpoint_steps is None or cfg.checkpoint_steps >= 1,
        f"--checkpoint-steps {cfg.checkpoint_steps} must be >= 1 (leave it out to save at "
        "epoch ends only)",
    )
    _check(cfg.device_id >= 0, f"--device-id {cfg.device_id} must be >= 0")
    _check(
        cfg.shuffle_kernel in SHUFFLE_KERNELS,
        f"{contract_env.SHUFFLE_KERNEL}={cfg.shuffle_kernel!r} is not a kernel policy: set one "
        f"of {', '.join(SHUFFLE_KERNELS)} or unset it",
    )
    _check(
        cfg.shuffle_kernel != "triton" or cfg.device == "cuda",
        f"--shuffle-kernel triton runs on CUDA only (device is {cfg.device}): "
        "use --shuffle-kernel auto",
    )
    _check(
        0 < cfg.dist_timeout <= MAX_DIST_TIMEOUT,
        f"--dist-timeout {cfg.dist_timeout} must be in (0, {MAX_DIST_TIMEOUT:.0f}] seconds",
    )
    _check(cfg.nproc is None or cfg.nproc >= 1, f"--nproc {cfg.nproc} must be >= 1")
    _check(
        cfg.device_list is None or cfg.nproc is None or len(cfg.device_list) == cfg.nproc,
        f"--device-list has {len(cfg.device_list or ())} devices but --nproc is {cfg.nproc}: "
        "pass one device per rank",
    )
    _check(
        cfg.device_list is None or cfg.nproc is not None,
        "--device-list goes with --nproc (the ranks to start on this host)",
    )
    _check(
        cfg.metrics_port is None or 0 <= cfg.metrics_port <= 65535,
        f"--metrics-port {cfg.metrics_port} must be in [0, 65535] (0 disables the exporter)",
    )
    _check(cfg.seed >= 0, f"--seed {cfg.seed} must be >= 0")
    _check(
        cfg.num_classes is None or cfg.num_classes >= 1,
        f"--num-classes {cfg.num_classes} must be >= 1",
    )
    _check(bool(cfg.output_dir), "--output-dir must not be empty")
    _check(cfg.init_from != "", "--init-from must not be empty")
    _check(
        not (cfg.init_from and (cfg.pretrained or cfg.torchvision_weights)),
        "--init-from and --weights/--pretrained both give the starting weights: pass one",
    )
    if cfg.amp.startswith("apex"):
        _check(
            cfg.device in ("cuda", "npu"),
            f"--amp {cfg.amp} needs --device cuda or npu: use --amp bf16 or off on {cfg.device}",
        )
    _check(
        cfg.loss_scale is None or cfg.amp in ("fp16", "apex-O1", "apex-O2"),
        f"--loss-scale applies to --amp fp16/apex-O1/apex-O2 only, not --amp {cfg.amp}: "
        "drop --loss-scale",
    )
    _check(
        not (cfg.compile and cfg.amp.startswith("apex")),
        f"--compile cannot be combined with --amp {cfg.amp}: use --amp fp16 or bf16",
    )
    return cfg


def parse_config(
    argv: Sequence[str] | None,
    *,
    default_device: str = "cpu",
    world_size: int = 1,
    rank: int = 0,
    env_device_id: int | None = None,
    force_cpu: bool = False,
) -> TrainConfig:
    """Parse and validate flags.

    `default_device` is what --device means when it is not given (the caller probes the
    hardware); `world_size`/`rank` come from the rank environment (RANK, WORLD_SIZE) and
    `env_device_id` is the device index it names (DEVICE_ID, else LOCAL_RANK), which an
    explicit --device-id overrides. `force_cpu` (the test-only SHUFFLENET_FORCE_CPU) runs
    on CPU in the CPU's default precision whatever --device and --amp say: a CPU stand-in
    for a GPU/NPU job's ranks, command line unchanged.
    """
    ns = parse_namespace(argv)
    for name, value in compat.resolve_flags(ns).items():
        setattr(ns, name, value)
    device = "cpu" if force_cpu else ns.device or default_device
    amp = (None if force_cpu else ns.amp) or DEFAULT_AMP[device]
    # The CPU stand-in drops loss scaling with the precision it drops.
    loss_scale = None if force_cpu else ns.loss_scale
    if loss_scale is None and amp in ("fp16", "apex-O1", "apex-O2"):
        loss_scale = "dynamic"
    warmup = ns.warmup_epochs
    if warmup is None:
        warmup = min(DEFAULT_WARMUP_EPOCHS, ns.epochs / 10)
    lr = ns.lr if ns.lr is not None else REFERENCE_LR * ns.batch_size / REFERENCE_BATCH
    # Every other field has a flag of the same name (argparse's dest).
    resolved = {
        "lr": lr,
        "device": device,
        "device_id": ns.device_id if ns.device_id is not None else (env_device_id or 0),
        "amp": amp,
        "loss_scale": loss_scale,
        "warmup_epochs": warmup,
        "world_size": world_size,
        "rank": rank,
    }
    given, fields = vars(ns), dataclasses.fields(TrainConfig)
    cfg = TrainConfig(
        **{f.name: resolved[f.name] if f.name in resolved else given[f.name] for f in fields}
    )
    return validate(cfg)
