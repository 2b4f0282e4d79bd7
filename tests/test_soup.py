"""Tests of the model soup experiment: data, arguments, and the driver end to end at tiny settings.

The driver runs on real Fashion-MNIST with tiny randomly initialized backbones (timm's
`test_efficientnet`, which has BatchNorm, and a tiny transformers ViT), the real `MaskedTrainer`
and the real fusion code. The numbers it reports are recomputed here from the saved checkpoints
with an independent float64 average.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from tna_hf.checkpoint import load_provenance
from tna_hf.data.images import ImageBatchCollator, ImageSplit, load_image_split, split_holdout
from tna_hf.experiments.soup import (
    SoupArguments,
    evaluate_accuracy,
    load_splits,
    main,
    make_loaders,
    parse_arguments,
)
from tna_hf.masks import load_masks
from tna_hf.models.pretrained import build_image_classifier

TINY_SETTINGS = [
    "--train_size", "128", "--holdout_size", "64", "--test_size", "128", "--num_ingredients", "2",
    "--max_steps", "3", "--batch_size", "32", "--probe_epochs", "1", "--eval_batch_size", "128",
    "--logging_steps", "3",
]


# ---------------------------------------------------------------------------- data


def test_fashion_mnist_as_image_split():
    test = load_image_split("fashion_mnist", "test")
    assert test.images.shape == (10000, 1, 28, 28)
    assert test.images.dtype == torch.uint8
    assert test.classes[9] == "Ankle boot"


def test_collator_makes_normalized_rgb_batches():
    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    images[1] = 255
    collator = ImageBatchCollator(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channels_last=True)
    batch = collator([{"image": images[0], "labels": 3}, {"image": images[1], "labels": 4}])

    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch["pixel_values"][0], torch.full((3, 32, 32), -1.0))
    torch.testing.assert_close(batch["pixel_values"][1], torch.full((3, 32, 32), 1.0))
    assert batch["labels"].tolist() == [3, 4]


def test_collator_rejects_bad_settings():
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        ImageBatchCollator(32, mean=(0.5,), std=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="std values must be positive"):
        ImageBatchCollator(32, mean=(0.5,) * 3, std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match=r"Expected uint8 images of shape \(B, 1 or 3, H, W\)"):
        ImageBatchCollator(32, mean=(0.5,) * 3, std=(0.5,) * 3).transform(torch.zeros(1, 2, 8, 8, dtype=torch.uint8))


def test_split_holdout_disjoint_and_deterministic():
    # Label i marks example i, so the drawn positions can be compared exactly.
    split = ImageSplit(torch.zeros(1000, 1, 2, 2, dtype=torch.uint8), torch.arange(1000), ("a",))
    train, holdout = split_holdout(split, 300, 100, seed=1)
    again, _ = split_holdout(split, 300, 100, seed=1)
    other, _ = split_holdout(split, 300, 100, seed=2)

    assert (len(train), len(holdout)) == (300, 100)
    assert not set(train.labels.tolist()) & set(holdout.labels.tolist())
    assert torch.equal(train.labels, again.labels)
    assert not torch.equal(train.labels, other.labels)
    with pytest.raises(ValueError, match="must be positive and at most the 1000 examples"):
        split_holdout(split, 950, 100, seed=1)
    with pytest.raises(ValueError, match="holdout_size must be at least 1"):
        split_holdout(split, 10, 0, seed=1)


def test_unknown_dataset_rejected():
    with pytest.raises(ValueError, match=r"Image dataset must be one of \['fashion_mnist', 'cifar10', 'cifar100'\]"):
        load_image_split("mnist")
    with pytest.raises(ValueError, match="needs data_root"):
        load_image_split("cifar10", "test")


# ---------------------------------------------------------------------------- arguments


def test_config_file_then_command_line(tmp_path):
    config = tmp_path / "soup.yaml"
    config.write_text("num_ingredients: 3\nvary: lr\nlearning_rate: 0.002\nmax_steps: 7\n")
    arguments = parse_arguments(["--config", str(config), "--max_steps", "9"])

    assert arguments.num_ingredients == 3
    assert arguments.max_steps == 9
    rates = [setting["learning_rate"] for setting in arguments.ingredient_settings()]
    assert rates == pytest.approx([0.0005, 0.002, 0.008])
    assert {setting["seed"] for setting in arguments.ingredient_settings()} == {0}


def test_seed_variation_settings():
    settings = SoupArguments(num_ingredients=3, seed=5).ingredient_settings()
    assert [setting["seed"] for setting in settings] == [5, 6, 7]
    assert {setting["learning_rate"] for setting in settings} == {3e-4}


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.mark.parametrize("name", sorted(name for name in os.listdir(CONFIG_DIR) if name.startswith("soup_")))
def test_shipped_configs_parse(name):
    arguments = parse_arguments(["--config", os.path.join(CONFIG_DIR, name)])
    assert arguments.num_ingredients == 5
    assert arguments.rho == 0.4


def test_config_file_unknown_key(tmp_path):
    config = tmp_path / "soup.yaml"
    config.write_text("num_ingredient: 3\n")
    with pytest.raises(ValueError, match=r"unknown options \['num_ingredient'\]"):
        parse_arguments(["--config", str(config)])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vary": "batch"}, r"vary must be one of \['seed', 'lr'\], got 'batch'"),
        ({"rho": 0.0}, "rho must satisfy 0 < rho < 1 for the TNA-PFN arm, got 0.0"),
        ({"num_ingredients": 0}, "num_ingredients must be at least 1, got 0"),
        ({"vary": "lr", "learning_rates": [1e-3]}, "learning_rates has 1 values for 5 ingredients"),
        ({"warmup_ratio": 1.0}, "warmup_ratio must satisfy 0 <= warmup_ratio < 1"),
        ({"dataset": "imagenet"}, "dataset must be one of"),
    ],
)
def test_invalid_arguments_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        SoupArguments(**overrides)


def test_vit_image_size_must_match(tmp_path):
    model = build_image_classifier("timm:test_vit", num_classes=10, pretrained=False)
    arguments = SoupArguments(model="timm:test_vit", image_size=32, test_size=16, train_size=16, holdout_size=16)
    with pytest.raises(ValueError, match="needs 160-pixel inputs"):
        make_loaders(arguments, load_splits(arguments), model)


# ---------------------------------------------------------------------------- the driver end to end


@pytest.fixture(scope="module")
def convnet_run(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("soup"))
    argv = ["--model", "timm:test_efficientnet", "--pretrained", "false", "--output_dir", output_dir, *TINY_SETTINGS]
    results = main(argv)
    return argv, results, output_dir


def _float64_average(paths: list[str]) -> dict[str, torch.Tensor]:
    state_dicts = [load_file(os.path.join(path, "model.safetensors")) for path in paths]
    average = {}
    for name, first in state_dicts[0].items():
        if first.is_floating_point():
            total = sum(state_dict[name].double() for state_dict in state_dicts)
            average[name] = (total / len(state_dicts)).to(first.dtype)
        else:
            average[name] = first
    return average


def test_driver_writes_results(convnet_run):
    _, results, output_dir = convnet_run
    for name in ("results.json", "table.md", "soup.png", "initial_checkpoint/model.safetensors"):
        assert os.path.isfile(os.path.join(output_dir, name)), name
    with open(os.path.join(output_dir, "results.json"), encoding="utf-8") as handle:
        assert json.load(handle) == json.loads(json.dumps(results))
    with open(os.path.join(output_dir, "table.md"), encoding="utf-8") as handle:
        table = handle.read()
    vanilla = results["arms"]["vanilla"]
    assert f"| Fashion-MNIST / Diff_seed | Avg. Acc. | {100 * vanilla['average_test_accuracy']:.1f} |" in table
    assert "| Greedy Soup |" in table
    assert results["sizes"] == {"train": 128, "holdout": 64, "test": 128}
    assert results["batchnorm"].startswith("eval mode")


def test_driver_numbers_are_consistent(convnet_run):
    _, results, _ = convnet_run
    for arm_name, arm in results["arms"].items():
        tests = [ingredient["test_accuracy"] for ingredient in arm["ingredients"]]
        assert len(tests) == 2, arm_name
        assert arm["average_test_accuracy"] == pytest.approx(sum(tests) / 2), arm_name
        assert arm["best_test_accuracy"] == max(tests), arm_name

        best = max(arm["ingredients"], key=lambda ingredient: ingredient["holdout_accuracy"])
        report = arm["greedy_soup"]["report"]
        assert report["entries"][0]["name"] == best["name"], arm_name
        assert arm["greedy_soup"]["accepted"][0] == best["name"], arm_name
        assert arm["greedy_soup"]["holdout_accuracy"] >= best["holdout_accuracy"], arm_name


def test_uniform_soup_recomputed_from_checkpoints(convnet_run):
    argv, results, _ = convnet_run
    arguments = parse_arguments(argv)
    model = build_image_classifier(arguments.model, num_classes=10, pretrained=False)
    loaders = make_loaders(arguments, load_splits(arguments), model)
    for arm_name, arm in results["arms"].items():
        model.load_state_dict(_float64_average([ingredient["path"] for ingredient in arm["ingredients"]]))
        accuracy = evaluate_accuracy(model, loaders["test"])
        assert accuracy == arm["uniform_soup"]["test_accuracy"], arm_name

        for ingredient in arm["ingredients"]:
            model.load_state_dict(load_file(os.path.join(ingredient["path"], "model.safetensors")))
            assert evaluate_accuracy(model, loaders["test"]) == ingredient["test_accuracy"], ingredient["path"]


def test_tna_ingredients_keep_fixed_entries(convnet_run):
    _, results, output_dir = convnet_run
    initial = load_file(os.path.join(output_dir, "initial_checkpoint", "model.safetensors"))
    masks = load_masks(results["arms"]["tna_pfn"]["mask_dir"])
    assert len(masks) > 10
    for ingredient in results["arms"]["tna_pfn"]["ingredients"]:
        weights = load_file(os.path.join(ingredient["path"], "model.safetensors"))
        moved = []
        for name, mask in masks.items():
            fixed = ~mask
            assert torch.equal(weights[name][fixed], initial[name][fixed]), f"{ingredient['name']} {name}"
            if not torch.equal(weights[name][mask], initial[name][mask]):
                moved.append(name)
        assert len(moved) > len(masks) // 2, f"{ingredient['name']}: only {moved} trained"

    # Without the mask the same entries move, so the check above is not vacuous.
    vanilla = load_file(os.path.join(results["arms"]["vanilla"]["ingredients"][0]["path"], "model.safetensors"))
    changed = [name for name, mask in masks.items() if not torch.equal(vanilla[name][~mask], initial[name][~mask])]
    assert len(changed) > len(masks) // 2


def test_ingredients_share_start_and_batchnorm(convnet_run):
    _, results, output_dir = convnet_run
    initial = load_file(os.path.join(output_dir, "initial_checkpoint", "model.safetensors"))
    statistics = [name for name in initial if name.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert statistics
    for arm in results["arms"].values():
        for ingredient in arm["ingredients"]:
            provenance = load_provenance(ingredient["path"])
            assert provenance.init_fingerprint == results["initial_checkpoint"]["fingerprint"], ingredient["path"]
            assert provenance.mask_fingerprint == arm["mask_fingerprint"], ingredient["path"]
            weights = load_file(os.path.join(ingredient["path"], "model.safetensors"))
            for name in statistics:
                assert torch.equal(weights[name], initial[name]), f"{ingredient['path']} {name}"
    assert results["arms"]["vanilla"]["mask_fingerprint"] is None
    assert results["arms"]["tna_pfn"]["mask_fingerprint"] is not None


def test_driver_on_tiny_vit_with_lr_variation(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    model_dir = tmp_path / "tiny-vit"
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10,
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)

    argv = [
        "--model", f"hf:{model_dir}", "--image_size", "32", "--vary", "lr", "--learning_rate", "0.001",
        "--channels_last", "false",
        "--output_dir", str(tmp_path / "out"), *TINY_SETTINGS,
    ]
    results = main(argv)

    rates = [ingredient["learning_rate"] for ingredient in results["arms"]["tna_pfn"]["ingredients"]]
    assert rates == pytest.approx([2.5e-4, 4e-3])
    assert results["model_description"].startswith("transformers pretrained weights")
    initial = load_file(tmp_path / "out" / "initial_checkpoint" / "model.safetensors")
    masks = load_masks(results["arms"]["tna_pfn"]["mask_dir"])
    assert "network.model.vit.embeddings.patch_embeddings.projection.weight" in masks
    for ingredient in results["arms"]["tna_pfn"]["ingredients"]:
        weights = load_file(os.path.join(ingredient["path"], "model.safetensors"))
        for name, mask in masks.items():
            assert torch.equal(weights[name][~mask], initial[name][~mask]), f"{ingredient['name']} {name}"
