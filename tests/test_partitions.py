"""Tests of Dirichlet label partitions and saved client participation sequences."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tna_hf.data import load_fashion_mnist
from tna_hf.federated import (
    dirichlet_partition,
    label_histogram,
    load_or_create_participation,
    load_participation,
    sample_participation,
    save_participation,
)


@pytest.fixture(scope="module")
def fashion_labels():
    _, labels = load_fashion_mnist("train")
    return labels.numpy()


@pytest.mark.parametrize("alpha", [100.0, 0.5, 0.1])
@pytest.mark.parametrize("num_clients", [20, 90])
def test_partition_covers_every_sample_once(fashion_labels, alpha, num_clients):
    parts = dirichlet_partition(fashion_labels, num_clients, alpha, seed=0, min_partition_size=10)
    assert len(parts) == num_clients
    joined = np.concatenate(parts)
    assert len(joined) == len(fashion_labels), "some sample is missing or assigned twice"
    assert np.array_equal(np.sort(joined), np.arange(len(fashion_labels)))
    assert min(len(part) for part in parts) >= 10


def test_partition_follows_seed(fashion_labels):
    first = dirichlet_partition(fashion_labels, 20, 0.5, seed=3)
    again = dirichlet_partition(fashion_labels, 20, 0.5, seed=3)
    other = dirichlet_partition(fashion_labels, 20, 0.5, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_partition_leaves_global_rng_alone(fashion_labels):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    dirichlet_partition(fashion_labels, 20, 0.5, seed=0)
    assert np.random.rand() == expected


def test_small_alpha_is_more_heterogeneous(fashion_labels):
    def mean_max_class_share(alpha):
        histogram = label_histogram(fashion_labels, dirichlet_partition(fashion_labels, 20, alpha, seed=0), 10)
        return float((histogram.max(axis=1) / histogram.sum(axis=1)).mean())

    iid, moderate, extreme = (mean_max_class_share(alpha) for alpha in (100.0, 0.5, 0.1))
    assert iid < 0.15, f"dir=100 should be nearly IID (top class share about 0.1), got {iid:.3f}"
    assert iid < moderate < extreme
    assert extreme > 0.6, f"dir=0.1 should leave most clients dominated by one class, got {extreme:.3f}"


def test_partition_rejects_too_many_clients():
    labels = np.repeat(np.arange(10), 5)
    with pytest.raises(ValueError, match="Lower min_partition_size"):
        dirichlet_partition(labels, 10, 0.5, seed=0, min_partition_size=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_clients": 0}, "num_clients must be a positive integer"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"min_partition_size": -1}, "min_partition_size"),
    ],
)
def test_partition_rejects_invalid_arguments(kwargs, message):
    arguments = {"labels": np.repeat(np.arange(10), 10), "num_clients": 5, "alpha": 0.5, "seed": 0}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        dirichlet_partition(**arguments)


def test_partition_rejects_float_labels():
    with pytest.raises(ValueError, match="integer labels"):
        dirichlet_partition(np.zeros(100), 5, 0.5, seed=0)


def test_participation_selection_ratio():
    rounds = sample_participation(90, 50, 0.4, seed=0)
    assert len(rounds) == 50
    assert all(len(clients) == 36 and len(set(clients)) == 36 for clients in rounds)
    assert all(0 <= client < 90 for clients in rounds for client in clients)
    assert len({tuple(clients) for clients in rounds}) > 1, "rounds should select different clients"
    assert sample_participation(20, 3, 1.0, seed=5) == [list(range(20))] * 3


def test_participation_saved_and_reloaded(tmp_path):
    path = tmp_path / "participation.json"
    drawn = load_or_create_participation(path, 90, 10, 0.6, seed=1)
    assert path.is_file()
    # A second call (another algorithm of the same experiment) reloads the file instead of drawing again.
    payload = json.loads(path.read_text())
    payload["participation"][0] = [0, 1, 2]
    path.write_text(json.dumps(payload))
    reloaded = load_or_create_participation(path, 90, 10, 0.6, seed=1)
    assert reloaded[0] == [0, 1, 2]
    assert reloaded[1:] == drawn[1:]


def test_participation_file_from_other_settings_rejected(tmp_path):
    path = tmp_path / "participation.json"
    save_participation([[0, 1]], path, {"num_clients": 2, "num_rounds": 1, "selection_ratio": 1.0, "seed": 0})
    with pytest.raises(ValueError, match="other settings"):
        load_participation(path, {"num_clients": 3, "num_rounds": 1, "selection_ratio": 1.0, "seed": 0})


def test_participation_rejects_invalid_ratio():
    with pytest.raises(ValueError, match="selection_ratio"):
        sample_participation(10, 5, 0.0, seed=0)
