"""Where a training run is, as a checkpoint stores it and a resumed run starts from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunState:
    """The run's position and record, apart from the weights and the optimizer.

    `epoch` is the next epoch to run, as pytorch/examples stores it; after a stop inside an
    epoch it is that epoch, with the steps already done in `step_in_epoch`. The lr schedule
    counts `global_step`, so a resumed run keeps its lr curve even if --max-steps-per-epoch
    changed.
    """

    epoch: int
    step_in_epoch: int = 0
    global_step: int = 0
    best_top1: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_top1": self.best_top1,
            "history": self.history,
        }

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any], *, steps_per_epoch: int) -> RunState:
        epoch = int(state["epoch"])
        global_step = state.get("global_step")  # absent in checkpoints of older versions
        return cls(
            epoch=epoch,
            step_in_epoch=int(state.get("step_in_epoch", 0)),
            global_step=epoch * steps_per_epoch if global_step is None else int(global_step),
            best_top1=float(state.get("best_top1", 0.0)),
            history=list(state.get("history", [])),
        )

    def has_validated(self) -> bool:
        return any(r.get("val_top1") is not None for r in self.history)

    def end_epoch(self, record: dict[str, Any]) -> None:
        """The epoch `self.epoch` ended with `record`: the next one starts at its step 0."""
        self.history.append(record)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
