"""ShuffleNetV2 training: the model with a fused channel-shuffle op, and the training CLI."""

__version__ = "0.1.0"
