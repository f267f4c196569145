"""ShuffleNetV2, weight-compatible with torchvision's, joined by the fused channel-shuffle ops.

Module names, channel widths and parameter order match ``torchvision.models.shufflenetv2``,
so a torchvision state_dict loads unchanged and gives the same outputs. What differs is the
data flow between blocks: a block returns its two branches *unshuffled*, and the next block
applies concat -> shuffle -> split as one op (``channel_shuffle_split``); the end of each
stage joins the last pair with ``channel_shuffle_cat``. ``shuffle="reference"`` runs the same
structure with torchvision's cat + view/transpose/contiguous + chunk formulation instead.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..errors import ConfigError
from . import ops

__all__ = [
    "ARCHS",
    "SHUFFLE_MODES",
    "InvertedResidual",
    "ShuffleNetV2",
    "build_model",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
]

SHUFFLE_MODES = ("fused", "reference")

# A block's input: a full tensor for the first (stride-2) block of a stage, else the pair of
# unshuffled branch outputs left by the previous block.
BlockInput = Tensor | tuple[Tensor, Tensor]


def _check_mode(shuffle: str) -> None:
    if shuffle not in SHUFFLE_MODES:
        raise ConfigError(
            f"--shuffle: unknown mode {shuffle!r}; choose one of {', '.join(SHUFFLE_MODES)}"
        )


def _depthwise_conv(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, bias=False, groups=channels)


class InvertedResidual(nn.Module):
    """A ShuffleNetV2 unit. ``forward`` returns (left, right) before the channel shuffle."""

    def __init__(self, inp: int, oup: int, stride: int, shuffle: str = "fused") -> None:
        super().__init__()
        if not 1 <= stride <= 3:
            raise ValueError("illegal stride value")
        branch_features = oup // 2
        if stride == 1 and inp != branch_features << 1:
            raise ValueError(f"stride 1 needs inp == oup, got inp {inp} and oup {oup}")
        _check_mode(shuffle)
        self.stride = stride
        self.shuffle = shuffle

        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise_conv(inp, stride),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, 1, 1, 0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()

        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            _depthwise_conv(branch_features, stride),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: BlockInput) -> tuple[Tensor, Tensor]:
        if self.stride == 1:
            # The previous block's halves, shuffled and split again: its output's two chunks.
            left, right = x
            if self.shuffle == "fused":
                left, right = ops.channel_shuffle_split(left, right)
            else:
                left, right = ops.reference_channel_shuffle_split(left, right)
            return left, self.branch2(right)
        return self.branch1(x), self.branch2(x)


class ShuffleStage(nn.Sequential):
    """A stage's blocks; its output is the last block's halves, concatenated and shuffled."""

    def __init__(self, *blocks: InvertedResidual, shuffle: str = "fused") -> None:
        super().__init__(*blocks)
        self.shuffle = shuffle

    def forward(self, x: Tensor) -> Tensor:
        left, right = super().forward(x)
        if self.shuffle == "fused":
            return ops.channel_shuffle_cat(left, right)
        return ops.reference_channel_shuffle_cat(left, right)


class ShuffleNetV2(nn.Module):
    def __init__(
        self,
        stages_repeats: list[int],
        stages_out_channels: list[int],
        num_classes: int = 1000,
        shuffle: str = "fused",
    ) -> None:
        super().__init__()
        if len(stages_repeats) != 3:
            raise ValueError("expected stages_repeats as list of 3 positive ints")
        if len(stages_out_channels) != 5:
            raise ValueError("expected stages_out_channels as list of 5 positive ints")
        _check_mode(shuffle)

        input_channels = 3
        output_channels = stages_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        input_channels = output_channels
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.stage2: ShuffleStage
        self.stage3: ShuffleStage
        self.stage4: ShuffleStage
        for name, repeats, output_channels in zip(
            ("stage2", "stage3", "stage4"), stages_repeats, stages_out_channels[1:4], strict=True
        ):
            blocks = [InvertedResidual(input_channels, output_channels, 2, shuffle)]
            blocks += [
                InvertedResidual(output_channels, output_channels, 1, shuffle)
                for _ in range(repeats - 1)
            ]
            setattr(self, name, ShuffleStage(*blocks, shuffle=shuffle))
            input_channels = output_channels

        output_channels = stages_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(output_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.conv5(x)
        x = x.mean([2, 3])  # global pool
        return self.fc(x)


def shufflenet_v2_x0_5(*, num_classes: int = 1000, shuffle: str = "fused") -> ShuffleNetV2:
    return ShuffleNetV2([4, 8, 4], [24, 48, 96, 192, 1024], num_classes, shuffle)


def shufflenet_v2_x1_0(*, num_classes: int = 1000, shuffle: str = "fused") -> ShuffleNetV2:
    return ShuffleNetV2([4, 8, 4], [24, 116, 232, 464, 1024], num_classes, shuffle)


def shufflenet_v2_x1_5(*, num_classes: int = 1000, shuffle: str = "fused") -> ShuffleNetV2:
    return ShuffleNetV2([4, 8, 4], [24, 176, 352, 704, 1024], num_classes, shuffle)


def shufflenet_v2_x2_0(*, num_classes: int = 1000, shuffle: str = "fused") -> ShuffleNetV2:
    return ShuffleNetV2([4, 8, 4], [24, 244, 488, 976, 2048], num_classes, shuffle)


_BUILDERS: dict[str, Callable[..., ShuffleNetV2]] = {
    "shufflenet_v2_x0_5": shufflenet_v2_x0_5,
    "shufflenet_v2_x1_0": shufflenet_v2_x1_0,
    "shufflenet_v2_x1_5": shufflenet_v2_x1_5,
    "shufflenet_v2_x2_0": shufflenet_v2_x2_0,
}
ARCHS: tuple[str, ...] = tuple(_BUILDERS)


def build_model(arch: str, *, num_classes: int = 1000, shuffle: str = "fused") -> ShuffleNetV2:
    """The named ShuffleNetV2; an unknown name is a ConfigError naming the choices."""
    if arch not in _BUILDERS:
        raise ConfigError(
            f"--arch: unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}"
        )
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    return _BUILDERS[arch](num_classes=num_classes, shuffle=shuffle)
