"""The accelerate training loop: fixed entries stay fixed, seeds set the batch order, the LMC protocol."""

import pytest
import torch

from tna_hf import TNAConfig, build_masks
from tna_hf.data.vision import load_tensor_data
from tna_hf.loop import LoopConfig, default_loop_config, summarize, train_from_initial, train_model
from tna_hf.models import build_model

# Small models on a CPU shared with other jobs run many times faster on one thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_tensor_data("digits", train_size=600)


def mlp(data):
    return build_model("mlp_h2_w32", in_shape=data.in_shape, num_classes=10)


def test_domain_defaults_follow_appendix():
    image = default_loop_config("image")
    assert (image.optimizer, image.learning_rate, image.momentum, image.weight_decay, image.epochs) == (
        "sgd",
        0.1,
        0.9,
        5e-4,
        10,
    )
    polynomial = default_loop_config("polynomial")
    assert (polynomial.learning_rate, polynomial.epochs, polynomial.task) == (0.05, 100, "regression")
    text = default_loop_config("text")
    assert (text.learning_rate, text.epochs) == (0.0005, 20)
    assert default_loop_config("image", epochs=2).epochs == 2


@pytest.mark.parametrize("mode", ["fix", "prune"])
def test_fixed_entries_stay_fixed(digits, mode):
    torch.manual_seed(0)
    model = mlp(digits)
    masks = build_masks(model, TNAConfig(rho=0.4, seed=0))
    initial = {name: param.detach().clone() for name, param in model.named_parameters()}
    result = train_model(
        model,
        digits.train_inputs,
        digits.train_targets,
        default_loop_config("image", epochs=2),
        seed=0,
        masks=masks,
        mode=mode,
    )
    assert result.steps == 2 * 5  # 600 examples, batch 128
    for name, param in model.named_parameters():
        fixed = ~masks[name]
        expected = torch.zeros_like(param[fixed]) if mode == "prune" else initial[name][fixed]
        assert torch.equal(param.detach()[fixed], expected), f"{name}: fixed entries moved"
        moved = (param.detach()[~fixed] != initial[name][~fixed]).float().mean()
        assert moved > 0.9, f"{name}: only {moved:.2f} of the trainable entries changed"


def test_same_seed_same_model_other_seed_differs(digits):
    config = default_loop_config("image", epochs=1)
    states = []
    for seed in (5, 5, 6):
        torch.manual_seed(0)
        model = mlp(digits)
        train_model(model, digits.train_inputs, digits.train_targets, config, seed=seed)
        states.append(model.state_dict())
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), f"{name} differs between equal seeds"
    assert not torch.equal(states[0]["hidden.0.weight"], states[2]["hidden.0.weight"])


def test_protocol_shares_initial_checkpoint_and_mask(digits, tmp_path):
    config = default_loop_config("image", epochs=1)
    group = train_from_initial(
        lambda: mlp(digits),
        digits.train_inputs,
        digits.train_targets,
        config,
        seed=7,
        tna_config=TNAConfig(rho=0.4, seed=7),
        num_models=3,
        checkpoint_dir=tmp_path,
    )
    assert group.seeds == [7, 8, 9]
    assert (tmp_path / "tna_init.json").is_file()
    assert (tmp_path / "tna_mask.safetensors").is_file()

    # The initial model is the one seed 7 draws, and every trained model keeps its fixed entries.
    torch.manual_seed(7)
    fresh = mlp(digits)
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(group.initial_state[name], tensor), name
    for index, state_dict in enumerate(group.state_dicts):
        for name, mask in group.masks.items():
            assert torch.equal(state_dict[name][~mask], group.initial_state[name][~mask]), f"model {index}: {name}"
    assert len({result.mask_fingerprint for result in group.results}) == 1
    assert not torch.equal(group.state_dicts[0]["head.weight"], group.state_dicts[1]["head.weight"])


def test_vanilla_protocol_has_no_mask(digits):
    group = train_from_initial(
        lambda: mlp(digits),
        digits.train_inputs,
        digits.train_targets,
        default_loop_config("image", epochs=1),
        seed=0,
        tna_config=TNAConfig(rho=0.0),
    )
    assert group.masks is None
    assert group.results[0].mask_fingerprint is None


def test_regression_training_lowers_loss():
    data = load_tensor_data("poly2")
    torch.manual_seed(0)
    model = build_model("poly_mlp_w32")
    result = train_model(
        model, data.train_inputs, data.train_targets, default_loop_config("polynomial", epochs=30), seed=0
    )
    assert result.epoch_losses[-1] < 0.5 * result.epoch_losses[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of"),
        ({"task": "ranking"}, "task must be one of"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ],
)
def test_loop_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoopConfig(**kwargs)


def test_summarize_mean_and_std():
    assert summarize([1.0, 3.0]) == (2.0, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
