"""Post-hoc weight matching (Git Re-Basin, Ainsworth et al., 2022) for MLPs and the simple CNN.

Weight matching looks for permutations of the hidden units of model B that make its weights as close
as possible to model A's, so that `alpha * A + (1 - alpha) * permuted B` stays in one loss basin. For
each permutation in turn (in a seeded random order), it sums the similarity `W_A W_B^T` of every
weight that the permutation touches, the other permutations held fixed, and solves the linear
assignment problem with `scipy.optimize.linear_sum_assignment`. A pass over all permutations is one
iteration; it stops after the first iteration in which no assignment improves.

A permutation spec maps each parameter name to the permutation of each of its axes (None for an axis
that is not permuted, like the input features and the logits). The first fully connected layer of a
CNN reads its input in (channel, row, column) order, so its weight is matched in the view
(out, channels, rows * columns), which puts the channel permutation on axis 1.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .models.cnn import SimpleCNN
from .models.mlp import MLP

logger = logging.getLogger(__name__)


@dataclass
class ParameterAxes:
    """The permutation acting on each axis of one parameter, and the view its axes refer to."""

    axes: tuple[Optional[str], ...]
    view_shape: Optional[tuple[int, ...]] = None


@dataclass
class PermutationSpec:
    """Parameter name -> `ParameterAxes`, and permutation name -> the (parameter, axis) pairs it acts on."""

    parameters: dict[str, ParameterAxes]
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def permutation_names(self) -> list[str]:
        return sorted(self.sizes)

    def axes_of(self, permutation: str) -> list[tuple[str, int]]:
        return [
            (name, axis)
            for name, entry in self.parameters.items()
            for axis, acting in enumerate(entry.axes)
            if acting == permutation
        ]


def mlp_permutation_spec(model: MLP) -> PermutationSpec:
    """Spec of `MLP`: permutation `P_i` acts on the units of hidden layer i."""
    parameters = {}
    sizes = {}
    previous = None
    for index in range(model.hidden_layers):
        current = f"P_{index}"
        sizes[current] = model.width
        parameters[f"hidden.{index}.weight"] = ParameterAxes((current, previous))
        parameters[f"hidden.{index}.bias"] = ParameterAxes((current,))
        previous = current
    parameters["head.weight"] = ParameterAxes((None, previous))
    parameters["head.bias"] = ParameterAxes((None,))
    return PermutationSpec(parameters, sizes)


def cnn_permutation_spec(model: SimpleCNN) -> PermutationSpec:
    """Spec of `SimpleCNN`: permutations of the channels of conv1-3 and of the units of fc1."""
    spatial = model.fc1.in_features // model.conv3.out_channels
    parameters = {
        "conv1.weight": ParameterAxes(("P_conv1", None, None, None)),
        "conv1.bias": ParameterAxes(("P_conv1",)),
        "conv2.weight": ParameterAxes(("P_conv2", "P_conv1", None, None)),
        "conv2.bias": ParameterAxes(("P_conv2",)),
        "conv3.weight": ParameterAxes(("P_conv3", "P_conv2", None, None)),
        "conv3.bias": ParameterAxes(("P_conv3",)),
        "fc1.weight": ParameterAxes(
            ("P_fc1", "P_conv3", None), (model.fc1.out_features, model.conv3.out_channels, spatial)
        ),
        "fc1.bias": ParameterAxes(("P_fc1",)),
        "fc2.weight": ParameterAxes((None, "P_fc1")),
        "fc2.bias": ParameterAxes((None,)),
    }
    sizes = {
        "P_conv1": model.conv1.out_channels,
        "P_conv2": model.conv2.out_channels,
        "P_conv3": model.conv3.out_channels,
        "P_fc1": model.fc1.out_features,
    }
    return PermutationSpec(parameters, sizes)


def permutation_spec_for(model: nn.Module) -> PermutationSpec:
    """Return the permutation spec of an `MLP` or `SimpleCNN`.

    Raises:
        TypeError: For other architectures (residual networks need shared permutations across skip
            connections, which this module does not build).
    """
    if isinstance(model, MLP):
        return mlp_permutation_spec(model)
    if isinstance(model, SimpleCNN):
        return cnn_permutation_spec(model)
    raise TypeError(
        f"Weight matching supports MLP and SimpleCNN models, got {type(model).__name__}. "
        "Write a PermutationSpec for other architectures."
    )


def _viewed(tensor: torch.Tensor, entry: ParameterAxes) -> torch.Tensor:
    return tensor.reshape(entry.view_shape) if entry.view_shape is not None else tensor


def _permuted(
    state_dict: Mapping[str, torch.Tensor],
    spec: PermutationSpec,
    permutations: Mapping[str, torch.Tensor],
    name: str,
    skip_axis: Optional[int] = None,
) -> torch.Tensor:
    # Apply every permutation of `name` except the one on `skip_axis`, in the parameter's view.
    entry = spec.parameters[name]
    tensor = _viewed(state_dict[name], entry)
    for axis, acting in enumerate(entry.axes):
        if acting is not None and axis != skip_axis:
            tensor = torch.index_select(tensor, axis, permutations[acting])
    return tensor


def apply_permutations(
    state_dict: Mapping[str, torch.Tensor], spec: PermutationSpec, permutations: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Return `state_dict` with its hidden units permuted; the function the model computes is unchanged.

    `permutations[p][i]` is the index, in `state_dict`, of the unit that goes to position i.
    """
    result = {}
    for name, tensor in state_dict.items():
        if name in spec.parameters:
            result[name] = _permuted(state_dict, spec, permutations, name).reshape(tensor.shape).clone()
        else:
            result[name] = tensor.clone()
    return result


@dataclass
class MatchingResult:
    """Permutations found by weight matching, the passes it needed and model B rearranged to fit model A."""

    permutations: dict[str, torch.Tensor]
    iterations: int
    aligned_state_dict: dict[str, torch.Tensor]


def weight_matching(
    state_dict_a: Mapping[str, torch.Tensor],
    state_dict_b: Mapping[str, torch.Tensor],
    spec: PermutationSpec,
    max_iterations: int = 100,
    seed: int = 0,
) -> MatchingResult:
    """Permute model B's hidden units to match model A's weights (Git Re-Basin weight matching).

    Args:
        state_dict_a: The reference model.
        state_dict_b: The model to permute; same architecture.
        spec: From `permutation_spec_for(model)`.
        max_iterations: Upper bound on passes over all permutations.
        seed: Seed of the order in which the permutations are visited in each pass.

    Returns:
        A `MatchingResult`; `iterations` counts passes, the last one being the pass without improvement
        (or `max_iterations` if it never converged).

    Raises:
        ValueError: When a parameter of the spec is missing from a state dict or `max_iterations` < 1.

    Example:

    ```python
    >>> spec = permutation_spec_for(model)
    >>> result = weight_matching(model_a.state_dict(), model_b.state_dict(), spec)
    >>> evaluate_interpolation(model, model_a.state_dict(), result.aligned_state_dict, test_loader)
    ```
    """
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}.")
    for name in spec.parameters:
        for label, state_dict in (("state_dict_a", state_dict_a), ("state_dict_b", state_dict_b)):
            if name not in state_dict:
                raise ValueError(f"Parameter {name!r} of the permutation spec is missing from {label}.")
    model_a = {name: tensor.detach().double().cpu() for name, tensor in state_dict_a.items() if name in spec.parameters}
    model_b = {name: tensor.detach().double().cpu() for name, tensor in state_dict_b.items() if name in spec.parameters}
    permutations = {name: torch.arange(size) for name, size in spec.sizes.items()}
    axes_of = {name: spec.axes_of(name) for name in spec.permutation_names}
    rng = np.random.default_rng(seed)

    iterations = 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007 (the count after the loop is the result)
        improved = False
        for permutation in rng.permutation(spec.permutation_names):
            size = spec.sizes[permutation]
            similarity = torch.zeros(size, size, dtype=torch.float64)
            for name, axis in axes_of[permutation]:
                entry = spec.parameters[name]
                weight_a = torch.movedim(_viewed(model_a[name], entry), axis, 0).reshape(size, -1)
                weight_b = torch.movedim(_permuted(model_b, spec, permutations, name, axis), axis, 0).reshape(size, -1)
                similarity += weight_a @ weight_b.T
            _, columns = linear_sum_assignment(similarity.numpy(), maximize=True)
            old_score = float(similarity[torch.arange(size), permutations[permutation]].sum())
            new_score = float(similarity[torch.arange(size), torch.from_numpy(columns)].sum())
            if new_score > old_score + 1e-12 * max(1.0, abs(old_score)):
                improved = True
                permutations[permutation] = torch.from_numpy(columns).long()
        if not improved:
            break
    logger.info("Weight matching finished after %d iterations", iterations)
    aligned = apply_permutations(state_dict_b, spec, permutations)
    return MatchingResult(permutations=permutations, iterations=iterations, aligned_state_dict=aligned)
