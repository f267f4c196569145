"""The training and validation loops of one epoch (`Trainer`), and the hooks they call.

`run.py` wires a whole run around them.

Design points:
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
from .meters import WARMUP_STEPS, MetricSums, ThroughputMeter, fps_at_all
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
        save: Callable[[int, int], None] | None = None,
    ) -> EpochStats:
        """Train steps `start_step`..`steps`-1 of `epoch` (the loader starts at `start_step`).

        `save(done, global_step)` is called every --checkpoint-steps steps inside the epoch
        (not on its last step, which the epoch-end checkpoint covers, nor on a stop, which
        the caller saves).
        """
        cfg, ws = self.cfg, self.cfg.world_size
        self.model.train()
        if cfg.freeze_bn:
            freeze_batchnorm(self.model)
        dev.reset_peak_memory(self.device)
        sums = MetricSums(self.device, self.ctx.all_reduce_sum)
        meter = ThroughputMeter(steps, start_step, lambda: dev.synchronize(self.device))
        wait_total = 0.0
        wait_interval = 0.0
        lr = self.schedule(global_step)

        t_epoch = t_interval = meter.start()
        it = iter(loader)
        done = start_step
        stopped = False
        for step in range(start_step, steps):
            t0 = time.perf_counter()
            try:
                images, labels = next(it)
            except StopIteration:
                break
            wait = time.perf_counter() - t0
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
                sums.add(loss.detach(), topk_correct(output.detach(), y), n)
            global_step += 1
            done = step + 1
            wait_total += wait
            wait_interval += wait
            meter.step(n * ws)
            if self.hooks.on_step:  # nothing to build on the hot path without a listener
                seconds = time.perf_counter() - t0
                event = StepEvent(epoch, step, global_step, n * ws, seconds, wait, lr)
                Hooks._call(self.hooks.on_step, event)
            self.ctx.pet()
            stopped = self.ctx.stop_vote(self.stop.requested)

            if done % cfg.print_freq == 0 or done == steps or stopped:
                # Reading the sums syncs the device, so the interval's wall time is real work.
                avg = sums.interval()
                now = time.perf_counter()
                interval = max(now - t_interval, 1e-9)
                record = {
                    "kind": "step",
                    "epoch": epoch,
                    "step": done,
                    "steps": steps,
                    "global_step": global_step,
                    "loss": avg.loss,
                    "lr": lr,
                    "top1": avg.top1,
                    "top5": avg.top5,
                    "images_per_sec": avg.images / interval,  # sums are over all ranks
                    "fps_all": meter.fps(now),
                    "data_wait_share": wait_interval / interval,
                }
                t_interval, wait_interval = now, 0.0
                self._log_step(record, steps)
            self.log.progress.advance(f"Epoch {epoch}", done, steps)
            if stopped:
                break
            every = cfg.checkpoint_steps
            if save is not None and every and global_step % every == 0 and done < steps:
                save(done, global_step)

        dev.synchronize(self.device)
        t_done = time.perf_counter()
        if done == start_step:
            raise ConfigError(
                f"epoch {epoch} had no training batch: lower -b/--batch-size "
                f"({cfg.batch_size}) or add data"
            )
        avg = sums.total()
        fps = meter.result(t_done)
        return EpochStats(
            epoch=epoch,
            steps=done,
            images=meter.images,
            loss=avg.loss,
            top1=avg.top1,
            top5=avg.top5,
            lr=lr,
            images_per_sec=fps.images_per_sec,
            fps_steps=fps.steps,
            fps_note=fps.note,
            data_wait_share=wait_total / max(t_done - t_epoch, 1e-9),
            seconds=t_done - t_epoch,
            ran=meter.ran,
            # A stop agreed on the epoch's last step leaves nothing of the epoch to resume:
            # it ends as any epoch ends (validation, epoch-end checkpoint), and the caller's
            # vote after the epoch stops the run there.
            stopped=stopped and done < steps,
        )

    def _log_step(self, record: dict[str, Any], steps: int) -> None:
        """A print step: the console line (pytorch/examples' format), the record, the hook."""
        lr = record["lr"]
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
        Hooks._call(self.hooks.on_log, record)

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
