"""Fashion-MNIST (Xiao et al., 2017) read from the original idx `.gz` files, offline.

Debian's `dataset-fashion-mnist` package installs the four files under
`/usr/share/datasets/fashion-mnist`; `TNA_FASHION_MNIST_DIR` or the `root` argument points elsewhere.
"""

from __future__ import annotations

import gzip
import os
from typing import Optional

import numpy as np
import torch

DEFAULT_DIRS = ("/usr/share/datasets/fashion-mnist",)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def find_fashion_mnist(root: Optional[str] = None) -> str:
    """Return the folder that contains the four Fashion-MNIST idx `.gz` files, or raise with how to get them."""
    candidates = [root] if root else [os.environ.get("TNA_FASHION_MNIST_DIR"), *DEFAULT_DIRS]
    for folder in candidates:
        if folder and all(os.path.isfile(os.path.join(folder, name)) for pair in FILES.values() for name in pair):
            return folder
    raise FileNotFoundError(
        f"Fashion-MNIST idx files not found in {[c for c in candidates if c]}. Install them with "
        "`apt-get install dataset-fashion-mnist` (Debian), or download the four *-ubyte.gz files from "
        "https://github.com/zalandoresearch/fashion-mnist and set TNA_FASHION_MNIST_DIR to their folder."
    )


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte payload
        raise ValueError(f"{path} is not an unsigned-byte idx file (magic {magic:#x}).")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str = "train", root: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of Fashion-MNIST.

    Returns:
        images: uint8 tensor of shape (N, 28, 28) (N = 60,000 for "train", 10,000 for "test").
        labels: int64 tensor of shape (N,), values 0-9 (see `CLASSES`).
    """
    if split not in FILES:
        raise ValueError(f"Fashion-MNIST split must be one of {sorted(FILES)}, got {split!r}.")
    folder = find_fashion_mnist(root)
    image_file, label_file = FILES[split]
    images = torch.from_numpy(_read_idx(os.path.join(folder, image_file)).copy())
    labels = torch.from_numpy(_read_idx(os.path.join(folder, label_file)).astype(np.int64))
    return images, labels
