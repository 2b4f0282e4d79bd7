"""Parameter counts (hand-computed) and output shapes of the experiment model zoo."""

import pytest
import torch

from tna_hf.models import MODEL_NAME_FORMS, SimpleCNN, build_model, count_parameters

# Small models on a CPU shared with other jobs run many times faster on one thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlp_count(in_features, hidden_layers, width, outputs):
    count = in_features * width + width
    count += (hidden_layers - 1) * (width * width + width)
    return count + width * outputs + outputs


def cnn_count(channels, side, classes):
    # Feature map side: (side - 2) // 2 -> (.. - 2) // 2 -> .. - 2.
    final = ((side - 2) // 2 - 2) // 2 - 2
    convs = (channels * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 64 * 9 + 64)
    return convs + (64 * final * final * 64 + 64) + (64 * classes + classes)


def lenet_count(channels, side, classes):
    final = (side // 2 - 4) // 2
    convs = (channels * 6 * 25 + 6) + (6 * 16 * 25 + 16)
    return convs + (16 * final * final * 120 + 120) + (120 * 84 + 84) + (84 * classes + classes)


def resnet_count(channels, depth, k, classes):
    blocks = (depth - 2) // 6
    widths = [16 * k, 32 * k, 64 * k]
    count = channels * widths[0] * 9  # stem, no bias
    in_channels = widths[0]
    for width in widths:
        for _ in range(blocks):
            count += in_channels * width * 9 + width * width * 9
            in_channels = width
    return count + widths[-1] * classes + classes


def lstm_count(vocab, embedding, hidden, classes):
    # Embedding, then the four gates' input and recurrent weights and their two bias vectors, then the head.
    return vocab * embedding + 4 * hidden * (embedding + hidden) + 8 * hidden + hidden * classes + classes


IMAGE_CASES = [
    ("mlp_h2_w200", (1, 28, 28), 10, mlp_count(784, 2, 200, 10)),
    ("mlp_h5_w200", (1, 28, 28), 10, mlp_count(784, 5, 200, 10)),
    ("mlp_h1_w32", (3, 32, 32), 10, mlp_count(3072, 1, 32, 10)),
    ("mlp_h3_w64", (64,), 10, mlp_count(64, 3, 64, 10)),
    ("cnn", (3, 32, 32), 10, cnn_count(3, 32, 10)),
    ("cnn", (1, 28, 28), 10, cnn_count(1, 28, 10)),
    ("lenet5", (1, 28, 28), 10, lenet_count(1, 28, 10)),
    ("lenet5", (3, 32, 32), 100, lenet_count(3, 32, 100)),
    ("resnet20", (3, 32, 32), 10, resnet_count(3, 20, 1, 10)),
    ("resnet56", (3, 32, 32), 10, resnet_count(3, 56, 1, 10)),
    ("wrn56_4", (3, 32, 32), 10, resnet_count(3, 56, 4, 10)),
    ("resnet20", (1, 28, 28), 10, resnet_count(1, 20, 1, 10)),
]


@pytest.mark.parametrize(("name", "in_shape", "num_classes", "expected"), IMAGE_CASES)
def test_image_model_count_and_shape(name, in_shape, num_classes, expected):
    model = build_model(name, in_shape=in_shape, num_classes=num_classes)
    assert count_parameters(model) == expected, f"{name} on {in_shape}"
    outputs = model(torch.randn(3, *in_shape))
    assert outputs.shape == (3, num_classes), f"{name} output shape"


def test_paper_cnn_flatten_size():
    # The paper states a 64*4*4 flattened size for 32x32 CIFAR-10 images.
    assert SimpleCNN((3, 32, 32), 10).fc1.in_features == 64 * 4 * 4


def test_lstm_count_and_shape():
    model = build_model("lstm", vocab_size=500, embedding_dim=16, hidden_size=24)
    assert count_parameters(model) == lstm_count(500, 16, 24, 2)
    token_ids = torch.tensor([[4, 7, 9, 0, 0], [3, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    assert model(token_ids).shape == (3, 2)


def test_lstm_ignores_padding():
    torch.manual_seed(0)
    model = build_model("lstm", vocab_size=50, embedding_dim=8, hidden_size=8)
    short = model(torch.tensor([[4, 7, 9]]))
    padded = model(torch.tensor([[4, 7, 9, 0, 0, 0]]))
    torch.testing.assert_close(short, padded)


def test_poly_mlp_count_and_shape():
    model = build_model("poly_mlp_w100")
    assert count_parameters(model) == mlp_count(1, 1, 100, 1)
    assert model(torch.linspace(-1, 1, 7).unsqueeze(1)).shape == (7, 1)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("transformer", {"in_shape": (1, 28, 28), "num_classes": 10}, "Unknown model name"),
        ("mlp_h2_w200", {"num_classes": 10}, "needs in_shape"),
        ("cnn", {"in_shape": (1, 8, 8), "num_classes": 10}, "at least 22x22"),
        ("resnet21", {"in_shape": (3, 32, 32), "num_classes": 10}, "6n \\+ 2"),
        ("lstm", {}, "vocab_size"),
        ("lenet5", {"in_shape": (784,), "num_classes": 10}, "image input shape"),
    ],
)
def test_build_model_rejects_bad_input(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, **kwargs)


def test_model_name_forms_listed():
    assert "mlp_h{h}_w{w}" in MODEL_NAME_FORMS
