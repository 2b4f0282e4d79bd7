"""CIFAR-style ResNets (He et al., 2016) without batch normalization: ResNet20, ResNet56, Wide-ResNet56-4.

The TNA-PFN paper removes every batch normalization layer from its ResNets because running statistics
do not interpolate with the weights (following Adilova et al., 2023). A network of depth 6n + 2 has a
3x3 stem convolution, three stages of n basic blocks with 16k, 32k and 64k channels (k is the width
multiplier, 4 for Wide-ResNet56-4), global average pooling and a linear head. Convolutions have no
bias, as in the original architecture. Shortcuts that change shape are parameter-free (option A of He
et al.: stride-2 subsampling and zero-padded channels), so every weight belongs to a convolution or
the head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with ReLU and an identity (or subsample-and-pad) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def shortcut(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.extra_channels == 0:
            return inputs
        shortcut = inputs[:, :, :: self.stride, :: self.stride]
        # Pad the channel dimension: F.pad pads the last dimensions first (W, H, then C).
        low = self.extra_channels // 2
        return F.pad(shortcut, (0, 0, 0, 0, low, self.extra_channels - low))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.conv1(inputs))
        hidden = self.conv2(hidden)
        return torch.relu(hidden + self.shortcut(inputs))


class ResNet(nn.Module):
    """ResNet of depth 6n + 2 without batch normalization.

    Parameters are named `stem.weight`, `stages.{s}.{b}.conv{1,2}.weight` and `head.weight` /
    `head.bias`; the middle block of ResNet20 is `stages.1.1`.

    Args:
        in_shape: `(channels, height, width)` of one input image.
        num_classes: Number of logits.
        depth: Number of layers, 6n + 2 (20, 32, 44, 56, 110, ...).
        width_multiplier: k; the stages have 16k, 32k and 64k channels.

    Example:

    ```python
    >>> model = ResNet((3, 32, 32), 10, depth=20)
    >>> sum(p.numel() for p in model.parameters())
    268346
    ```
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, depth: int = 20, width_multiplier: int = 1):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, ...), got {depth}.")
        if width_multiplier < 1:
            raise ValueError(f"ResNet width_multiplier must be >= 1, got {width_multiplier}.")
        if len(in_shape) != 3:
            raise ValueError(f"ResNet needs an image input shape (channels, height, width), got {tuple(in_shape)}.")
        self.in_shape = tuple(int(size) for size in in_shape)
        self.depth = depth
        self.width_multiplier = width_multiplier
        blocks_per_stage = (depth - 2) // 6
        widths = [16 * width_multiplier, 32 * width_multiplier, 64 * width_multiplier]

        self.stem = nn.Conv2d(self.in_shape[0], widths[0], 3, stride=1, padding=1, bias=False)
        stages = []
        in_channels = widths[0]
        for stage_index, out_channels in enumerate(widths):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.stem(inputs))
        for stage in self.stages:
            hidden = stage(hidden)
        # Global average pooling: (batch, channels, H, W) -> (batch, channels).
        return self.head(hidden.mean(dim=(2, 3)))
