"""Loss and accuracy barriers of linear mode connectivity.

Definitions from Li et al., "Training-time Neuron Alignment through Permutation Subspace for
Improving Linear Mode Connectivity and Model Fusion":

* loss barrier (equation 1, after Entezari et al., 2022):
  `sup_alpha L(alpha w1 + (1 - alpha) w2) - [alpha L(w1) + (1 - alpha) L(w2)]`;
* accuracy barrier (equation 2): `sup_alpha 1 - A(alpha w1 + (1 - alpha) w2) / [alpha A(w1) + (1 - alpha) A(w2)]`;
* multi-model form (their Table 3): the uniform average of n models against the mean of the
  individual models, `L(avg) - mean_i L(w_i)` and `1 - A(avg) / mean_i A(w_i)`.

The sup is taken over a finite alpha grid (11 points from 0 to 1 by default), always including both
endpoints, so both barriers are at least 0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .evaluation import _check_task, average_state_dicts, clone_state_dict, evaluate_model, interpolate_state_dicts

logger = logging.getLogger(__name__)


def default_alphas(num_points: int = 11) -> list[float]:
    """Return `num_points` evenly spaced alphas from 0 to 1 inclusive (11 points: 0, 0.1, ..., 1)."""
    if num_points < 2:
        raise ValueError(f"An alpha grid needs at least 2 points (0 and 1), got num_points={num_points}.")
    return [round(float(alpha), 12) for alpha in np.linspace(0.0, 1.0, num_points)]


def _check_alphas(alphas: Sequence[float]) -> list[float]:
    alphas = [float(alpha) for alpha in alphas]
    if not alphas:
        raise ValueError("The alpha grid is empty; pass values in [0, 1], e.g. default_alphas().")
    outside = [alpha for alpha in alphas if not 0.0 <= alpha <= 1.0]
    if outside:
        raise ValueError(f"Alphas must lie in [0, 1], got {outside}.")
    return alphas


def loss_barrier_terms(alphas: Sequence[float], losses: Sequence[float], loss_1: float, loss_2: float) -> list[float]:
    """Return `L(alpha) - [alpha L(w1) + (1 - alpha) L(w2)]` at each alpha (the inside of equation 1)."""
    if len(alphas) != len(losses):
        raise ValueError(f"Got {len(alphas)} alphas but {len(losses)} losses; pass one loss per alpha.")
    return [loss - (alpha * loss_1 + (1.0 - alpha) * loss_2) for alpha, loss in zip(alphas, losses)]


def accuracy_barrier_terms(
    alphas: Sequence[float], accuracies: Sequence[float], accuracy_1: float, accuracy_2: float
) -> list[float]:
    """Return `1 - A(alpha) / [alpha A(w1) + (1 - alpha) A(w2)]` at each alpha (the inside of equation 2).

    Where the linear mix of the endpoint accuracies is 0 there is no accuracy to lose, so the term is 0.
    """
    if len(alphas) != len(accuracies):
        raise ValueError(f"Got {len(alphas)} alphas but {len(accuracies)} accuracies; pass one per alpha.")
    terms = []
    for alpha, accuracy in zip(alphas, accuracies):
        reference = alpha * accuracy_1 + (1.0 - alpha) * accuracy_2
        terms.append(1.0 - accuracy / reference if reference > 0 else 0.0)
    return terms


def loss_barrier(alphas: Sequence[float], losses: Sequence[float], loss_1: float, loss_2: float) -> float:
    """Return the loss barrier (equation 1): the max over the grid of `loss_barrier_terms`, and at least 0."""
    return max(0.0, *loss_barrier_terms(alphas, losses, loss_1, loss_2))


def accuracy_barrier(
    alphas: Sequence[float], accuracies: Sequence[float], accuracy_1: float, accuracy_2: float
) -> float:
    """Return the accuracy barrier (equation 2): the max over the grid of `accuracy_barrier_terms`, at least 0."""
    return max(0.0, *accuracy_barrier_terms(alphas, accuracies, accuracy_1, accuracy_2))


@dataclass
class InterpolationCurve:
    """Loss (and accuracy) of `alpha * w1 + (1 - alpha) * w2` along an alpha grid, with both barriers.

    `loss_1`/`accuracy_1` belong to the first model (alpha = 1), `loss_2`/`accuracy_2` to the second
    (alpha = 0). Accuracies are fractions in [0, 1]; they are None for regression.
    """

    alphas: list[float]
    losses: list[float]
    accuracies: Optional[list[float]]
    loss_1: float
    loss_2: float
    accuracy_1: Optional[float]
    accuracy_2: Optional[float]
    loss_barrier: float = field(init=False)
    accuracy_barrier: Optional[float] = field(init=False)

    def __post_init__(self) -> None:
        self.loss_barrier = loss_barrier(self.alphas, self.losses, self.loss_1, self.loss_2)
        if self.accuracies is None:
            self.accuracy_barrier = None
        else:
            self.accuracy_barrier = accuracy_barrier(self.alphas, self.accuracies, self.accuracy_1, self.accuracy_2)

    @property
    def average_accuracy(self) -> Optional[float]:
        """Mean accuracy of the two endpoint models (the paper's "Avg. Acc.")."""
        if self.accuracy_1 is None:
            return None
        return 0.5 * (self.accuracy_1 + self.accuracy_2)

    def value_at(self, alpha: float, metric: str = "accuracy") -> Optional[float]:
        """Return the loss or accuracy at the grid point nearest to `alpha` (0.5 gives "Interp. Acc.")."""
        values = self.accuracies if metric == "accuracy" else self.losses
        if values is None:
            return None
        index = int(np.argmin([abs(grid_alpha - alpha) for grid_alpha in self.alphas]))
        return values[index]

    def to_dict(self) -> dict:
        return {**asdict(self), "average_accuracy": self.average_accuracy}


def _unshare_from(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # `model.state_dict()` returns the live parameters, so loading weights into `model` would also
    # change a caller's state dict taken from it. Copy only the tensors that share memory with `model`.
    live = {tensor.data_ptr() for tensor in model.state_dict().values()}
    return {
        name: tensor.detach().clone() if tensor.data_ptr() in live else tensor for name, tensor in state_dict.items()
    }


def evaluate_interpolation(
    model: nn.Module,
    state_dict_1: Mapping[str, torch.Tensor],
    state_dict_2: Mapping[str, torch.Tensor],
    dataloader: Iterable,
    alphas: Optional[Sequence[float]] = None,
    task: str = "classification",
    progress: bool = False,
) -> InterpolationCurve:
    """Evaluate the linear path between two models and compute both barriers.

    One model object and one data loader serve the whole grid: each alpha's weights are loaded into
    `model` with `load_state_dict`, and the model gets its original weights back at the end. The model
    may be one of the two endpoints: tensors of the state dicts that share its memory are copied first.

    Args:
        model: A module of the architecture of both state dicts (its current weights do not matter).
        state_dict_1: Weights of the first model (alpha = 1).
        state_dict_2: Weights of the second model (alpha = 0).
        dataloader: Yields `(inputs, targets)`; the paper evaluates on the test split.
        alphas: The grid; `default_alphas()` (11 points) when None. The endpoints 0 and 1 are added if
            missing, because both barriers compare against them.
        task: `"classification"` (cross-entropy and accuracy) or `"regression"` (mean squared error).
        progress: Show a tqdm bar over the grid.

    Returns:
        An `InterpolationCurve` with the grid sorted ascending.

    Raises:
        ValueError: For alphas outside [0, 1], an unknown task, or state dicts that do not match.

    Example:

    ```python
    >>> curve = evaluate_interpolation(model, trained_1.state_dict(), trained_2.state_dict(), test_loader)
    >>> curve.accuracy_barrier, curve.loss_barrier
    ```
    """
    _check_task(task)
    alphas = _check_alphas(default_alphas() if alphas is None else alphas)
    grid = sorted(set(alphas) | {0.0, 1.0})
    original = clone_state_dict(model)
    state_dict_1, state_dict_2 = _unshare_from(model, state_dict_1), _unshare_from(model, state_dict_2)

    results = {}
    try:
        for alpha in tqdm(grid, desc="interpolation", disable=not progress, leave=False):
            model.load_state_dict(interpolate_state_dicts(state_dict_1, state_dict_2, alpha))
            results[alpha] = evaluate_model(model, dataloader, task)
    finally:
        model.load_state_dict(original)

    classification = task == "classification"
    curve = InterpolationCurve(
        alphas=grid,
        losses=[results[alpha].loss for alpha in grid],
        accuracies=[results[alpha].accuracy for alpha in grid] if classification else None,
        loss_1=results[1.0].loss,
        loss_2=results[0.0].loss,
        accuracy_1=results[1.0].accuracy if classification else None,
        accuracy_2=results[0.0].accuracy if classification else None,
    )
    logger.info("Loss barrier %.4f, accuracy barrier %s", curve.loss_barrier, curve.accuracy_barrier)
    return curve


@dataclass
class MultiModelBarrier:
    """Barriers of the uniform average of n models against the mean of the individual models.

    Accuracies are fractions in [0, 1] and None for regression.
    """

    individual_losses: list[float]
    individual_accuracies: Optional[list[float]]
    fused_loss: float
    fused_accuracy: Optional[float]
    loss_barrier: float = field(init=False)
    accuracy_barrier: Optional[float] = field(init=False)

    def __post_init__(self) -> None:
        self.loss_barrier = self.fused_loss - float(np.mean(self.individual_losses))
        if self.individual_accuracies is None:
            self.accuracy_barrier = None
        else:
            mean_accuracy = float(np.mean(self.individual_accuracies))
            self.accuracy_barrier = 1.0 - self.fused_accuracy / mean_accuracy if mean_accuracy > 0 else 0.0

    @property
    def average_accuracy(self) -> Optional[float]:
        """Mean accuracy of the individual models (the paper's "Avg. Acc.")."""
        if self.individual_accuracies is None:
            return None
        return float(np.mean(self.individual_accuracies))

    def to_dict(self) -> dict:
        return {**asdict(self), "average_accuracy": self.average_accuracy}


def multi_model_barrier(
    model: nn.Module,
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    dataloader: Iterable,
    task: str = "classification",
) -> MultiModelBarrier:
    """Evaluate n models and their uniform average, and compute the multi-model barriers.

    Unlike equations 1 and 2 these barriers are not clipped at 0: a fused model better than the mean
    of its ingredients gives a negative barrier. As in `evaluate_interpolation`, `model` is the one
    module every state dict is loaded into, and it gets its original weights back.

    Args:
        model: A module of the architecture of every state dict.
        state_dicts: The n >= 2 trained models.
        dataloader: Yields `(inputs, targets)`.
        task: `"classification"` or `"regression"`.

    Returns:
        A `MultiModelBarrier`.

    Raises:
        ValueError: For fewer than two state dicts or state dicts that do not match.
    """
    _check_task(task)
    if len(state_dicts) < 2:
        raise ValueError(f"multi_model_barrier needs at least 2 state dicts, got {len(state_dicts)}.")
    original = clone_state_dict(model)
    state_dicts = [_unshare_from(model, state_dict) for state_dict in state_dicts]
    try:
        individual = []
        for state_dict in state_dicts:
            model.load_state_dict(state_dict)
            individual.append(evaluate_model(model, dataloader, task))
        model.load_state_dict(average_state_dicts(state_dicts))
        fused = evaluate_model(model, dataloader, task)
    finally:
        model.load_state_dict(original)

    classification = task == "classification"
    return MultiModelBarrier(
        individual_losses=[result.loss for result in individual],
        individual_accuracies=[result.accuracy for result in individual] if classification else None,
        fused_loss=fused.loss,
        fused_accuracy=fused.accuracy if classification else None,
    )
