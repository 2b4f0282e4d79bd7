"""Evaluating a model's mean loss and accuracy on a data loader, and interpolating state dicts.

Interpolation follows the convention of the TNA-PFN paper: `alpha * w1 + (1 - alpha) * w2`, so
alpha = 1 is the first model and alpha = 0 the second. Floating tensors are mixed in float64 and cast
back to their dtype; integer and boolean buffers must be equal in both state dicts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

TASKS = ("classification", "regression")


@dataclass
class Evaluation:
    """Mean loss over the examples of a loader and, for classification, the fraction classified correctly."""

    loss: float
    accuracy: Optional[float]
    num_examples: int


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}.")


def _model_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate_model(model: nn.Module, dataloader: Iterable, task: str = "classification") -> Evaluation:
    """Compute the mean loss (and accuracy) of `model` over every batch of `dataloader`.

    Classification uses cross-entropy on logits and integer labels; regression uses the mean squared
    error, averaged over examples and output dimensions. The model is put in eval mode and back.

    Args:
        model: Any module mapping the loader's inputs to logits (or predictions).
        dataloader: Yields `(inputs, targets)` pairs.
        task: `"classification"` or `"regression"`.

    Returns:
        An `Evaluation` with the example-weighted mean loss, the accuracy (None for regression) and the
        number of examples.

    Raises:
        ValueError: For an unknown task or an empty loader.
    """
    _check_task(task)
    device = _model_device(model)
    was_training = model.training
    model.eval()
    total_loss = 0.0
    total_correct = 0
    total = 0
    for inputs, targets in dataloader:
        inputs, targets = inputs.to(device), targets.to(device)
        outputs = model(inputs)
        if task == "classification":
            total_loss += float(nn.functional.cross_entropy(outputs, targets, reduction="sum"))
            total_correct += int((outputs.argmax(dim=1) == targets).sum())
        else:
            outputs = outputs.reshape(targets.shape)
            per_example = ((outputs - targets) ** 2).reshape(targets.shape[0], -1).mean(dim=1)
            total_loss += float(per_example.sum())
        total += targets.shape[0]
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluate_model got an empty dataloader; pass a loader with at least one example.")
    accuracy = total_correct / total if task == "classification" else None
    return Evaluation(loss=total_loss / total, accuracy=accuracy, num_examples=total)


def _check_same_keys(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> None:
    reference = set(state_dicts[0])
    for index, state_dict in enumerate(state_dicts[1:], start=1):
        if set(state_dict) != reference:
            missing = sorted(reference - set(state_dict))[:5]
            extra = sorted(set(state_dict) - reference)[:5]
            raise ValueError(
                f"State dict {index} does not match state dict 0: missing {missing}, extra {extra}. "
                "Interpolate only models of one architecture."
            )


def mix_state_dicts(
    state_dicts: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Return the weighted sum `sum_i weights[i] * state_dicts[i]` of floating tensors.

    Floating tensors are summed in float64 and cast back to their dtype. Integer and boolean tensors
    (e.g. step counters) must be equal in every state dict and are copied.

    Raises:
        ValueError: When the key sets, shapes or non-floating tensors differ, or the lengths disagree.
    """
    # NOTE: metrics keeps its own weighted sum so barriers work without tna_hf.fusion and for n
    # models; like tna_hf.fusion it sums in float64 and casts back.
    if len(state_dicts) != len(weights) or not state_dicts:
        raise ValueError(
            f"mix_state_dicts needs one weight per state dict, got {len(state_dicts)} state dicts "
            f"and {len(weights)} weights."
        )
    _check_same_keys(state_dicts)
    mixed = {}
    for name, first in state_dicts[0].items():
        tensors = [state_dict[name] for state_dict in state_dicts]
        for index, tensor in enumerate(tensors[1:], start=1):
            if tensor.shape != first.shape:
                raise ValueError(
                    f"Tensor {name!r} has shape {tuple(tensor.shape)} in state dict {index} but "
                    f"{tuple(first.shape)} in state dict 0."
                )
        if first.is_floating_point():
            total = torch.zeros(first.shape, dtype=torch.float64, device=first.device)
            for weight, tensor in zip(weights, tensors):
                total += float(weight) * tensor.to(device=first.device, dtype=torch.float64)
            mixed[name] = total.to(first.dtype)
        else:
            for index, tensor in enumerate(tensors[1:], start=1):
                if not torch.equal(tensor.to(first.device), first):
                    raise ValueError(
                        f"Non-floating tensor {name!r} differs between state dict 0 and {index}; "
                        "integer and boolean buffers cannot be interpolated."
                    )
            mixed[name] = first.clone()
    return mixed


def interpolate_state_dicts(
    state_dict_1: Mapping[str, torch.Tensor], state_dict_2: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """Return `alpha * state_dict_1 + (1 - alpha) * state_dict_2` (alpha = 1 gives the first model).

    Uses `tna_hf.fusion.interpolate` when that package is importable, else `mix_state_dicts`; both mix
    in float64 and cast back, and both reject differing integer buffers.
    """
    try:
        from tna_hf.fusion.interpolate import interpolate
    except ImportError:
        return mix_state_dicts([state_dict_1, state_dict_2], [alpha, 1.0 - alpha])
    return interpolate(dict(state_dict_1), dict(state_dict_2), alpha)


def average_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Return the uniform average of `state_dicts`."""
    if not state_dicts:
        raise ValueError("average_state_dicts needs at least one state dict.")
    return mix_state_dicts(state_dicts, [1.0 / len(state_dicts)] * len(state_dicts))


def clone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return a detached copy of `model.state_dict()` that later training does not change."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
