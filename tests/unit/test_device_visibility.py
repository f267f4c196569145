"""Which NPU a rank binds under ASCEND_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES: the pure
logic of the device layer, run on CPU (torch_npu is needed only to bind the chip)."""

from __future__ import annotations

import pytest

from shufflenet_trainer.errors import ConfigError
from shufflenet_trainer.train.device import npu_index, visible_devices


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        (None, None),
        ("", None),
        ("3", [3]),
        ("1,2,3", [1, 2, 3]),
        ("Ascend910-3,Ascend910-5", [3, 5]),
        ("npu-4", [4]),
        # CANN reads up to the first token that is not an id.
        ("1, 2,3", [1]),
        ("1,2,-1,3", [1, 2]),
    ],
)
def test_visible_devices_reads_as_the_cann_runtime(text: str | None, ids: list[int] | None) -> None:
    assert visible_devices(text) == ids


@pytest.mark.parametrize(
    ("device_id", "environ", "index"),
    [
        (0, {}, 0),
        (5, {}, 5),  # nothing restricts: the id is the index
        # A one-chip pod given physical chip 3: the runtime shows it as device 0.
        (0, {"ASCEND_VISIBLE_DEVICES": "3"}, 0),
        (3, {"ASCEND_VISIBLE_DEVICES": "3"}, 0),
        (6, {"ASCEND_VISIBLE_DEVICES": "6,4"}, 1),  # mounted chips count in ascending order
        (1, {"ASCEND_VISIBLE_DEVICES": "4,6"}, 1),
        # ASCEND_RT_VISIBLE_DEVICES renumbers in the order listed and wins over the mount.
        (2, {"ASCEND_RT_VISIBLE_DEVICES": "1,2", "ASCEND_VISIBLE_DEVICES": "0,1,2,3"}, 1),
        (0, {"ASCEND_RT_VISIBLE_DEVICES": "5"}, 0),
    ],
)
def test_a_rank_binds_the_visible_index_not_the_physical_id(
    device_id: int, environ: dict[str, str], index: int
) -> None:
    assert npu_index(device_id, environ) == index


def test_a_device_that_is_not_visible_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"ASCEND_VISIBLE_DEVICES=3 makes 1 NPU\(s\) visible"):
        npu_index(2, {"ASCEND_VISIBLE_DEVICES": "3"})
