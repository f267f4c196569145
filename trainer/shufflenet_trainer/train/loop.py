"""Training and validation loops, and `run`, which wires a whole run together.

Design points:
- No host/device sync per step: loss and accuracy are summed on the device and read back
  only at print steps; throughput is timed between two synchronisations per epoch.
- Throughput is the Ascend ModelZoo seed's FPS: global images per second over the epoch,
  excluding the first WARMUP_STEPS steps (graph building, cuDNN autotuning, worker start-up).
  An epoch of at most WARMUP_STEPS steps excludes only its first step, and says so.
- Exact resume: the lr is a function of the global step, data order and augmentation depend
  only on (seed, epoch), and torch's RNG is reseeded from (seed, epoch) at each epoch start,
  so epoch k runs the same whether or not the process restarted before it.
- Data parallel: DistributedDataParallel averages gradients; the sampler gives each rank a
  disjoint 1/N of every global batch (the same images as a 1-rank run of that batch);
  metric counters are summed over ranks; BatchNorm statistics are averaged over ranks
  before validation and checkpoints; rank 0 alone writes the result folder's files, the
  other ranks their own `rank<k>.log` in it (see distributed.py).
- Preemption: SIGTERM finishes the current step on every rank (a vote, see
  `DistContext.stop_vote`), saves a mid-epoch checkpoint and returns EXIT_SIGTERM; resuming
  continues the epoch at the next batch.
- `Hooks` are the extension points for metrics export and signal handling.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.build import build_loaders, normalize_on_device
from ..errors import EXIT_SIGTERM, ConfigError, first_line
from ..model.shufflenetv2 import build_model
from . import checkpoint as ckpt
from . import device as dev
from . import distributed
from .config import TrainConfig
from .optim import LrSchedule, build_optimizer, make_schedule, set_lr
from .plotting import plot_curves
from .results import CURVES_NAME, RunLog, create_result_dir, rank_log_name

WARMUP_STEPS = 10


@dataclass(frozen=True)
class StepEvent:
    """Sent to `Hooks.on_step` after every step; cheap (no device sync)."""

    epoch: int
    step: int  # 0-based within the epoch
    global_step: int  # steps completed in the whole run
    images: int  # images of this step, all ranks
    step_seconds: float  # host wall time of the step, without device sync
    data_wait_seconds: float
    lr: float


@dataclass
class Hooks:
    """Callback lists; each callable gets one argument.

    on_start: the run's plan (dict: folder (rank 0's result folder, else None), device,
              epochs, start_epoch, steps_per_epoch), once all inputs are valid.
    on_step:  StepEvent after every training step.
    on_log:   the print-step record (dict, as written to train.jsonl).
    on_epoch: the epoch record (dict, as written to train.jsonl), after the checkpoint.
    on_eval:  the evaluation record (dict).
    """

    on_start: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    on_step: list[Callable[[StepEvent], None]] = field(default_factory=list)
    on_log: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    on_epoch: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    on_eval: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)

    @staticmethod
    def _call(funcs: Iterable[Callable[[Any], None]], arg: Any) -> None:
        for f in funcs:
            f(arg)


def topk_correct(output: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """Number of samples whose label is in the top-k predictions, per k (a device tensor).

    k is capped at the class count, so top-5 of a 3-class problem is top-3 (always 100%).
    """
    maxk = min(max(ks), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    hit = pred.eq(target.view(-1, 1))
    return torch.stack([hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks])


def _accumulate(sums: Tensor, loss: Tensor, hits: Tensor, n: int) -> None:
    """sums += [loss * n, top1 hits, top5 hits, n], on the device, without a host sync."""
    sums[0] += loss.double() * n
    sums[1:3] += hits.double()
    sums[3] += n


def fps_at_all(images: int, since_images: int, since: float | None, now: float) -> float | None:
    """FPS@all: global images/s from the end of the warm-up steps (`since`) until `now`.

    The one place it is computed: the epoch record uses it at the epoch's end, the print-step
    records (and so the metrics exporter) use it on the epoch so far. None during warm-up.
    """
    if since is None:
        return None
    return (images - since_images) / max(now - since, 1e-9)


def freeze_batchnorm(model: nn.Module) -> None:
    """Put BatchNorm layers in eval mode: they normalise with, and keep, their running
    statistics; their scale and shift still train."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@dataclass
class EpochStats:
    epoch: int
    steps: int
    images: int  # all ranks
    loss: float
    top1: float
    top5: float
    lr: float
    images_per_sec: float  # FPS@all
    fps_steps: tuple[int, int]  # 1-based first and last step counted
    fps_note: str
    data_wait_share: float
    seconds: float
    ran: int = 0  # steps run by this call (fewer than `steps` when resumed mid-epoch)
    stopped: bool = False  # ended early by a stop request (SIGTERM)


@dataclass
class EvalStats:
    loss: float
    top1: float
    top5: float
    images: int
    seconds: float

    def summary(self) -> str:
        return (
            f" * Acc@1 {self.top1:.3f} Acc@5 {self.top5:.3f} (val loss {self.loss:.4f}, "
            f"{self.images} images, {self.seconds:.1f}s)"
        )


class Trainer:
    """Holds what the loops share: model, optimizer, precision, device, schedule, logs."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        precision: dev.Precision,
        device: torch.device,
        schedule: LrSchedule,
        log: RunLog,
        hooks: Hooks,
        ctx: distributed.DistContext,
        stop: distributed.StopFlag,
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.stop = stop
        self.model = model
        self.optimizer = optimizer
        self.precision = precision
        self.device = device
        self.schedule = schedule
        self.log = log
        self.hooks = hooks
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing).to(device)

    def _inputs(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        x = normalize_on_device(images, self.device, channels_last=self.cfg.channels_last)
        return x, labels.to(self.device, non_blocking=True)

    def train_one_epoch(
        self,
        loader: Iterable[tuple[Tensor, Tensor]],
        *,
        epoch: int,
        steps: int,
        global_step: int,
        start_step: int = 0,
    ) -> EpochStats:
        """Train steps `start_step`..`steps`-1 of `epoch` (the loader starts at `start_step`)."""
        cfg, ws = self.cfg, self.cfg.world_size
        self.model.train()
        if cfg.freeze_bn:
            freeze_batchnorm(self.model)
        dev.reset_peak_memory(self.device)
        # Counters on the device: [loss * n, top1 hits, top5 hits, n]; read at print steps.
        epoch_sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        last_sums = torch.zeros_like(epoch_sums)
        remaining = steps - start_step
        skip = WARMUP_STEPS if remaining > WARMUP_STEPS else min(1, remaining - 1)
        fps_start: float | None = None
        fps_images = 0
        wait_total = 0.0
        wait_interval = 0.0
        lr = self.schedule(global_step)
        images_total = 0

        dev.synchronize(self.device)
        t_epoch = time.perf_counter()
        if skip == 0:
            fps_start = t_epoch
        t_interval = t_epoch
        it = iter(loader)
        done = start_step
        stopped = False
        for step in range(start_step, steps):
            t0 = time.perf_counter()
            try:
                images, labels = next(it)
            except StopIteration:
                break
            t_data = time.perf_counter()
            wait = t_data - t0
            lr = self.schedule(global_step)
            set_lr(self.optimizer, lr)
            x, y = self._inputs(images, labels)
            with self.precision.autocast():
                output = self.model(x)
                loss = self.criterion(output, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.precision.backward_step(loss, self.optimizer)

            n = y.shape[0]
            with torch.no_grad():
                _accumulate(epoch_sums, loss.detach(), topk_correct(output.detach(), y), n)
            global_step += 1
            done = step + 1
            images_total += n * ws
            wait_total += wait
            wait_interval += wait
            if fps_start is None and done - start_step == skip:
                dev.synchronize(self.device)
                fps_start = time.perf_counter()
                fps_images = images_total
            if self.hooks.on_step:  # nothing to build on the hot path without a listener
                seconds = time.perf_counter() - t0
                event = StepEvent(epoch, step, global_step, n * ws, seconds, wait, lr)
                Hooks._call(self.hooks.on_step, event)
            self.ctx.pet()
            stopped = self.ctx.stop_vote(self.stop.requested)

            if done % cfg.print_freq == 0 or done == steps or stopped:
                # .tolist() syncs the device, so the interval's wall time is real work.
                sums = self.ctx.all_reduce_sum(epoch_sums - last_sums).tolist()
                last_sums = epoch_sums.clone()
                now = time.perf_counter()
                interval = max(now - t_interval, 1e-9)
                record = {
                    "kind": "step",
                    "epoch": epoch,
                    "step": done,
                    "steps": steps,
                    "global_step": global_step,
                    "loss": sums[0] / sums[3],
                    "lr": lr,
                    "top1": 100.0 * sums[1] / sums[3],
                    "top5": 100.0 * sums[2] / sums[3],
                    "images_per_sec": sums[3] / interval,  # sums are over all ranks
                    "fps_all": fps_at_all(images_total, fps_images, fps_start, now),
                    "data_wait_share": wait_interval / interval,
                }
                t_interval, wait_interval = now, 0.0
                self.log.step(
                    f"Epoch: [{epoch}][{done:>{len(str(steps))}}/{steps}]  "
                    f"loss {record['loss']:.4f}  top1 {record['top1']:6.2f}  "
                    f"top5 {record['top5']:6.2f}  lr {lr:.6f}  "
                    f"img/s {record['images_per_sec']:9.1f}  "
                    f"data {100 * record['data_wait_share']:5.1f}%",
                    bar_text=f"loss {record['loss']:.4f} top1 {record['top1']:.1f} "
                    f"lr {lr:.4g} {record['images_per_sec']:.0f} img/s",
                )
                self.log.record(record)
                Hooks._call(self.hooks.on_log, record)
            self.log.progress.advance(f"Epoch {epoch}", done, steps)
            if stopped:
                break

        dev.synchronize(self.device)
        t_done = time.perf_counter()
        if done == start_step:
            raise ConfigError(
                f"epoch {epoch} had no training batch: lower -b/--batch-size "
                f"({cfg.batch_size}) or add data"
            )
        sums = self.ctx.all_reduce_sum(epoch_sums).tolist()
        warmed_up = fps_start is not None
        if fps_start is None:  # the loader ended before the warm-up steps were over
            fps_start, fps_images = t_epoch, 0
            first = 1
        else:
            first = skip + 1
        fps = fps_at_all(images_total, fps_images, fps_start, t_done)
        assert fps is not None
        ran = done - start_step
        first += start_step
        if not warmed_up and ran > 1:
            note = f"only {ran} steps: steps {first}-{done}, nothing excluded"
        elif ran > WARMUP_STEPS:
            note = f"steps {first}-{done} of {done}, first {WARMUP_STEPS} excluded"
        elif ran > 1:
            note = f"only {ran} steps: steps {first}-{done}, first step excluded"
        else:
            note = "only 1 step: nothing excluded"
        if start_step:
            note += f"; resumed at step {start_step + 1}"
        return EpochStats(
            epoch=epoch,
            steps=done,
            images=images_total,
            loss=sums[0] / sums[3],
            top1=100.0 * sums[1] / sums[3],
            top5=100.0 * sums[2] / sums[3],
            lr=lr,
            images_per_sec=fps,
            fps_steps=(first, done),
            fps_note=note,
            data_wait_share=wait_total / max(t_done - t_epoch, 1e-9),
            seconds=t_done - t_epoch,
            ran=ran,
            stopped=stopped,
        )

    @torch.no_grad()
    def validate(
        self, loader: Iterable[tuple[Tensor, Tensor]], *, max_steps: int | None = None
    ) -> EvalStats:
        self.model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        t0 = time.perf_counter()
        for i, (images, labels) in enumerate(loader):
            if max_steps is not None and i >= max_steps:
                break
            x, y = self._inputs(images, labels)
            with self.precision.autocast():
                output = self.model(x)
                loss = self.criterion(output, y)
            n = y.shape[0]
            _accumulate(sums, loss, topk_correct(output, y), n)
            self.ctx.pet()
        s = self.ctx.all_reduce_sum(sums).tolist()
        n = max(s[3], 1.0)
        return EvalStats(
            loss=s[0] / n,
            top1=100.0 * s[1] / n,
            top5=100.0 * s[2] / n,
            images=int(s[3]),
            seconds=time.perf_counter() - t0,
        )


def _seed_epoch(seed: int, epoch: int) -> None:
    # Any randomness inside the step (none in ShuffleNetV2 today, but dropout or stochastic
    # ops could come) restarts from the same point whether or not the run was resumed.
    torch.manual_seed(seed * 100_003 + epoch)


def _find_auto(cfg: TrainConfig, log: RunLog) -> tuple[Path | None, dict | None]:
    found, state, notes = ckpt.find_resumable(cfg.output_dir, arch=cfg.arch)
    for note in notes:
        log.info(f"=> --resume auto: skipping {note}; trying the one before")
    if found is None:
        log.info(f"=> --resume auto: no usable checkpoint under {cfg.output_dir}, starting fresh")
    else:
        log.info(f"=> --resume auto: found {found}")
    return found, state


def _resolve_resume(
    cfg: TrainConfig, log: RunLog, ctx: distributed.DistContext
) -> tuple[Path | None, dict | None]:
    """The checkpoint to resume from and its state (None, None: a fresh start).

    With `auto`, rank 0 chooses and tells the others, so that every rank resumes from the
    same file even while checkpoints change on shared storage; an error there is raised on
    every rank, not only on rank 0 (the others would otherwise wait for it until timeout).
    """
    if cfg.resume is None:
        return None, None
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        return path, ckpt.load_checkpoint(path, arch=cfg.arch)
    found: Path | None = None
    state: dict | None = None
    message: str | None = None
    if ctx.rank == 0:
        try:
            found, state = _find_auto(cfg, log)
        except ConfigError as exc:
            message = str(exc)
    shared = ctx.broadcast_object((str(found) if found else None, message))
    if shared[1] is not None:
        raise ConfigError(shared[1])
    if ctx.rank != 0 and shared[0] is not None:
        found = Path(shared[0])
        state = ckpt.load_checkpoint(found, arch=cfg.arch)
    return found, state


def _steps(length: int, cap: int | None) -> int:
    return length if cap is None else min(length, cap)


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
        code = _run(cfg, hooks, log, device, precision, ctx, stop)
        clean = True
        return code
    finally:
        stop.uninstall()
        log.close()
        ctx.close(clean=clean)


def _run(
    cfg: TrainConfig,
    hooks: Hooks,
    log: RunLog,
    device: torch.device,
    precision: dev.Precision,
    ctx: distributed.DistContext,
    stop: distributed.StopFlag,
) -> int:
    resume_path, resume_state = _resolve_resume(cfg, log, ctx)

    loaders = build_loaders(
        cfg.data,
        batch_size=cfg.per_process_batch,
        workers=cfg.workers,
        image_size=cfg.image_size,
        val_resize=cfg.val_resize,
        dummy=cfg.dummy,
        channels_last=cfg.channels_last,
        strict=cfg.strict_data,
        seed=cfg.seed,
        rank=cfg.rank,
        world_size=cfg.world_size,
        drop_last=True,
        pin_memory=device.type == "cuda",
        device=device.type,
    )

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, num_classes=loaders.num_classes, shuffle=cfg.shuffle)
    pretrained_note = None
    if cfg.pretrained:
        pretrained_note = ckpt.load_pretrained(
            model, cfg.pretrained, arch=cfg.arch, allow_new_head=not cfg.evaluate
        )
    if resume_state is not None:
        try:
            model.load_state_dict(ckpt.strip_wrapper_prefixes(resume_state["state_dict"]))
        except RuntimeError as exc:
            raise ConfigError(
                f"--resume {resume_path} does not fit this model/data "
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
    model, optimizer = precision.prepare(model, optimizer)

    start_epoch, best_top1, history, global_step = cfg.start_epoch, 0.0, [], None
    resume_step = 0  # > 0: the checkpoint was taken inside epoch start_epoch (SIGTERM)
    if resume_state is not None and not cfg.evaluate:
        try:
            optimizer.load_state_dict(resume_state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"--resume {resume_path}: optimizer state does not fit --optimizer "
                f"{cfg.optimizer} ({exc}); resume with the flags of the original run"
            ) from None
        precision.load_state_dict(resume_state.get("precision"))
        dev.set_rng_state(resume_state.get("rng_state"), device)
        start_epoch = int(resume_state["epoch"])
        best_top1 = float(resume_state.get("best_top1", 0.0))
        history = list(resume_state.get("history", []))
        global_step = resume_state.get("global_step")
        resume_step = int(resume_state.get("step_in_epoch", 0))
        if start_epoch >= cfg.epochs:
            raise ConfigError(
                f"--resume {resume_path} already finished epoch {start_epoch} of --epochs "
                f"{cfg.epochs}: pass a larger --epochs to train on"
            )

    train_len = len(loaders.train)  # type: ignore[arg-type]
    steps = _steps(train_len, cfg.max_steps_per_epoch)
    if steps == 0 and not cfg.evaluate:
        raise ConfigError(
            f"-b/--batch-size {cfg.batch_size}: the train split has {loaders.train_size} "
            "images, fewer than one batch; pass a smaller -b"
        )
    # The schedule counts optimizer steps; resumed runs use the stored count when present so
    # a changed --max-steps-per-epoch cannot silently shift the lr curve.
    schedule = make_schedule(
        base_lr=cfg.lr,
        epochs=cfg.epochs,
        steps_per_epoch=max(steps, 1),
        warmup_epochs=cfg.warmup_epochs,
        schedule=cfg.lr_schedule,
    )
    if global_step is None:
        global_step = start_epoch * steps

    if resume_step >= steps:
        raise ConfigError(
            f"--resume {resume_path} stopped after step {resume_step} of epoch {start_epoch} "
            f"but an epoch now has {steps} steps: resume with the flags of the original run"
        )
    train_model = distributed.wrap_ddp(model, device, ctx)
    run_model = torch.compile(train_model) if cfg.compile else train_model

    # All inputs are valid: from here on the run leaves a result folder.
    folder: Path | None = None
    if cfg.is_main:
        folder = create_result_dir(cfg.output_dir, cfg.world_size)
        log.attach(folder)
        log.write_config(cfg.to_dict())
    # The other ranks keep their own log in rank 0's folder.
    shared_folder = ctx.broadcast_object(str(folder) if folder is not None else None)
    if not cfg.is_main and shared_folder is not None:
        log.attach(Path(shared_folder), log_name=rank_log_name(cfg.rank), records=False)
        log.info(f"=> rank {cfg.rank} of {cfg.world_size}; rank 0 writes {shared_folder}")

    def save(epoch_next: int, step_in_epoch: int, is_best: bool) -> float:
        """Rank 0 saves the checkpoint (previous one kept); returns the seconds it took."""
        if folder is None:
            return 0.0
        t0 = time.perf_counter()
        state = {
            "format": ckpt.FORMAT,
            # The next epoch to run, as pytorch/examples stores it; after a stop inside an
            # epoch, that epoch, with the steps already done in `step_in_epoch`.
            "epoch": epoch_next,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "arch": cfg.arch,
            "num_classes": loaders.num_classes,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "precision": precision.state_dict(),
            "best_top1": best_top1,
            "config": cfg.to_dict(),
            "rng_state": dev.rng_state(device),
            "history": history,
        }
        with ctx.paused():
            path = ckpt.save_checkpoint(
                state, folder / ckpt.CHECKPOINT_NAME, previous=folder / ckpt.PREVIOUS_NAME
            )
            if is_best:
                ckpt.copy_atomic(path, folder / ckpt.BEST_NAME)
        return time.perf_counter() - t0

    trainer = Trainer(
        cfg,
        model=run_model,
        optimizer=optimizer,
        precision=precision,
        device=device,
        schedule=schedule,
        log=log,
        hooks=hooks,
        ctx=ctx,
        stop=stop,
    )
    log.info(
        f"=> {cfg.arch} on {device} (amp {cfg.amp}, world size {cfg.world_size}); "
        f"data {'synthetic' if cfg.dummy else cfg.data}: {loaders.train_size} train / "
        f"{loaders.val_size} val images, {loaders.num_classes} classes, "
        f"decode {loaders.stats.decode_path}"
    )
    if pretrained_note:
        log.info(f"=> pretrained: {pretrained_note}")
    if resume_state is not None:
        at = f", step {resume_step + 1}" if resume_step else ""
        log.info(f"=> resumed from {resume_path} at epoch {start_epoch}{at}")
    if folder is not None:
        log.info(f"=> results in {folder}")
    Hooks._call(
        hooks.on_start,
        {
            "folder": str(folder) if folder is not None else None,
            "device": str(device),
            "epochs": cfg.epochs,
            "start_epoch": start_epoch,
            "steps_per_epoch": steps,
        },
    )

    if cfg.evaluate:
        return _evaluate_only(trainer, loaders, cfg, log, hooks)
    log.info(
        f"=> {cfg.epochs - start_epoch} epochs x {steps} steps, global batch "
        f"{cfg.batch_size} ({cfg.per_process_batch} per process), lr {cfg.lr:g} "
        f"{cfg.lr_schedule} with {cfg.warmup_epochs:g} warm-up epochs, {cfg.optimizer}"
    )
    for epoch in range(start_epoch, cfg.epochs):
        first_step = resume_step if epoch == start_epoch else 0
        loaders.set_epoch(epoch, first_step)
        if first_step == 0:
            # Mid-epoch, the RNG state restored from the checkpoint is the one to go on with.
            _seed_epoch(cfg.seed, epoch)
        stats = trainer.train_one_epoch(
            loaders.train,
            epoch=epoch,
            steps=steps,
            global_step=global_step,
            start_step=first_step,
        )
        global_step += stats.ran
        if stats.stopped:
            ctx.average_buffers(model)
            seconds = save(epoch, stats.steps, False)
            log.info(
                f"=> stopped by SIGTERM after step {stats.steps} of {steps} of epoch {epoch}"
                + (f"; checkpoint saved in {seconds:.1f}s" if folder is not None else "")
            )
            ctx.barrier()  # every rank exits once rank 0's checkpoint is on disk
            return EXIT_SIGTERM
        log.info(
            f"Epoch {epoch}: FPS@all {stats.images_per_sec:.3f}, TIME@all "
            f"{stats.seconds:.3f} ({stats.fps_note}); loss {stats.loss:.4f} "
            f"top1 {stats.top1:.2f} data-wait {100 * stats.data_wait_share:.1f}%"
        )
        ctx.average_buffers(model)
        val: EvalStats | None = None
        if (epoch + 1) % cfg.eval_freq == 0 or epoch + 1 == cfg.epochs:
            val = trainer.validate(loaders.val, max_steps=cfg.max_steps_per_epoch)
            log.info(val.summary())
        is_best = val is not None and (
            val.top1 > best_top1 or not any(r.get("val_top1") is not None for r in history)
        )
        if is_best:
            assert val is not None
            best_top1 = val.top1
        mem = dev.memory_stats(device)
        record: dict[str, Any] = {
            "kind": "epoch",
            "epoch": epoch,
            "step": stats.steps,
            "global_step": global_step,
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
            "best_top1": best_top1,
            "loss_scale": precision.current_scale(),
            "max_memory_bytes": mem["max_allocated_bytes"] if mem else None,
            "skipped_files": loaders.stats.skipped_files,
        }
        if first_step:
            record["resumed_at_step"] = first_step
        history.append(record)
        if folder is not None:
            record["checkpoint_seconds"] = save(epoch + 1, 0, is_best)
            plot_curves(history, folder / CURVES_NAME)
        log.record(record)
        Hooks._call(hooks.on_epoch, record)
        # A stop requested during validation or the checkpoint: the epoch is saved, so
        # leave now rather than after another epoch (unless this was the last one).
        if ctx.stop_vote_now(stop.requested) and epoch + 1 < cfg.epochs:
            log.info(f"=> stopped by SIGTERM after epoch {epoch}; checkpoint saved")
            ctx.barrier()
            return EXIT_SIGTERM
    ctx.barrier()  # the job is done when rank 0's last checkpoint is on disk
    log.info(f"=> done: best val top-1 {best_top1:.3f}")
    return 0


def _evaluate_only(
    trainer: Trainer, loaders: Any, cfg: TrainConfig, log: RunLog, hooks: Hooks
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
    Hooks._call(hooks.on_eval, record)
    return 0
