"""The one device layer: device selection, synchronisation, memory stats and mixed precision.

Every backend difference (cpu / cuda / npu, torch autocast / apex) lives here so that the
training loop (loop.py) reads the same on all of them. `torch_npu` is imported only when
--device npu is asked for, and apex only for --amp apex-O1/O2, so neither is needed elsewhere.
The NPU and apex paths are written against their documented APIs (`torch_npu.npu.set_device`,
`torch.autocast(device_type="npu")`, `torch.npu.amp.GradScaler`, `apex.amp.initialize` /
`apex.amp.scale_loss`) and kept thin: they run only where that hardware exists.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError


def default_device_type() -> str:
    """What --device means when not given: cuda if a GPU is visible, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _import_torch_npu() -> Any:
    try:
        # Importing torch_npu registers the "npu" device type and `torch.npu` with torch.
        return importlib.import_module("torch_npu")
    except ImportError:
        raise ConfigError(
            "--device npu: torch_npu is not installed; install Ascend's torch_npu "
            "or pass --device cpu/cuda"
        ) from None


# Which Ascend chips a process sees. ASCEND_VISIBLE_DEVICES: the physical chips the device
# plugin gave the container (Ascend Docker Runtime mounts only those; inside, the runtime
# numbers them 0..n-1 in ascending order). ASCEND_RT_VISIBLE_DEVICES: the devices the CANN
# runtime shows this process, renumbered 0..n-1 in the order listed (CANN environment variable
# reference, "ASCEND_RT_VISIBLE_DEVICES"; ASCEND_DEVICE_ID must then be such an index). Either
# way torch_npu.npu.set_device takes the visible index, not the chip's physical id.
ASCEND_VISIBLE_DEVICES = "ASCEND_VISIBLE_DEVICES"
ASCEND_RT_VISIBLE_DEVICES = "ASCEND_RT_VISIBLE_DEVICES"
# A device as a visibility variable names it: an id, or a chip name such as `Ascend910-3`.
_DEVICE_TOKEN = re.compile(r"^(?:[A-Za-z][A-Za-z0-9]*-)?(\d+)$")


def visible_devices(text: str | None) -> list[int] | None:
    """The device ids a visibility variable lists; None when unset or empty.

    As the CANN runtime reads ASCEND_RT_VISIBLE_DEVICES: ids separated by commas, and reading
    stops at the first token that is not one (`1, 2` reads as `1`; `1,-1,3` as `1`).
    """
    if not text or not text.strip():
        return None
    ids: list[int] = []
    for token in text.split(","):
        match = _DEVICE_TOKEN.match(token)
        if match is None:
            break
        ids.append(int(match.group(1)))
    return ids


def npu_index(device_id: int, environ: Mapping[str, str]) -> int:
    """The index torch_npu binds for `device_id` under the visibility variables of `environ`.

    `device_id` is meant as a visible index (DEVICE_ID / LOCAL_RANK / --device-id, 0 in a
    one-chip pod) and is returned as it is when in range. An id beyond the visible count that
    the variable lists (a physical id, DEVICE_ID=3 in a pod given chip 3) is mapped to its
    visible index; anything else is a ConfigError naming what is visible.
    """
    runtime = visible_devices(environ.get(ASCEND_RT_VISIBLE_DEVICES))
    if runtime is not None:
        name, listed = ASCEND_RT_VISIBLE_DEVICES, runtime
    else:
        mounted = visible_devices(environ.get(ASCEND_VISIBLE_DEVICES))
        if mounted is None:
            return device_id
        name, listed = ASCEND_VISIBLE_DEVICES, sorted(mounted)
    if device_id < len(listed):
        return device_id
    if device_id in listed:
        return listed.index(device_id)
    raise ConfigError(
        f"--device-id {device_id}: {name}={environ.get(name)} makes {len(listed)} NPU(s) "
        f"visible, as indexes 0..{len(listed) - 1}; pass one of those"
    )


def select_device(kind: str, device_id: int = 0) -> torch.device:
    """Resolve and activate the device; ConfigError when it is not there.

    On NPUs `device_id` goes through `npu_index` (the visible index, not the physical id)."""
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is visible; pass --device cpu")
        count = torch.cuda.device_count()
        if device_id >= count:
            raise ConfigError(
                f"--device-id {device_id}: only {count} CUDA device(s) visible; "
                f"pass a value below {count}"
            )
        torch.cuda.set_device(device_id)
        # cuDNN picks the fastest conv algorithms for the fixed input shape.
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda", device_id)
    if kind == "npu":
        torch_npu = _import_torch_npu()
        if not torch.npu.is_available():  # type: ignore[attr-defined]
            raise ConfigError("--device npu: no Ascend NPU is visible; pass --device cpu")
        index = npu_index(device_id, os.environ)
        torch_npu.npu.set_device(index)
        return torch.device("npu", index)
    raise ConfigError(f"--device {kind!r} is unknown: pass cpu, cuda or npu")


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock timings measure the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)  # type: ignore[attr-defined]


def memory_stats(device: torch.device) -> dict[str, int] | None:
    """Allocated and peak allocated bytes on the device; None on CPU (no device allocator)."""
    if device.type == "cuda":
        mod: Any = torch.cuda
    elif device.type == "npu":
        mod = torch.npu  # type: ignore[attr-defined]
    else:
        return None
    return {
        "allocated_bytes": int(mod.memory_allocated(device)),
        "max_allocated_bytes": int(mod.max_memory_allocated(device)),
    }


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "npu":
        torch.npu.reset_peak_memory_stats(device)  # type: ignore[attr-defined]


class StaticLossScaler:
    """A fixed loss scale with GradScaler's interface (GradScaler's factor always moves).

    Steps whose gradients overflow are skipped, as GradScaler does, so one bad batch does not
    write inf into the weights.
    """

    def __init__(self, scale: float) -> None:
        self.scale_value = float(scale)
        self._unscaled: set[int] = set()

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if id(optimizer) in self._unscaled:
            return
        inv = 1.0 / self.scale_value
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(inv)
        self._unscaled.add(id(optimizer))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.unscale_(optimizer)
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        # One device sync for all parameters rather than one per tensor.
        finite = not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        if finite:
            optimizer.step()

    def update(self) -> None:
        self._unscaled.clear()

    def get_scale(self) -> float:
        return self.scale_value

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale_value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale_value = float(state["scale"])


class Precision:
    """Mixed precision for one run: the autocast context and the backward/step sequence.

    off   fp32 everywhere.
    bf16  autocast to bfloat16; no loss scaling (bf16 has fp32's exponent range).
    fp16  autocast to float16 with a GradScaler (dynamic) or a fixed loss scale.
    apex-O1/O2  NVIDIA apex (or Ascend's apex build): `amp.initialize` patches the model and
          optimizer, `amp.scale_loss` scales the loss; autocast is apex's own.
    """

    def __init__(self, mode: str, device: torch.device, loss_scale: float | str | None) -> None:
        self.mode = mode
        self.device = device
        self.loss_scale = loss_scale
        self.scaler: Any = None
        self._apex_amp: Any = None
        if mode == "off":
            return
        if mode.startswith("apex"):
            try:
                self._apex_amp = importlib.import_module("apex.amp")
            except ImportError:
                raise ConfigError(
                    f"--amp {mode}: apex is not installed; install NVIDIA apex "
                    "(or Ascend's apex for NPU) or pass --amp fp16/bf16"
                ) from None
            return
        if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("--amp bf16: this GPU has no bfloat16 support; pass --amp fp16")
        if mode == "fp16":
            if isinstance(loss_scale, float):
                self.scaler = StaticLossScaler(loss_scale)
            elif device.type == "npu":
                self.scaler = torch.npu.amp.GradScaler()  # type: ignore[attr-defined]
            else:
                self.scaler = torch.amp.GradScaler(device.type)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.mode)

    def prepare(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """apex wraps the model and optimizer; every other mode returns them unchanged."""
        if self._apex_amp is None:
            return model, optimizer
        scale = self.loss_scale if self.loss_scale is not None else "dynamic"
        return self._apex_amp.initialize(
            model, optimizer, opt_level=self.mode.split("-")[1], loss_scale=scale
        )

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        dtype = self.autocast_dtype
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward pass and optimizer step, with this mode's loss scaling."""
        if self._apex_amp is not None:
            with self._apex_amp.scale_loss(loss, optimizer) as scaled:
                scaled.backward()
            optimizer.step()
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def current_scale(self) -> float | None:
        if self.scaler is not None:
            value = self.scaler.get_scale()
            return float(value) if math.isfinite(float(value)) else None
        return None

    def state_dict(self) -> dict[str, Any] | None:
        if self._apex_amp is not None:
            return {"apex": self._apex_amp.state_dict()}
        if self.scaler is not None:
            return {"scaler": self.scaler.state_dict()}
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        if self._apex_amp is not None and "apex" in state:
            self._apex_amp.load_state_dict(state["apex"])
        elif self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


def rng_state(device: torch.device) -> dict[str, Any]:
    """The torch RNG states worth restoring on resume."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any] | None, device: torch.device) -> None:
    if not state:
        return
    if "cpu" in state:
        torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
