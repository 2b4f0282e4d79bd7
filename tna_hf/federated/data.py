"""Datasets of the federated experiments as normalized tensors on the training device.

Only Fashion-MNIST (Xiao et al., 2017) is available offline here; the paper's CIFAR-10 and CIFAR-100
runs need those datasets from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..data import load_fashion_mnist

# Per-pixel mean and standard deviation of the Fashion-MNIST training images, scaled to [0, 1].
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

DATASETS = ("fashion_mnist",)


@dataclass
class FederatedData:
    """Training and test tensors of one dataset (inputs are float32 of shape (N, C, H, W))."""

    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    test_inputs: torch.Tensor
    test_labels: torch.Tensor
    in_shape: tuple[int, int, int]
    num_classes: int


def _subsample(num_samples: int, limit: Optional[int], seed: int) -> np.ndarray:
    if limit is None or limit >= num_samples:
        return np.arange(num_samples)
    if limit < 1:
        raise ValueError(f"A sample limit must be at least 1, got {limit}.")
    return np.sort(np.random.default_rng(seed).choice(num_samples, size=limit, replace=False))


def load_federated_data(
    name: str = "fashion_mnist",
    max_train_samples: Optional[int] = None,
    max_test_samples: Optional[int] = None,
    seed: int = 0,
    device: Optional[torch.device] = None,
) -> FederatedData:
    """Load a dataset, optionally subsampled uniformly at random, normalized and moved to `device`.

    Args:
        name: `"fashion_mnist"` (read offline from the Debian `dataset-fashion-mnist` files).
        max_train_samples: Keep at most this many training samples (drawn with `seed`); None keeps all.
        max_test_samples: Keep at most this many test samples; None keeps all 10,000.
        seed: Seed of the subsample.
        device: Where the tensors go; the CPU by default.

    Raises:
        ValueError: For an unknown dataset name.
    """
    if name != "fashion_mnist":
        raise ValueError(f"Unknown federated dataset {name!r}. Available offline: {list(DATASETS)}.")
    device = device or torch.device("cpu")
    tensors = []
    for split, limit in (("train", max_train_samples), ("test", max_test_samples)):
        images, labels = load_fashion_mnist(split)
        keep = torch.from_numpy(_subsample(len(labels), limit, seed))
        # uint8 (N, 28, 28) -> normalized float32 (N, 1, 28, 28)
        inputs = (images[keep].float().div_(255.0).sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)).unsqueeze(1)
        tensors.extend([inputs.to(device), labels[keep].to(device)])
    return FederatedData(*tensors, in_shape=(1, 28, 28), num_classes=10)
