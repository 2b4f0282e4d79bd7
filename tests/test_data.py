"""Offline datasets of the small experiments: MNIST-5k, digits, polynomials, Rotten Tomatoes, tensor loaders."""

import numpy as np
import pytest
import torch

from tna_hf.data import (
    Vocabulary,
    balanced_subset,
    load_digits_split,
    load_mnist_5k,
    load_rotten_tomatoes,
    load_tensor_data,
    make_loader,
    make_polynomial_data,
    stratified_split,
    tokenize,
)


def test_mnist_5k_split_sizes_and_balance():
    train_images, train_labels = load_mnist_5k("train")
    test_images, test_labels = load_mnist_5k("test")
    assert train_images.shape == (4000, 28, 28)
    assert train_images.dtype == torch.uint8
    assert test_images.shape == (1000, 28, 28)
    assert torch.equal(train_labels.bincount(), torch.full((10,), 400))
    assert torch.equal(test_labels.bincount(), torch.full((10,), 100))


def test_mnist_5k_split_is_seeded():
    first, _ = load_mnist_5k("test", seed=1)
    again, _ = load_mnist_5k("test", seed=1)
    other, _ = load_mnist_5k("test", seed=2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_stratified_split_disjoint_and_complete():
    labels = np.repeat(np.arange(3), [10, 20, 30])
    train, test = stratified_split(labels, 0.2, seed=0)
    assert set(train).isdisjoint(test)
    assert sorted(np.concatenate([train, test])) == list(range(60))
    assert np.bincount(labels[test]).tolist() == [2, 4, 6]
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(labels, 1.5, seed=0)


def test_digits_split():
    images, labels = load_digits_split("train")
    test_images, _ = load_digits_split("test")
    assert images.shape[1:] == (8, 8)
    assert images.shape[0] + test_images.shape[0] == 1797
    assert float(images.min()) >= 0.0
    assert float(images.max()) <= 1.0
    assert labels.unique().tolist() == list(range(10))


@pytest.mark.parametrize(
    ("degree", "low", "high", "function"),
    [(2, -1.0, 1.0, lambda x: 2 * x**2 - 1), (3, 2.0, 4.0, lambda x: (x - 3) ** 3)],
)
def test_polynomial_sets(degree, low, high, function):
    inputs, targets = make_polynomial_data(degree)
    assert inputs.shape == (100, 1)
    assert targets.shape == (100, 1)
    assert float(inputs.min()) >= low
    assert float(inputs.max()) <= high
    noise = targets - function(inputs)
    assert 0.03 < float(noise.std()) < 0.07, "noise std should be about 0.05"
    test_inputs, _ = make_polynomial_data(degree, "test")
    assert not torch.equal(inputs, test_inputs)


def test_polynomial_rejects_unknown_degree():
    with pytest.raises(ValueError, match="degree must be one of"):
        make_polynomial_data(4)


def test_rotten_tomatoes_split():
    texts, labels = load_rotten_tomatoes("train")
    test_texts, test_labels = load_rotten_tomatoes("test")
    assert len(texts) + len(test_texts) == 12752
    assert len(texts) == labels.shape[0]
    assert set(labels.tolist()) == {0, 1}
    assert set(texts).isdisjoint(set(test_texts))
    assert test_labels.float().mean() == pytest.approx(7368 / 12752, abs=0.01)


def test_tokenize_words_and_punctuation():
    assert tokenize("It isn't GREAT, sadly.") == ["it", "isn't", "great", ",", "sadly", "."]


def test_vocabulary_from_training_texts_only():
    vocabulary = Vocabulary.build(["good film", "good cast", "bad film"], min_frequency=2)
    assert vocabulary.tokens == ["<pad>", "<unk>", "film", "good"]
    ids = vocabulary.encode(["good unseen film", ""], max_length=4)
    assert ids.tolist() == [[3, 1, 2, 0], [1, 0, 0, 0]]


def test_rotten_tomatoes_tensor_data():
    data = load_tensor_data("rotten_tomatoes", train_size=500, test_size=200, max_length=20)
    assert data.train_inputs.shape == (500, 20)
    assert data.test_inputs.shape == (200, 20)
    assert data.vocab_size == int(data.train_inputs.max()) + 1 or data.vocab_size > int(data.train_inputs.max())
    # Test ids stay inside the training vocabulary: unknown words map to id 1.
    assert int(data.test_inputs.max()) < data.vocab_size


def test_image_tensor_data_standardized():
    data = load_tensor_data("mnist5k", train_size=1000, test_size=300)
    assert data.train_inputs.shape == (1000, 1, 28, 28)
    assert data.in_shape == (1, 28, 28)
    assert data.num_classes == 10
    assert abs(float(data.train_inputs.mean())) < 1e-4
    assert float(data.train_inputs.std()) == pytest.approx(1.0, abs=1e-3)
    assert torch.equal(data.train_targets.bincount(), torch.full((10,), 100))


def test_fashion_mnist_subset():
    data = load_tensor_data("fashion_mnist", train_size=200, test_size=100)
    assert data.train_inputs.shape == (200, 1, 28, 28)
    assert torch.equal(data.test_targets.bincount(), torch.full((10,), 10))


def test_balanced_subset_is_balanced():
    labels = torch.tensor([0] * 50 + [1] * 10)
    keep = balanced_subset(labels, 12, seed=0)
    assert labels[keep].bincount().tolist() == [6, 6]
    assert balanced_subset(labels, None, seed=0).tolist() == list(range(60))


def test_make_loader_order_follows_seed():
    inputs = torch.arange(20).float().unsqueeze(1)
    targets = torch.arange(20)

    def order(seed):
        return torch.cat(
            [batch_targets for _, batch_targets in make_loader(inputs, targets, 5, shuffle=True, seed=seed)]
        )

    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))
    assert sorted(order(3).tolist()) == list(range(20))


def test_unknown_dataset_rejected():
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
        load_tensor_data("imagenet")


def test_external_dataset_without_root_rejected(monkeypatch):
    monkeypatch.delenv("TNA_CIFAR10_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_tensor_data("cifar10")
