"""The training and validation loops of one epoch (`Trainer`), and the hooks they call.

`run.py` wires a whole run around them.

Design points:
- One step is `Trainer.train_step`; the epoch's clocks, sums and records are kept by
  `meters.EpochMeter` (after torchvision's `MetricLogger.log_every`).
- No host/device sync per step: loss and accuracy are summed on the device and read back
  only at print steps; throughput is timed between two synchronisations per epoch.
- Throughput is the Ascend ModelZoo seed's FPS@all (see meters.ThroughputMeter).
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
from typing import Any

import torch
from torch import Tensor, nn

from ..data.build import normalize_on_device
from ..errors import ConfigError
from . import device as dev
from . import distributed
from .config import TrainConfig
from .meters import WARMUP_STEPS, EpochMeter, EpochStats, MetricSums, fps_at_all
from .optim import LrSchedule, set_lr
from .results import RunLog

__all__ = ["WARMUP_STEPS", "EpochStats", "EvalStats", "Hooks", "StepEvent", "Trainer", "fps_at_all"]


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
    def emit(callbacks: Iterable[Callable[[Any], None]], arg: Any) -> None:
        """Call each of `callbacks` (one of the lists above) with `arg`, in order."""
        for callback in callbacks:
            callback(arg)


def topk_correct(output: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """Number of samples whose label is in the top-k predictions, per k (a device tensor).

    k is capped at the class count, so top-5 of a 3-class problem is top-3 (always 100%).
    """
    maxk = min(max(ks), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    hit = pred.eq(target.view(-1, 1))
    return torch.stack([hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks])


def freeze_batchnorm(model: nn.Module) -> None:
    """Put BatchNorm layers in eval mode: they normalise with, and keep, their running
    statistics; their scale and shift still train."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


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
        save: Callable[[int, int], None] | None = None,
    ) -> EpochStats:
        """Train steps `start_step`..`steps`-1 of `epoch` (the loader starts at `start_step`).

        `save(done, global_step)` is called every --checkpoint-steps steps inside the epoch
        (not on its last step, which the epoch-end checkpoint covers, nor on a stop, which
        the caller saves).
        """
        cfg = self.cfg
        self.model.train()
        if cfg.freeze_bn:
            freeze_batchnorm(self.model)
        dev.reset_peak_memory(self.device)
        meter = self._epoch_meter(steps, start_step)
        lr = self.schedule(global_step)
        stopped = False
        for step, (images, labels) in meter.batches(loader):
            lr = self.schedule(global_step)
            loss, output, target = self.train_step(images, labels, lr)
            with torch.no_grad():
                meter.update(loss, topk_correct(output, target), target.shape[0])
            global_step += 1
            if self.hooks.on_step:  # nothing to build on the hot path without a listener
                seconds = meter.step_seconds()
                event = StepEvent(epoch, step, global_step, meter.images, seconds, meter.wait, lr)
                Hooks.emit(self.hooks.on_step, event)
            self.ctx.pet()
            stopped = self.ctx.stop_vote(self.stop.requested)
            if meter.print_due(stopped):
                self._log_step(meter.step_record(epoch=epoch, global_step=global_step, lr=lr))
            self.log.progress.advance(f"Epoch {epoch}", meter.done, steps)
            if stopped:
                break
            every = cfg.checkpoint_steps
            if save is not None and every and global_step % every == 0 and meter.done < steps:
                save(meter.done, global_step)

        meter.finish()
        if meter.done == start_step:
            raise ConfigError(
                f"epoch {epoch} had no training batch: lower -b/--batch-size "
                f"({cfg.batch_size}) or add data"
            )
        # A stop agreed on the epoch's last step leaves nothing of the epoch to resume: it
        # ends as any epoch ends (validation, epoch-end checkpoint), and the caller's vote
        # after the epoch stops the run there.
        return meter.epoch_stats(epoch=epoch, lr=lr, stopped=stopped and meter.done < steps)

    def _epoch_meter(self, steps: int, start_step: int) -> EpochMeter:
        return EpochMeter(
            steps,
            start_step,
            print_freq=self.cfg.print_freq,
            world_size=self.cfg.world_size,
            sums=MetricSums(self.device, self.ctx.all_reduce_sum),
            sync=lambda: dev.synchronize(self.device),
        )

    def train_step(
        self, images: Tensor, labels: Tensor, lr: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One optimizer step on a host batch at learning rate `lr`, in the run's precision
        (autocast, loss scaling: `Precision.backward_step`).

        Returns the loss, the model's output (both detached) and the labels, on the device
        and without a host sync.
        """
        set_lr(self.optimizer, lr)
        x, y = self._inputs(images, labels)
        with self.precision.autocast():
            output = self.model(x)
            loss = self.criterion(output, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward_step(loss, self.optimizer)
        return loss.detach(), output.detach(), y

    def _log_step(self, record: dict[str, Any]) -> None:
        """A print step: the console line (pytorch/examples' format), the record, the hook."""
        lr, steps = record["lr"], record["steps"]
        self.log.step(
            f"Epoch: [{record['epoch']}][{record['step']:>{len(str(steps))}}/{steps}]  "
            f"loss {record['loss']:.4f}  top1 {record['top1']:6.2f}  "
            f"top5 {record['top5']:6.2f}  lr {lr:.6f}  "
            f"img/s {record['images_per_sec']:9.1f}  "
            f"data {100 * record['data_wait_share']:5.1f}%",
            bar_text=f"loss {record['loss']:.4f} top1 {record['top1']:.1f} "
            f"lr {lr:.4g} {record['images_per_sec']:.0f} img/s",
        )
        self.log.record(record)
        Hooks.emit(self.hooks.on_log, record)

    @torch.no_grad()
    def validate(
        self, loader: Iterable[tuple[Tensor, Tensor]], *, max_steps: int | None = None
    ) -> EvalStats:
        self.model.eval()
        sums = MetricSums(self.device, self.ctx.all_reduce_sum)
        t0 = time.perf_counter()
        for i, (images, labels) in enumerate(loader):
            if max_steps is not None and i >= max_steps:
                break
            x, y = self._inputs(images, labels)
            with self.precision.autocast():
                output = self.model(x)
                loss = self.criterion(output, y)
            sums.add(loss, topk_correct(output, y), y.shape[0])
            self.ctx.pet()
        avg = sums.total()
        return EvalStats(
            loss=avg.loss,
            top1=avg.top1,
            top5=avg.top5,
            images=int(avg.images),
            seconds=time.perf_counter() - t0,
        )
