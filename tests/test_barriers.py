"""Loss and accuracy barriers: hand-computed cases, self-barrier, multi-model form, one model per grid."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tna_hf.metrics import (
    accuracy_barrier,
    accuracy_barrier_terms,
    average_state_dicts,
    default_alphas,
    evaluate_interpolation,
    interpolate_state_dicts,
    loss_barrier,
    loss_barrier_terms,
    mix_state_dicts,
    multi_model_barrier,
    plot_interpolation_curves,
)
from tna_hf.models import build_model

# Small models on a CPU shared with other jobs run many times faster on one thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def two_neuron_net(u, v):
    """f(x) = v . relu(u x) as a `poly_mlp_w2` with zero biases."""
    model = build_model("poly_mlp_w2")
    with torch.no_grad():
        model.hidden[0].weight.copy_(torch.tensor(u).reshape(2, 1))
        model.hidden[0].bias.zero_()
        model.head.weight.copy_(torch.tensor(v).reshape(1, 2))
        model.head.bias.zero_()
    return model


def permuted_pair():
    # Both compute f(1) = 1 with their hidden units swapped. Mixed with weight alpha they compute
    # a * relu(2a - 1) + (1 - a) * relu(1 - 2a), which is 0 at alpha = 0.5.
    first = two_neuron_net([1.0, -1.0], [1.0, 0.0])
    second = two_neuron_net([-1.0, 1.0], [0.0, 1.0])
    return first, second


def regression_loader():
    return DataLoader(TensorDataset(torch.ones(1, 1), torch.ones(1, 1)), batch_size=1)


def test_default_alphas_grid():
    alphas = default_alphas()
    assert len(alphas) == 11
    assert alphas[0] == 0.0
    assert alphas[-1] == 1.0
    assert alphas[5] == pytest.approx(0.5)


def test_loss_barrier_hand_case():
    # Terms: 1 - 1 = 0, 3 - (0.5 * 2 + 0.5 * 1) = 1.5, 2 - 2 = 0.
    alphas, losses = [0.0, 0.5, 1.0], [1.0, 3.0, 2.0]
    assert loss_barrier_terms(alphas, losses, loss_1=2.0, loss_2=1.0) == pytest.approx([0.0, 1.5, 0.0])
    assert loss_barrier(alphas, losses, loss_1=2.0, loss_2=1.0) == pytest.approx(1.5)


def test_accuracy_barrier_hand_case():
    # At alpha = 0.5 the reference is 0.5 * 0.6 + 0.5 * 0.8 = 0.7, so the term is 1 - 0.3 / 0.7.
    alphas, accuracies = [0.0, 0.5, 1.0], [0.8, 0.3, 0.6]
    terms = accuracy_barrier_terms(alphas, accuracies, accuracy_1=0.6, accuracy_2=0.8)
    assert terms == pytest.approx([0.0, 1 - 0.3 / 0.7, 0.0])
    assert accuracy_barrier(alphas, accuracies, accuracy_1=0.6, accuracy_2=0.8) == pytest.approx(4 / 7)


def test_barriers_clip_at_zero():
    # A path better than its endpoints has no barrier.
    assert loss_barrier([0.0, 0.5, 1.0], [1.0, 0.2, 1.0], 1.0, 1.0) == 0.0
    assert accuracy_barrier([0.0, 0.5, 1.0], [0.5, 0.9, 0.5], 0.5, 0.5) == 0.0


def test_accuracy_barrier_zero_reference():
    assert accuracy_barrier_terms([0.5], [0.0], 0.0, 0.0) == [0.0]


def test_permuted_pair_loss_barrier():
    first, second = permuted_pair()
    curve = evaluate_interpolation(
        build_model("poly_mlp_w2"), first.state_dict(), second.state_dict(), regression_loader(), task="regression"
    )
    # L(alpha) = (f(1) - 1)^2 with both endpoints exact, so the barrier is L(0.5) = 1.
    expected = []
    for alpha in curve.alphas:
        output = alpha * max(2 * alpha - 1, 0) + (1 - alpha) * max(1 - 2 * alpha, 0)
        expected.append((output - 1) ** 2)
    assert curve.losses == pytest.approx(expected, abs=1e-6)
    assert curve.loss_barrier == pytest.approx(1.0, abs=1e-6)
    assert curve.accuracy_barrier is None


def test_linear_model_has_no_barrier():
    # MSE of a model linear in its weights is convex along the path, so it stays under the chord.
    first, second = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        first.weight.fill_(1.0), first.bias.zero_(), second.weight.fill_(-1.0), second.bias.zero_()
    loader = DataLoader(TensorDataset(torch.ones(1, 1), torch.zeros(1, 1)), batch_size=1)
    curve = evaluate_interpolation(
        torch.nn.Linear(1, 1), first.state_dict(), second.state_dict(), loader, task="regression"
    )
    assert curve.losses[5] == pytest.approx(0.0, abs=1e-7)
    assert curve.loss_barrier == 0.0


@pytest.fixture(scope="module")
def digits_loader():
    from sklearn.datasets import load_digits

    digits = load_digits()
    inputs = torch.tensor(digits.data[:300], dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target[:300], dtype=torch.long)
    return DataLoader(TensorDataset(inputs, labels), batch_size=100)


def test_self_barrier_is_zero(digits_loader):
    torch.manual_seed(0)
    model = build_model("mlp_h2_w32", in_shape=(64,), num_classes=10)
    state_dict = model.state_dict()
    curve = evaluate_interpolation(model, state_dict, state_dict, digits_loader)
    assert curve.loss_barrier == pytest.approx(0.0, abs=1e-12)
    assert curve.accuracy_barrier == pytest.approx(0.0, abs=1e-12)
    assert len(set(curve.accuracies)) == 1


class CountingMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = build_model("mlp_h1_w16", in_shape=(64,), num_classes=10)
        self.loads = 0

    def forward(self, inputs):
        return self.inner(inputs)

    def load_state_dict(self, *args, **kwargs):
        self.loads += 1
        return super().load_state_dict(*args, **kwargs)


class CountingLoader(DataLoader):
    iterations = 0

    def __iter__(self):
        type(self).iterations += 1
        return super().__iter__()


def test_grid_reuses_one_model_and_loader(digits_loader):
    torch.manual_seed(1)
    first, second, evaluator = CountingMLP(), CountingMLP(), CountingMLP()
    before = {name: tensor.clone() for name, tensor in evaluator.state_dict().items()}
    loader = CountingLoader(digits_loader.dataset, batch_size=100)
    CountingLoader.iterations = 0
    curve = evaluate_interpolation(evaluator, first.state_dict(), second.state_dict(), loader, alphas=[0.25, 0.5])
    assert curve.alphas == [0.0, 0.25, 0.5, 1.0]
    # One load per grid point plus one to put the original weights back.
    assert evaluator.loads == 5
    assert CountingLoader.iterations == 4
    for name, tensor in evaluator.state_dict().items():
        assert torch.equal(tensor, before[name]), f"{name} not restored"


def test_endpoints_match_the_models(digits_loader):
    torch.manual_seed(2)
    first = build_model("mlp_h1_w16", in_shape=(64,), num_classes=10)
    second = build_model("mlp_h1_w16", in_shape=(64,), num_classes=10)
    curve = evaluate_interpolation(first, first.state_dict(), second.state_dict(), digits_loader)
    from tna_hf.metrics import evaluate_model

    assert curve.loss_1 == pytest.approx(evaluate_model(first, digits_loader).loss)
    assert curve.accuracy_2 == pytest.approx(evaluate_model(second, digits_loader).accuracy)
    assert curve.accuracies[-1] == curve.accuracy_1


def test_multi_model_permuted_pair():
    first, second = permuted_pair()
    result = multi_model_barrier(
        build_model("poly_mlp_w2"), [first.state_dict(), second.state_dict()], regression_loader(), task="regression"
    )
    assert result.individual_losses == pytest.approx([0.0, 0.0])
    assert result.fused_loss == pytest.approx(1.0)
    assert result.loss_barrier == pytest.approx(1.0)


def test_multi_model_copies_have_no_barrier(digits_loader):
    torch.manual_seed(3)
    model = build_model("mlp_h1_w16", in_shape=(64,), num_classes=10)
    result = multi_model_barrier(model, [model.state_dict()] * 5, digits_loader)
    assert result.accuracy_barrier == pytest.approx(0.0, abs=1e-12)
    assert result.loss_barrier == pytest.approx(0.0, abs=1e-6)
    assert result.fused_accuracy == result.individual_accuracies[0]


def test_multi_model_accuracy_formula(digits_loader):
    torch.manual_seed(4)
    models = [build_model("mlp_h1_w16", in_shape=(64,), num_classes=10) for _ in range(3)]
    result = multi_model_barrier(models[0], [model.state_dict() for model in models], digits_loader)
    mean_accuracy = sum(result.individual_accuracies) / 3
    assert result.average_accuracy == pytest.approx(mean_accuracy)
    assert result.accuracy_barrier == pytest.approx(1 - result.fused_accuracy / mean_accuracy)


def test_interpolate_state_dicts_endpoints():
    first, second = permuted_pair()
    at_one = interpolate_state_dicts(first.state_dict(), second.state_dict(), 1.0)
    for name, tensor in first.state_dict().items():
        assert torch.equal(at_one[name], tensor), name
    average = average_state_dicts([first.state_dict(), second.state_dict()])
    assert torch.equal(average["hidden.0.weight"], torch.zeros(2, 1))


@pytest.mark.parametrize(
    ("alphas", "task", "match"),
    [([0.5, 1.5], "classification", "must lie in"), (None, "ranking", "task must be one of")],
)
def test_evaluate_interpolation_rejects_bad_input(alphas, task, match, digits_loader):
    model = build_model("mlp_h1_w16", in_shape=(64,), num_classes=10)
    with pytest.raises(ValueError, match=match):
        evaluate_interpolation(model, model.state_dict(), model.state_dict(), digits_loader, alphas=alphas, task=task)


def test_mismatched_state_dicts_rejected():
    small = build_model("mlp_h1_w16", in_shape=(64,), num_classes=10).state_dict()
    deep = build_model("mlp_h2_w16", in_shape=(64,), num_classes=10).state_dict()
    with pytest.raises(ValueError, match="does not match"):
        interpolate_state_dicts(small, deep, 0.5)
    with pytest.raises(ValueError, match="missing"):
        mix_state_dicts([small, deep], [0.5, 0.5])
    counters_1 = {"steps": torch.tensor(1)}
    counters_2 = {"steps": torch.tensor(2)}
    with pytest.raises(ValueError, match="steps"):
        interpolate_state_dicts(counters_1, counters_2, 0.5)
    with pytest.raises(ValueError, match="Non-floating tensor 'steps'"):
        mix_state_dicts([counters_1, counters_2], [0.5, 0.5])


def test_multi_model_needs_two():
    first, _ = permuted_pair()
    with pytest.raises(ValueError, match="at least 2"):
        multi_model_barrier(first, [first.state_dict()], regression_loader(), task="regression")


def test_plot_writes_file(tmp_path, digits_loader):
    model = build_model("mlp_h1_w16", in_shape=(64,), num_classes=10)
    other = build_model("mlp_h1_w16", in_shape=(64,), num_classes=10)
    curve = evaluate_interpolation(model, model.state_dict(), other.state_dict(), digits_loader)
    path = plot_interpolation_curves({"random": curve}, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert path.endswith("curve.png")
