"""Weight matching (Git Re-Basin) recovers planted permutations of trained MLPs and CNNs exactly."""

import pytest
import torch

from tna_hf.data.vision import load_tensor_data, make_loader
from tna_hf.loop import default_loop_config, train_model
from tna_hf.matching import apply_permutations, permutation_spec_for, weight_matching
from tna_hf.metrics import evaluate_interpolation
from tna_hf.models import build_model

# Small models on a CPU shared with other jobs run many times faster on one thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_tensor_data("digits")


@pytest.fixture(scope="module")
def trained_mlp(digits):
    torch.manual_seed(0)
    model = build_model("mlp_h2_w32", in_shape=digits.in_shape, num_classes=10)
    train_model(model, digits.train_inputs, digits.train_targets, default_loop_config("image", epochs=3), seed=0)
    return model


def random_permutations(spec, seed):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randperm(size, generator=generator) for name, size in spec.sizes.items()}


def test_permutation_keeps_function(trained_mlp, digits):
    spec = permutation_spec_for(trained_mlp)
    permuted = apply_permutations(trained_mlp.state_dict(), spec, random_permutations(spec, 1))
    other = build_model("mlp_h2_w32", in_shape=digits.in_shape, num_classes=10)
    other.load_state_dict(permuted)
    inputs = digits.test_inputs[:50]
    torch.testing.assert_close(other(inputs), trained_mlp(inputs), rtol=1e-5, atol=1e-5)
    assert not torch.equal(permuted["hidden.0.weight"], trained_mlp.state_dict()["hidden.0.weight"])


def test_mlp_planted_permutation_recovered(trained_mlp, digits):
    spec = permutation_spec_for(trained_mlp)
    reference = trained_mlp.state_dict()
    permuted = apply_permutations(reference, spec, random_permutations(spec, 2))
    loader = make_loader(digits.test_inputs, digits.test_targets, batch_size=500)
    evaluator = build_model("mlp_h2_w32", in_shape=digits.in_shape, num_classes=10)
    before = evaluate_interpolation(evaluator, reference, permuted, loader)

    result = weight_matching(reference, permuted, spec, seed=0)
    for name, tensor in reference.items():
        assert torch.equal(result.aligned_state_dict[name], tensor), f"{name} not restored exactly"
    after = evaluate_interpolation(evaluator, reference, result.aligned_state_dict, loader)
    assert before.accuracy_barrier > 0.05, "the planted permutation should create a barrier"
    assert after.accuracy_barrier == pytest.approx(0.0, abs=1e-9)
    assert after.loss_barrier == pytest.approx(0.0, abs=1e-6)
    assert 2 <= result.iterations < 100


def test_cnn_planted_permutation_recovered():
    torch.manual_seed(3)
    model = build_model("cnn", in_shape=(1, 28, 28), num_classes=10)
    spec = permutation_spec_for(model)
    reference = model.state_dict()
    permuted = apply_permutations(reference, spec, random_permutations(spec, 4))
    inputs = torch.randn(4, 1, 28, 28)
    other = build_model("cnn", in_shape=(1, 28, 28), num_classes=10)
    other.load_state_dict(permuted)
    torch.testing.assert_close(other(inputs), model(inputs), rtol=1e-4, atol=1e-5)

    result = weight_matching(reference, permuted, spec, seed=0)
    for name, tensor in reference.items():
        assert torch.equal(result.aligned_state_dict[name], tensor), f"{name} not restored exactly"


def test_identical_models_need_one_iteration(trained_mlp):
    spec = permutation_spec_for(trained_mlp)
    result = weight_matching(trained_mlp.state_dict(), trained_mlp.state_dict(), spec)
    assert result.iterations == 1
    for name, permutation in result.permutations.items():
        assert torch.equal(permutation, torch.arange(spec.sizes[name])), name


def test_unsupported_model_rejected():
    with pytest.raises(TypeError, match="supports MLP and SimpleCNN"):
        permutation_spec_for(build_model("lenet5", in_shape=(1, 28, 28), num_classes=10))


def test_missing_parameter_rejected(trained_mlp):
    spec = permutation_spec_for(trained_mlp)
    partial = {name: tensor for name, tensor in trained_mlp.state_dict().items() if name != "head.weight"}
    with pytest.raises(ValueError, match="'head.weight'"):
        weight_matching(trained_mlp.state_dict(), partial, spec)
