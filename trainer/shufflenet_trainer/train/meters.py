"""Meters of one epoch (after pytorch/examples' AverageMeter): throughput and running sums,
and `EpochMeter`, which holds them and the clocks for the training loop (after torchvision's
`MetricLogger.log_every`).

The throughput is the Ascend ModelZoo seed's FPS@all: global images per second over the
epoch, excluding the first WARMUP_STEPS steps (graph building, cuDNN autotuning, worker
start-up). An epoch of at most WARMUP_STEPS steps excludes only its first step, and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

WARMUP_STEPS = 10

Batch = tuple[Tensor, Tensor]


def fps_at_all(images: int, since_images: int, since: float | None, now: float) -> float | None:
    """FPS@all: global images/s from the end of the warm-up steps (`since`) until `now`.

    The one place it is computed: the epoch record uses it at the epoch's end, the print-step
    records (and so the metrics exporter) use it on the epoch so far. None during warm-up.
    """
    if since is None:
        return None
    return (images - since_images) / max(now - since, 1e-9)


@dataclass(frozen=True)
class Throughput:
    """An epoch's FPS@all, which steps it counts (1-based, first and last) and why."""

    images_per_sec: float
    steps: tuple[int, int]
    note: str


class ThroughputMeter:
    """Counts the steps and images of an epoch and times them from the end of the warm-up.

    `sync` waits for the device, so that the clock starts when the warm-up's work is done
    rather than when it was queued; it runs twice per epoch, never per step.
    """

    def __init__(self, steps: int, start_step: int, sync: Callable[[], None]) -> None:
        remaining = steps - start_step
        self.skip = WARMUP_STEPS if remaining > WARMUP_STEPS else min(1, remaining - 1)
        self.start_step = start_step
        self.images = 0  # all ranks
        self.ran = 0
        self._sync = sync
        self._since: float | None = None
        self._since_images = 0
        self.started = 0.0

    def start(self) -> float:
        """Start the epoch's clock (after a device sync); returns the time."""
        self._sync()
        self.started = time.perf_counter()
        if self.skip == 0:
            self._since = self.started
        return self.started

    def step(self, images: int) -> None:
        """One step of `images` (all ranks) is done."""
        self.images += images
        self.ran += 1
        if self._since is None and self.ran == self.skip:
            self._sync()
            self._since = time.perf_counter()
            self._since_images = self.images

    def fps(self, now: float) -> float | None:
        """FPS@all of the epoch so far; None during the warm-up."""
        return fps_at_all(self.images, self._since_images, self._since, now)

    def result(self, now: float) -> Throughput:
        """The epoch's FPS@all at its end (`now`, after a device sync)."""
        warmed_up = self._since is not None
        if warmed_up:
            first = self.skip + 1
            fps = fps_at_all(self.images, self._since_images, self._since, now)
        else:  # the loader ended before the warm-up steps were over
            first = 1
            fps = fps_at_all(self.images, 0, self.started, now)
        assert fps is not None
        ran, done = self.ran, self.start_step + self.ran
        first += self.start_step
        if not warmed_up and ran > 1:
            note = f"only {ran} steps: steps {first}-{done}, nothing excluded"
        elif ran > WARMUP_STEPS:
            note = f"steps {first}-{done} of {done}, first {WARMUP_STEPS} excluded"
        elif ran > 1:
            note = f"only {ran} steps: steps {first}-{done}, first step excluded"
        else:
            note = "only 1 step: nothing excluded"
        if self.start_step:
            note += f"; resumed at step {self.start_step + 1}"
        return Throughput(fps, (first, done), note)


class MetricSums:
    """Loss and accuracy summed on the device, read back (a host sync) only when asked.

    The sums are [loss * n, top-1 hits, top-5 hits, n]; `interval()` gives what was added
    since its last call, `total()` everything (both summed over ranks by `all_reduce`).
    """

    def __init__(self, device: torch.device, all_reduce: Callable[[Tensor], Tensor]) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)
        self._last = torch.zeros_like(self.sums)
        self._all_reduce = all_reduce

    def add(self, loss: Tensor, hits: Tensor, n: int) -> None:
        """sums += [loss * n, top1 hits, top5 hits, n], on the device, without a host sync."""
        self.sums[0] += loss.double() * n
        self.sums[1:3] += hits.double()
        self.sums[3] += n

    def interval(self) -> Averages:
        sums = self._all_reduce(self.sums - self._last).tolist()
        self._last = self.sums.clone()
        return Averages.of(sums)

    def total(self) -> Averages:
        return Averages.of(self._all_reduce(self.sums).tolist())


@dataclass(frozen=True)
class Averages:
    loss: float
    top1: float  # percent
    top5: float
    images: float  # all ranks

    @classmethod
    def of(cls, sums: list[float]) -> Averages:
        n = max(sums[3], 1.0)  # an empty validation split reads as zeros, not a crash
        return cls(sums[0] / n, 100.0 * sums[1] / n, 100.0 * sums[2] / n, sums[3])


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


class EpochMeter:
    """The clocks and counters of one training epoch, steps `start_step`..`steps`-1.

    `batches` hands out the epoch's batches and times the wait for each; `update` adds a
    step's results; at print steps (`print_due`) `step_record` builds the print interval's
    record; `finish` and `epoch_stats` close the epoch. The device is synchronised only
    where a figure must be real: at the start and the end of the epoch, at the end of the
    warm-up (ThroughputMeter) and when a print step reads the sums, never per step.
    """

    def __init__(
        self,
        steps: int,
        start_step: int,
        *,
        print_freq: int,
        world_size: int,
        sums: MetricSums,
        sync: Callable[[], None],
    ) -> None:
        self.steps = steps
        self.start_step = start_step
        self.print_freq = print_freq
        self.world_size = world_size
        self.sums = sums
        self.throughput = ThroughputMeter(steps, start_step, sync)
        self._sync = sync
        self.done = start_step  # steps of the epoch finished
        self.wait = 0.0  # the current step's wait for its batch
        self.images = 0  # the current step's images, all ranks
        self.wait_total = 0.0
        self._wait_interval = 0.0
        self._step_started = 0.0
        self.started = self._interval_started = self.ended = 0.0

    def batches(self, loader: Iterable[Batch]) -> Iterator[tuple[int, Batch]]:
        """(step, batch) for the epoch's steps, until the loader ends; the epoch's clock
        starts (after a device sync) when the first batch is asked for."""
        self.started = self._interval_started = self.throughput.start()
        it = iter(loader)
        for step in range(self.start_step, self.steps):
            self._step_started = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait = time.perf_counter() - self._step_started
            yield step, batch

    def update(self, loss: Tensor, hits: Tensor, n: int) -> None:
        """The current step is done: `n` images of this rank, their mean loss and top-k hits
        (device tensors, added without a host sync)."""
        self.sums.add(loss, hits, n)
        self.done += 1
        self.images = n * self.world_size
        self.wait_total += self.wait
        self._wait_interval += self.wait
        self.throughput.step(self.images)

    def step_seconds(self) -> float:
        """Host wall time of the current step so far, its batch wait included (no sync)."""
        return time.perf_counter() - self._step_started

    def print_due(self, stopped: bool) -> bool:
        """Whether the step just done is a print step: every --print-freq steps, the
        epoch's last step and a stop."""
        return self.done % self.print_freq == 0 or self.done == self.steps or stopped

    def step_record(self, *, epoch: int, global_step: int, lr: float) -> dict[str, Any]:
        """The print step's record (train.jsonl, the on_log hook), on the steps since the
        previous print step; starts the next print interval."""
        # Reading the sums syncs the device, so the interval's wall time is real work.
        avg = self.sums.interval()
        now = time.perf_counter()
        interval = max(now - self._interval_started, 1e-9)
        record = {
            "kind": "step",
            "epoch": epoch,
            "step": self.done,
            "steps": self.steps,
            "global_step": global_step,
            "loss": avg.loss,
            "lr": lr,
            "top1": avg.top1,
            "top5": avg.top5,
            "images_per_sec": avg.images / interval,  # sums are over all ranks
            "fps_all": self.throughput.fps(now),
            "data_wait_share": self._wait_interval / interval,
        }
        self._interval_started, self._wait_interval = now, 0.0
        return record

    def finish(self) -> None:
        """Stop the epoch's clock, once the device has done the epoch's work."""
        self._sync()
        self.ended = time.perf_counter()

    def epoch_stats(self, *, epoch: int, lr: float, stopped: bool) -> EpochStats:
        """The finished epoch's figures (a collective: the sums are summed over ranks)."""
        avg = self.sums.total()
        fps = self.throughput.result(self.ended)
        seconds = self.ended - self.started
        return EpochStats(
            epoch=epoch,
            steps=self.done,
            images=self.throughput.images,
            loss=avg.loss,
            top1=avg.top1,
            top5=avg.top5,
            lr=lr,
            images_per_sec=fps.images_per_sec,
            fps_steps=fps.steps,
            fps_note=fps.note,
            data_wait_share=self.wait_total / max(seconds, 1e-9),
            seconds=seconds,
            ran=self.throughput.ran,
            stopped=stopped,
        )
