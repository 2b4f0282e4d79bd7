"""Synthetic polynomial regression sets of the TNA-PFN LMC study (after von Oswald et al., 2019 and Pena et al., 2023).

Two tasks, each with 100 points whose inputs are drawn uniformly and whose targets get Gaussian noise
(mean 0, std 0.05):

* degree 2: y = 2 x^2 - 1 with x in [-1, 1];
* degree 3: y = (x - 3)^3 with x in [2, 4].

The paper does not describe a test set for these tasks. Here the test split is another 100 points
drawn the same way from an independent random stream, so barriers are measured on unseen inputs.
"""

from __future__ import annotations

import numpy as np
import torch

POLYNOMIALS = {
    2: {"interval": (-1.0, 1.0), "function": lambda x: 2.0 * x**2 - 1.0},
    3: {"interval": (2.0, 4.0), "function": lambda x: (x - 3.0) ** 3},
}


def make_polynomial_data(
    degree: int, split: str = "train", num_points: int = 100, noise_std: float = 0.05, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a polynomial regression set.

    Args:
        degree: 2 (y = 2x^2 - 1 on [-1, 1]) or 3 (y = (x - 3)^3 on [2, 4]).
        split: `"train"` or `"test"`; they come from independent random streams of one seed.
        num_points: Number of points.
        noise_std: Standard deviation of the Gaussian noise added to every target.
        seed: Seed of the data (not of the model).

    Returns:
        inputs: float32 tensor (num_points, 1). targets: float32 tensor (num_points, 1).

    Example:

    ```python
    >>> x, y = make_polynomial_data(2)
    >>> x.shape, y.shape
    (torch.Size([100, 1]), torch.Size([100, 1]))
    ```
    """
    if degree not in POLYNOMIALS:
        raise ValueError(f"degree must be one of {sorted(POLYNOMIALS)}, got {degree!r}.")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if num_points < 1 or noise_std < 0:
        raise ValueError(f"Need num_points >= 1 and noise_std >= 0, got {num_points} and {noise_std}.")
    rng = np.random.default_rng([seed, degree, 0 if split == "train" else 1])
    low, high = POLYNOMIALS[degree]["interval"]
    inputs = rng.uniform(low, high, size=(num_points, 1))
    targets = POLYNOMIALS[degree]["function"](inputs) + rng.normal(0.0, noise_std, size=(num_points, 1))
    return torch.tensor(inputs, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32)
