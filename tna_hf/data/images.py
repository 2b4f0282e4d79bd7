"""Image classification data for the model soup experiment (Wortsman et al., 2022, "Model soups").

Images are kept as uint8 tensors at their stored size, shape (N, C, H, W). `ImageBatchCollator`
turns them into model inputs batch by batch. It repeats grayscale to 3 channels, resizes the batch
to the model's input size and normalizes it with the backbone's mean and std. Keeping uint8
images and resizing per batch lets CIFAR-100 at 224 px (the CLIP ViT-B/32 setting) fit in memory,
which a pre-resized float copy (30 GB for 50,000 images) would not.

Datasets:

| name | source | offline here |
| --- | --- | --- |
| `fashion_mnist` | the original idx files (Debian `dataset-fashion-mnist`) | yes |
| `cifar10`, `cifar100` | `torchvision.datasets` python pickles under `root` | only where the user has them |
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import Dataset

from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from .fashion_mnist import load_fashion_mnist

logger = logging.getLogger(__name__)

IMAGE_DATASETS = ("fashion_mnist", "cifar10", "cifar100")
SPLITS = ("train", "test")


@dataclass
class ImageSplit:
    """One split of an image classification dataset, images as uint8 (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ImageSplit.images must be a uint8 tensor of shape (N, C, H, W), got {self.images.dtype} "
                f"of shape {tuple(self.images.shape)}."
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"ImageSplit.labels must have shape ({self.images.shape[0]},) to match the images, "
                f"got {tuple(self.labels.shape)}."
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: torch.Tensor) -> "ImageSplit":
        """Return the examples at `indices` (a 1-D integer tensor) as a new split."""
        return ImageSplit(self.images[indices], self.labels[indices], self.classes)


def _load_torchvision_cifar(name: str, split: str, root: Optional[str], download: bool) -> ImageSplit:
    from torchvision import datasets

    dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    if root is None:
        raise ValueError(
            f"Dataset {name!r} needs data_root, the folder that contains the torchvision {dataset_class.__name__} "
            "files (or receives them with download=True)."
        )
    try:
        dataset = dataset_class(root=root, train=split == "train", download=download)
    except RuntimeError as error:
        raise FileNotFoundError(
            f"{dataset_class.__name__} not found under data_root={root!r} ({error}). Point data_root at the folder "
            "that contains the extracted 'cifar-10-batches-py' / 'cifar-100-python' folder, or pass download=True "
            "on a machine with internet access."
        ) from error
    # torchvision stores CIFAR as a uint8 numpy array of shape (N, 32, 32, 3).
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(dataset.targets, dtype=torch.int64)
    return ImageSplit(images, labels, tuple(dataset.classes))


def load_image_split(
    name: str, split: str = "train", root: Optional[str] = None, download: bool = False
) -> ImageSplit:
    """Load one split of an image classification dataset as uint8 images and int64 labels.

    Args:
        name: One of `IMAGE_DATASETS`: `"fashion_mnist"` (offline), `"cifar10"` or `"cifar100"`
            (torchvision files under `root`).
        split: `"train"` or `"test"`.
        root: Folder of the dataset files. Fashion-MNIST looks in its default folders when None.
        download: Let torchvision download CIFAR into `root` (needs internet access).

    Returns:
        An `ImageSplit`; Fashion-MNIST images have shape (N, 1, 28, 28), CIFAR images (N, 3, 32, 32).

    Raises:
        ValueError: For an unknown dataset name or split.
        FileNotFoundError: When the dataset files are missing, with how to get them.

    Example:

    ```python
    >>> test = load_image_split("fashion_mnist", "test")
    >>> test.images.shape, test.classes[0]
    (torch.Size([10000, 1, 28, 28]), 'T-shirt/top')
    ```
    """
    if name not in IMAGE_DATASETS:
        raise ValueError(f"Image dataset must be one of {list(IMAGE_DATASETS)}, got {name!r}.")
    if split not in SPLITS:
        raise ValueError(f"Image dataset split must be one of {list(SPLITS)}, got {split!r}.")
    if name == "fashion_mnist":
        images, labels = load_fashion_mnist(split, root=root)
        return ImageSplit(images.unsqueeze(1), labels, FASHION_MNIST_CLASSES)
    return _load_torchvision_cifar(name, split, root, download)


def split_holdout(
    split: ImageSplit, train_size: Optional[int], holdout_size: int, seed: int
) -> tuple[ImageSplit, ImageSplit]:
    """Draw disjoint training and held-out subsets from one split with a private generator.

    Args:
        split: The split to draw from (the training split of the dataset).
        train_size: Number of training examples; None takes every example not held out.
        holdout_size: Number of held-out examples (greedy soups select on these).
        seed: Seed of the permutation, so every arm and ingredient trains and selects on the same subsets.

    Returns:
        `(train, holdout)`.

    Raises:
        ValueError: When the sizes are not positive or together exceed the split.
    """
    available = len(split)
    if holdout_size < 1:
        raise ValueError(f"holdout_size must be at least 1, got {holdout_size}.")
    if train_size is None:
        train_size = available - holdout_size
    if train_size < 1 or train_size + holdout_size > available:
        raise ValueError(
            f"train_size={train_size} plus holdout_size={holdout_size} must be positive and at most the "
            f"{available} examples of the split; lower one of them."
        )
    permutation = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
    holdout = split.subset(permutation[:holdout_size])
    train = split.subset(permutation[holdout_size : holdout_size + train_size])
    return train, holdout


class ImageClassificationDataset(Dataset):
    """A map-style dataset of `{"image": uint8 (C, H, W), "labels": int64}` items over an `ImageSplit`.

    Collate the items with `ImageBatchCollator`, which does the resizing and normalization per batch.
    """

    def __init__(self, split: ImageSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.split.images[index], "labels": self.split.labels[index]}


class ImageBatchCollator:
    """Stack uint8 images into normalized float `pixel_values` of shape (B, 3, size, size).

    Args:
        image_size: Side length of the model input in pixels.
        mean: Per-channel mean of the backbone's normalization (3 values, in [0, 1] units).
        std: Per-channel standard deviation of the backbone's normalization (3 values).
        channels_last: Return `pixel_values` in `torch.channels_last` memory format (faster convolutions
            on the CPU when the model is in that format too).

    Example:

    ```python
    >>> collate = ImageBatchCollator(32, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> batch = collate([dataset[0], dataset[1]])
    >>> batch["pixel_values"].shape
    torch.Size([2, 3, 32, 32])
    ```
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        channels_last: bool = False,
    ):
        if image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}.")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got mean={tuple(mean)} and std={tuple(std)}.")
        if any(value <= 0 for value in std):
            raise ValueError(f"std values must be positive, got {tuple(std)}.")
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.channels_last = channels_last

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """Turn uint8 images (B, C, H, W) with C in {1, 3} into normalized float (B, 3, size, size)."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"Expected uint8 images of shape (B, 1 or 3, H, W), got {images.dtype} of shape {tuple(images.shape)}."
            )
        pixels = images.float().div_(255.0)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            # Antialiasing only matters when shrinking, and bilinear is what most backbones were trained with.
            shrinking = min(pixels.shape[-2:]) > self.image_size
            pixels = torch.nn.functional.interpolate(
                pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                antialias=shrinking,
            )
        pixels = (pixels - self.mean) / self.std
        if self.channels_last:
            return pixels.contiguous(memory_format=torch.channels_last)
        return pixels.contiguous()

    def __call__(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        images = torch.stack([item["image"] for item in items])
        labels = torch.stack([torch.as_tensor(item["labels"]) for item in items])
        return {"pixel_values": self.transform(images), "labels": labels}
