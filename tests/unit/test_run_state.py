"""RunState (what a checkpoint stores of a run's position) and the epoch's meters."""

from __future__ import annotations

import pytest
import torch

from shufflenet_trainer.train.meters import WARMUP_STEPS, MetricSums, ThroughputMeter
from shufflenet_trainer.train.state import RunState


def test_run_state_round_trips_through_a_checkpoint() -> None:
    state = RunState(epoch=3, step_in_epoch=7, global_step=37, best_top1=81.5)
    state.history.append({"kind": "epoch", "val_top1": 81.5})
    back = RunState.from_checkpoint(state.to_checkpoint(), steps_per_epoch=10)
    assert back == state


def test_an_old_checkpoint_without_a_global_step_counts_whole_epochs() -> None:
    back = RunState.from_checkpoint({"epoch": 4}, steps_per_epoch=25)
    assert (back.epoch, back.step_in_epoch, back.global_step) == (4, 0, 100)
    assert (back.best_top1, back.history) == (0.0, [])


def test_ending_an_epoch_moves_to_the_next_one_at_step_zero() -> None:
    state = RunState(epoch=2, step_in_epoch=5)
    assert not state.has_validated()
    state.end_epoch({"val_top1": 50.0})
    assert (state.epoch, state.step_in_epoch) == (3, 0)
    assert state.has_validated()


def _run(meter: ThroughputMeter, steps: int) -> None:
    meter.start()
    for _ in range(steps):
        meter.step(8)


@pytest.mark.parametrize(
    ("steps", "start", "counted", "note"),
    [
        (30, 0, (11, 30), f"steps 11-30 of 30, first {WARMUP_STEPS} excluded"),
        (5, 0, (2, 5), "only 5 steps: steps 2-5, first step excluded"),
        (1, 0, (1, 1), "only 1 step: nothing excluded"),
        (30, 25, (27, 30), "only 5 steps: steps 27-30, first step excluded; resumed at step 26"),
    ],
)
def test_throughput_excludes_the_warm_up_and_says_so(
    steps: int, start: int, counted: tuple[int, int], note: str
) -> None:
    meter = ThroughputMeter(steps, start, sync=lambda: None)
    _run(meter, steps - start)
    result = meter.result(meter.started + 1.0)
    assert (result.steps, result.note) == (counted, note)
    assert meter.images == 8 * (steps - start)
    assert result.images_per_sec > 0


def test_an_epoch_cut_short_before_the_warm_up_counts_every_step() -> None:
    meter = ThroughputMeter(30, 0, sync=lambda: None)
    _run(meter, 4)  # the loader ran out after 4 of 30 steps
    assert meter.fps(meter.started + 1.0) is None
    result = meter.result(meter.started + 2.0)
    assert result.steps == (1, 4)
    assert result.note == "only 4 steps: steps 1-4, nothing excluded"
    assert result.images_per_sec == pytest.approx(32 / 2.0)


def test_metric_sums_give_interval_and_total_averages() -> None:
    sums = MetricSums(torch.device("cpu"), all_reduce=lambda t: t)
    sums.add(torch.tensor(2.0), torch.tensor([3.0, 4.0]), 4)
    first = sums.interval()
    sums.add(torch.tensor(1.0), torch.tensor([4.0, 4.0]), 4)
    second = sums.interval()
    total = sums.total()
    assert (first.loss, first.top1, first.top5, first.images) == (2.0, 75.0, 100.0, 4)
    assert (second.loss, second.top1) == (1.0, 100.0)
    assert (total.loss, total.top1, total.images) == (1.5, 87.5, 8)
