"""Small convolutional networks of the TNA-PFN experiments: the simple CNN and LeNet5.

The simple CNN follows Appendix A.2 of Li et al. (TNA-PFN): three 3x3 convolutions with 32, 64 and 64
channels, a 2x2 max pooling after the first two, and two fully connected layers (flattened features
-> 64 -> classes). On 32x32 CIFAR-10 images the flattened size is 64*4*4; other input sizes get the
size their feature map has. LeNet5 follows LeCun et al. (1998) with ReLU and max pooling, the variant
usually trained on (Fashion-)MNIST in federated learning papers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _check_in_shape(model_name: str, in_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ValueError(f"{model_name} needs an image input shape (channels, height, width), got {tuple(in_shape)}.")
    channels, height, width = (int(size) for size in in_shape)
    return channels, height, width


def simple_cnn_feature_size(height: int, width: int) -> tuple[int, int]:
    """Return the spatial size of the simple CNN's last feature map for an input of `height` x `width`."""

    def side(size: int) -> int:
        size = (size - 2) // 2  # conv 3x3 without padding, then 2x2 max pooling
        size = (size - 2) // 2
        return size - 2  # last conv, no pooling

    return side(height), side(width)


class SimpleCNN(nn.Module):
    """The simple CNN: conv(C, 32, 3) -> pool -> conv(32, 64, 3) -> pool -> conv(64, 64, 3) -> fc 64 -> fc classes.

    Args:
        in_shape: `(channels, height, width)`; height and width must be at least 22 so the last feature
            map is not empty.
        num_classes: Number of logits.

    Example:

    ```python
    >>> SimpleCNN((3, 32, 32), 10).fc1.in_features  # 64 * 4 * 4
    1024
    ```
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int):
        super().__init__()
        channels, height, width = _check_in_shape("SimpleCNN", in_shape)
        out_height, out_width = simple_cnn_feature_size(height, width)
        if out_height < 1 or out_width < 1:
            raise ValueError(
                f"SimpleCNN needs inputs of at least 22x22 pixels, got {height}x{width}. "
                "Use an MLP or LeNet5 for smaller images (e.g. 8x8 digits)."
            )
        self.in_shape = (channels, height, width)
        self.conv1 = nn.Conv2d(channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(64 * out_height * out_width, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.pool(torch.relu(self.conv1(inputs)))
        hidden = self.pool(torch.relu(self.conv2(hidden)))
        hidden = torch.relu(self.conv3(hidden))
        hidden = torch.relu(self.fc1(hidden.flatten(1)))
        return self.fc2(hidden)


class LeNet5(nn.Module):
    """LeNet5 with ReLU: conv(C, 6, 5, pad 2) -> pool -> conv(6, 16, 5) -> pool -> fc 120 -> fc 84 -> fc classes.

    Args:
        in_shape: `(channels, height, width)`; height and width must be at least 12.
        num_classes: Number of logits.

    Example:

    ```python
    >>> LeNet5((1, 28, 28), 10).fc1.in_features  # 16 * 5 * 5
    400
    ```
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int):
        super().__init__()
        channels, height, width = _check_in_shape("LeNet5", in_shape)
        out_height, out_width = (height // 2 - 4) // 2, (width // 2 - 4) // 2
        if out_height < 1 or out_width < 1:
            raise ValueError(f"LeNet5 needs inputs of at least 12x12 pixels, got {height}x{width}.")
        self.in_shape = (channels, height, width)
        self.conv1 = nn.Conv2d(channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * out_height * out_width, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.pool(torch.relu(self.conv1(inputs)))
        hidden = self.pool(torch.relu(self.conv2(hidden)))
        hidden = torch.relu(self.fc1(hidden.flatten(1)))
        hidden = torch.relu(self.fc2(hidden))
        return self.fc3(hidden)
