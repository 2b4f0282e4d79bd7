"""`build_model(name, ...)`: the experiment models by name, with their shape in the name.

Names:

| name | model |
| --- | --- |
| `mlp_h{h}_w{w}` | `MLP` with h hidden layers of w units (`mlp_h2_w200`) |
| `poly_mlp_w{w}` | one-hidden-layer regression MLP for the polynomial sets (scalar in, scalar out) |
| `cnn` | the simple CNN of the TNA-PFN paper |
| `lenet5` | LeNet5 |
| `resnet{depth}` | ResNet without batch normalization (`resnet20`, `resnet56`) |
| `wrn{depth}_{k}` | wide ResNet without batch normalization (`wrn56_4`) |
| `lstm` | LSTM sentiment classifier (needs `vocab_size`) |
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Optional

from torch import nn

from .cnn import LeNet5, SimpleCNN
from .lstm import LSTMClassifier
from .mlp import MLP
from .resnet import ResNet

MODEL_NAME_FORMS = ("mlp_h{h}_w{w}", "poly_mlp_w{w}", "cnn", "lenet5", "resnet{depth}", "wrn{depth}_{k}", "lstm")


def _require(name: str, value, requirement: str):
    if value is None:
        raise ValueError(f"build_model({name!r}) needs {requirement}.")
    return value


def build_model(
    name: str,
    in_shape: Optional[Sequence[int]] = None,
    num_classes: Optional[int] = None,
    **kwargs,
) -> nn.Module:
    """Build an experiment model from its name.

    Args:
        name: One of the forms in `MODEL_NAME_FORMS`, e.g. `"mlp_h2_w200"`, `"cnn"`, `"resnet20"`, `"wrn56_4"`.
        in_shape: Shape of one input without the batch dimension (`(1, 28, 28)` for Fashion-MNIST); unused
            by `lstm` and `poly_mlp_w{w}`.
        num_classes: Number of outputs; defaults to 1 for `poly_mlp_w{w}` and 2 for `lstm`.
        **kwargs: Passed to the model class (e.g. `vocab_size`, `hidden_size` for `lstm`).

    Returns:
        A freshly initialized `torch.nn.Module` (initialization follows the global torch RNG).

    Raises:
        ValueError: When the name matches no form, or a needed argument is missing.

    Example:

    ```python
    >>> model = build_model("mlp_h2_w200", in_shape=(1, 28, 28), num_classes=10)
    ```
    """
    key = name.strip().lower()
    match = re.fullmatch(r"mlp_h(\d+)_w(\d+)", key)
    if match:
        return MLP(
            _require(name, in_shape, "in_shape"),
            _require(name, num_classes, "num_classes"),
            hidden_layers=int(match.group(1)),
            width=int(match.group(2)),
        )
    match = re.fullmatch(r"poly_mlp_w(\d+)", key)
    if match:
        return MLP(in_shape or (1,), num_classes or 1, hidden_layers=1, width=int(match.group(1)))
    if key in ("cnn", "simple_cnn"):
        return SimpleCNN(_require(name, in_shape, "in_shape"), _require(name, num_classes, "num_classes"))
    if key == "lenet5":
        return LeNet5(_require(name, in_shape, "in_shape"), _require(name, num_classes, "num_classes"))
    match = re.fullmatch(r"resnet(\d+)", key)
    if match:
        return ResNet(
            _require(name, in_shape, "in_shape"), _require(name, num_classes, "num_classes"), depth=int(match.group(1))
        )
    match = re.fullmatch(r"wrn(\d+)_(\d+)", key)
    if match:
        return ResNet(
            _require(name, in_shape, "in_shape"),
            _require(name, num_classes, "num_classes"),
            depth=int(match.group(1)),
            width_multiplier=int(match.group(2)),
        )
    if key == "lstm":
        if "vocab_size" not in kwargs:
            raise ValueError("build_model('lstm') needs vocab_size=... (the tokenizer's vocabulary size).")
        return LSTMClassifier(num_classes=num_classes or 2, **kwargs)
    raise ValueError(f"Unknown model name {name!r}. Valid forms: {', '.join(MODEL_NAME_FORMS)}.")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of parameter entries of `model` (only those with `requires_grad` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
