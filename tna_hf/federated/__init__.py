"""Federated learning with training-time neuron alignment: FedPFN and FedPNU (Li et al., TNA-PFN).

- `partitions`: Dirichlet label partitions and saved client participation sequences.
- `algorithms`: the client side (FedAvg, FedProx, FedPFN, FedPNU, FedPFN (fixed), FedPruning).
- `aggregation`: the server side (sample-count-weighted FedAvg) behind the `Aggregator` interface.
- `simulation`: the in-process simulation engine.
- `flower`: the Flower adapter (optional extra `tna_hf[flower]`), imported on demand.
"""

from .aggregation import (
    AGGREGATORS,
    Aggregator,
    ClientUpdate,
    FedAvgAggregator,
    aggregation_weights,
    build_aggregator,
    check_fixed_entries,
    restore_fixed_entries,
    weighted_average_state_dicts,
)
from .algorithms import (
    ALGORITHMS,
    ClientAlgorithm,
    LocalPlan,
    LocalTrainingSettings,
    get_algorithm,
    masks_for_round,
    plan_for_round,
    round_lr,
    shuffle_seed,
    train_client,
)
from .data import FederatedData, load_federated_data
from .partitions import (
    dirichlet_partition,
    label_histogram,
    load_or_create_participation,
    load_participation,
    sample_participation,
    save_participation,
)
from .simulation import FederatedConfig, FederatedResult, FederatedSimulation, evaluate

__all__ = [
    "AGGREGATORS",
    "ALGORITHMS",
    "Aggregator",
    "ClientAlgorithm",
    "ClientUpdate",
    "FedAvgAggregator",
    "FederatedConfig",
    "FederatedData",
    "FederatedResult",
    "FederatedSimulation",
    "LocalPlan",
    "LocalTrainingSettings",
    "aggregation_weights",
    "build_aggregator",
    "check_fixed_entries",
    "dirichlet_partition",
    "evaluate",
    "get_algorithm",
    "label_histogram",
    "load_federated_data",
    "load_or_create_participation",
    "load_participation",
    "masks_for_round",
    "plan_for_round",
    "restore_fixed_entries",
    "round_lr",
    "sample_participation",
    "save_participation",
    "shuffle_seed",
    "train_client",
    "weighted_average_state_dicts",
]
