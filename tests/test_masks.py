import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tna_hf import (
    MaskMismatchError,
    TNAConfig,
    build_masks,
    complement_masks,
    fraction_fixed,
    load_masks,
    mask_fingerprint,
    save_masks,
)
from tna_hf.masks import build_mask


def make_model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10)
    )


@pytest.mark.parametrize("rho", [0.0, 0.1, 0.4, 0.5, 0.9])
def test_exact_number_of_fixed_entries(rho):
    masks = build_masks(make_model(), TNAConfig(rho=rho))
    for name, mask in masks.items():
        assert mask.dtype == torch.bool
        assert int((~mask).sum()) == round(rho * mask.numel()), name


def test_mask_independent_of_global_rng_and_order():
    config = TNAConfig(rho=0.4, seed=3)
    torch.manual_seed(0)
    first = build_masks(make_model(), config)
    torch.manual_seed(123)
    torch.rand(1000)
    second = build_masks(make_model(), config)
    assert mask_fingerprint(first) == mask_fingerprint(second)

    # Same names and shapes registered in another order give the same masks per name.
    class Reordered(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module("3", torch.nn.Linear(8 * 6 * 6, 10))
            self.add_module("0", torch.nn.Conv2d(3, 8, 3))

    reordered = build_masks(Reordered(), config)
    for name in reordered:
        assert torch.equal(reordered[name], first[name]), name


def test_build_masks_does_not_consume_global_rng():
    model = make_model()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_masks(model, TNAConfig(rho=0.4))
    assert torch.equal(torch.rand(3), expected)


def test_mask_depends_on_seed_name_shape_rho_and_round():
    base = build_mask("layer.weight", (20, 30), 0.4, seed=0)
    assert torch.equal(base, build_mask("layer.weight", (20, 30), 0.4, seed=0))
    for other in (
        build_mask("layer.weight", (20, 30), 0.4, seed=1),
        build_mask("other.weight", (20, 30), 0.4, seed=0),
        build_mask("layer.weight", (30, 20), 0.4, seed=0).view(20, 30),
        build_mask("layer.weight", (20, 30), 0.4, seed=0, round_index=1),
    ):
        assert not torch.equal(base, other)


def test_mask_identical_across_processes_with_different_hash_seeds():
    script = (
        "import torch;from tna_hf.masks import build_mask, mask_fingerprint;"
        "print(mask_fingerprint({'w': build_mask('w', (64, 64), 0.4, seed=5)}))"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        outputs.add(result.stdout.strip())
    assert len(outputs) == 1
    assert outputs == {mask_fingerprint({"w": build_mask("w", (64, 64), 0.4, seed=5)})}


def test_frozen_and_excluded_parameters_are_not_targeted():
    model = make_model()
    model[0].bias.requires_grad_(False)
    masks = build_masks(model, TNAConfig(rho=0.4, exclude_patterns=[r"^3\."]))
    assert set(masks) == {"0.weight"}


def test_no_targeted_parameter_error():
    with pytest.raises(ValueError, match="No trainable parameter of Sequential matches"):
        build_masks(make_model(), TNAConfig(target_patterns=["does_not_exist"]))


def test_complement_and_fraction_fixed():
    masks = build_masks(make_model(), TNAConfig(rho=0.4))
    complement = complement_masks(masks)
    for name in masks:
        assert torch.equal(complement[name], ~masks[name])
    assert fraction_fixed(masks) == pytest.approx(0.4, abs=0.01)
    assert fraction_fixed(masks) + fraction_fixed(complement) == pytest.approx(1.0)


def test_save_load_round_trip(tmp_path):
    model = make_model()
    config = TNAConfig(rho=0.4, seed=11)
    masks = build_masks(model, config)
    save_masks(masks, tmp_path, config)
    assert sorted(os.listdir(tmp_path)) == ["tna_config.json", "tna_mask.safetensors"]
    loaded = load_masks(tmp_path, model=model)
    assert set(loaded) == set(masks)
    for name in masks:
        assert torch.equal(loaded[name], masks[name]), name
    assert mask_fingerprint(loaded) == mask_fingerprint(masks)


def test_saved_mask_is_bit_packed(tmp_path):
    masks = build_masks(make_model(), TNAConfig(rho=0.4))
    path = save_masks(masks, tmp_path)
    entries = sum(mask.numel() for mask in masks.values())
    with safe_open(path, framework="pt") as handle:
        (key,) = list(handle.keys())
        bits = handle.get_tensor(key)
    assert bits.dtype == torch.uint8
    assert bits.numel() == (entries + 7) // 8
    header_bytes = os.path.getsize(path) - bits.numel()
    assert header_bytes < 1024


def test_load_reports_every_mismatch(tmp_path):
    model = make_model()
    masks = build_masks(model, TNAConfig(rho=0.4))
    masks.pop("0.bias")
    masks["extra.weight"] = torch.ones(2, dtype=torch.bool)
    masks["3.weight"] = torch.ones(10, 10, dtype=torch.bool)
    save_masks(masks, tmp_path, TNAConfig(rho=0.4))
    with pytest.raises(MaskMismatchError) as error:
        load_masks(tmp_path, model=model)
    message = str(error.value)
    assert "targeted parameters without a mask: ['0.bias']" in message
    assert "masks for parameters the model does not have: ['extra.weight']" in message
    assert "3.weight: mask (10, 10) vs parameter (10, 288)" in message


def test_load_expected_fingerprint_mismatch(tmp_path):
    model = make_model()
    save_masks(build_masks(model, TNAConfig(rho=0.4, seed=0)), tmp_path)
    other = mask_fingerprint(build_masks(model, TNAConfig(rho=0.4, seed=1)))
    with pytest.raises(MaskMismatchError, match="Mask fingerprint mismatch"):
        load_masks(tmp_path, expected_fingerprint=other)


def test_load_detects_corrupt_bits(tmp_path):
    masks = build_masks(make_model(), TNAConfig(rho=0.4))
    path = save_masks(masks, tmp_path)
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
        bits = handle.get_tensor("mask_bits")
    bits[0] ^= 1
    save_file({"mask_bits": bits}, path, metadata=metadata)
    with pytest.raises(MaskMismatchError, match="is corrupt"):
        load_masks(tmp_path)


def test_load_rejects_foreign_safetensors(tmp_path):
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "tna_mask.safetensors"))
    with pytest.raises(MaskMismatchError, match="is not a tna_hf mask file"):
        load_masks(tmp_path)


def test_load_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No tna_mask.safetensors"):
        load_masks(tmp_path)


def test_save_replaces_existing_file_atomically(tmp_path):
    model = make_model()
    save_masks(build_masks(model, TNAConfig(rho=0.4, seed=0)), tmp_path)
    new = build_masks(model, TNAConfig(rho=0.4, seed=1))
    save_masks(new, tmp_path)
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))
    assert mask_fingerprint(load_masks(tmp_path)) == mask_fingerprint(new)


def test_header_lists_names_and_shapes(tmp_path):
    masks = build_masks(make_model(), TNAConfig(rho=0.4))
    path = save_masks(masks, tmp_path)
    with safe_open(path, framework="pt") as handle:
        header = handle.metadata()
    assert json.loads(header["names_and_shapes"]) == [[name, list(masks[name].shape)] for name in sorted(masks)]
    assert header["fingerprint"] == mask_fingerprint(masks)


@pytest.mark.parametrize("content", [b"", b"garbage bytes", b"\x08\x00\x00\x00\x00\x00\x00\x00{"])
def test_load_unreadable_file_error(tmp_path, content):
    (tmp_path / "tna_mask.safetensors").write_bytes(content)
    with pytest.raises(MaskMismatchError, match="is not a readable tna_hf mask file"):
        load_masks(tmp_path)


def test_load_header_without_names_error(tmp_path):
    masks = build_masks(make_model(), TNAConfig(rho=0.4))
    path = save_masks(masks, tmp_path)
    with safe_open(path, framework="pt") as handle:
        metadata = dict(handle.metadata())
        bits = handle.get_tensor("mask_bits")
    del metadata["names_and_shapes"]
    save_file({"mask_bits": bits}, path, metadata=metadata)
    with pytest.raises(MaskMismatchError, match="KeyError"):
        load_masks(tmp_path)
