"""Multi-layer perceptrons of the LMC experiments: `MLP_h{h}_w{w}` (Li et al., TNA-PFN, Appendix A.2).

`MLP_h2_w200` has two hidden layers of 200 ReLU units. The one-hidden-layer regression MLP of the
polynomial approximation task (von Oswald et al., 2019; Pena et al., 2023) is the same class with a
scalar input and a scalar output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected ReLU network: `hidden_layers` layers of `width` units, then a linear head.

    Parameters are named `hidden.{i}.weight` / `hidden.{i}.bias` and `head.weight` / `head.bias`, which
    layer-wise masking patterns and weight matching rely on.

    Args:
        in_shape: Shape of one input without the batch dimension, e.g. `(1, 28, 28)`; it is flattened.
        num_classes: Number of outputs (logits, or regression targets).
        hidden_layers: Number of hidden layers (h >= 1).
        width: Units per hidden layer (w >= 1).

    Example:

    ```python
    >>> model = MLP((1, 28, 28), num_classes=10, hidden_layers=2, width=200)
    >>> model(torch.zeros(4, 1, 28, 28)).shape
    torch.Size([4, 10])
    ```
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, hidden_layers: int = 2, width: int = 200):
        super().__init__()
        if hidden_layers < 1 or width < 1:
            raise ValueError(
                f"MLP needs hidden_layers >= 1 and width >= 1, got hidden_layers={hidden_layers}, width={width}."
            )
        self.in_shape = tuple(int(size) for size in in_shape)
        self.in_features = int(torch.Size(self.in_shape).numel())
        self.hidden_layers = hidden_layers
        self.width = width
        self.num_classes = num_classes

        sizes = [self.in_features] + [width] * hidden_layers
        self.hidden = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(hidden_layers))
        self.head = nn.Linear(width, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # (batch, *in_shape) -> (batch, in_features)
        hidden = inputs.reshape(inputs.shape[0], -1)
        for layer in self.hidden:
            hidden = torch.relu(layer(hidden))
        return self.head(hidden)
