"""Client-side federated algorithms: FedAvg, FedProx, FedPFN, FedPNU and the TNA-PFN ablations.

From Li et al., "Training-time Neuron Alignment through Permutation Subspace for Improving Linear Mode
Connectivity and Model Fusion" (Algorithms 1 and 2):

- FedPFN: in round t every client trains with the same fresh mask `m^t` (derived from the config seed
  and t), so the fixed entries stay at the global model's values for the whole round.
- FedPNU: the first `int(E / 2)` local epochs use `m^t`, the remaining `E - int(E / 2)` its complement.
  `MaskedUpdate.set_masks` takes a new snapshot at the switch, and the optimizer step post-hook writes it
  back after every step, so momentum gathered before the switch cannot move a newly fixed entry.
- FedPFN (fixed): one mask for all rounds. FedPruning: that mask's fixed entries are zero (random
  pruning at initialization).
- FedProx (Li et al., 2020) adds `mu / 2 * ||w - w_global||^2` to the local loss.

Local training is SGD with momentum and weight decay (Appendix A.5 of the paper: lr 0.08 for
Fashion-MNIST and CIFAR-10, 0.05 for CIFAR-100, times 0.99 every round, momentum 0.9, weight decay 5e-4).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import MaskMode, MaskSchedule, TNAConfig
from ..masks import Masks, build_masks, complement_masks
from ..update import MaskedUpdate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientAlgorithm:
    """Training rule of the clients in every round: mask schedule, mask mode and loss.

    Attributes:
        name: Key in `ALGORITHMS`.
        schedule: Mask schedule (`MaskSchedule` value), or None for unmasked training.
        mode: `"fix"` (TNA-PFN) or `"prune"` (fixed entries are zero).
        uses_prox: Whether the FedProx proximal term is added to the local loss.
        label: Name used in tables and plots.
    """

    name: str
    schedule: Optional[str]
    mode: str = MaskMode.FIX.value
    uses_prox: bool = False
    label: str = ""

    @property
    def is_masked(self) -> bool:
        return self.schedule is not None


ALGORITHMS: dict[str, ClientAlgorithm] = {
    "fedavg": ClientAlgorithm("fedavg", None, label="FedAvg"),
    "fedprox": ClientAlgorithm("fedprox", None, uses_prox=True, label="FedProx"),
    "fedpfn": ClientAlgorithm("fedpfn", MaskSchedule.PER_ROUND.value, label="FedPFN"),
    "fedpnu": ClientAlgorithm("fedpnu", MaskSchedule.PROGRESSIVE.value, label="FedPNU"),
    "fedpfn_fixed": ClientAlgorithm("fedpfn_fixed", MaskSchedule.FIXED.value, label="FedPFN (fixed)"),
    "fedpruning": ClientAlgorithm(
        "fedpruning", MaskSchedule.FIXED.value, mode=MaskMode.PRUNE.value, label="FedPruning"
    ),
}


def get_algorithm(name: str) -> ClientAlgorithm:
    """Return the client algorithm called `name` (case-insensitive)."""
    key = name.strip().lower().replace("-", "_")
    if key not in ALGORITHMS:
        raise ValueError(f"Unknown federated algorithm {name!r}. Valid names: {sorted(ALGORITHMS)}.")
    return ALGORITHMS[key]


@dataclass
class LocalTrainingSettings:
    """Hyperparameters of one client's local training in one round."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.08
    momentum: float = 0.9
    weight_decay: float = 5e-4
    prox_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"Local epochs must be at least 1, got {self.epochs}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.lr <= 0:
            raise ValueError(f"The local learning rate must be positive, got {self.lr}.")
        if self.prox_mu < 0:
            raise ValueError(f"prox_mu must be non-negative, got {self.prox_mu}.")


@dataclass
class LocalPlan:
    """Masking of one round, the same for every client.

    Attributes:
        masks: The round's mask (`True` = trainable), or None for unmasked training.
        mode: `"fix"` or `"prune"`.
        complement_from_epoch: Local epoch (0-based) at which the complement mask replaces `masks`
            (FedPNU: `int(E / 2)`); None keeps `masks` for every epoch.
    """

    masks: Optional[Masks] = None
    mode: str = MaskMode.FIX.value
    complement_from_epoch: Optional[int] = None


def round_tna_config(algorithm: ClientAlgorithm, rho: float, mask_seed: int) -> TNAConfig:
    """Return the `TNAConfig` (rho, seed, mode, schedule) that a masked algorithm uses."""
    if not algorithm.is_masked:
        raise ValueError(f"{algorithm.label or algorithm.name} trains without masks; it has no TNAConfig.")
    return TNAConfig(rho=rho, seed=mask_seed, mode=algorithm.mode, schedule=algorithm.schedule)


def masks_for_round(model: torch.nn.Module, config: TNAConfig, round_index: int) -> Masks:
    """Build the mask of round `round_index` (0-based) for `config.schedule`.

    `per_round` and `progressive` derive a new mask from (seed, round_index); `fixed` uses the one mask
    of the seed in every round.
    """
    if config.schedule == MaskSchedule.FIXED.value:
        return build_masks(model, config)
    return build_masks(model, config, round_index=round_index)


def plan_for_round(
    algorithm: ClientAlgorithm,
    model: torch.nn.Module,
    round_index: int,
    local_epochs: int,
    rho: float,
    mask_seed: int,
) -> LocalPlan:
    """Return the masking plan of `algorithm` in round `round_index`, identical for every client."""
    if not algorithm.is_masked or rho == 0:
        return LocalPlan()
    config = round_tna_config(algorithm, rho, mask_seed)
    complement_from = local_epochs // 2 if algorithm.schedule == MaskSchedule.PROGRESSIVE.value else None
    return LocalPlan(
        masks=masks_for_round(model, config, round_index), mode=algorithm.mode, complement_from_epoch=complement_from
    )


def shuffle_seed(seed: int, round_index: int, client_id: int) -> int:
    """Derive the seed of a client's batch order in a round, independent of process and call order."""
    key = json.dumps(["local-shuffle", int(seed), int(round_index), int(client_id)])
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") & ((1 << 63) - 1)


def round_lr(initial_lr: float, decay: float, round_index: int) -> float:
    """Return the local learning rate of round `round_index` (0-based): `initial_lr * decay ** round_index`."""
    return initial_lr * decay**round_index


def train_client(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    settings: LocalTrainingSettings,
    plan: LocalPlan,
    seed: int,
    epoch_callback: Optional[Callable[[int, torch.nn.Module, Optional[MaskedUpdate]], None]] = None,
) -> float:
    """Train `model` in place on one client's data for `settings.epochs` epochs.

    The model must already hold the received global weights: the mask snapshot is taken here, so the
    fixed entries stay at those values. A new SGD optimizer is built every round (no optimizer state
    crosses rounds). Batches come from a private generator seeded with `seed`, so an in-process run and
    a Flower client that pass the same seed see the same batches.

    Args:
        model: The client's model, on the device of `inputs`.
        inputs: The client's inputs, shape (N, ...).
        labels: Their class labels, shape (N,).
        settings: Epochs, batch size, learning rate, momentum, weight decay, FedProx mu.
        plan: The round's masks and FedPNU switch epoch, from `plan_for_round`.
        seed: Seed of the batch order (see `shuffle_seed`).
        epoch_callback: Called as `callback(epoch, model, masked_update)` after every local epoch.

    Returns:
        The mean training loss of the last epoch.
    """
    num_samples = len(labels)
    if num_samples == 0:
        raise ValueError("A client with no samples cannot train; use a positive min_partition_size.")
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    masked_update = None
    if plan.masks is not None:
        masked_update = MaskedUpdate(model, plan.masks, mode=plan.mode).attach(optimizer)
    global_params = None
    if settings.prox_mu > 0:
        global_params = [param.detach().clone() for param in model.parameters()]

    generator = torch.Generator(device="cpu").manual_seed(seed)
    last_epoch_loss = float("nan")
    try:
        for epoch in range(settings.epochs):
            # FedPNU: swap to the complement mask; set_masks snapshots the entries fixed from now on.
            if masked_update is not None and epoch == plan.complement_from_epoch:
                masked_update.set_masks(complement_masks(plan.masks), mode=plan.mode)
            order = torch.randperm(num_samples, generator=generator).to(inputs.device)
            total_loss = 0.0
            for start in range(0, num_samples, settings.batch_size):
                batch = order[start : start + settings.batch_size]
                loss = F.cross_entropy(model(inputs[batch]), labels[batch])
                if global_params is not None:
                    proximal = sum(
                        (param - anchor).pow(2).sum() for param, anchor in zip(model.parameters(), global_params)
                    )
                    loss = loss + 0.5 * settings.prox_mu * proximal
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(batch)
            last_epoch_loss = total_loss / num_samples
            if epoch_callback is not None:
                epoch_callback(epoch, model, masked_update)
    finally:
        if masked_update is not None:
            masked_update.detach()
    return last_epoch_loss


def settings_for_round(base: LocalTrainingSettings, lr_decay: float, round_index: int) -> LocalTrainingSettings:
    """Return `base` with the learning rate of round `round_index`."""
    return replace(base, lr=round_lr(base.lr, lr_decay, round_index))
