"""Flower adapter for FedPFN and FedPNU (Li et al., TNA-PFN) on Flower's Message API (flwr 1.42).

The server never sends masks. `TNAFedAvg`, a subclass of Flower's message-based `FedAvg`, adds scalar
config values to every training message: the algorithm, rho, the mask seed, the round index, the phase
switch and the round's local training settings. The phase switch is the local epoch at which FedPNU
moves to the complement mask. `train_reply` on the client rebuilds the round's mask from those values
and trains with the exact masked update (`MaskedUpdate`). When aggregating, the strategy checks that every client
kept the round's fixed entries at the global values, restores them where a client did not, averages
in float64 weighted by sample counts (the same `Aggregator` as the in-process simulation), and writes
the fixed entries back exactly.

Flower telemetry and update checks are switched off before `flwr` is imported.

Install with `pip install tna_hf[flower]`.
"""

from __future__ import annotations

import os

# Set before flwr is imported anywhere: no usage reports, no update checks.
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"

import logging  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterable  # noqa: E402
from typing import Optional  # noqa: E402

import torch  # noqa: E402

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
    from flwr.clientapp import ClientApp  # noqa: E402
    from flwr.common.constant import SUPERLINK_NODE_ID  # noqa: E402
    from flwr.serverapp import Grid  # noqa: E402
    from flwr.serverapp.strategy import FedAvg  # noqa: E402
    from flwr.supercore.run import Run  # noqa: E402
    from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
except ImportError as error:  # pragma: no cover - depends on the optional extra
    raise ImportError("tna_hf.federated.flower needs Flower 1.42 or newer: pip install 'tna_hf[flower]'.") from error

from .aggregation import Aggregator, ClientUpdate, FedAvgAggregator, check_fixed_entries, restore_fixed_entries  # noqa: E402
from .algorithms import (  # noqa: E402
    LocalPlan,
    LocalTrainingSettings,
    get_algorithm,
    plan_for_round,
    round_lr,
    shuffle_seed,
    train_client,
)

logger = logging.getLogger(__name__)

# Keys of the scalar config values a training message carries.
KEY_ALGORITHM = "tna-algorithm"
KEY_RHO = "tna-rho"
KEY_MASK_SEED = "tna-mask-seed"
KEY_ROUND = "tna-round"
KEY_COMPLEMENT_FROM_EPOCH = "tna-complement-from-epoch"  # the phase switch; -1 means no switch
KEY_SEED = "tna-seed"
KEY_LOCAL_EPOCHS = "local-epochs"
KEY_LR = "lr"
KEY_BATCH_SIZE = "batch-size"
KEY_MOMENTUM = "momentum"
KEY_WEIGHT_DECAY = "weight-decay"
KEY_PROX_MU = "prox-mu"
# Metric keys of a training reply.
KEY_NUM_EXAMPLES = "num-examples"
KEY_CLIENT_ID = "tna-client-id"
KEY_TRAIN_LOSS = "train-loss"


class TNAFedAvg(FedAvg):
    """Flower FedAvg strategy that runs a TNA-PFN client algorithm (FedPFN, FedPNU, ...) on its clients.

    Args:
        model: A model of the trained architecture; only its parameter names and shapes are used, to
            rebuild the round's mask on the server.
        algorithm: Client algorithm name (`fedavg`, `fedprox`, `fedpfn`, `fedpnu`, `fedpfn_fixed`, `fedpruning`).
        rho: Mask ratio.
        mask_seed: Seed of the masks.
        seed: Seed from which clients derive their batch order (with the round and their client id).
        settings: Local training settings of round 0; the learning rate decays by `lr_decay` each round.
        lr_decay: Factor applied to the local learning rate each round.
        aggregator: Server-side rule; sample-count-weighted FedAvg in float64 by default.
        **fedavg_kwargs: Passed to `flwr.serverapp.strategy.FedAvg` (`fraction_train`, `min_train_nodes`, ...).

    NOTE: With `fraction_train < 1`, Flower's FedAvg samples nodes with Python's `random` module, so the
    selected clients do not follow a participation sequence saved by the in-process simulation.

    Example:

    ```python
    >>> strategy = TNAFedAvg(model, "fedpfn", rho=0.4, mask_seed=0, seed=0, fraction_evaluate=0.0)
    >>> result = strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=100)
    ```
    """

    def __init__(
        self,
        model: torch.nn.Module,
        algorithm: str = "fedpfn",
        rho: float = 0.4,
        mask_seed: int = 0,
        seed: int = 0,
        settings: Optional[LocalTrainingSettings] = None,
        lr_decay: float = 0.99,
        aggregator: Optional[Aggregator] = None,
        **fedavg_kwargs,
    ):
        super().__init__(**fedavg_kwargs)
        self.model = model
        self.algorithm = get_algorithm(algorithm)
        self.rho = float(rho)
        self.mask_seed = int(mask_seed)
        self.seed = int(seed)
        self.settings = settings or LocalTrainingSettings()
        if self.algorithm.uses_prox and self.settings.prox_mu == 0:
            logger.warning("FedProx runs with prox_mu=0, which makes it FedAvg; set settings.prox_mu.")
        self.lr_decay = float(lr_decay)
        self.aggregator = aggregator or FedAvgAggregator()
        self._global_state: Optional[dict[str, torch.Tensor]] = None
        self._plan: LocalPlan = LocalPlan()
        # (round index, client id, parameter names) of every reply whose fixed entries had to be restored.
        self.restored: list[tuple[int, int, list[str]]] = []

    def round_config(self, round_index: int) -> dict:
        """Return the scalar config values of round `round_index` (0-based)."""
        complement_from = self._plan.complement_from_epoch
        return {
            KEY_ALGORITHM: self.algorithm.name,
            KEY_RHO: self.rho,
            KEY_MASK_SEED: self.mask_seed,
            KEY_ROUND: round_index,
            KEY_COMPLEMENT_FROM_EPOCH: -1 if complement_from is None else complement_from,
            KEY_SEED: self.seed,
            KEY_LOCAL_EPOCHS: self.settings.epochs,
            KEY_LR: round_lr(self.settings.lr, self.lr_decay, round_index),
            KEY_BATCH_SIZE: self.settings.batch_size,
            KEY_MOMENTUM: self.settings.momentum,
            KEY_WEIGHT_DECAY: self.settings.weight_decay,
            KEY_PROX_MU: self.settings.prox_mu if self.algorithm.uses_prox else 0.0,
        }

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid) -> Iterable[Message]:
        """Remember the global model and the round's mask, then send both config and arrays as FedAvg does."""
        round_index = server_round - 1
        self._global_state = arrays.to_torch_state_dict()
        self._plan = plan_for_round(
            self.algorithm, self.model, round_index, self.settings.epochs, self.rho, self.mask_seed
        )
        merged = ConfigRecord({**dict(config), **self.round_config(round_index)})
        return super().configure_train(server_round, arrays, merged, grid)

    def _has_fixed_entries_all_round(self) -> bool:
        # FedPNU trains every entry in one of its two phases; pruning sets entries to zero, not to global values.
        return self._plan.masks is not None and self._plan.complement_from_epoch is None and self._plan.mode == "fix"

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        """Check and restore fixed entries, then aggregate the replies with the configured aggregator."""
        valid_replies, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid_replies:
            return None, None
        round_index = server_round - 1
        contents = [reply.content for reply in valid_replies]

        updates = []
        for reply, content in zip(valid_replies, contents):
            metrics = next(iter(content.metric_records.values()))
            client_id = int(metrics[KEY_CLIENT_ID]) if KEY_CLIENT_ID in metrics else int(reply.metadata.src_node_id)
            state = next(iter(content.array_records.values())).to_torch_state_dict()
            if self._has_fixed_entries_all_round():
                changed = check_fixed_entries(state, self._global_state, self._plan.masks)
                if changed:
                    logger.warning(
                        "Round %d: client %d changed fixed entries of %s; restoring the global values.",
                        round_index,
                        client_id,
                        changed,
                    )
                    self.restored.append((round_index, client_id, changed))
                    state = restore_fixed_entries(state, self._global_state, self._plan.masks)
            updates.append(
                ClientUpdate(client_id=client_id, state=state, num_samples=int(metrics[self.weighted_by_key]))
            )

        # Client order fixes the float64 summation order, so the result does not depend on reply order.
        updates.sort(key=lambda update: update.client_id)
        new_state = self.aggregator.aggregate(self._global_state, updates)
        if self._has_fixed_entries_all_round():
            new_state = restore_fixed_entries(new_state, self._global_state, self._plan.masks)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return ArrayRecord(new_state), metrics


def settings_from_config(config: ConfigRecord) -> LocalTrainingSettings:
    """Read the local training settings of a round from a training message's config."""
    return LocalTrainingSettings(
        epochs=int(config[KEY_LOCAL_EPOCHS]),
        batch_size=int(config[KEY_BATCH_SIZE]),
        lr=float(config[KEY_LR]),
        momentum=float(config[KEY_MOMENTUM]),
        weight_decay=float(config[KEY_WEIGHT_DECAY]),
        prox_mu=float(config[KEY_PROX_MU]),
    )


def plan_from_config(model: torch.nn.Module, config: ConfigRecord) -> LocalPlan:
    """Rebuild the round's masking plan from the scalar config values sent by `TNAFedAvg`.

    Raises:
        KeyError: A `tna-*` key is missing (the server does not run `TNAFedAvg`).
        ValueError: The phase switch sent by the server disagrees with the algorithm.
    """
    missing = [key for key in (KEY_ALGORITHM, KEY_RHO, KEY_MASK_SEED, KEY_ROUND) if key not in config]
    if missing:
        raise KeyError(f"Training config lacks {missing}; the server must run tna_hf.federated.flower.TNAFedAvg.")
    plan = plan_for_round(
        get_algorithm(str(config[KEY_ALGORITHM])),
        model,
        int(config[KEY_ROUND]),
        int(config[KEY_LOCAL_EPOCHS]),
        float(config[KEY_RHO]),
        int(config[KEY_MASK_SEED]),
    )
    sent = int(config.get(KEY_COMPLEMENT_FROM_EPOCH, -1))
    expected = -1 if plan.complement_from_epoch is None else plan.complement_from_epoch
    if sent != expected:
        raise ValueError(
            f"The server's phase switch epoch {sent} differs from {expected} for algorithm "
            f"{config[KEY_ALGORITHM]!r}; client and server run different tna_hf versions."
        )
    return plan


def train_reply(
    message: Message,
    model: torch.nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    client_id: int,
    config_key: str = "config",
    arrays_key: str = "arrays",
) -> Message:
    """Train `model` on one client's data as a `TNAFedAvg` training message requests, and build the reply.

    Loads the received global weights into `model`, rebuilds the round's mask from the config (the
    mask itself is never sent), trains with `train_client` and returns a reply with the new weights and
    the metrics `num-examples`, `train-loss` and `tna-client-id`.

    Args:
        message: The training message (`msg` of a `@app.train()` function).
        model: The client's model; its weights are replaced.
        inputs: The client's inputs, on the model's device.
        labels: Their labels.
        client_id: This client's id (its partition id); it seeds the batch order.
        config_key: Key of the ConfigRecord in the message (the strategy's `configrecord_key`).
        arrays_key: Key of the ArrayRecord in the message (the strategy's `arrayrecord_key`).

    Example:

    ```python
    >>> @app.train()
    ... def train(msg, context):
    ...     client_id = context.node_config["partition-id"]
    ...     return train_reply(msg, model, inputs[client_id], labels[client_id], client_id)
    ```
    """
    config = message.content[config_key]
    state = message.content[arrays_key].to_torch_state_dict()
    model.load_state_dict(state)
    plan = plan_from_config(model, config)
    settings = settings_from_config(config)
    round_index = int(config[KEY_ROUND])
    loss = train_client(
        model, inputs, labels, settings, plan, seed=shuffle_seed(int(config[KEY_SEED]), round_index, client_id)
    )
    arrays = ArrayRecord({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()})
    metrics = MetricRecord({KEY_NUM_EXAMPLES: len(labels), KEY_TRAIN_LOSS: float(loss), KEY_CLIENT_ID: int(client_id)})
    return Message(content=RecordDict({arrays_key: arrays, "metrics": metrics}), reply_to=message)


class InProcessGrid(Grid):
    """A Flower `Grid` that delivers every message to a `ClientApp` in this process, one node after another.

    Flower 1.42's `run_simulation` has only the Ray backend, and Ray 2.55 opens its GCS and raylet ports
    on every network interface. This grid runs the same `ServerApp` logic (`Strategy.start`) and the
    same `ClientApp` without Ray, threads or sockets: `push_messages` calls the client app directly and
    stores its reply until `pull_messages` collects it. Node `i` gets `node_config = {"partition-id": i,
    "num-partitions": num_nodes}`, as in Flower's simulation. An exception in the client app propagates
    to the caller instead of becoming an error reply.

    Args:
        client_app: The `flwr.clientapp.ClientApp` every node runs.
        num_nodes: Number of simulated nodes (clients).
        run_id: Run id reported to the client apps.

    Example:

    ```python
    >>> grid = InProcessGrid(client_app, num_nodes=20)
    >>> result = TNAFedAvg(model, "fedpnu").start(grid, ArrayRecord(model.state_dict()), num_rounds=5)
    ```
    """

    _NODE_ID_OFFSET = 1000

    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int = 1):
        if num_nodes < 1:
            raise ValueError(f"InProcessGrid needs at least one node, got num_nodes={num_nodes}.")
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        # Messages take their source ids from the process-wide task identity; Flower's server runtime sets
        # it the same way before it runs a ServerApp.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._contexts = {
            self._NODE_ID_OFFSET + index: Context(
                run_id=run_id,
                node_id=self._NODE_ID_OFFSET + index,
                node_config={"partition-id": index, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for index in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: Optional[float] = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        message_ids = []
        for message in messages:
            node_id = message.metadata.dst_node_id
            if node_id not in self._contexts:
                raise ValueError(f"Message for unknown node {node_id}; known nodes: {sorted(self._contexts)}.")
            # Flower's grids assign the message id when a message is pushed.
            message_id = str(uuid.uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            message.metadata.__dict__["_run_id"] = self._run.run_id
            self._replies[message_id] = self.client_app(message, self._contexts[node_id])
            message_ids.append(message_id)
        return message_ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(message_id) for message_id in message_ids if message_id in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: Optional[float] = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
