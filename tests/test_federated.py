"""Tests of the federated algorithms, aggregation and simulation on real optimizers and Fashion-MNIST."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tna_hf import mask_fingerprint
from tna_hf.experiments.federated import main as federated_main
from tna_hf.experiments.federated import parse_args as federated_parse_args
from tna_hf.federated import (
    Aggregator,
    ClientUpdate,
    FedAvgAggregator,
    FederatedConfig,
    FederatedSimulation,
    LocalTrainingSettings,
    aggregation_weights,
    dirichlet_partition,
    get_algorithm,
    load_federated_data,
    masks_for_round,
    plan_for_round,
    sample_participation,
    train_client,
    weighted_average_state_dicts,
)
from tna_hf.federated.algorithms import round_tna_config
from tna_hf.models import build_model


@pytest.fixture(scope="module")
def client_data():
    data = load_federated_data("fashion_mnist", max_train_samples=400, max_test_samples=200, seed=0)
    return data.train_inputs[:200], data.train_labels[:200], data


def make_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("mlp_h1_w16", in_shape=(1, 28, 28), num_classes=10)


def snapshot(model):
    return {name: tensor.detach().clone() for name, tensor in model.named_parameters()}


# ----------------------------------------------------------------------------- aggregation


def test_aggregation_weights_match_hand_computation():
    assert aggregation_weights([10, 30, 60]) == [0.1, 0.3, 0.6]
    states = [
        {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(3)},
        {"w": torch.tensor([4.0, -2.0]), "steps": torch.tensor(3)},
        {"w": torch.tensor([0.5, 10.0]), "steps": torch.tensor(3)},
    ]
    updates = [
        ClientUpdate(client_id, state, count) for client_id, (state, count) in enumerate(zip(states, [10, 30, 60]))
    ]
    result = FedAvgAggregator().aggregate(states[0], updates)
    # 0.1 * 1 + 0.3 * 4 + 0.6 * 0.5 = 1.6 and 0.1 * 2 + 0.3 * -2 + 0.6 * 10 = 5.6
    assert torch.equal(result["w"], torch.tensor([1.6, 5.6], dtype=torch.float32))
    assert result["w"].dtype == torch.float32
    assert torch.equal(result["steps"], torch.tensor(3))


def test_aggregation_of_identical_models_is_exact():
    state = {name: tensor.clone() for name, tensor in make_model().state_dict().items()}
    updates = [ClientUpdate(i, {k: v.clone() for k, v in state.items()}, count) for i, count in enumerate([7, 13, 101])]
    result = FedAvgAggregator().aggregate(state, updates)
    for name in state:
        assert torch.equal(result[name], state[name]), f"{name} changed in an average of identical models"


def test_aggregation_rejects_differing_integer_buffers():
    with pytest.raises(ValueError, match="Integer tensor 'steps' differs"):
        weighted_average_state_dicts([{"steps": torch.tensor(1)}, {"steps": torch.tensor(2)}], [0.5, 0.5])


@pytest.mark.parametrize("counts", [[0, 0], [3, -1]])
def test_aggregation_weights_reject_bad_counts(counts):
    with pytest.raises(ValueError, match="sample count|non-negative"):
        aggregation_weights(counts)


# ----------------------------------------------------------------------------- FedPFN


def test_fedpfn_mask_changes_every_round():
    model = make_model()
    config = round_tna_config(get_algorithm("fedpfn"), rho=0.4, mask_seed=0)
    fingerprints = [mask_fingerprint(masks_for_round(model, config, round_index)) for round_index in range(4)]
    assert len(set(fingerprints)) == 4, "FedPFN must draw a new mask every round"
    assert mask_fingerprint(masks_for_round(model, config, 2)) == fingerprints[2], "a round's mask must be reproducible"
    fixed_config = round_tna_config(get_algorithm("fedpfn_fixed"), rho=0.4, mask_seed=0)
    fixed = {mask_fingerprint(masks_for_round(model, fixed_config, round_index)) for round_index in range(4)}
    assert len(fixed) == 1, "FedPFN (fixed) must use one mask in every round"


def test_fedpfn_fixed_entries_exact_within_round(client_data):
    inputs, labels, _ = client_data
    model = make_model()
    received = snapshot(model)
    plan = plan_for_round(get_algorithm("fedpfn"), model, round_index=3, local_epochs=2, rho=0.4, mask_seed=0)
    settings = LocalTrainingSettings(epochs=2, batch_size=32, lr=0.08, momentum=0.9, weight_decay=5e-4)
    train_client(model, inputs, labels, settings, plan, seed=0)
    for name, param in model.named_parameters():
        fixed = ~plan.masks[name]
        assert torch.equal(param.detach()[fixed], received[name][fixed]), f"fixed entries of {name} moved"
        assert not torch.equal(param.detach()[~fixed], received[name][~fixed]), (
            f"trainable entries of {name} did not move"
        )


# ----------------------------------------------------------------------------- FedPNU


@pytest.mark.parametrize(("epochs", "switch_epoch"), [(3, 1), (4, 2), (1, 0)])
def test_fedpnu_switches_to_complement_at_half(client_data, epochs, switch_epoch):
    """Epochs before int(E/2) train the mask's trainable entries, later epochs only the complement's."""
    inputs, labels, _ = client_data
    model = make_model()
    received = snapshot(model)
    plan = plan_for_round(get_algorithm("fedpnu"), model, round_index=0, local_epochs=epochs, rho=0.4, mask_seed=0)
    assert plan.complement_from_epoch == switch_epoch
    after_epoch = []
    settings = LocalTrainingSettings(epochs=epochs, batch_size=32, lr=0.08, momentum=0.9, weight_decay=5e-4)
    train_client(
        model, inputs, labels, settings, plan, seed=0, epoch_callback=lambda e, m, _: after_epoch.append(snapshot(m))
    )

    at_switch = after_epoch[switch_epoch - 1] if switch_epoch > 0 else received
    for name in received:
        mask = plan.masks[name]
        for epoch in range(switch_epoch):
            assert torch.equal(after_epoch[epoch][name][~mask], received[name][~mask]), (
                f"{name}: entries fixed by the round's mask moved in epoch {epoch}, before the switch"
            )
        for epoch in range(switch_epoch, epochs):
            assert torch.equal(after_epoch[epoch][name][mask], at_switch[name][mask]), (
                f"{name}: entries fixed by the complement moved in epoch {epoch}, after the switch"
            )
        assert not torch.equal(after_epoch[-1][name][~mask], at_switch[name][~mask]), (
            f"{name}: the complement phase trained nothing"
        )


def test_fedpnu_switch_does_not_leak_momentum(client_data):
    """Momentum gathered before the switch is non-zero on the newly fixed entries, yet they stay bitwise fixed."""
    inputs, labels, _ = client_data
    model = make_model()
    plan = plan_for_round(get_algorithm("fedpnu"), model, round_index=1, local_epochs=2, rho=0.5, mask_seed=0)
    momentum_at_switch = {}
    values_at_switch = {}

    def record(epoch, trained_model, masked_update):
        if epoch == 0:
            values_at_switch.update(snapshot(trained_model))
            optimizer = masked_update._optimizers[0]
            for name, param in trained_model.named_parameters():
                momentum_at_switch[name] = optimizer.state[param]["momentum_buffer"].clone()

    settings = LocalTrainingSettings(epochs=2, batch_size=32, lr=0.08, momentum=0.9, weight_decay=5e-4)
    train_client(model, inputs, labels, settings, plan, seed=0, epoch_callback=record)
    for name, param in model.named_parameters():
        newly_fixed = plan.masks[name]  # trainable in phase 1, fixed in phase 2
        assert momentum_at_switch[name][newly_fixed].abs().sum() > 0, f"{name}: no momentum to leak, test is vacuous"
        assert torch.equal(param.detach()[newly_fixed], values_at_switch[name][newly_fixed]), (
            f"{name}: momentum from phase 1 moved entries fixed in phase 2"
        )


def test_gradient_masking_alone_leaks_momentum(client_data):
    """Negative control: masking gradients without restoring lets pre-switch momentum move fixed entries."""
    inputs, labels, _ = client_data
    model = make_model()
    plan = plan_for_round(get_algorithm("fedpnu"), model, round_index=1, local_epochs=2, rho=0.5, mask_seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.08, momentum=0.9)
    for batch in range(0, 200, 32):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs[batch : batch + 32]), labels[batch : batch + 32]).backward()
        optimizer.step()
    before = snapshot(model)
    for name, param in model.named_parameters():
        param.register_hook(lambda grad, keep=~plan.masks[name]: grad * keep)  # complement phase, gradients only
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs[:32]), labels[:32]).backward()
    optimizer.step()
    moved = [
        name
        for name, param in model.named_parameters()
        if not torch.equal(param[plan.masks[name]], before[name][plan.masks[name]])
    ]
    assert moved, "momentum should move entries whose gradient is masked"


# ----------------------------------------------------------------------------- FedProx and FedPruning


def test_fedprox_differs_from_fedavg_and_reduces_to_it(client_data):
    inputs, labels, _ = client_data
    results = {}
    for key, mu in [("fedavg", 0.0), ("prox0", 0.0), ("prox", 0.5)]:
        model = make_model()
        settings = LocalTrainingSettings(epochs=1, batch_size=32, prox_mu=mu)
        train_client(
            model, inputs, labels, settings, plan_for_round(get_algorithm("fedavg"), model, 0, 1, 0.4, 0), seed=0
        )
        results[key] = snapshot(model)
    for name in results["fedavg"]:
        assert torch.equal(results["fedavg"][name], results["prox0"][name])
    assert any(not torch.equal(results["fedavg"][name], results["prox"][name]) for name in results["fedavg"])


def test_fedpruning_keeps_pruned_entries_zero(client_data):
    _, _, data = client_data
    partitions = dirichlet_partition(data.train_labels, 3, 0.5, seed=0, min_partition_size=10)
    config = FederatedConfig(algorithm="fedpruning", rounds=2, local_epochs=1, batch_size=32, rho=0.4)
    simulation = FederatedSimulation(
        config,
        make_model(),
        data.train_inputs,
        data.train_labels,
        partitions,
        sample_participation(3, 2, 1.0, 0),
        data.test_inputs,
        data.test_labels,
    )
    result = simulation.run()
    masks = masks_for_round(make_model(), round_tna_config(get_algorithm("fedpruning"), 0.4, 0), 0)
    for name, mask in masks.items():
        assert torch.all(result.final_state[name][~mask] == 0), f"pruned entries of {name} are not zero"
        assert torch.count_nonzero(result.final_state[name][mask]) > 0


def test_simulation_rejects_unknown_client():
    config = FederatedConfig(algorithm="fedavg", rounds=1)
    with pytest.raises(ValueError, match="only 2 partitions"):
        FederatedSimulation(
            config,
            make_model(),
            torch.zeros(4, 1, 28, 28),
            torch.zeros(4, dtype=torch.long),
            [[0, 1], [2, 3]],
            [[0, 5]],
            torch.zeros(1, 1, 28, 28),
            torch.zeros(1, dtype=torch.long),
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algorithm": "fedsgd"}, "Valid names"),
        ({"rounds": 0}, "rounds"),
        ({"rho": 1.0}, "rho"),
        ({"lr_decay": 0}, "lr_decay"),
    ],
)
def test_config_rejects_invalid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FederatedConfig(**kwargs)


# ----------------------------------------------------------------------------- end to end


def test_tiny_federated_run_end_to_end(tmp_path):
    argv = [
        "--models",
        "mlp_h1_w16",
        "--algorithms",
        "fedavg",
        "fedpfn",
        "fedpnu",
        "--dirichlet_alphas",
        "0.5",
        "--num_clients",
        "4",
        "--selection_ratios",
        "0.5",
        "--seeds",
        "0",
        "--rounds",
        "2",
        "--local_epochs",
        "2",
        "--max_train_samples",
        "400",
        "--max_test_samples",
        "200",
        "--output_dir",
        str(tmp_path),
        "--no_progress",
    ]
    results = federated_main(argv)
    assert len(results["runs"]) == 3
    for record in results["runs"]:
        assert len(record["test_accuracy"]) == 2
        assert 0.1 < record["final_accuracy"] <= 1.0, record["settings"]["algorithm"]
    assert {row["algorithm"] for row in results["table"]} == {"fedavg", "fedpfn", "fedpnu"}
    assert os.path.isfile(tmp_path / "init" / "mlp_h1_w16_seed0" / "model.safetensors")
    participation = json.loads((tmp_path / "participation" / "n4_sel0.5_T2_seed0.json").read_text())
    assert [len(clients) for clients in participation["participation"]] == [2, 2]
    assert all(os.path.isfile(path) for path in results["plots"])

    # Repeating the command reloads the finished runs instead of training again.
    again = federated_main(argv + ["--no_plot"])
    assert [r["test_accuracy"] for r in again["runs"]] == [r["test_accuracy"] for r in results["runs"]]


def test_config_file_with_unknown_key_rejected(tmp_path):
    config = tmp_path / "fed.yaml"
    config.write_text("rounds: 2\nnum_round: 3\n")
    with pytest.raises(ValueError, match="unknown options \\['num_round'\\]"):
        federated_main(["--config", str(config)])


class CoordinateMedian(Aggregator):
    """A server rule other than FedAvg: the coordinate-wise median of the client models."""

    name = "median"

    def __init__(self):
        self.calls = 0

    def aggregate(self, global_state, updates):
        self.calls += 1
        return {
            name: torch.stack([update.state[name] for update in updates]).median(dim=0).values
            for name in updates[0].state
        }


def test_fedpfn_composes_with_other_aggregator(client_data):
    _, _, data = client_data
    partitions = dirichlet_partition(data.train_labels, 3, 0.5, seed=0, min_partition_size=10)
    aggregator = CoordinateMedian()
    model = make_model()
    initial = snapshot(model)
    config = FederatedConfig(algorithm="fedpfn", rounds=1, local_epochs=1, batch_size=32, rho=0.4)
    simulation = FederatedSimulation(
        config,
        model,
        data.train_inputs,
        data.train_labels,
        partitions,
        sample_participation(3, 1, 1.0, 0),
        data.test_inputs,
        data.test_labels,
        aggregator=aggregator,
    )
    result = simulation.run()
    assert aggregator.calls == 1
    masks = masks_for_round(make_model(), round_tna_config(get_algorithm("fedpfn"), 0.4, 0), 0)
    for name, mask in masks.items():
        assert torch.equal(result.final_state[name][~mask], initial[name][~mask]), f"fixed entries of {name} moved"
        assert not torch.equal(result.final_state[name][mask], initial[name][mask]), f"{name} was not trained"


@pytest.mark.parametrize(
    "rho, algorithms",
    [("0", ["fedpfn"]), ("-0.1", ["fedavg", "fedpnu"]), ("1", ["fedpruning"]), ("1.5", ["fedpfn_fixed"])],
)
def test_masked_invalid_rho_rejected_before_running(tmp_path, capsys, rho, algorithms):
    output_dir = tmp_path / "out"
    argv = ["--output_dir", str(output_dir), "--rounds", "1", "--no_plot", "--no_progress", "--rhos", rho]
    with pytest.raises(SystemExit) as raised:
        federated_main([*argv, "--algorithms", *algorithms])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid --rhos value {rho} for the masked algorithms {algorithms[-1]}: use a mask ratio" in err
    assert not output_dir.exists()


def test_unmasked_algorithms_ignore_rho():
    args = federated_parse_args(["--rhos", "0", "--algorithms", "fedavg", "fedprox"])
    assert (args.rhos, args.algorithms) == ([0.0], ["fedavg", "fedprox"])
