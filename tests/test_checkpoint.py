"""Tests of tna_hf.checkpoint: state dict fingerprints, the initial checkpoint and provenance files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from tna_hf import TNAConfig, build_masks, load_masks, mask_fingerprint
from tna_hf.checkpoint import (
    INIT_INFO_NAME,
    PROVENANCE_NAME,
    WEIGHTS_NAME,
    CheckpointMismatchError,
    Provenance,
    ensure_initial_checkpoint,
    load_initial_checkpoint,
    load_provenance,
    read_init_fingerprint,
    save_initial_checkpoint,
    save_provenance,
    state_dict_fingerprint,
)


class TiedLanguageModel(torch.nn.Module):
    """Embedding and output layer share one weight, as in most Hugging Face language models, plus BatchNorm buffers."""

    def __init__(self, vocab_size: int = 20, width: int = 8):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, width)
        self.norm = torch.nn.BatchNorm1d(width)
        self.head = torch.nn.Linear(width, vocab_size, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(tokens)))


def build_model(seed: int) -> TiedLanguageModel:
    torch.manual_seed(seed)
    model = TiedLanguageModel()
    # Give the BatchNorm buffers non-default values so that the test checks that they are saved and loaded.
    model.norm.running_mean.normal_()
    model.norm.num_batches_tracked.fill_(seed + 3)
    return model


def assert_same_state(actual: torch.nn.Module, expected: torch.nn.Module) -> None:
    actual_state, expected_state = actual.state_dict(), expected.state_dict()
    assert sorted(actual_state) == sorted(expected_state)
    for name, tensor in expected_state.items():
        assert torch.equal(actual_state[name], tensor), f"{name} differs"


# ------------------------------------------------------------------------------------------------
# Fingerprints


def test_fingerprint_ignores_order_and_copies():
    state_dict = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.tensor([1, 2, 3])}
    reordered = {"a": state_dict["a"].clone(), "b": state_dict["b"].clone()}

    assert state_dict_fingerprint(state_dict) == state_dict_fingerprint(reordered)
    assert len(state_dict_fingerprint(state_dict)) == 64


@pytest.mark.parametrize(
    "change",
    ["flip_one_bit", "reshape", "reinterpret_dtype", "rename"],
)
def test_fingerprint_detects_change(change):
    state_dict = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    changed = {"w": state_dict["w"].clone()}
    if change == "flip_one_bit":
        changed["w"].view(torch.int32)[0, 0] ^= 1
    elif change == "reshape":
        changed["w"] = changed["w"].reshape(3, 2)
    elif change == "reinterpret_dtype":
        changed["w"] = changed["w"].view(torch.int32)  # same bytes, another dtype
    else:
        changed = {"w2": changed["w"]}

    assert state_dict_fingerprint(changed) != state_dict_fingerprint(state_dict)


def test_fingerprint_handles_bfloat16_scalars_and_views():
    base = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)
    state_dict = {"scalar": torch.tensor(2.5, dtype=torch.bfloat16), "view": base.t(), "flag": torch.tensor([True])}
    contiguous = {
        "scalar": torch.tensor(2.5, dtype=torch.bfloat16),
        "view": base.t().contiguous(),
        "flag": torch.tensor([True]),
    }

    assert state_dict_fingerprint(state_dict) == state_dict_fingerprint(contiguous)


def test_fingerprint_rejects_non_tensor():
    with pytest.raises(TypeError, match=r"state_dict\['step'\] is a int"):
        state_dict_fingerprint({"step": 3})


# ------------------------------------------------------------------------------------------------
# Initial checkpoint


def test_initial_checkpoint_roundtrip(tmp_path):
    model = build_model(seed=0)

    fingerprint = save_initial_checkpoint(model, tmp_path)
    other = build_model(seed=1)
    loaded_fingerprint = load_initial_checkpoint(other, tmp_path)

    assert loaded_fingerprint == fingerprint == state_dict_fingerprint(model.state_dict())
    assert_same_state(other, model)
    assert other.head.weight is other.embed.weight, "loading must keep the tied weight shared"
    assert sorted(os.listdir(tmp_path)) == [WEIGHTS_NAME, INIT_INFO_NAME]
    info = json.loads((tmp_path / INIT_INFO_NAME).read_text())
    assert info["fingerprint"] == fingerprint
    assert info["mask_fingerprint"] is None
    assert read_init_fingerprint(tmp_path) == fingerprint


def test_initial_checkpoint_of_tied_transformers_model(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    torch.manual_seed(1)
    other = GPT2LMHeadModel(config)

    fingerprint = save_initial_checkpoint(model, tmp_path)
    assert load_initial_checkpoint(other, tmp_path) == fingerprint

    assert_same_state(other, model)
    assert other.lm_head.weight is other.transformer.wte.weight


def test_initial_checkpoint_with_masks_and_config(tmp_path):
    model = build_model(seed=0)
    config = TNAConfig(rho=0.4, seed=7)
    masks = build_masks(model, config)

    save_initial_checkpoint(model, tmp_path, tna_config=config, masks=masks)

    info = json.loads((tmp_path / INIT_INFO_NAME).read_text())
    assert info["mask_fingerprint"] == mask_fingerprint(masks)
    loaded_masks = load_masks(tmp_path, model=model)
    assert mask_fingerprint(loaded_masks) == mask_fingerprint(masks)
    assert TNAConfig.from_pretrained(tmp_path) == config


def test_initial_checkpoint_not_overwritten(tmp_path):
    model = build_model(seed=0)
    fingerprint = save_initial_checkpoint(model, tmp_path)
    weights_before = (tmp_path / WEIGHTS_NAME).read_bytes()

    with pytest.raises(FileExistsError, match="different weights.*load_initial_checkpoint.*overwrite=True"):
        save_initial_checkpoint(build_model(seed=1), tmp_path)

    assert (tmp_path / WEIGHTS_NAME).read_bytes() == weights_before
    assert read_init_fingerprint(tmp_path) == fingerprint


def test_initial_checkpoint_same_model_verified(tmp_path):
    model = build_model(seed=0)
    fingerprint = save_initial_checkpoint(model, tmp_path)
    modified_time = os.stat(tmp_path / WEIGHTS_NAME).st_mtime_ns

    assert save_initial_checkpoint(model, tmp_path) == fingerprint

    assert os.stat(tmp_path / WEIGHTS_NAME).st_mtime_ns == modified_time


def test_initial_checkpoint_different_masks_rejected(tmp_path):
    model = build_model(seed=0)
    save_initial_checkpoint(model, tmp_path, masks=build_masks(model, TNAConfig(rho=0.4, seed=0)))

    with pytest.raises(FileExistsError, match="different masks"):
        save_initial_checkpoint(model, tmp_path, masks=build_masks(model, TNAConfig(rho=0.4, seed=1)))


def test_initial_checkpoint_overwrite(tmp_path):
    save_initial_checkpoint(build_model(seed=0), tmp_path)
    replacement = build_model(seed=1)

    fingerprint = save_initial_checkpoint(replacement, tmp_path, overwrite=True)

    assert fingerprint == state_dict_fingerprint(replacement.state_dict())
    assert read_init_fingerprint(tmp_path) == fingerprint
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_initial_checkpoint_foreign_weights_rejected(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / WEIGHTS_NAME))

    with pytest.raises(FileExistsError, match="has no tna_init.json"):
        save_initial_checkpoint(build_model(seed=0), tmp_path)


def test_load_initial_checkpoint_mismatched_model(tmp_path):
    save_initial_checkpoint(build_model(seed=0), tmp_path)
    torch.manual_seed(0)
    other = torch.nn.ModuleDict({"embed": torch.nn.Embedding(21, 8), "extra": torch.nn.Linear(2, 2)})

    with pytest.raises(CheckpointMismatchError) as error:
        load_initial_checkpoint(other, tmp_path)

    message = str(error.value)
    assert "missing keys (in the model, not in the checkpoint): ['extra.bias', 'extra.weight']" in message
    assert "unexpected keys (in the checkpoint, not in the model): ['head.weight', 'norm.bias'" in message
    assert "embed.weight: checkpoint (20, 8) vs model (21, 8)" in message


def test_load_initial_checkpoint_detects_changed_file(tmp_path):
    model = build_model(seed=0)
    save_initial_checkpoint(model, tmp_path)
    tampered = {name: tensor.clone().contiguous() for name, tensor in model.state_dict().items()}
    tampered["norm.running_mean"][0] += 1.0
    save_file(tampered, str(tmp_path / WEIGHTS_NAME))

    with pytest.raises(CheckpointMismatchError, match="the file was changed or is corrupt"):
        load_initial_checkpoint(build_model(seed=1), tmp_path)


def test_load_initial_checkpoint_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an initial checkpoint"):
        load_initial_checkpoint(build_model(seed=0), tmp_path)


def test_ensure_initial_checkpoint_shares_weights(tmp_path):
    first, second = build_model(seed=0), build_model(seed=1)

    first_fingerprint = ensure_initial_checkpoint(first, tmp_path)
    second_fingerprint = ensure_initial_checkpoint(second, tmp_path)

    assert first_fingerprint == second_fingerprint
    assert_same_state(second, first)


# ------------------------------------------------------------------------------------------------
# Provenance


def test_provenance_roundtrip(tmp_path):
    path = save_provenance(tmp_path / "run", "init-fingerprint", None)

    assert os.path.basename(path) == PROVENANCE_NAME
    assert load_provenance(tmp_path / "run") == Provenance(init_fingerprint="init-fingerprint", mask_fingerprint=None)


def test_provenance_missing_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_provenance"):
        load_provenance(tmp_path)
    (tmp_path / PROVENANCE_NAME).write_text(json.dumps({"init_fingerprint": "x"}))
    with pytest.raises(ValueError, match=r"lacks the fields \['mask_fingerprint'\]"):
        load_provenance(tmp_path)
