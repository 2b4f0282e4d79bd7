"""Dirichlet label partitions and client participation sequences for federated learning.

Label heterogeneity follows the Dirichlet sampling of Lin et al. (2020) and Chen & Chao (2022), as used
by the TNA-PFN paper (Li et al.): for every class, the class's samples are split among the clients by
proportions drawn from Dir(alpha). A small alpha (0.1) gives extremely non-IID clients, a large one
(100) nearly IID clients. Partial participation samples a subset of clients per round. The sequence is
saved to JSON and reloaded, so every algorithm of an experiment trains the same clients in the same
rounds (Appendix A.3 of Li et al.).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

_MAX_DIRICHLET_TRIES = 1000


def dirichlet_partition(
    labels: Union[torch.Tensor, np.ndarray, Sequence[int]],
    num_clients: int,
    alpha: float,
    seed: int,
    min_partition_size: int = 10,
) -> list[np.ndarray]:
    """Split sample indices among clients with Dirichlet(alpha) label proportions.

    Every class is split separately: proportions `p ~ Dir(alpha * 1_n)` decide which share of the class
    each client receives. Draws are repeated until every client has at least `min_partition_size`
    samples. Clients whose partition is already larger than `len(labels) / num_clients` get no more
    samples of later classes, as in Lin et al. (2020), which keeps partition sizes from diverging.

    Args:
        labels: Integer class label of every sample, shape (N,).
        num_clients: Number of clients n (at least 1).
        alpha: Dirichlet concentration `dir` (> 0); the paper uses 100, 0.5 and 0.1.
        seed: Seed of a private numpy generator; the global RNG is neither read nor changed.
        min_partition_size: Smallest acceptable partition size.

    Returns:
        One sorted int64 index array per client. Together they cover every index in `range(N)` exactly once.

    Raises:
        ValueError: On invalid arguments, or when no draw gives every client `min_partition_size` samples
            within 1000 tries (lower `min_partition_size`, use fewer clients or a larger alpha).

    Example:

    ```python
    >>> parts = dirichlet_partition(labels, num_clients=20, alpha=0.5, seed=0)
    >>> sum(len(part) for part in parts) == len(labels)
    True
    ```
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"dirichlet_partition needs integer labels, got dtype {labels.dtype}.")
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}.")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha (the Dirichlet concentration) must be a positive number, got {alpha!r}.")
    if min_partition_size < 0:
        raise ValueError(f"min_partition_size must be non-negative, got {min_partition_size}.")
    num_samples = len(labels)
    if num_clients * min_partition_size > num_samples:
        raise ValueError(
            f"{num_clients} clients with at least {min_partition_size} samples each need "
            f"{num_clients * min_partition_size} samples, but there are only {num_samples}. "
            "Lower min_partition_size or use fewer clients."
        )

    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    size_cap = num_samples / num_clients
    for _ in range(_MAX_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for label in classes:
            class_indices = np.flatnonzero(labels == label)
            rng.shuffle(class_indices)
            proportions = rng.dirichlet(np.full(num_clients, float(alpha)))
            proportions = proportions * (sizes < size_cap)
            total = proportions.sum()
            proportions = proportions / total if total > 0 else np.full(num_clients, 1.0 / num_clients)
            # Cut points into the shuffled class: client k receives the k-th slice.
            cuts = (np.cumsum(proportions) * len(class_indices)).astype(np.int64)[:-1]
            for client, chunk in enumerate(np.split(class_indices, cuts)):
                parts[client].append(chunk)
                sizes[client] += len(chunk)
        if sizes.min() >= min_partition_size:
            return [np.sort(np.concatenate(chunks)).astype(np.int64) for chunks in parts]
    raise ValueError(
        f"No Dirichlet(alpha={alpha}) draw gave all {num_clients} clients at least {min_partition_size} samples "
        f"in {_MAX_DIRICHLET_TRIES} tries. Lower min_partition_size, use fewer clients or a larger alpha."
    )


def label_histogram(
    labels: Union[torch.Tensor, np.ndarray], partitions: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Return a (num_clients, num_classes) array with the number of samples of every class on every client."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    return np.stack([np.bincount(labels[part], minlength=num_classes) for part in partitions])


def sample_participation(num_clients: int, num_rounds: int, selection_ratio: float, seed: int) -> list[list[int]]:
    """Draw the clients that take part in each round.

    Each round selects `max(1, round(selection_ratio * num_clients))` distinct clients uniformly at
    random (all clients, in order, when the ratio is 1).

    Args:
        num_clients: Number of clients n.
        num_rounds: Number of rounds T.
        selection_ratio: Fraction of clients per round, in (0, 1].
        seed: Seed of a private numpy generator.

    Returns:
        A list of T sorted client-id lists.
    """
    if not 0.0 < selection_ratio <= 1.0:
        raise ValueError(f"selection_ratio must be in (0, 1], got {selection_ratio!r}.")
    if num_clients < 1 or num_rounds < 1:
        raise ValueError(f"num_clients and num_rounds must be positive, got {num_clients} and {num_rounds}.")
    per_round = max(1, int(round(selection_ratio * num_clients)))
    if per_round == num_clients:
        return [list(range(num_clients)) for _ in range(num_rounds)]
    rng = np.random.default_rng(seed)
    return [sorted(int(i) for i in rng.choice(num_clients, size=per_round, replace=False)) for _ in range(num_rounds)]


def save_participation(participation: Sequence[Sequence[int]], path: Union[str, os.PathLike], metadata: dict) -> str:
    """Write a participation sequence and the settings that produced it to JSON (temporary file, then rename)."""
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    payload = {"metadata": metadata, "participation": [[int(i) for i in clients] for clients in participation]}
    tmp_path = f"{os.fspath(path)}.tmp"
    with open(tmp_path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.replace(tmp_path, path)
    return os.fspath(path)


def load_participation(path: Union[str, os.PathLike], expected_metadata: dict | None = None) -> list[list[int]]:
    """Read a participation sequence written by `save_participation`.

    Raises:
        ValueError: When `expected_metadata` is given and a stored setting differs (the message names it).
    """
    with open(path, encoding="utf-8") as handle:
        payload = json.load(handle)
    stored = payload.get("metadata", {})
    if expected_metadata is not None:
        different = {
            key: (stored.get(key), value) for key, value in expected_metadata.items() if stored.get(key) != value
        }
        if different:
            raise ValueError(
                f"Participation file {os.fspath(path)!r} was made with other settings "
                f"(setting: (stored, expected)) {different}. Delete it or point to another file."
            )
    return [[int(i) for i in clients] for clients in payload["participation"]]


def load_or_create_participation(
    path: Union[str, os.PathLike, None], num_clients: int, num_rounds: int, selection_ratio: float, seed: int
) -> list[list[int]]:
    """Reload the participation sequence at `path` if it exists, else draw it and save it there.

    Every algorithm run with the same `path` therefore trains the same clients in the same rounds.
    With `path=None` the sequence is drawn and not saved.
    """
    metadata = {"num_clients": num_clients, "num_rounds": num_rounds, "selection_ratio": selection_ratio, "seed": seed}
    if path is not None and os.path.isfile(path):
        logger.info("Reusing the client participation sequence in %s", path)
        return load_participation(path, expected_metadata=metadata)
    participation = sample_participation(num_clients, num_rounds, selection_ratio, seed)
    if path is not None:
        save_participation(participation, path, metadata)
    return participation
