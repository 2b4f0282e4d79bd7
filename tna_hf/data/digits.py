"""scikit-learn's digits (1,797 images of 8x8 pixels, values 0-16; Alpaydin & Kaynak, 1998), split offline."""

from __future__ import annotations

import numpy as np
import torch

from .mnist import stratified_split


def load_digits_split(
    split: str = "train", test_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one seeded stratified split of the digits dataset.

    Args:
        split: `"train"` or `"test"`.
        test_fraction: Fraction of each digit's images that go to the test split.
        seed: Seed of the split.

    Returns:
        images: float32 tensor (N, 8, 8) with values in [0, 1] (pixel counts divided by 16).
        labels: int64 tensor (N,) with digits 0-9.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}.")
    digits = load_digits()
    labels = np.asarray(digits.target, dtype=np.int64)
    train_index, test_index = stratified_split(labels, test_fraction, seed)
    index = train_index if split == "train" else test_index
    images = torch.tensor(digits.images[index] / 16.0, dtype=torch.float32)
    return images, torch.from_numpy(labels[index].copy())
