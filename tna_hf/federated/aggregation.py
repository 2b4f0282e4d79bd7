"""Server-side aggregation: sample-count-weighted averaging (FedAvg) behind a small interface.

FedAvg (McMahan et al., 2017) sets the new global model to `sum_i lambda_i * w_i` with
`lambda_i = |D_i| / sum_j |D_j|` over the clients that took part in the round. Client-side masking
(FedPFN, FedPNU) changes only how clients train, so it composes with any `Aggregator`. The helpers
`check_fixed_entries` and `restore_fixed_entries` let a server verify that clients kept the round's
fixed entries at the global values and write those values back exactly after aggregation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


@dataclass
class ClientUpdate:
    """The model a client returns after local training, with the number of samples it trained on."""

    client_id: int
    state: StateDict
    num_samples: int


def aggregation_weights(num_samples: Sequence[int]) -> list[float]:
    """Return the FedAvg weights `n_i / sum_j n_j`.

    Raises:
        ValueError: When a count is negative or all counts are zero.
    """
    counts = [int(count) for count in num_samples]
    if any(count < 0 for count in counts):
        raise ValueError(f"Client sample counts must be non-negative, got {counts}.")
    total = sum(counts)
    if total == 0:
        raise ValueError(f"Cannot weight clients by sample count when every count is zero: {counts}.")
    return [count / total for count in counts]


def weighted_average_state_dicts(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> StateDict:
    """Average state dicts with the given weights, accumulating floating tensors in float64.

    Integer and boolean tensors (buffers such as step counters) must be equal in every state dict and
    are copied. The result has each tensor's original dtype and device.

    Raises:
        ValueError: When the state dicts have different keys or shapes, the number of weights is wrong,
            or an integer tensor differs between them.
    """
    if not states:
        raise ValueError("weighted_average_state_dicts needs at least one state dict.")
    if len(weights) != len(states):
        raise ValueError(f"Got {len(states)} state dicts but {len(weights)} weights.")
    keys = list(states[0].keys())
    for position, state in enumerate(states[1:], start=1):
        if set(state.keys()) != set(keys):
            missing = sorted(set(keys) - set(state.keys()))
            extra = sorted(set(state.keys()) - set(keys))
            raise ValueError(f"State dict {position} differs from state dict 0: missing {missing}, extra {extra}.")

    averaged: StateDict = {}
    for key in keys:
        reference = states[0][key]
        for position, state in enumerate(states[1:], start=1):
            if state[key].shape != reference.shape:
                raise ValueError(
                    f"{key!r} has shape {tuple(state[key].shape)} in state dict {position} "
                    f"but {tuple(reference.shape)} in state dict 0."
                )
        if reference.dtype.is_floating_point or reference.dtype.is_complex:
            accumulator = torch.zeros(reference.shape, dtype=torch.float64, device=reference.device)
            for state, weight in zip(states, weights):
                accumulator.add_(state[key].to(device=reference.device, dtype=torch.float64), alpha=float(weight))
            averaged[key] = accumulator.to(reference.dtype)
        else:
            for position, state in enumerate(states[1:], start=1):
                if not torch.equal(state[key].to(reference.device), reference):
                    raise ValueError(
                        f"Integer tensor {key!r} differs between state dict 0 and state dict {position}; "
                        "integer buffers cannot be averaged."
                    )
            averaged[key] = reference.clone()
    return averaged


class Aggregator:
    """Server-side aggregation rule: turns the round's client updates into the next global model.

    Subclasses implement `aggregate`. The client-side algorithms (FedAvg, FedProx, FedPFN, FedPNU, ...)
    only decide how clients train, so any aggregator can follow any of them.
    """

    name = "aggregator"

    def aggregate(self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]) -> StateDict:
        raise NotImplementedError


class FedAvgAggregator(Aggregator):
    """FedAvg: average of the client models weighted by their sample counts.

    Example:

    ```python
    >>> new_global = FedAvgAggregator().aggregate(global_state, updates)
    ```
    """

    name = "fedavg"

    def aggregate(self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]) -> StateDict:
        if not updates:
            raise ValueError("FedAvg needs at least one client update; no client took part in this round.")
        weights = aggregation_weights([update.num_samples for update in updates])
        return weighted_average_state_dicts([update.state for update in updates], weights)


AGGREGATORS: dict[str, type[Aggregator]] = {FedAvgAggregator.name: FedAvgAggregator}


def build_aggregator(name: str) -> Aggregator:
    """Return a new aggregator by name (`"fedavg"`)."""
    if name not in AGGREGATORS:
        raise ValueError(f"Unknown aggregator {name!r}. Valid names: {sorted(AGGREGATORS)}.")
    return AGGREGATORS[name]()


def _fixed_positions(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    return (~mask).to(device)


def check_fixed_entries(
    state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> list[str]:
    """Return the names of masked tensors whose fixed entries in `state` differ bitwise from `reference`."""
    changed = []
    for name, mask in masks.items():
        if name not in state or name not in reference:
            raise KeyError(f"Masked parameter {name!r} is missing from the state dict or the reference.")
        fixed = _fixed_positions(mask, state[name].device)
        current = state[name][fixed]
        expected = reference[name].to(state[name].device)[fixed]
        if not torch.equal(_bits(current), _bits(expected)):
            changed.append(name)
    return changed


def restore_fixed_entries(
    state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> StateDict:
    """Return a copy of `state` whose fixed entries are copied from `reference` (selected, not computed)."""
    restored = dict(state)
    for name, mask in masks.items():
        fixed = _fixed_positions(mask, state[name].device)
        restored[name] = torch.where(fixed, reference[name].to(state[name].device), state[name])
    return restored


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    # Bitwise comparison, so NaN equals NaN and -0.0 differs from 0.0.
    if tensor.dtype.is_floating_point:
        return tensor.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])
    return tensor
