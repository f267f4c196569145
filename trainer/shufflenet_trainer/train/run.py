"""`run`: one training (or evaluation) run from a TrainConfig, in named pieces.

`run` joins the job's ranks and leaves them again; `_run` resolves the checkpoint to resume
from (or, resuming nothing, the one whose weights --init-from names), builds the components
(loaders, model, optimizer, schedule), opens the result folder once every input has been
checked, and runs the epochs. Where the run is lives in a `RunState`, which checkpoints
store and resumed runs start from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.build import Loaders, LoaderSettings, build_loaders
from ..errors import EXIT_SIGTERM, ConfigError, first_line
from ..model import kernel_choice
from ..model.shufflenetv2 import build_model
from . import checkpoint as ckpt
from . import device as dev
from . import distributed
from .config import TrainConfig
from .loop import EpochStats, EvalStats, Hooks, Trainer
from .optim import LrSchedule, build_optimizer, make_schedule
from .plotting import plot_curves
from .results import CURVES_NAME, RunLog, create_result_dir, rank_log_name
from .state import RunState


@dataclass
class Runtime:
    """What `run` set up for `_run`: the config and the process's place in the job."""

    cfg: TrainConfig
    hooks: Hooks
    log: RunLog
    device: torch.device
    precision: dev.Precision
    ctx: distributed.DistContext
    stop: distributed.StopFlag


@dataclass
class Resume:
    """The checkpoint a run resumes from."""

    path: Path
    state: dict[str, Any]


@dataclass
class Components:
    """What trains: built and checked before the result folder exists."""

    loaders: Loaders
    model: nn.Module  # unwrapped: what checkpoints store and BatchNorm averaging sees
    optimizer: torch.optim.Optimizer
    steps: int  # training steps per epoch
    schedule: LrSchedule
    pretrained_note: str | None


def run(cfg: TrainConfig, *, hooks: Hooks | None = None) -> int:
    """Run training (or evaluation with -e) as configured; returns the exit code (0, or
    EXIT_SIGTERM after a stop request and its checkpoint).

    Everything that can be wrong with the inputs is checked before the result folder is
    created: device, precision, checkpoints, data, model. In a multi-rank job (RANK,
    WORLD_SIZE... in the environment) the rank joins its peers first.
    """
    hooks = hooks or Hooks()
    log = RunLog()
    device = dev.select_device(cfg.device, cfg.device_id)
    precision = dev.Precision(cfg.amp, device, cfg.loss_scale)
    env = distributed.rank_environment()
    if (env.world_size, env.rank) != (cfg.world_size, cfg.rank):
        raise ConfigError(
            f"the config says rank {cfg.rank} of {cfg.world_size} but the environment says "
            f"RANK={env.rank} WORLD_SIZE={env.world_size}: start ranks through the launcher"
        )
    ctx = distributed.setup(env, device, cfg.dist_timeout)
    stop = distributed.StopFlag().install()
    clean = False
    try:
        code = _run(Runtime(cfg, hooks, log, device, precision, ctx, stop))
        clean = True
        return code
    finally:
        stop.uninstall()
        log.close()
        ctx.close(clean=clean)


def _run(rt: Runtime) -> int:
    cfg = rt.cfg
    resume = _resolve_resume(cfg, rt.log, rt.ctx)
    init = _resolve_init(cfg, rt.log, rt.ctx, resume)
    if cfg.resume == "auto" and resume is not None and not cfg.evaluate:
        epoch = int(resume.state["epoch"])
        if epoch >= cfg.epochs:
            # A rank killed after its last checkpoint (while plotting or exiting) and
            # restarted: the job is done. An error would make the operator fail it for good.
            rt.log.info(
                f"=> --resume auto: {resume.path} already finished epoch {epoch} of --epochs "
                f"{cfg.epochs}: nothing left to train"
            )
            return 0
    parts = build_components(rt, resume, init)
    state = _start_state(cfg, parts, resume)
    train_model = distributed.wrap_ddp(parts.model, rt.device, rt.ctx)
    run_model = torch.compile(train_model) if cfg.compile else train_model
    # All inputs are valid: from here on the run leaves a result folder.
    folder = open_result_folder(rt)
    trainer = Trainer(
        cfg,
        model=run_model,
        optimizer=parts.optimizer,
        precision=rt.precision,
        device=rt.device,
        schedule=parts.schedule,
        log=rt.log,
        hooks=rt.hooks,
        ctx=rt.ctx,
        stop=rt.stop,
    )
    _announce(rt, parts, state, resume, folder)
    if cfg.evaluate:
        return _evaluate_only(trainer, parts.loaders, cfg, rt.log, rt.hooks)
    return _train_epochs(rt, trainer, parts, state, folder)


def _find_auto(cfg: TrainConfig, log: RunLog) -> tuple[Path | None, dict | None]:
    found, state, notes = ckpt.find_resumable(cfg.output_dir, arch=cfg.arch)
    for note in notes:
        log.info(f"=> --resume auto: skipping {note}; trying the one before")
    if found is None:
        log.info(f"=> --resume auto: no usable checkpoint under {cfg.output_dir}, starting fresh")
    else:
        log.info(f"=> --resume auto: found {found}")
    return found, state


def _picked_by_rank0(
    ctx: distributed.DistContext, pick: Callable[[], tuple[Path | None, dict | None]]
) -> tuple[Path | None, dict | None]:
    """A checkpoint that rank 0 picks (`pick`: its path and, if it loaded it, its state) and
    every rank uses: all ranks start from the same file even while checkpoints change on
    shared storage. The path comes back on every rank, the state on rank 0 only. An error of
    rank 0's is raised on every rank, not only on rank 0 (the others would otherwise wait
    for it until timeout)."""
    found: Path | None = None
    state: dict | None = None
    message: str | None = None
    if ctx.rank == 0:
        try:
            found, state = pick()
        except ConfigError as exc:
            message = str(exc)
    shared = ctx.broadcast_object((str(found) if found else None, message))
    if shared[1] is not None:
        raise ConfigError(shared[1])
    return (Path(shared[0]) if shared[0] is not None else None), state


def _resolve_resume(cfg: TrainConfig, log: RunLog, ctx: distributed.DistContext) -> Resume | None:
    """The checkpoint to resume from (None: a fresh start). With `auto`, rank 0 chooses."""
    if cfg.resume is None:
        return None
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        return Resume(path, ckpt.load_checkpoint(path, arch=cfg.arch))
    found, state = _picked_by_rank0(ctx, lambda: _find_auto(cfg, log))
    if found is None:
        return None
    return Resume(found, state if state is not None else ckpt.load_checkpoint(found, arch=cfg.arch))


def _resolve_init(
    cfg: TrainConfig, log: RunLog, ctx: distributed.DistContext, resume: Resume | None
) -> Path | None:
    """The checkpoint whose weights the run starts from (--init-from), chosen by rank 0;
    None without --init-from, or when the run resumes: its own checkpoint wins, so that a
    restarted or re-created job goes on with its own run."""
    source = cfg.init_from
    if source is None:
        return None
    if resume is not None:
        log.info(f"=> --init-from {source} ignored: resuming this run's {resume.path}")
        return None

    def pick() -> tuple[Path | None, dict | None]:
        found, notes = ckpt.find_init(source, arch=cfg.arch)
        for note in notes:
            log.info(f"=> --init-from: skipping {note}; trying the one before")
        return found, None

    return _picked_by_rank0(ctx, pick)[0]


def build_components(rt: Runtime, resume: Resume | None, init: Path | None = None) -> Components:
    """Loaders, model (with pretrained, --init-from `init` or resumed weights), optimizer
    (with its resumed state) and lr schedule, each checked against the others."""
    cfg, device = rt.cfg, rt.device
    loaders = build_loaders(loader_settings(cfg, device))
    torch.manual_seed(cfg.seed)
    if cfg.num_classes is not None and cfg.num_classes != loaders.num_classes:
        raise ConfigError(
            f"--num-classes {cfg.num_classes}: the dataset has {loaders.num_classes} classes; "
            "drop --num-classes (the classes come from the data)"
        )
    kernel_choice.set_policy(cfg.shuffle_kernel)
    model = build_model(cfg.arch, num_classes=loaders.num_classes, shuffle=cfg.shuffle)
    pretrained_note = None
    weights, flag = _start_weights(cfg, init)
    if weights:
        pretrained_note = ckpt.load_pretrained(
            model, weights, arch=cfg.arch, allow_new_head=not cfg.evaluate, flag=flag
        )
        if init is not None:
            pretrained_note += " (--init-from: its weights only)"
    if resume is not None:
        try:
            model.load_state_dict(ckpt.strip_wrapper_prefixes(resume.state["state_dict"]))
        except RuntimeError as exc:
            raise ConfigError(
                f"--resume {resume.path} does not fit this model/data "
                f"({loaders.num_classes} classes): {first_line(exc, with_type=False)}; resume with "
                "the data and flags of the original run"
            ) from None
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(
        model,
        name=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
        bn_weight_decay=cfg.bn_weight_decay,
        lars_eta=cfg.lars_eta,
    )
    model, optimizer = rt.precision.prepare(model, optimizer)
    if resume is not None and not cfg.evaluate:
        _restore_training_state(rt, resume, optimizer)

    steps = _steps(len(loaders.train), cfg.max_steps_per_epoch)  # type: ignore[arg-type]
    if steps == 0 and not cfg.evaluate:
        raise ConfigError(
            f"-b/--batch-size {cfg.batch_size}: the train split has {loaders.train_size} "
            "images, fewer than one batch; pass a smaller -b"
        )
    schedule = make_schedule(
        base_lr=cfg.lr,
        epochs=cfg.epochs,
        steps_per_epoch=max(steps, 1),
        warmup_epochs=cfg.warmup_epochs,
        schedule=cfg.lr_schedule,
    )
    return Components(loaders, model, optimizer, steps, schedule, pretrained_note)


def _start_weights(cfg: TrainConfig, init: Path | None) -> tuple[str | None, str]:
    """The weights file the model starts from (a resumed checkpoint's replace them), and the
    flag that named it, for errors."""
    if init is not None:
        return str(init), "--init-from"
    if cfg.torchvision_weights:
        return str(ckpt.torchvision_weights_file(cfg.arch)), "--pretrained"
    return cfg.pretrained, "--weights/--pretrained"


def loader_settings(cfg: TrainConfig, device: torch.device) -> LoaderSettings:
    """What this rank's loaders read and how, from the config: its share of the global batch,
    pinned host memory for a CUDA device, and always whole training batches."""
    return LoaderSettings(
        cfg.data,
        batch_size=cfg.per_process_batch,
        workers=cfg.workers,
        image_size=cfg.image_size,
        val_resize=cfg.val_resize,
        dummy=cfg.dummy,
        dummy_classes=cfg.num_classes or 1000,
        channels_last=cfg.channels_last,
        strict=cfg.strict_data,
        seed=cfg.seed,
        rank=cfg.rank,
        world_size=cfg.world_size,
        drop_last=True,
        pin_memory=device.type == "cuda",
        device=device.type,
    )


def _restore_training_state(rt: Runtime, resume: Resume, optimizer: torch.optim.Optimizer) -> None:
    """The optimizer, loss scaler and RNG as the checkpoint left them."""
    cfg = rt.cfg
    try:
        optimizer.load_state_dict(resume.state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise ConfigError(
            f"--resume {resume.path}: optimizer state does not fit --optimizer "
            f"{cfg.optimizer} ({exc}); resume with the flags of the original run"
        ) from None
    rt.precision.load_state_dict(resume.state.get("precision"))
    dev.set_rng_state(resume.state.get("rng_state"), rt.device)
    epoch = int(resume.state["epoch"])
    if epoch >= cfg.epochs:
        raise ConfigError(
            f"--resume {resume.path} already finished epoch {epoch} of --epochs "
            f"{cfg.epochs}: pass a larger --epochs to train on"
        )


def _start_state(cfg: TrainConfig, parts: Components, resume: Resume | None) -> RunState:
    """Where the run starts: the checkpoint's state, or --start-epoch."""
    if resume is None or cfg.evaluate:
        return RunState(epoch=cfg.start_epoch, global_step=cfg.start_epoch * parts.steps)
    state = RunState.from_checkpoint(resume.state, steps_per_epoch=parts.steps)
    if state.step_in_epoch == parts.steps:
        # Written by earlier versions when a stop came on an epoch's last step: the epoch's
        # training is complete (only its validation is missing), so go on with the next one.
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
    if state.step_in_epoch > parts.steps:
        raise ConfigError(
            f"--resume {resume.path} stopped after step {state.step_in_epoch} of epoch "
            f"{state.epoch} but an epoch now has {parts.steps} steps: resume with the flags "
            "of the original run"
        )
    return state


def _steps(length: int, cap: int | None) -> int:
    return length if cap is None else min(length, cap)


def open_result_folder(rt: Runtime) -> Path | None:
    """Rank 0 creates the result folder and returns it; the other ranks keep their own log
    in it and get None."""
    cfg, log = rt.cfg, rt.log
    folder: Path | None = None
    if cfg.is_main:
        folder = create_result_dir(cfg.output_dir, cfg.world_size)
        log.attach(folder)
        log.write_config(cfg.to_dict())
    shared_folder = rt.ctx.broadcast_object(str(folder) if folder is not None else None)
    if not cfg.is_main and shared_folder is not None:
        log.attach(Path(shared_folder), log_name=rank_log_name(cfg.rank), records=False)
        log.info(f"=> rank {cfg.rank} of {cfg.world_size}; rank 0 writes {shared_folder}")
    return folder


def _announce(
    rt: Runtime, parts: Components, state: RunState, resume: Resume | None, folder: Path | None
) -> None:
    """The run's opening log lines and the on_start hook."""
    cfg, log, loaders = rt.cfg, rt.log, parts.loaders
    log.info(
        f"=> {cfg.arch} on {rt.device} (amp {cfg.amp}, world size {cfg.world_size}); "
        f"data {'synthetic' if cfg.dummy else cfg.data}: {loaders.train_size} train / "
        f"{loaders.val_size} val images, {loaders.num_classes} classes, "
        f"decode {loaders.stats.decode_path}"
    )
    if parts.pretrained_note:
        log.info(f"=> pretrained: {parts.pretrained_note}")
    if resume is not None:
        at = f", step {state.step_in_epoch + 1}" if state.step_in_epoch else ""
        log.info(f"=> resumed from {resume.path} at epoch {state.epoch}{at}")
    if folder is not None:
        log.info(f"=> results in {folder}")
    Hooks.emit(
        rt.hooks.on_start,
        {
            "folder": str(folder) if folder is not None else None,
            "device": str(rt.device),
            "epochs": cfg.epochs,
            "start_epoch": state.epoch,
            "steps_per_epoch": parts.steps,
            "global_step": state.global_step,  # the checkpoint's, when resumed
        },
    )


def save_checkpoint(
    rt: Runtime, parts: Components, state: RunState, folder: Path | None, *, is_best: bool
) -> float:
    """Rank 0 saves the checkpoint (previous one kept); returns the seconds it took."""
    if folder is None:
        return 0.0
    t0 = time.perf_counter()
    checkpoint = {
        "format": ckpt.FORMAT,
        **state.to_checkpoint(),
        "arch": rt.cfg.arch,
        "num_classes": parts.loaders.num_classes,
        "state_dict": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "precision": rt.precision.state_dict(),
        "config": rt.cfg.to_dict(),
        "rng_state": dev.rng_state(rt.device),
    }
    with rt.ctx.paused():
        path = ckpt.save_checkpoint(
            checkpoint, folder / ckpt.CHECKPOINT_NAME, previous=folder / ckpt.PREVIOUS_NAME
        )
        if is_best:
            ckpt.copy_atomic(path, folder / ckpt.BEST_NAME)
    return time.perf_counter() - t0


def _save_mid_epoch(
    rt: Runtime,
    parts: Components,
    state: RunState,
    folder: Path | None,
    done: int,
    global_step: int,
) -> None:
    """The --checkpoint-steps checkpoint after step `done` of the epoch `state` is in.

    Every rank averages its BatchNorm buffers first (a collective), as before a SIGTERM
    checkpoint, so that the saved model is the one every rank goes on with and a resumed
    run computes the same steps as one that was never stopped.
    """
    rt.ctx.average_buffers(parts.model)
    mid = RunState(
        epoch=state.epoch,
        step_in_epoch=done,
        global_step=global_step,
        best_top1=state.best_top1,
        history=state.history,
    )
    seconds = save_checkpoint(rt, parts, mid, folder, is_best=False)
    if folder is not None:
        rt.log.record(
            {
                "kind": "checkpoint",
                "epoch": state.epoch,
                "step": done,
                "global_step": global_step,
                "checkpoint_seconds": seconds,
            }
        )


def _seed_epoch(seed: int, epoch: int) -> None:
    # Any randomness inside the step (none in ShuffleNetV2 today, but dropout or stochastic
    # ops could come) restarts from the same point whether or not the run was resumed.
    torch.manual_seed(seed * 100_003 + epoch)


def _train_epochs(
    rt: Runtime, trainer: Trainer, parts: Components, state: RunState, folder: Path | None
) -> int:
    """Epochs from `state` to --epochs: train, validate, checkpoint, record."""
    cfg, log, ctx = rt.cfg, rt.log, rt.ctx
    _log_plan(rt, parts, state)
    kernels_logged = False
    while state.epoch < cfg.epochs:
        first_step = state.step_in_epoch
        stats = _train_epoch(rt, trainer, parts, state, folder)
        if not kernels_logged:
            # Made at the first call of each op shape, so known only once steps have run.
            log.info(f"=> shuffle kernels {kernel_choice.summary()}")
            kernels_logged = True
        if stats.stopped:
            return _stop_in_epoch(rt, parts, state, folder, stats)
        _log_epoch(rt, stats)
        ctx.average_buffers(parts.model)  # BatchNorm statistics of all ranks, for val and save
        val, is_best = _validate(rt, trainer, parts, state)
        record = _epoch_record(rt, parts, state, stats, val, first_step)
        _end_epoch(rt, parts, state, folder, record, is_best=is_best)
        # A stop requested during validation or the checkpoint: the epoch is saved, so
        # leave now rather than after another epoch (unless this was the last one).
        if ctx.stop_vote_now(rt.stop.requested) and stats.epoch + 1 < cfg.epochs:
            log.info(f"=> stopped by SIGTERM after epoch {stats.epoch}; checkpoint saved")
            ctx.barrier()
            return EXIT_SIGTERM
    ctx.barrier()  # the job is done when rank 0's last checkpoint is on disk
    log.info(f"=> done: best val top-1 {state.best_top1:.3f}")
    return 0


def _log_plan(rt: Runtime, parts: Components, state: RunState) -> None:
    cfg = rt.cfg
    rt.log.info(
        f"=> {cfg.epochs - state.epoch} epochs x {parts.steps} steps, global batch "
        f"{cfg.batch_size} ({cfg.per_process_batch} per process), lr {cfg.lr:g} "
        f"{cfg.lr_schedule} with {cfg.warmup_epochs:g} warm-up epochs, {cfg.optimizer}"
    )


def _train_epoch(
    rt: Runtime, trainer: Trainer, parts: Components, state: RunState, folder: Path | None
) -> EpochStats:
    """Train the epoch `state` is in, from its step `state.step_in_epoch`, saving every
    --checkpoint-steps; counts the steps run in `state.global_step`."""
    epoch, first_step = state.epoch, state.step_in_epoch
    parts.loaders.set_epoch(epoch, first_step)
    if first_step == 0:
        # Mid-epoch, the RNG state restored from the checkpoint is the one to go on with.
        _seed_epoch(rt.cfg.seed, epoch)
    stats = trainer.train_one_epoch(
        parts.loaders.train,
        epoch=epoch,
        steps=parts.steps,
        global_step=state.global_step,
        start_step=first_step,
        save=lambda done, global_step: _save_mid_epoch(rt, parts, state, folder, done, global_step),
    )
    state.global_step += stats.ran
    return stats


def _stop_in_epoch(
    rt: Runtime, parts: Components, state: RunState, folder: Path | None, stats: EpochStats
) -> int:
    """A stop request inside the epoch: save where it stopped, and leave with EXIT_SIGTERM."""
    rt.ctx.average_buffers(parts.model)
    state.step_in_epoch = stats.steps
    seconds = save_checkpoint(rt, parts, state, folder, is_best=False)
    rt.log.info(
        f"=> stopped by SIGTERM after step {stats.steps} of {parts.steps} of epoch {stats.epoch}"
        + (f"; checkpoint saved in {seconds:.1f}s" if folder is not None else "")
    )
    rt.ctx.barrier()  # every rank exits once rank 0's checkpoint is on disk
    return EXIT_SIGTERM


def _log_epoch(rt: Runtime, stats: EpochStats) -> None:
    # A stable interface (docs/training.md, "Log lines"). The ModelZoo test scripts read
    # the loss as the word after "Loss" on the last line with "Epoch" and as the 12th
    # word of the last line with "Loss"; the throughput as the 7th and as the last-but-two
    # word of lines with "FPS": hence fixed word positions and an FPS line of its own.
    rt.log.info(
        f"Epoch {stats.epoch}: top1 {stats.top1:.2f} top5 {stats.top5:.2f} lr {stats.lr:.6f} "
        f"data-wait {100 * stats.data_wait_share:.1f}% Loss {stats.loss:.4f} "
        f"({stats.fps_note})"
    )
    rt.log.info(
        f"[rank {rt.cfg.rank} epoch {stats.epoch}] * FPS@all {stats.images_per_sec:.3f}, "
        f"TIME@all {stats.seconds:.3f}"
    )


def _validate(
    rt: Runtime, trainer: Trainer, parts: Components, state: RunState
) -> tuple[EvalStats | None, bool]:
    """Validation after the epoch `state` is in, every --eval-freq epochs and after the
    last; returns it (None when not due) and whether it is the best so far, which then
    sets `state.best_top1`."""
    cfg, epoch = rt.cfg, state.epoch
    if (epoch + 1) % cfg.eval_freq != 0 and epoch + 1 != cfg.epochs:
        return None, False
    val = trainer.validate(parts.loaders.val, max_steps=cfg.max_steps_per_epoch)
    rt.log.info(val.summary())
    is_best = val.top1 > state.best_top1 or not state.has_validated()
    if is_best:
        state.best_top1 = val.top1
    return val, is_best


def _end_epoch(
    rt: Runtime,
    parts: Components,
    state: RunState,
    folder: Path | None,
    record: dict[str, Any],
    *,
    is_best: bool,
) -> None:
    """Close the epoch in `state` with its `record`; rank 0 saves the checkpoint and the
    curves; then the record goes to train.jsonl and the on_epoch hook."""
    state.end_epoch(record)
    if folder is not None:
        record["checkpoint_seconds"] = save_checkpoint(rt, parts, state, folder, is_best=is_best)
        plot_curves(state.history, folder / CURVES_NAME)
    rt.log.record(record)
    Hooks.emit(rt.hooks.on_epoch, record)


def _epoch_record(
    rt: Runtime,
    parts: Components,
    state: RunState,
    stats: EpochStats,
    val: EvalStats | None,
    first_step: int,
) -> dict[str, Any]:
    """The epoch's line of train.jsonl (and of the checkpoint's history)."""
    mem = dev.memory_stats(rt.device)
    record: dict[str, Any] = {
        "kind": "epoch",
        "epoch": stats.epoch,
        "step": stats.steps,
        "global_step": state.global_step,
        "loss": stats.loss,
        "lr": stats.lr,
        "top1": stats.top1,
        "top5": stats.top5,
        "images_per_sec": stats.images_per_sec,
        "fps_steps": list(stats.fps_steps),
        "data_wait_share": stats.data_wait_share,
        "epoch_seconds": stats.seconds,
        "images": stats.images,
        "val_loss": val.loss if val else None,
        "val_top1": val.top1 if val else None,
        "val_top5": val.top5 if val else None,
        "best_top1": state.best_top1,
        "loss_scale": rt.precision.current_scale(),
        "max_memory_bytes": mem["max_allocated_bytes"] if mem else None,
        "skipped_files": parts.loaders.stats.skipped_files,
    }
    if first_step:
        record["resumed_at_step"] = first_step
    return record


def _evaluate_only(
    trainer: Trainer, loaders: Loaders, cfg: TrainConfig, log: RunLog, hooks: Hooks
) -> int:
    val = trainer.validate(loaders.val, max_steps=cfg.max_steps_per_epoch)
    log.info(val.summary())
    record = {
        "kind": "eval",
        "epoch": None,
        "step": None,
        "loss": val.loss,
        "top1": val.top1,
        "top5": val.top5,
        "val_loss": val.loss,
        "val_top1": val.top1,
        "val_top5": val.top5,
        "images": val.images,
        "images_per_sec": val.images / max(val.seconds, 1e-9),  # images are over all ranks
        "seconds": val.seconds,
    }
    log.record(record)
    Hooks.emit(hooks.on_eval, record)
    return 0
