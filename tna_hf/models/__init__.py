"""The small experiment models of the TNA-PFN study: MLPs, the simple CNN, LeNet5, ResNets without BN, an LSTM."""

from .cnn import LeNet5, SimpleCNN, simple_cnn_feature_size
from .lstm import LSTMClassifier
from .mlp import MLP
from .registry import MODEL_NAME_FORMS, build_model, count_parameters
from .resnet import BasicBlock, ResNet

__all__ = [
    "MLP",
    "MODEL_NAME_FORMS",
    "BasicBlock",
    "LSTMClassifier",
    "LeNet5",
    "ResNet",
    "SimpleCNN",
    "build_model",
    "count_parameters",
    "simple_cnn_feature_size",
]
