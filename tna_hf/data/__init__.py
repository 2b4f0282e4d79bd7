"""Real datasets that work offline, and loaders for external ones."""

from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from .fashion_mnist import find_fashion_mnist, load_fashion_mnist

__all__ = ["FASHION_MNIST_CLASSES", "find_fashion_mnist", "load_fashion_mnist"]

# Loaders of the small LMC and federated experiments.
from .digits import load_digits_split
from .mnist import load_mnist, load_mnist_5k, stratified_split
from .polynomial import make_polynomial_data
from .rotten_tomatoes import Vocabulary, load_rotten_tomatoes, tokenize
from .vision import DATASET_NAMES, TensorData, balanced_subset, load_tensor_data, make_loader

__all__ += [
    "DATASET_NAMES",
    "TensorData",
    "Vocabulary",
    "balanced_subset",
    "load_digits_split",
    "load_mnist",
    "load_mnist_5k",
    "load_rotten_tomatoes",
    "load_tensor_data",
    "make_loader",
    "make_polynomial_data",
    "stratified_split",
    "tokenize",
]
