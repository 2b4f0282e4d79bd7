"""Tests of the Flower adapter: a Flower run equals the in-process simulation for the same seeds.

The Flower runs use `InProcessGrid`, which drives Flower's own `Strategy.start` loop and `ClientApp`
dispatch without Ray. Flower 1.42's `run_simulation` has only the Ray backend, and Ray 2.55 opens
ports on every network interface, which these tests must not do.
"""

from __future__ import annotations

import os

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Context  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from tna_hf.federated import (  # noqa: E402
    FederatedConfig,
    FederatedSimulation,
    LocalTrainingSettings,
    dirichlet_partition,
    load_federated_data,
    sample_participation,
)
from tna_hf.federated.flower import (  # noqa: E402
    KEY_COMPLEMENT_FROM_EPOCH,
    KEY_MASK_SEED,
    KEY_ROUND,
    InProcessGrid,
    TNAFedAvg,
    plan_from_config,
    train_reply,
)
from tna_hf.models import build_model  # noqa: E402

NUM_CLIENTS = 3
ROUNDS = 2
SEED = 0


@pytest.fixture(scope="module")
def client_data():
    data = load_federated_data("fashion_mnist", max_train_samples=300, max_test_samples=100, seed=SEED)
    partitions = dirichlet_partition(data.train_labels, NUM_CLIENTS, alpha=0.5, seed=SEED, min_partition_size=10)
    return data, partitions


def make_model():
    torch.manual_seed(SEED)
    return build_model("mlp_h1_w16", in_shape=(1, 28, 28), num_classes=10)


def run_in_process(algorithm, data, partitions):
    config = FederatedConfig(
        algorithm=algorithm, rounds=ROUNDS, local_epochs=2, batch_size=32, rho=0.5, seed=SEED, prox_mu=0.01
    )
    simulation = FederatedSimulation(
        config,
        make_model(),
        data.train_inputs,
        data.train_labels,
        partitions,
        sample_participation(NUM_CLIENTS, ROUNDS, 1.0, SEED),
        data.test_inputs,
        data.test_labels,
    )
    return simulation.run().final_state


def run_flower(algorithm, data, partitions):
    client_app = ClientApp()

    @client_app.train()
    def train(message, context: Context):
        client_id = int(context.node_config["partition-id"])
        indices = torch.as_tensor(partitions[client_id])
        return train_reply(message, make_model(), data.train_inputs[indices], data.train_labels[indices], client_id)

    model = make_model()
    settings = LocalTrainingSettings(epochs=2, batch_size=32, lr=0.08, prox_mu=0.01)
    strategy = TNAFedAvg(
        model,
        algorithm,
        rho=0.5,
        mask_seed=SEED,
        seed=SEED,
        settings=settings,
        lr_decay=0.99,
        fraction_evaluate=0.0,
        min_train_nodes=NUM_CLIENTS,
        min_available_nodes=NUM_CLIENTS,
    )
    grid = InProcessGrid(client_app, num_nodes=NUM_CLIENTS)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=ROUNDS)
    return result.arrays.to_torch_state_dict(), strategy


@pytest.mark.parametrize("algorithm", ["fedpfn", "fedpnu"])
def test_flower_run_equals_in_process_run(algorithm, client_data):
    data, partitions = client_data
    expected = run_in_process(algorithm, data, partitions)
    found, strategy = run_flower(algorithm, data, partitions)
    assert sorted(found) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-6, atol=1e-7, msg=f"{algorithm}: {name}")
    assert strategy.restored == [], "honest clients kept their fixed entries, nothing had to be restored"


def test_round_config_carries_scalars_not_masks():
    model = make_model()
    strategy = TNAFedAvg(model, "fedpnu", rho=0.5, mask_seed=7, settings=LocalTrainingSettings(epochs=3))
    strategy._plan = plan_from_config(
        model,
        ConfigRecord({**strategy.round_config(4), KEY_COMPLEMENT_FROM_EPOCH: 1}),
    )
    config = strategy.round_config(4)
    assert config[KEY_MASK_SEED] == 7
    assert config[KEY_ROUND] == 4
    assert config[KEY_COMPLEMENT_FROM_EPOCH] == 1  # int(3 / 2)
    for key, value in config.items():
        assert isinstance(value, (int, float, str)), f"{key} is not a scalar: {type(value).__name__}"


def test_client_rejects_wrong_phase_switch():
    model = make_model()
    strategy = TNAFedAvg(model, "fedpfn", rho=0.5, settings=LocalTrainingSettings(epochs=4))
    config = ConfigRecord({**strategy.round_config(0), KEY_COMPLEMENT_FROM_EPOCH: 2})
    with pytest.raises(ValueError, match="phase switch epoch 2"):
        plan_from_config(model, config)


def test_client_rejects_config_without_tna_keys():
    with pytest.raises(KeyError, match="TNAFedAvg"):
        plan_from_config(make_model(), ConfigRecord({"lr": 0.1}))


def test_strategy_restores_fixed_entries_of_dishonest_client(client_data):
    """A client that moves fixed entries is caught, its entries are restored, and the global fixed entries hold."""
    data, partitions = client_data
    client_app = ClientApp()

    @client_app.train()
    def train(message, context: Context):
        client_id = int(context.node_config["partition-id"])
        indices = torch.as_tensor(partitions[client_id])
        reply = train_reply(message, make_model(), data.train_inputs[indices], data.train_labels[indices], client_id)
        if client_id == 1:
            state = reply.content["arrays"].to_torch_state_dict()
            state = {name: tensor + 1.0 for name, tensor in state.items()}  # moves every entry, fixed ones too
            reply.content["arrays"] = ArrayRecord(state)
        return reply

    model = make_model()
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    strategy = TNAFedAvg(
        model,
        "fedpfn",
        rho=0.5,
        settings=LocalTrainingSettings(epochs=1, batch_size=32),
        fraction_evaluate=0.0,
        min_train_nodes=NUM_CLIENTS,
        min_available_nodes=NUM_CLIENTS,
    )
    result = strategy.start(
        grid=InProcessGrid(client_app, NUM_CLIENTS), initial_arrays=ArrayRecord(model.state_dict()), num_rounds=1
    )
    assert [(round_index, client) for round_index, client, _ in strategy.restored] == [(0, 1)]
    final = result.arrays.to_torch_state_dict()
    for name, mask in strategy._plan.masks.items():
        assert torch.equal(final[name][~mask], initial[name][~mask]), f"fixed entries of {name} moved"
