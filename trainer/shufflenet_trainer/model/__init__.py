"""The ShuffleNetV2 network and its channel-shuffle op (fused, reference, Ascend NPU)."""
