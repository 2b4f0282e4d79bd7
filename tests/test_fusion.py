"""Tests of tna_hf.fusion: interpolation, weighted averages, uniform and greedy soups."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from fractions import Fraction

import pytest
import torch
from safetensors.torch import save_file

from tna_hf.checkpoint import save_provenance
from tna_hf.fusion import (
    ProvenanceMismatchError,
    average_state_dicts,
    greedy_soup,
    interpolate,
    load_state_dict,
    uniform_soup,
)

_BIT_VIEWS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def assert_bitwise_equal(actual: dict, expected: dict) -> None:
    """Compare state dicts bit for bit, ignoring key order (safetensors files store keys sorted).

    torch.equal treats -0.0 and 0.0 as equal, so floating tensors are compared as raw bits.
    """
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, f"{name}: dtype {actual[name].dtype} vs {tensor.dtype}"
        if tensor.dtype in _BIT_VIEWS:
            view = _BIT_VIEWS[tensor.dtype]
            assert torch.equal(actual[name].view(view), tensor.view(view)), f"{name} differs bitwise"
        else:
            assert torch.equal(actual[name], tensor), f"{name} differs"


def random_values(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random normal values with a few special entries: -0.0, 0.0, tiny and large magnitudes."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator, dtype=torch.float64) * 3.0
    flat = values.view(-1)
    flat[:4] = torch.tensor([-0.0, 0.0, 1e-5, -6e4], dtype=torch.float64)
    return values.to(dtype)


# ------------------------------------------------------------------------------------------------
# Interpolation and weighted averages computed by hand


def test_interpolate_hand_computed():
    first = {"w": torch.tensor([1.0, 2.0, 4.0]), "b": torch.tensor([0.5]), "steps": torch.tensor(7)}
    second = {"w": torch.tensor([3.0, -2.0, 0.0]), "b": torch.tensor([1.5]), "steps": torch.tensor(7)}

    result = interpolate(first, second, alpha=0.25)

    assert torch.equal(result["w"], torch.tensor([2.5, -1.0, 1.0]))
    assert torch.equal(result["b"], torch.tensor([1.25]))
    assert torch.equal(result["steps"], torch.tensor(7))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_interpolate_endpoints_exact(dtype):
    first = {"w": random_values((64,), dtype, seed=0)}
    second = {"w": random_values((64,), dtype, seed=1) * -1}

    assert_bitwise_equal(interpolate(first, second, alpha=1.0), first)
    assert_bitwise_equal(interpolate(first, second, alpha=0.0), second)
    assert_bitwise_equal(interpolate(first, first, alpha=0.3), first)


def test_interpolate_extrapolates_outside_unit_interval():
    first = {"w": torch.tensor([1.0, 2.0])}
    second = {"w": torch.tensor([3.0, 0.0])}

    assert torch.equal(interpolate(first, second, alpha=2.0)["w"], torch.tensor([-1.0, 4.0]))


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), "0.5", True])
def test_interpolate_invalid_alpha(alpha):
    state_dict = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="alpha=.* is invalid"):
        interpolate(state_dict, state_dict, alpha=alpha)


def test_average_weighted_hand_computed():
    first = {"w": torch.tensor([4.0, -8.0]), "b": torch.tensor(1.0, dtype=torch.float64)}
    second = {"w": torch.tensor([0.0, 8.0]), "b": torch.tensor(5.0, dtype=torch.float64)}

    # Weights 1 and 3 normalize to 0.25 and 0.75.
    result = average_state_dicts([first, second], weights=[1, 3])

    assert torch.equal(result["w"], torch.tensor([1.0, 4.0]))
    assert torch.equal(result["b"], torch.tensor(4.0, dtype=torch.float64))
    assert result["b"].dtype == torch.float64


def test_average_zero_weight_ignores_model():
    first = {"w": torch.tensor([1.0, float("inf")])}
    second = {"w": torch.tensor([3.0, 5.0])}

    # A zero-weight model contributes nothing, not even 0 * inf = nan.
    result = average_state_dicts([first, second], weights=[0.0, 2.0])

    assert torch.equal(result["w"], second["w"])


def test_float64_accumulation_beats_float32():
    # 1 + 2**-24 rounds back to 1 in float32, so a float32 running sum drops every small term.
    values = [1.0] + [2.0**-24] * 4
    state_dicts = [{"w": torch.tensor([value], dtype=torch.float32)} for value in values]

    result = average_state_dicts(state_dicts)["w"]

    exact_mean = sum(Fraction(value) for value in values) / len(values)
    correctly_rounded = torch.tensor([float(exact_mean)], dtype=torch.float64).to(torch.float32)
    float32_sum = torch.zeros(1, dtype=torch.float32)
    for state_dict in state_dicts:
        float32_sum += state_dict["w"]
    float32_mean = float32_sum / len(values)
    assert torch.equal(result, correctly_rounded)
    assert not torch.equal(float32_mean, correctly_rounded)


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0], "Got 1 weights for 2 state dicts"),
        ([1.0, -1.0], "non-negative"),
        ([1.0, float("nan")], "finite"),
        ([0.0, 0.0], "Every weight is 0"),
    ],
)
def test_average_invalid_weights(weights, message):
    state_dict = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match=message):
        average_state_dicts([state_dict, state_dict], weights=weights)


def test_average_empty_input():
    with pytest.raises(ValueError, match="at least one state dict"):
        average_state_dicts([])
    with pytest.raises(ValueError, match="at least one ingredient"):
        uniform_soup([])


# ------------------------------------------------------------------------------------------------
# Identity: a soup of copies of one model is that model


@pytest.mark.parametrize("copies", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_soup_of_copies_exact(dtype, copies):
    model = {
        "weight": random_values((32, 48), dtype, seed=copies),
        "bias": random_values((48,), dtype, seed=100 + copies),
        "num_batches_tracked": torch.tensor(12),
    }
    ingredients = [{name: tensor.clone() for name, tensor in model.items()} for _ in range(copies)]
    weights = [0.1 * (index + 1) for index in range(copies)]

    assert_bitwise_equal(uniform_soup(ingredients), model)
    assert_bitwise_equal(average_state_dicts(ingredients, weights=weights), model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_soup_keeps_shared_entries_exact(dtype):
    # TNA-PFN fixed entries are equal in every ingredient; the soup must keep them bit for bit.
    shared = random_values((40, 40), dtype, seed=0)
    fixed = torch.rand((40, 40), generator=torch.Generator().manual_seed(1)) < 0.4
    ingredients = []
    for seed in range(1, 6):
        trained = random_values((40, 40), dtype, seed=seed)
        ingredients.append({"w": torch.where(fixed, shared, trained)})

    soup = uniform_soup(ingredients)["w"]

    bits = _BIT_VIEWS[dtype]
    assert torch.equal(soup.view(bits)[fixed], shared.view(bits)[fixed])
    assert not torch.equal(soup[~fixed], ingredients[0]["w"][~fixed])


# ------------------------------------------------------------------------------------------------
# Mismatched inputs


def test_soup_missing_and_unexpected_keys():
    first = {"a": torch.zeros(2), "b": torch.zeros(2)}
    second = {"a": torch.zeros(2), "c": torch.zeros(2)}

    with pytest.raises(ValueError, match=r"state_dict\[1\] does not match state_dict\[0\]: missing keys \['b'\]"):
        uniform_soup([first, second])
    with pytest.raises(ValueError, match=r"unexpected keys \['c'\]"):
        uniform_soup([first, second])


def test_soup_shape_mismatch():
    first = {"layer.weight": torch.zeros(2, 3)}
    second = {"layer.weight": torch.zeros(3, 2)}

    with pytest.raises(ValueError, match=r"layer.weight: shape \(3, 2\) vs \(2, 3\)"):
        uniform_soup([first, second])
    with pytest.raises(ValueError, match=r"layer.weight: shape"):
        interpolate(first, second, alpha=0.5)


def test_soup_float_and_integer_mixed_dtype():
    first = {"w": torch.zeros(2)}
    second = {"w": torch.zeros(2, dtype=torch.int64)}

    with pytest.raises(ValueError, match=r"w: dtype torch.int64 vs torch.float32"):
        uniform_soup([first, second])


def test_integer_buffer_mismatch_error():
    first = {"bn.weight": torch.ones(3), "bn.num_batches_tracked": torch.tensor(10)}
    second = {"bn.weight": torch.ones(3), "bn.num_batches_tracked": torch.tensor(12)}

    with pytest.raises(ValueError, match=r"'bn.num_batches_tracked'.*mismatched_integer_buffers='first'"):
        uniform_soup([first, second])
    with pytest.raises(ValueError, match=r"'bn.num_batches_tracked'.*differs between state_dict_1 and state_dict_2"):
        interpolate(first, second, alpha=0.5)


def test_integer_buffer_mismatch_first(caplog):
    first = {"bn.weight": torch.ones(3), "bn.num_batches_tracked": torch.tensor(10)}
    second = {"bn.weight": torch.full((3,), 3.0), "bn.num_batches_tracked": torch.tensor(12)}

    with caplog.at_level(logging.WARNING, logger="tna_hf.fusion"):
        soup = uniform_soup([first, second], mismatched_integer_buffers="first")
        midpoint = interpolate(second, first, alpha=0.5, mismatched_integer_buffers="first")

    assert torch.equal(soup["bn.num_batches_tracked"], torch.tensor(10))
    assert torch.equal(soup["bn.weight"], torch.full((3,), 2.0))
    assert torch.equal(midpoint["bn.num_batches_tracked"], torch.tensor(12))
    assert "bn.num_batches_tracked" in caplog.text


def test_bool_buffer_mismatch_error():
    first = {"mask": torch.tensor([True, False])}
    second = {"mask": torch.tensor([True, True])}

    with pytest.raises(ValueError, match=r"Integer buffer 'mask' \(torch.bool\) differs"):
        uniform_soup([first, second])


def test_invalid_integer_buffer_option():
    state_dict = {"w": torch.zeros(2)}
    with pytest.raises(
        ValueError, match=r"mismatched_integer_buffers='last' is invalid. Choose one of \['error', 'first'\]"
    ):
        uniform_soup([state_dict], mismatched_integer_buffers="last")


def test_non_tensor_value():
    with pytest.raises(TypeError, match=r"state_dict\[0\]\['step'\] is a int"):
        uniform_soup([{"step": 3}])


def test_invalid_source_type():
    with pytest.raises(TypeError, match="state dict .* or a checkpoint path, got int"):
        uniform_soup([3])


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="contains none of"):
        uniform_soup([tmp_path])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        uniform_soup([tmp_path / "absent.safetensors"])


# ------------------------------------------------------------------------------------------------
# Streaming from disk


def make_checkpoints(directory, count: int, num_tensors: int, numel: int) -> list[dict[str, torch.Tensor]]:
    """Write `count` safetensors checkpoints of `num_tensors` float32 tensors into ingredient_i folders."""
    state_dicts = []
    for index in range(count):
        generator = torch.Generator().manual_seed(index)
        state_dict = {f"layers.{layer}.weight": torch.randn(numel, generator=generator) for layer in range(num_tensors)}
        state_dict["steps"] = torch.tensor(5)
        folder = directory / f"ingredient_{index}"
        folder.mkdir()
        save_file(state_dict, str(folder / "model.safetensors"))
        state_dicts.append(state_dict)
    return state_dicts


def test_uniform_soup_from_disk_equals_in_memory(tmp_path):
    state_dicts = make_checkpoints(tmp_path, count=6, num_tensors=4, numel=1000)
    folders = sorted(tmp_path.iterdir())

    from_folders = uniform_soup(folders)
    from_files = uniform_soup([str(folder / "model.safetensors") for folder in folders])

    in_memory = average_state_dicts(state_dicts)
    assert_bitwise_equal(from_folders, in_memory)
    assert_bitwise_equal(from_files, in_memory)


def test_uniform_soup_reads_sharded_and_torch_files(tmp_path):
    generator = torch.Generator().manual_seed(0)
    first = {"a": torch.randn(10, generator=generator), "b": torch.randn(3, 3, generator=generator)}
    second = {name: tensor * 2 for name, tensor in first.items()}

    # A Hugging Face sharded checkpoint: one tensor per shard plus the index.
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"a": first["a"]}, str(sharded / "model-00001-of-00002.safetensors"))
    save_file({"b": first["b"]}, str(sharded / "model-00002-of-00002.safetensors"))
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    torch_file = tmp_path / "pytorch_model.bin"
    torch.save(second, torch_file)

    soup = uniform_soup([sharded, torch_file])

    assert_bitwise_equal(load_state_dict(sharded), first)
    assert_bitwise_equal(soup, average_state_dicts([first, second]))


# Runs in a fresh interpreter: prints, for a soup of all checkpoint folders in argv and for one of the
# first two, the growth of the peak resident set size (VmHWM, reset just before the soup) in KiB.
_MEASURE_PEAK = """
import json, sys
from tna_hf.fusion import uniform_soup

def memory_kib(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])

def peak_growth(folders):
    baseline = memory_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    soup = uniform_soup(folders)
    return memory_kib("VmHWM") - baseline

uniform_soup(sys.argv[1:2])  # warm up imports and the allocator
print(json.dumps([peak_growth(sys.argv[1:]), peak_growth(sys.argv[1:3])]))
"""


def _peak_growth_in_models(folders, model_kib: int) -> list[float]:
    # A fixed mmap threshold makes glibc return each freed tensor's pages at once, so that the
    # resident set size follows the live tensors instead of the allocator's cache.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", _MEASURE_PEAK, *map(str, folders)], env=env, capture_output=True, text=True, check=True
    )
    return [kib / model_kib for kib in json.loads(completed.stdout.strip().splitlines()[-1])]


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_uniform_soup_peak_memory_independent_of_count(tmp_path):
    """Peak resident memory of a streamed soup stays near 3 float32 models, whatever the number of checkpoints.

    The expected peak is the float64 sum (2 float32 models) plus the memory-mapped pages of the file
    being read (up to 1 model, reclaimable page cache). Loading all 6 checkpoints at once would add 6 models.
    """
    num_tensors, numel = 16, 1 << 18  # 16 tensors of 1 MiB: a 16 MiB float32 model
    make_checkpoints(tmp_path, count=6, num_tensors=num_tensors, numel=numel)
    folders = sorted(tmp_path.iterdir())
    model_kib = num_tensors * numel * 4 // 1024

    growth_six, growth_two = _peak_growth_in_models(folders, model_kib)

    assert growth_six < 3.6, f"peak grew by {growth_six:.2f} models for 6 checkpoints"
    assert abs(growth_six - growth_two) < 0.3, f"6 checkpoints: {growth_six:.2f} models, 2: {growth_two:.2f}"


# ------------------------------------------------------------------------------------------------
# Provenance checks


def write_ingredient(folder, state_dict, init_fingerprint, mask_fingerprint):
    folder.mkdir()
    save_file(state_dict, str(folder / "model.safetensors"))
    if init_fingerprint is not None:
        save_provenance(folder, init_fingerprint, mask_fingerprint)
    return folder


def test_provenance_agreement_is_silent(tmp_path):
    state_dict = {"w": torch.ones(3)}
    folders = [write_ingredient(tmp_path / name, state_dict, "init-a", "mask-a") for name in ("x", "y")]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        soup = uniform_soup(folders, strict=True)

    assert torch.equal(soup["w"], state_dict["w"])


@pytest.mark.parametrize(
    "second_init, second_mask, message",
    [("init-b", "mask-a", "different initial checkpoints"), ("init-a", "mask-b", "different masks")],
)
def test_provenance_mismatch_warns(tmp_path, caplog, second_init, second_mask, message):
    state_dict = {"w": torch.ones(3)}
    folders = [
        write_ingredient(tmp_path / "x", state_dict, "init-a", "mask-a"),
        write_ingredient(tmp_path / "y", state_dict, second_init, second_mask),
    ]

    with caplog.at_level(logging.WARNING, logger="tna_hf.fusion"):
        with pytest.warns(UserWarning, match=message) as record:
            uniform_soup(folders)
    assert message in caplog.text
    assert record[0].filename == __file__, "the warning must point at the caller of uniform_soup"
    with pytest.raises(ProvenanceMismatchError, match=message):
        uniform_soup(folders, strict=True)
    with pytest.raises(ProvenanceMismatchError, match=message):
        greedy_soup([("x", folders[0]), ("y", folders[1])], evaluate=lambda sd: 0.0, strict=True)


def test_provenance_missing_for_some_warns(tmp_path):
    state_dict = {"w": torch.ones(3)}
    folders = [
        write_ingredient(tmp_path / "x", state_dict, "init-a", None),
        write_ingredient(tmp_path / "y", state_dict, None, None),
    ]

    with pytest.warns(UserWarning, match=r"have no tna_provenance.json"):
        uniform_soup(folders)


# ------------------------------------------------------------------------------------------------
# Greedy soup on real models: tiny MLPs on scikit-learn digits, trained from one initialization


class DigitsTask:
    """Digits (8x8 images, 10 classes) split into train / held-out validation, and a 64-32-10 MLP."""

    def __init__(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.features = torch.tensor(digits.data / 16.0, dtype=torch.float32)
        self.labels = torch.tensor(digits.target)
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(0))
        self.train_index, self.val_index = order[:1000], order[1000:1400]
        torch.manual_seed(0)
        self.initial_state = self.build_model().state_dict()

    @staticmethod
    def build_model() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

    def train(self, lr: float, seed: int, shuffle_labels: bool = False, steps: int = 60) -> dict:
        model = self.build_model()
        model.load_state_dict(self.initial_state)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        features, labels = self.features[self.train_index], self.labels[self.train_index]
        if shuffle_labels:
            labels = labels[torch.randperm(len(labels), generator=generator)]
        for _ in range(steps):
            batch = torch.randint(0, len(labels), (128,), generator=generator)
            loss = torch.nn.functional.cross_entropy(model(features[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return model.state_dict()

    def evaluate(self, state_dict: dict) -> float:
        model = self.build_model()
        model.load_state_dict(state_dict)
        with torch.no_grad():
            predictions = model(self.features[self.val_index]).argmax(dim=1)
        return (predictions == self.labels[self.val_index]).float().mean().item()


@pytest.fixture(scope="module")
def digits_ingredients():
    torch.set_num_threads(1)  # bit-reproducible scores across machines with different core counts
    task = DigitsTask()
    ingredients = [
        (f"lr{lr}_seed{seed}", task.train(lr, seed)) for lr, seed in [(0.05, 1), (0.1, 2), (0.02, 3), (0.2, 4)]
    ]
    ingredients.append(("shuffled_labels", task.train(0.1, 5, shuffle_labels=True)))
    return task, ingredients


def test_greedy_soup_follows_rule(digits_ingredients):
    task, ingredients = digits_ingredients
    sources = dict(ingredients)

    soup, report = greedy_soup(ingredients, task.evaluate)

    # Tried in descending individual score; each verdict follows the strict rule against an
    # independently recomputed soup of the ingredients accepted before it.
    individual = {name: task.evaluate(state_dict) for name, state_dict in ingredients}
    tried = [entry.name for entry in report.entries]
    assert tried == sorted(individual, key=lambda name: -individual[name])
    assert [entry.individual_score for entry in report.entries] == [individual[name] for name in tried]
    assert report.entries[0].accepted
    accepted = [tried[0]]
    best = individual[tried[0]]
    for entry in report.entries[1:]:
        candidate_score = task.evaluate(average_state_dicts([sources[name] for name in accepted + [entry.name]]))
        assert entry.soup_score == candidate_score, entry.name
        assert entry.accepted == (candidate_score > best), entry.name
        if entry.accepted:
            accepted.append(entry.name)
            best = candidate_score
    assert report.accepted_names == accepted
    assert report.tie_rule == "strict"

    # The returned soup is the average of the accepted ingredients, and scores as reported.
    assert_bitwise_equal(soup, average_state_dicts([sources[name] for name in accepted]))
    assert task.evaluate(soup) == report.final_score
    assert report.final_score >= max(individual.values())


def test_greedy_soup_verdicts_on_digits(digits_ingredients):
    """The models from one initialization improve the soup; the model trained on shuffled labels does not."""
    task, ingredients = digits_ingredients

    _, report = greedy_soup(ingredients, task.evaluate)

    verdicts = {entry.name: entry.accepted for entry in report.entries}
    assert not verdicts["shuffled_labels"]
    assert len(report.accepted_names) >= 2
    assert report.final_score > report.entries[0].individual_score
    assert "shuffled_labels" in report.format_table()


def test_greedy_soup_tie_rule(digits_ingredients):
    task, ingredients = digits_ingredients
    best_name, best = ingredients[1]
    copy = {name: tensor.clone() for name, tensor in best.items()}
    # The soup of a model and its copy is the model itself, so the copy ties exactly.
    tied = [(best_name, best), ("copy", copy)]

    strict_soup, strict_report = greedy_soup(tied, task.evaluate)
    tie_soup, tie_report = greedy_soup(tied, task.evaluate, accept_ties=True)

    assert [entry.name for entry in strict_report.entries] == [best_name, "copy"]
    assert strict_report.entries[1].soup_score == strict_report.entries[0].individual_score
    assert not strict_report.entries[1].accepted
    assert tie_report.entries[1].accepted
    assert strict_report.tie_rule == "strict"
    assert tie_report.tie_rule == "accept_ties"
    assert_bitwise_equal(strict_soup, best)
    assert_bitwise_equal(tie_soup, best)


def test_greedy_soup_streams_paths(digits_ingredients, tmp_path):
    task, ingredients = digits_ingredients
    folders = []
    for name, state_dict in ingredients:
        folder = tmp_path / name
        folder.mkdir()
        save_file({key: tensor.contiguous() for key, tensor in state_dict.items()}, str(folder / "model.safetensors"))
        folders.append((name, str(folder)))

    from_memory, memory_report = greedy_soup(ingredients, task.evaluate)
    from_disk, disk_report = greedy_soup(folders, task.evaluate)

    assert_bitwise_equal(from_disk, from_memory)
    assert disk_report == memory_report


def test_greedy_soup_precomputed_scores(digits_ingredients):
    task, ingredients = digits_ingredients
    calls = []

    def counting_evaluate(state_dict):
        calls.append(1)
        return task.evaluate(state_dict)

    scores = {name: task.evaluate(state_dict) for name, state_dict in ingredients}
    _, report = greedy_soup(ingredients, counting_evaluate, scores=scores)

    # Only the candidate soups are evaluated: one per ingredient after the first.
    assert len(calls) == len(ingredients) - 1
    assert [entry.individual_score for entry in report.entries] == sorted(scores.values(), reverse=True)


def test_greedy_soup_invalid_inputs():
    state_dict = {"w": torch.zeros(2)}

    with pytest.raises(ValueError, match=r"not ingredients: \['c'\]"):
        greedy_soup([("a", state_dict)], evaluate=lambda sd: 1.0, scores={"c": 0.5})
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        greedy_soup([("a", state_dict), ("a", state_dict)], evaluate=lambda sd: 1.0)
    with pytest.raises(ValueError, match="ingredient 'a' is nan"):
        greedy_soup([("a", state_dict)], evaluate=lambda sd: float("nan"))
    with pytest.raises(ValueError, match="at least one ingredient"):
        greedy_soup([], evaluate=lambda sd: 1.0)
    with pytest.raises(TypeError, match=r"\(name, state dict or path\) tuple"):
        greedy_soup([state_dict], evaluate=lambda sd: 1.0)


def test_greedy_soup_single_ingredient_exact():
    state_dict = {"w": random_values((16,), torch.bfloat16, seed=3)}

    soup, report = greedy_soup({"only": state_dict}, evaluate=lambda sd: 0.5)

    assert_bitwise_equal(soup, state_dict)
    assert report.accepted_names == ["only"]
    assert report.final_score == 0.5


def test_greedy_soup_accepts_tensor_scores():
    state_dict = {"w": torch.ones(2)}

    _, report = greedy_soup([("a", state_dict), ("b", state_dict)], evaluate=lambda sd: torch.tensor(0.75))

    assert report.entries[0].individual_score == 0.75
    assert isinstance(report.final_score, float)
