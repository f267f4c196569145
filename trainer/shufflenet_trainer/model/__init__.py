"""The ShuffleNetV2 network and its channel-shuffle op (fused, reference, Ascend NPU).

`shufflenetv2` holds the network (weight-compatible with torchvision's), `ops` the fused
concat-shuffle-split op, `ops_npu` its Ascend kernels. The old paths `shufflenet_trainer.models`
and `shufflenet_trainer.ops` still import.
"""

from .shufflenetv2 import ARCHS, ShuffleNetV2, build_model

__all__ = ["ARCHS", "ShuffleNetV2", "build_model"]
