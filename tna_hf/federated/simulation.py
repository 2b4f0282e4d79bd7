"""In-process federated simulation: clients train one after another on one device.

Each round t of the simulation (Algorithms 1 and 2 of Li et al., TNA-PFN):

1. the server builds the round's masking plan (FedPFN: a new mask from the seed and t);
2. every selected client loads the global weights and trains `E` local epochs with the exact masked
   update (`MaskedUpdate`), at learning rate `lr * lr_decay ** t`;
3. the aggregator (FedAvg: sample-count-weighted average in float64) builds the next global model;
4. the global model is evaluated on the test set.

The reported accuracy is the mean test accuracy of the last 5 rounds, as in the paper's Appendix A.4.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch

from .aggregation import Aggregator, ClientUpdate, FedAvgAggregator, check_fixed_entries
from .algorithms import (
    ClientAlgorithm,
    LocalTrainingSettings,
    get_algorithm,
    plan_for_round,
    settings_for_round,
    shuffle_seed,
    train_client,
)

logger = logging.getLogger(__name__)


@dataclass
class FederatedConfig:
    """Settings of one federated run (defaults: Appendix A.5 of the TNA-PFN paper, Fashion-MNIST)."""

    algorithm: str = field(
        default="fedpfn",
        metadata={"help": "Client algorithm: fedavg, fedprox, fedpfn, fedpnu, fedpfn_fixed or fedpruning."},
    )
    rounds: int = field(default=100, metadata={"help": "Number of communication rounds T."})
    local_epochs: int = field(default=5, metadata={"help": "Local epochs E per round."})
    batch_size: int = field(default=64, metadata={"help": "Local mini-batch size."})
    lr: float = field(default=0.08, metadata={"help": "Local learning rate of the first round."})
    lr_decay: float = field(default=0.99, metadata={"help": "Factor applied to the learning rate every round."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum of the local solver."})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay of the local solver."})
    prox_mu: float = field(default=0.001, metadata={"help": "FedProx proximal coefficient mu (FedProx only)."})
    rho: float = field(default=0.4, metadata={"help": "Mask ratio rho of the masked algorithms (0 <= rho < 1)."})
    mask_seed: Optional[int] = field(default=None, metadata={"help": "Seed of the masks; None uses `seed`."})
    seed: int = field(default=0, metadata={"help": "Seed of the initial model, partitions, participation and batches."})
    eval_batch_size: int = field(default=1000, metadata={"help": "Batch size of test evaluation."})
    last_rounds: int = field(default=5, metadata={"help": "The reported accuracy averages this many last rounds."})
    check_fixed_entries: bool = field(
        default=True, metadata={"help": "Check on the server that clients kept the round's fixed entries exactly."}
    )

    def __post_init__(self) -> None:
        get_algorithm(self.algorithm)
        for name in ("rounds", "local_epochs", "batch_size", "eval_batch_size", "last_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"FederatedConfig.{name} must be at least 1, got {getattr(self, name)}.")
        if not 0.0 <= self.rho < 1.0:
            raise ValueError(f"FederatedConfig.rho must satisfy 0 <= rho < 1, got {self.rho}.")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"FederatedConfig.lr_decay must be in (0, 1], got {self.lr_decay}.")

    @property
    def client_algorithm(self) -> ClientAlgorithm:
        return get_algorithm(self.algorithm)

    @property
    def effective_mask_seed(self) -> int:
        return self.seed if self.mask_seed is None else self.mask_seed

    def local_settings(self) -> LocalTrainingSettings:
        """Return the local training settings of round 0."""
        return LocalTrainingSettings(
            epochs=self.local_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            prox_mu=self.prox_mu if self.client_algorithm.uses_prox else 0.0,
        )


@dataclass
class FederatedResult:
    """Outcome of a federated run."""

    config: dict
    test_accuracy: list[float]
    test_loss: list[float]
    final_accuracy: float
    wall_time_s: float
    final_state: dict = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload.pop("final_state")
        return payload


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> tuple[float, float]:
    """Return (accuracy, mean cross-entropy loss) of `model` on the given tensors."""
    model.eval()
    correct = 0
    total_loss = 0.0
    for start in range(0, len(labels), batch_size):
        logits = model(inputs[start : start + batch_size])
        target = labels[start : start + batch_size]
        total_loss += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    return correct / len(labels), total_loss / len(labels)


def _state_on(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


class FederatedSimulation:
    """Run a federated algorithm with every client in this process, one after another.

    Args:
        config: The run's settings.
        model: The model, already holding the initial weights and on the training device.
        train_inputs: Training inputs of all clients, shape (N, ...), on the model's device.
        train_labels: Their labels, shape (N,).
        partitions: One index array per client into the training tensors.
        participation: Client ids selected in each round (length at least `config.rounds`).
        test_inputs: Test inputs for the per-round evaluation of the global model.
        test_labels: Their labels.
        aggregator: Server-side rule; FedAvg by default.

    Example:

    ```python
    >>> simulation = FederatedSimulation(config, model, x, y, partitions, participation, x_test, y_test)
    >>> result = simulation.run()
    >>> result.final_accuracy  # mean test accuracy of the last 5 rounds
    ```
    """

    def __init__(
        self,
        config: FederatedConfig,
        model: torch.nn.Module,
        train_inputs: torch.Tensor,
        train_labels: torch.Tensor,
        partitions: Sequence[np.ndarray],
        participation: Sequence[Sequence[int]],
        test_inputs: torch.Tensor,
        test_labels: torch.Tensor,
        aggregator: Optional[Aggregator] = None,
    ):
        if len(participation) < config.rounds:
            raise ValueError(
                f"The participation sequence covers {len(participation)} rounds but the run has {config.rounds}. "
                "Draw it with sample_participation(num_rounds=config.rounds, ...)."
            )
        for round_index, clients in enumerate(participation[: config.rounds]):
            unknown = [client for client in clients if not 0 <= client < len(partitions)]
            if unknown:
                raise ValueError(
                    f"Round {round_index} selects clients {unknown}, but only {len(partitions)} partitions exist."
                )
        self.config = config
        self.model = model
        self.train_inputs = train_inputs
        self.train_labels = train_labels
        device = train_inputs.device
        self.partitions = [torch.as_tensor(part, dtype=torch.long, device=device) for part in partitions]
        self.participation = [list(clients) for clients in participation]
        self.test_inputs = test_inputs
        self.test_labels = test_labels
        self.aggregator = aggregator or FedAvgAggregator()
        self.global_state = _state_on(model)

    def run_round(self, round_index: int) -> dict[str, torch.Tensor]:
        """Train the selected clients of round `round_index` and return the aggregated global state."""
        config = self.config
        plan = plan_for_round(
            config.client_algorithm,
            self.model,
            round_index,
            config.local_epochs,
            config.rho,
            config.effective_mask_seed,
        )
        settings = settings_for_round(config.local_settings(), config.lr_decay, round_index)
        updates = []
        for client_id in self.participation[round_index]:
            self.model.load_state_dict(self.global_state)
            indices = self.partitions[client_id]
            train_client(
                self.model,
                self.train_inputs[indices],
                self.train_labels[indices],
                settings,
                plan,
                seed=shuffle_seed(config.seed, round_index, client_id),
            )
            state = _state_on(self.model)
            # Entries fixed for the whole round must come back at the global values (FedPFN and its
            # ablations; FedPNU trains every entry in one of its two phases, so it has none).
            if config.check_fixed_entries and plan.masks is not None and plan.complement_from_epoch is None:
                if plan.mode == "fix":
                    changed = check_fixed_entries(state, self.global_state, plan.masks)
                    if changed:
                        raise RuntimeError(
                            f"Client {client_id} changed fixed entries of {changed} in round {round_index}."
                        )
            updates.append(ClientUpdate(client_id=client_id, state=state, num_samples=len(indices)))
        return self.aggregator.aggregate(self.global_state, updates)

    def run(self, progress: bool = False, description: str = "") -> FederatedResult:
        """Run `config.rounds` rounds and return the per-round test accuracy and the final state."""
        config = self.config
        accuracies: list[float] = []
        losses: list[float] = []
        start = time.perf_counter()
        rounds = range(config.rounds)
        if progress:
            from tqdm.auto import tqdm

            rounds = tqdm(rounds, desc=description or config.algorithm, leave=False)
        for round_index in rounds:
            self.global_state = self.run_round(round_index)
            self.model.load_state_dict(self.global_state)
            accuracy, loss = evaluate(self.model, self.test_inputs, self.test_labels, config.eval_batch_size)
            accuracies.append(accuracy)
            losses.append(loss)
            if progress:
                rounds.set_postfix(acc=f"{accuracy:.4f}")
            logger.debug("round %d: test accuracy %.4f, loss %.4f", round_index, accuracy, loss)
        wall_time = time.perf_counter() - start
        final = float(np.mean(accuracies[-config.last_rounds :]))
        return FederatedResult(
            config=asdict(config),
            test_accuracy=accuracies,
            test_loss=losses,
            final_accuracy=final,
            wall_time_s=wall_time,
            final_state={name: tensor.detach().cpu() for name, tensor in self.global_state.items()},
        )
